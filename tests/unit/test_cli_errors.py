"""A user error of ``quant-engine`` is one line naming the problem and the fix, exit 2; a bug keeps its traceback."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quant_engine import cli

QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))


def quant_engine(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [QUANT_ENGINE, *argv], env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (
            ["features", "history", "SYN03"],  # before anything was ingested
            {},
            "quant-engine: error: feature group 'market_features' does not exist yet; ingest into it first "
            "(quant-engine ingest, or the market_data_ingestion DAG)",
        ),
        (
            ["wfo", "run", "--conf", "{'tickers': 'SYN00'}"],
            {},
            "quant-engine: error: --conf is not valid JSON: Expecting property name enclosed in double quotes",
        ),
        (
            ["models", "show", "7"],
            {},
            "quant-engine: error: model 'xgb_direction' has no version v0007 (versions: none); "
            "see quant-engine models list",
        ),
        (
            ["models", "list"],
            {"QE_DEFAULT_SOURCE": "bloomberg"},
            "quant-engine: error: QE_DEFAULT_SOURCE='bloomberg' is not a data source; use one of",
        ),
        (
            ["features", "history", "SYN03", "--start", "last tuesday"],
            {},
            "quant-engine features history: error: argument --start: 'last tuesday' is not a date or time; "
            "write YYYY-MM-DD or ISO 8601; see quant-engine features history --help",
        ),
    ],
    ids=["no-feature-group", "bad-json", "unknown-version", "bad-setting", "bad-date"],
)
def test_a_user_error_is_one_line_and_exit_2(argv: list[str], env: dict[str, str], line: str) -> None:
    result = quant_engine(*argv, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["ingest", "--start", "2024-03-04", "--tickers", ",,"],
            "quant-engine: error: tickers=',,' names no ticker; leave it empty for every ticker\n",
        ),
        (
            ["data", "validate", "no/such/bars.parquet"],
            "quant-engine: error: parquet source: no/such/bars.parquet does not exist; "
            "check the path, its permissions, or the address\n",
        ),
    ],
)
def test_the_same_line_in_process(argv: list[str], line: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == line


def test_debug_shows_the_traceback_of_a_user_error() -> None:
    result = quant_engine("--debug", "features", "history", "SYN03")
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "quant_engine.features.offline_store.OfflineStoreError: feature group 'market_features'" in result.stderr


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken(args):  # what a bug looks like: not an error of the user's
        return {}["missing"]

    monkeypatch.setattr(importlib.import_module("quant_engine.cli.training"), "_list", broken)
    with pytest.raises(KeyError, match="missing"):
        cli.main(["models", "list"])
    assert capsys.readouterr().err == ""


def test_an_interrupt_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("quant_engine.cli.training"), "_list", interrupted)
    assert cli.main(["models", "list"]) == 130
    assert capsys.readouterr().err == "quant-engine: interrupted\n"


def test_every_user_error_named_is_an_exception_class() -> None:
    for name in cli.USER_ERRORS:
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        assert isinstance(cls, type) and issubclass(cls, Exception), name
        assert f"{cls.__module__}.{cls.__qualname__}" == name, f"{name} is {cls.__module__}.{cls.__qualname__}"


def test_the_hint_is_the_most_specific_classes_and_added_only_where_the_message_has_none() -> None:
    from quant_engine.features.offline_store import OfflineStoreError, UnknownCommitError
    from quant_engine.storage.filesystem import ConcurrentCommitError

    assert cli.user_error_hint(ConcurrentCommitError("x")) == "another writer may be at work; run the command again"
    assert cli.user_error_hint(UnknownCommitError("x")) == ""  # an OfflineStoreError (and a LookupError)
    assert cli.user_error_hint(TypeError("x")) is None and cli.user_error_hint(KeyError("x")) is None
    assert cli.error_line(ConcurrentCommitError("lost the race"), "run it again") == (
        "quant-engine: error: lost the race; run it again"
    )
    assert cli.error_line(OfflineStoreError("a; b"), "ignored") == "quant-engine: error: a; b"
    assert cli.error_line(ValueError("rows:\n  1\n  2\n"), "") == "quant-engine: error: rows: 1 2"
    missing = FileNotFoundError(2, "No such file or directory", "bars.csv")
    assert (
        cli.error_line(missing, "check the path")
        == "quant-engine: error: No such file or directory: bars.csv; check the path"
    )
