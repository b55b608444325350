"""The trainer's entry point with S3 reachable: ``python -m quant_engine.aws.trainer_entry``.

The same flags and ``SM_*`` variables as ``python -m quant_engine.training.trainer``; an ``s3://``
checkpoint dir is reached with a session from the job's environment (region, endpoint, credentials:
in a SageMaker job, its execution role). Managed spot jobs run this module: in SageMaker's
framework image through its training toolkit's script mode, which sets the ``SM_*`` variables; in
the engine's job image (``docker/sagemaker/Dockerfile``) as its ``train`` command, which SageMaker
starts with no toolkit in between. What no variable says is then read from SageMaker's layout
(:func:`sagemaker_layout`): each folder of ``/opt/ml/input/data`` is a channel, the model goes to
``/opt/ml/model``, the hyperparameters come from ``/opt/ml/input/config/hyperparameters.json`` and
checkpoints live in ``/opt/ml/checkpoints``; ``SAGEMAKER_BASE_DIR`` (the toolkit's name for it)
moves the root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from quant_engine.aws.s3 import s3_store
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings
from quant_engine.storage.filesystem import FileSystem
from quant_engine.training import trainer

__all__ = ["main", "sagemaker_layout"]

BASE_DIR = "/opt/ml"


def sagemaker_layout(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with what SageMaker's ``/opt/ml`` layout says filled in where no variable says it.

    Set variables win (the toolkit's ``SM_*``, a test's ``QE_CHECKPOINT_DIR``). Without the layout's
    root (outside SageMaker) nothing is added, so a missing channel is still reported as such.
    """
    base = Path(env.get("SAGEMAKER_BASE_DIR") or BASE_DIR)
    filled = dict(env)
    if not base.is_dir():
        return filled
    data = base / "input" / "data"
    channels = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    for channel in channels:
        filled.setdefault(f"SM_CHANNEL_{channel.name.upper()}", str(channel))
    filled.setdefault("SM_MODEL_DIR", str(base / "model"))
    filled.setdefault("QE_HYPERPARAMETERS_FILE", str(base / "input" / "config" / "hyperparameters.json"))
    filled.setdefault("QE_CHECKPOINT_DIR", str(base / "checkpoints"))
    return filled


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """:func:`quant_engine.training.trainer.main` with S3 checkpoints reachable and SageMaker's layout read."""
    env = sagemaker_layout(os.environ if env is None else env)

    def store(bucket: str, prefix: str) -> FileSystem:
        return s3_store(AwsClients.from_settings(Settings.from_env(env)))(bucket, prefix)

    return trainer.main(argv, env, s3_store=store)


if __name__ == "__main__":
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]  # as the trainer's own entry point does
    sys.exit(main())
