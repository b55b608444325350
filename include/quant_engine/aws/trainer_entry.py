"""The trainer's entry point with S3 reachable: ``python -m quant_engine.aws.trainer_entry``.

The same flags and ``SM_*`` variables as ``python -m quant_engine.training.trainer``; an ``s3://``
checkpoint dir is reached with a session from the job's environment (region, endpoint, credentials:
in a SageMaker job, its execution role). Managed spot jobs run this module.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from quant_engine.aws.s3 import s3_store
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings
from quant_engine.storage.filesystem import FileSystem
from quant_engine.training import trainer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """:func:`quant_engine.training.trainer.main` with S3 checkpoints reachable."""

    def store(bucket: str, prefix: str) -> FileSystem:
        return s3_store(AwsClients.from_settings(Settings.from_env(env)))(bucket, prefix)

    return trainer.main(argv, env, s3_store=store)


if __name__ == "__main__":
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]  # as the trainer's own entry point does
    sys.exit(main())
