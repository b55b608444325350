"""``quant-engine quickstart``: a small CSV to a champion and its first live signals in one command.

The end-to-end test runs the command in this process (the feed and the bridge are its subprocesses,
as for a user) on 4 tickers x 3 years with a small walk-forward, and checks what it says against
what it stored: the PBO and deflated Sharpe lines against the report, the champion against the
registry, each printed signal against the stored bars. Bad input is one line before any work.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from quant_engine import cli
from quant_engine.backends import make_bar_history, make_model_registry
from quant_engine.config import get_settings
from quant_engine.wfo.report import latest_report, load_report

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A walk-forward small enough for a test: one year of training, then half-year test windows, two trials.
SMALL_WFO = {
    "splitter": "walk_forward",
    "train_window": "365D",
    "test_window": "180D",
    "trials": [
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.1},
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.05},
    ],
}


def write_sample_csv(path: Path, tickers: int = 4, years: int = 3) -> Path:
    """The walkthrough's own sample generator, examples/make_sample_csv.py."""
    spec = importlib.util.spec_from_file_location("make_sample_csv", REPO_ROOT / "examples" / "make_sample_csv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--tickers", str(tickers), "--years", str(years), "--out", str(path)])
    return path


def test_a_csv_becomes_a_champion_and_live_signals(
    qe_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    csv = write_sample_csv(tmp_path / "my.csv")
    stack_env = tmp_path / "stack.env"
    argv = ["quickstart", str(csv), "--wfo-conf", json.dumps(SMALL_WFO), "--promote-anyway", "--serve"]
    assert cli.main([*argv, "--signals", "3", "--stack-env", str(stack_env)]) == 0
    out = capsys.readouterr().out

    report = load_report(latest_report(get_settings().reports_dir))
    assert report["splitter"] == "walk_forward" and report["n_trials"] == 2
    assert f"  PBO {report['pbo']:.3f} (probability the selection is overfit" in out
    assert f"  deflated Sharpe {report['deflated_sharpe']:.3f} (probability the edge is no luck" in out
    champion = make_model_registry().champion()
    assert champion is not None and f"champion: {champion.version}" in out
    assert make_model_registry().get(champion.version).metadata.wfo_run["run_id"] == report["run_id"]

    signals = re.findall(r"^  signal (\S+) (\S+) prob (\S+) weight (\S+) status (\S+) model (\S+)$", out, re.M)
    assert len(signals) == 3, out
    bars = make_bar_history().read(None, pd.Timestamp("2021-11-01", tz="UTC"), pd.Timestamp("2022-01-01", tz="UTC"))
    stored = set(zip(bars["ticker"], bars["ts"], strict=True))
    for ticker, ts, prob, _weight, status, model in signals:
        assert (ticker, pd.Timestamp(ts)) in stored  # a replayed bar of the file, not an invented one
        assert model == champion.version and 0 < float(prob) < 1 and status in ("ok", "scaled", "suppressed")

    # make up DATA=...: the stack's feed replays the stored bars of the file's tickers, from 20 sessions back
    settings = dict(line.split("=", 1) for line in stack_env.read_text().splitlines())
    assert settings == {
        "QE_STACK_FEED_SOURCE": "store",
        "QE_STACK_TICKERS": "SYN00,SYN01,SYN02,SYN03",
        "QE_STACK_FEED_START": "2021-12-03",
    }
    spec = importlib.util.spec_from_file_location("qe_stack", REPO_ROOT / "ops" / "stack.py")
    stack = importlib.util.module_from_spec(spec)
    sys.modules["qe_stack"] = stack  # dataclasses look their module up there
    spec.loader.exec_module(stack)
    feed = stack.services(stack.StackConfig.from_env({**settings, "QE_STACK_DIR": str(tmp_path / "stack")}))["feed"]
    assert feed[feed.index("--source") + 1] == "store" and feed[feed.index("--start") + 1] == "2021-12-03"
    assert feed[feed.index("--tickers") + 1] == "SYN00,SYN01,SYN02,SYN03"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (None, "quant-engine: error: no such bar file: {csv}; check the path"),
        ("ticker,day,price\nAAA,2021-01-04,10\n", "quant-engine: error: {csv}: no time column; name one of ts,"),
        (
            "ticker,date,open,close\nAAA,2021-01-04,ten,10\n",
            "quant-engine: error: {csv}: column 'open' holds values that are not numbers",
        ),
    ],
    ids=["missing-file", "unknown-columns", "not-a-number"],
)
def test_bad_input_is_one_line_before_any_work(
    content: str | None, line: str, qe_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    csv = tmp_path / "my.csv"
    if content is not None:
        csv.write_text(content)
    assert cli.main(["quickstart", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line.format(csv=csv)), err
    assert not (qe_home / "runs" / "wfo").exists()  # nothing ran
