"""Feature definitions (one source for batch and stream), your own features, and the offline and online stores."""

from quant_engine.features.registry import register_feature, register_feature_set

__all__ = ["register_feature", "register_feature_set"]
