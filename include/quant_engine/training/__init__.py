"""Training: the SageMaker script-mode trainer with exact checkpoint/resume, and its local spot simulator.

Submodules are imported where used (``quant_engine.training.trainer``,
``quant_engine.training.checkpoints``, ``quant_engine.training.spot``) so that importing the
package stays light and never pulls in XGBoost.
"""
