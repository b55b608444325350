"""``quant-engine data synth | validate | fetch`` through the root command, as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from quant_engine.calendars import get_calendar
from quant_engine.cli import main
from quant_engine.data.files import read_bars

SMALL = ["--tickers", "3", "--start", "2024-01-01", "--end", "2024-03-31", "--seed", "5"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_writes_bars_and_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bars.parquet"
    code, stdout, _ = run(capsys, "data", "synth", *SMALL, "--out", str(out))
    bars, report = read_bars(out)
    assert code == 0 and report.ok
    assert stdout.strip() == f"wrote {len(bars)} rows (3 tickers, 1d bars on XNYS) to {out}"
    assert len(bars) == 3 * len(get_calendar("XNYS").sessions("2024-01-01", "2024-03-31"))  # no New Year, no MLK day


def test_synth_shift_changes_bars_from_its_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "data", "synth", *SMALL, "--out", str(tmp_path / "base.csv"))
    code, _, _ = run(
        capsys,
        "data",
        "synth",
        *SMALL,
        "--shift",
        "2024-02-01:covariate:vol_scale=3",
        "--out",
        str(tmp_path / "shifted.csv"),
    )
    base, shifted = read_bars(tmp_path / "base.csv")[0], read_bars(tmp_path / "shifted.csv")[0]
    before = base["ts"] < pd.Timestamp("2024-02-01", tz="UTC")
    assert code == 0
    pd.testing.assert_frame_equal(shifted[before], base[before])
    assert not shifted[~before]["close"].equals(base[~before]["close"])


def test_synth_intraday_to_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hourly.csv"
    code, stdout, _ = run(
        capsys,
        "data",
        "synth",
        "--tickers",
        "2",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-02",
        "--freq",
        "1h",
        "--out",
        str(out),
    )
    assert code == 0 and stdout.startswith("wrote 14 rows (2 tickers, 1h bars on XNYS)")


def test_synth_bad_shift_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "data", "synth", *SMALL, "--shift", "2024-02-01:sideways", "--out", str(tmp_path / "x.csv")
    )
    assert code == 2
    assert err.strip() == "quant-engine: error: Shift kind='sideways'; use one of covariate, concept, both"
    assert not (tmp_path / "x.csv").exists()


def test_validate_clean_file_exits_zero_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "data", "synth", *SMALL, "--out", str(tmp_path / "bars.csv"))
    code, stdout, _ = run(capsys, "data", "validate", str(tmp_path / "bars.csv"))
    assert code == 0
    assert stdout.startswith(
        f"{tmp_path / 'bars.csv'}: 183 rows, no problems; 3 ticker(s), 2024-01-02 21:00:00+00:00 .."
    )
    assert stdout.strip().endswith("2024-03-28 20:00:00+00:00")  # summer time from March 10; Good Friday closed


def test_validate_names_bars_off_the_calendar_and_restamps_daily_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.csv"
    path.write_text(
        "ticker,ts,close\nA,2019-07-02T21:00:00Z,10\nA,2019-07-03T21:00:00Z,10.1\n"
        "A,2019-07-04T21:00:00Z,10.2\nA,2099-01-02T21:00:00Z,10.3\n"
    )
    code, _, err = run(capsys, "data", "validate", str(path))
    assert code == 1
    assert "  not a session of XNYS (a holiday or a weekend): A@2019-07-04 21:00:00+00:00 (row 2)" in err
    assert "after now" in err and "A@2099-01-02 21:00:00+00:00 (row 3)" in err
    code, stdout, err = run(capsys, "data", "validate", str(path), "--on-error", "drop")
    assert code == 0 and "kept 2 of 4 rows" in stdout and "2019-07-03 17:00:00+00:00" in stdout


BAD = (
    "ticker,date,close,high,low\nA,2024-01-02,10,11,9\nA,2024-01-02,10,11,9\nA,2024-01-03,-1,11,9\nB,2024-01-03,5,6,5\n"
)


def test_validate_lists_every_problem_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    code, _, err = run(capsys, "data", "validate", str(path))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0] == f"{path}: 4 rows, 3 rule(s) broken"
    assert "  non-positive price: A@2024-01-03 21:00:00+00:00 (row 2)" in lines
    assert "  duplicate (ticker, ts): A@2024-01-02 21:00:00+00:00 (row 0)" in lines


def test_validate_drop_reports_and_writes_what_is_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, clean = tmp_path / "bad.csv", tmp_path / "clean.parquet"
    path.write_text(BAD)
    code, stdout, err = run(capsys, "data", "validate", str(path), "--on-error", "drop", "--out", str(clean))
    assert code == 0
    assert "non-positive price" in err
    assert "kept 2 of 4 rows" in stdout and f"wrote 2 rows to {clean}" in stdout
    assert read_bars(clean)[0]["ticker"].tolist() == ["A", "B"]


def test_validate_naive_timestamps_needs_assume_tz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "naive.csv"
    path.write_text("ticker,ts,close\nA,2024-01-02 16:00,10\n")
    code, _, err = run(capsys, "data", "validate", str(path))
    assert code == 2 and "quant-engine: error:" in err and "naive timestamps" in err
    code, stdout, _ = run(capsys, "data", "validate", str(path), "--assume-tz", "America/New_York")
    assert code == 0 and "2024-01-02 21:00:00+00:00" in stdout


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "validate", str(tmp_path / "nope.csv"))
    assert code == 2 and "nope.csv does not exist" in err


def test_fetch_from_a_file_source_to_another_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "data", "synth", *SMALL, "--out", str(tmp_path / "all.csv"))
    out = tmp_path / "one.parquet"
    code, stdout, _ = run(
        capsys,
        "data",
        "fetch",
        "--source",
        "csv",
        "--path",
        str(tmp_path / "all.csv"),
        "--tickers",
        "SYN02",
        "--start",
        "2024-02-01",
        "--end",
        "2024-02-29",
        "--out",
        str(out),
    )
    bars = read_bars(out)[0]
    assert code == 0 and set(bars["ticker"]) == {"SYN02"} and len(bars) == 20  # Presidents' Day
    assert stdout.startswith("wrote 20 rows (1 ticker(s), 2024-02-01 21:00:00+00:00 .. 2024-02-29")


def test_fetch_rejects_options_the_source_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "data",
        "fetch",
        "--source",
        "synthetic",
        "--path",
        "x.csv",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-03",
        "--out",
        str(tmp_path / "x.csv"),
    )
    assert code == 2
    assert "data source 'synthetic' cannot take options ['calendar', 'path']: got an unexpected keyword argument" in err


def test_fetch_unknown_ticker_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "data",
        "fetch",
        "--source",
        "synthetic",
        "--tickers",
        "SYN00,NOPE",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-03",
        "--out",
        str(tmp_path / "x.csv"),
    )
    assert code == 2 and "synthetic market has no ticker(s) NOPE" in err


def test_the_console_script_runs_synth_and_validate(tmp_path: Path) -> None:
    script = shutil.which("quant-engine", path=str(Path(sys.executable).parent))
    assert script is not None, "the quant-engine console script is missing: `make` installs it with pip install -e ."
    out = tmp_path / "bars.csv"
    synth = subprocess.run(
        [script, "data", "synth", *SMALL, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert synth.returncode == 0, synth.stderr
    check = subprocess.run(
        [script, "data", "validate", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert check.returncode == 0 and "no problems" in check.stdout
