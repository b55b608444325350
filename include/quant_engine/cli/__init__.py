"""The ``quant-engine`` command: one entry point, one sub-command group per chapter.

Each chapter's group is a module of this package with a ``register(subparsers)`` function; the
command line is an edge of the engine like a DAG task, so its handlers build what they need from
the composition root (:mod:`quant_engine.backends`) and hand it to the library.
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quant-engine",
        description="Walk-forward validation, feature store, spot training, drift sentinel and live bridge.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_GROUPS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # user-facing errors: one clear line
        print(f"quant-engine: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
