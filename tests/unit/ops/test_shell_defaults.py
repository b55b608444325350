"""ops/shell_defaults.py: the .pth line sets each default only where the environment has none."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("qe_shell_defaults", REPO_ROOT / "ops" / "shell_defaults.py")
shell_defaults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shell_defaults)

DEFAULTS = {"QE_HOME": "/checkout/var", "AIRFLOW_HOME": "/checkout/.airflow with 'quotes'"}


def test_the_line_sets_what_is_unset_and_keeps_what_is_exported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    assert shell_defaults.write(DEFAULTS, site) == site / shell_defaults.PTH_NAME
    assert shell_defaults.write(DEFAULTS, site) is None  # already so: nothing rewritten
    show = f"import site, os; site.addsitedir({str(site)!r}); print(os.environ['QE_HOME'], os.environ['AIRFLOW_HOME'])"
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS}
    # -S: not the venv's own site-packages, whose checkout .pth (make venv's) would set them first
    fresh = subprocess.run([sys.executable, "-S", "-c", show], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.split(" ", 1) == ["/checkout/var", "/checkout/.airflow with 'quotes'\n"]
    exported = subprocess.run(
        [sys.executable, "-S", "-c", show], env={**env, "QE_HOME": "/mine"}, capture_output=True, text=True, check=True
    )
    assert exported.stdout.startswith("/mine ")
    assert list(site.iterdir()) == [site / shell_defaults.PTH_NAME]  # no partial file left behind


@pytest.mark.parametrize("argument", ["QE_HOME", "=x", "NOT A NAME=x", "QE_HOME=a\nb"])
def test_anything_but_name_value_is_refused(argument: str) -> None:
    with pytest.raises(SystemExit, match="is not NAME=VALUE"):
        shell_defaults.parse(["QE_HOME=/x", argument])
    with pytest.raises(SystemExit, match="at least one"):
        shell_defaults.parse([])
