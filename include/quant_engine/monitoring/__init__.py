"""Monitoring: training baselines, feature and concept drift, alarms.

Baselines and violations use SageMaker Model Monitor's file shapes, so the same files can be read
by Model Monitor tooling and a drift check needs only what was stored next to the model.
"""
