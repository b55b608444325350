"""The ``quant-engine`` command: one entry point, one sub-command group per chapter.

Each chapter's group is a module of this package with a ``register(subparsers)`` function; the
command line is an edge of the engine like a DAG task, so its handlers build what they need from
the composition root (:mod:`quant_engine.backends`) and hand it to the library.

A user's mistake gets one line on stderr, ``quant-engine: error: <what>; <how to fix it>``, and
exit status 2: a flag argparse refuses, and every error in :data:`USER_ERRORS` (bad input, the
environment, a service or a job that failed). Anything else is a bug and keeps its traceback;
``--debug`` shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Module of each chapter's command group, in --help order.
COMMAND_GROUPS: tuple[str, ...] = (
    "quant_engine.cli.data",
    "quant_engine.cli.features",
    "quant_engine.cli.wfo",
    "quant_engine.cli.training",
    "quant_engine.cli.bridge",
    "quant_engine.cli.quickstart",
)

#: The errors that are the user's to fix, each with the hint added when its message has none (no
#: ``;``), the most specific class first. Named,
#: not imported, so the command line does not import every store to tell them apart; a test checks
#: that each name is a class. ``ValueError`` is the library's bad-input family: every check of a
#: parameter, a setting, a file's contents or a name raises a subclass of it (``IngestionError``,
#: ``WfoConfigError``, ``SettingsError``, ``NoChampionError``, ``RegistryError``...).
USER_ERRORS: dict[str, str] = {
    "quant_engine.training.registry.UnknownVersionError": "see quant-engine models list",
    "builtins.ValueError": "",
    "builtins.OSError": "check the path, its permissions, or the address",
    "quant_engine.features.offline_store.OfflineStoreError": "",
    "quant_engine.features.online_store.OnlineStoreError": "",
    "quant_engine.storage.filesystem.StorageError": "another writer may be at work; run the command again",
    "quant_engine.data.yfinance_source.YFinanceUnavailableError": "check the network, or ingest from a file",
    "quant_engine.aws.feature_store.FeatureStoreError": "",
    "quant_engine.aws.processing.ProcessingJobError": "",
    "quant_engine.aws.sagemaker_spot.TrainingJobError": "",
    "quant_engine.training.spot.SpotRunError": "",
    "quant_engine.cli.quickstart.ServeError": "",
    "botocore.exceptions.BotoCoreError": "check the AWS credentials, QE_AWS_REGION and QE_AWS_ENDPOINT_URL",
    "botocore.exceptions.ClientError": "check the AWS credentials, permissions and QE_S3_BUCKET",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="quant-engine",
        description="Walk-forward validation, feature store, spot training, drift sentinel and live bridge.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_GROUPS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def user_error_hint(exc: BaseException) -> str | None:
    """The hint for ``exc`` when it is a user error (``""``: its message says what to do), else None."""
    for cls in type(exc).__mro__:
        hint = USER_ERRORS.get(f"{cls.__module__}.{cls.__qualname__}")
        if hint is not None:
            return hint
    return None


def error_line(exc: BaseException, hint: str) -> str:
    """``quant-engine: error: <what>; <hint>`` on one line."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        what = f"{exc.strerror}: {exc.filename}"
    else:
        what = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if hint and ";" not in what:
        what = f"{what}; {hint}"
    return f"quant-engine: error: {what}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("quant-engine: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        hint = user_error_hint(exc)
        if hint is None or args.debug:
            raise  # a bug: its traceback is what a report needs
        print(error_line(exc, hint), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
