"""Give a plain shell the checkout's defaults: write them into the venv as a ``.pth`` file (``make venv``).

``make`` exports where this checkout keeps things (``AIRFLOW_HOME``, the DAGs and plugins folders,
``QE_HOME``...). A shell that did not come through ``make`` has none of them, and Airflow would look
in ``~/airflow`` and find no DAG. Every Python process of the venv (``airflow``, ``quant-engine``,
``python``) runs the ``.pth`` file this writes at start-up, which sets each variable the
environment does not already hold: after ``make venv``, ``.venv/bin/airflow dags test wfo_pipeline``
or ``source .venv/bin/activate`` works with nothing exported, and an exported value still wins.

Usage: ``python ops/shell_defaults.py NAME=VALUE ...``, run by the venv's own Python (the ``.pth``
goes into its site-packages). Prints the file's path when it changed.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The file's name in site-packages (``.pth`` files run in name order; nothing here depends on it).
PTH_NAME = "quant_engine_checkout.pth"


def pth_line(defaults: Mapping[str, str]) -> str:
    """One ``.pth`` line (site runs lines that start with ``import``) setting each default unless set."""
    settings = "; ".join(f"os.environ.setdefault({name!r}, {value!r})" for name, value in defaults.items())
    return f"import os; {settings}\n"


def parse(arguments: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a mapping; anything else is an error naming it."""
    defaults = {}
    for argument in arguments:
        name, sep, value = argument.partition("=")
        if not sep or not name.isidentifier() or "\n" in value:
            raise SystemExit(f"shell_defaults: {argument!r} is not NAME=VALUE (one line, NAME a variable name)")
        defaults[name] = value
    if not defaults:
        raise SystemExit("shell_defaults: give at least one NAME=VALUE")
    return defaults


def write(defaults: Mapping[str, str], site_packages: Path) -> Path | None:
    """Write the ``.pth`` file into ``site_packages`` atomically; its path, or None when it was already so."""
    target = site_packages / PTH_NAME
    line = pth_line(defaults)
    if target.exists() and target.read_text() == line:
        return None
    partial = target.with_name(f".{PTH_NAME}.{os.getpid()}")
    partial.write_text(line)
    partial.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    written = write(parse(sys.argv[1:] if argv is None else argv), Path(sysconfig.get_path("purelib")))
    if written is not None:
        print(f"plain-shell defaults for this checkout: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
