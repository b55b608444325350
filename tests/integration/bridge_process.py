"""The bridge as a user runs it: ``quant-engine bridge run`` and ``quant-engine feed serve`` as subprocesses.

For the tests that attack it: a store with history and a champion, the two processes with their
environment, their health, metrics and memory, and an honest subscriber that records every signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from websockets.asyncio.client import connect

from quant_engine.config import make_model_registry
from quant_engine.features.definitions import get_feature_set
from quant_engine.monitoring.run import record_baseline
from quant_engine.training.registry import ModelMetadata

FEATURES = get_feature_set("default").names
QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))
TOKEN = "honest-token-7f3a"


def register_champion(home: Path, seed: int = 1) -> str:
    """A small booster on seeded feature rows, registered with its monitoring baseline and promoted."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    rows["realized_vol_20"] = rng.uniform(0.0, 5.0, size=len(rows))
    rows["label"] = (rows["log_return_5"] + 0.5 * rng.normal(size=len(rows)) > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "seed": seed},
                        xgb.DMatrix(rows[FEATURES].to_numpy(np.float32), label=rows["label"], feature_names=FEATURES),
                        5)
    path = home / f"champion-{seed}.json"
    booster.save_model(str(path))
    registry = make_model_registry()
    version = registry.register(path, ModelMetadata(features=FEATURES, data_start="2021-01-01T00:00Z",
                                                    data_end="2021-03-31T21:00Z", data_fingerprint=f"seed{seed}"))
    record_baseline(registry.name, version, booster, rows.iloc[:200], rows.iloc[200:], FEATURES)
    registry.promote(version, f"seed {seed}")
    return version
