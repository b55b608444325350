"""An ingestion killed at any point (SIGKILL, no chance to clean up) leaves no store holding what another lacks
once the next ingestion has run: the offline features, the stored bars and the online store agree, and the
interrupted sessions are there completely or not at all."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from quant_engine.backends import make_group_stores, make_offline_store, make_online_store
from quant_engine.config import Settings
from quant_engine.features.ingest import COMPACT_AFTER_FILES, IngestionJournal
from quant_engine.features.stores import BARS_GROUP_SUFFIX

QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))
TICKERS = "SYN00,SYN01,SYN02"
INTERRUPTED = ("2023-01-03", "2023-06-30")  # ~125 day files per group: a long write phase to land in
NEXT = ("2023-07-03", "2023-07-31")


def ingest(home: Path, start: str, end: str, *, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [QUANT_ENGINE, "ingest", "--start", start, "--end", end, "--tickers", TICKERS],
        env={**os.environ, "QE_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def committed(home: Path, group: str) -> bool:
    """Whether ``group``'s manifest lists a commit (read the way a reader would, without the store's lock)."""
    manifest = home / "offline-store" / group / "feature_group.json"
    try:
        return '"commit_id"' in manifest.read_text()
    except (FileNotFoundError, OSError):
        return False


#: The moments a crash is most dangerous at, in write order; a kill lands just after one of them.
MOMENTS = {
    "journal committed": lambda home: (
        home / "offline-store" / "market_features" / "pending-ingestion" / "journal.json"
    ).exists(),
    "features committed": lambda home: committed(home, "market_features"),
    "bars committed": lambda home: committed(home, f"market_features{BARS_GROUP_SUFFIX}"),
}


def kill_after(victim: subprocess.Popen, home: Path, moment: str, delay_s: float) -> None:
    """SIGKILL ``victim`` ``delay_s`` after ``moment`` is seen (polled every millisecond)."""
    seen = MOMENTS[moment]
    while victim.poll() is None and not seen(home):
        time.sleep(0.001)
    time.sleep(delay_s)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)


def keys(frame: pd.DataFrame) -> set[tuple[str, pd.Timestamp]]:
    return set(zip(frame["ticker"], frame["event_time"], strict=True))


def assert_consistent(home: Path) -> None:
    settings = Settings(home=home)
    features = make_offline_store(settings).read()
    bars = make_offline_store(settings, f"market_features{BARS_GROUP_SUFFIX}").read()
    assert keys(features) == keys(bars), "features and stored bars disagree"
    first, last = (pd.Timestamp(d, tz="UTC") for d in INTERRUPTED)
    interrupted = features[features["event_time"].between(first, last + pd.Timedelta(days=1))]
    assert len(interrupted) in (0, 3 * 124), f"{len(interrupted)} rows of the interrupted sessions: half written"
    latest = features.loc[features.groupby("ticker")["event_time"].idxmax()].set_index("ticker")
    online = make_online_store(settings).get_many(latest.index.tolist())
    for ticker, row in latest.iterrows():
        assert online[ticker]["event_time"] == row["event_time"]
        assert online[ticker]["rsi_14"] == row["rsi_14"]
    for group in ("market_features", f"market_features{BARS_GROUP_SUFFIX}"):
        store = make_offline_store(settings, group)
        assert store.uncompacted_files() < COMPACT_AFTER_FILES, f"{group} was left without its snapshot"
        assert IngestionJournal(store).pending() is None


def test_a_sigkill_anywhere_in_an_ingestion_is_finished_or_undone_by_the_next_run(tmp_path: Path) -> None:
    """Twelve kills: after each dangerous moment of the writes (four each), a random 0-40 ms later."""
    inconsistent_before = 0
    for seed in range(12):
        home = tmp_path / f"seed{seed}"
        victim = ingest(home, *INTERRUPTED)
        kill_after(victim, home, list(MOMENTS)[seed % 3], random.Random(seed).uniform(0.0, 0.04))
        settings = Settings(home=home)
        features, bars = (
            make_offline_store(settings),
            make_offline_store(settings, f"market_features{BARS_GROUP_SUFFIX}"),
        )
        held = [len(store.read()) if store.schema is not None and store.commits() else 0 for store in (features, bars)]
        inconsistent_before += held[0] != held[1]
        assert ingest(home, *NEXT).wait(timeout=300) == 0
        assert_consistent(home)
    assert inconsistent_before >= 2, "too few kills left the stores disagreeing: the test would prove nothing"


@pytest.mark.parametrize("when", ["bars", "online"])
def test_a_failed_write_reverts_every_store_and_leaves_no_journal(tmp_path: Path, monkeypatch, when: str) -> None:
    from quant_engine.features import offline_store, online_store
    from quant_engine.features.ingest import IngestionRequest

    settings = Settings(home=tmp_path)
    monkeypatch.setenv("QE_HOME", str(tmp_path))
    from quant_engine.features.ingest import ingest as ingest_in_process

    ingest_in_process(
        IngestionRequest.build("synthetic", "2023-06-01", "2023-06-02", tickers=TICKERS, group=make_offline_store()),
        make_group_stores(settings),
    )
    before = make_offline_store(settings).read(include_history=True)
    original = offline_store.OfflineStore.write

    def failing(self, frame, **kwargs):
        if when == "bars" and self.feature_group.endswith(BARS_GROUP_SUFFIX):
            raise OSError("disk full while writing the bars")
        return original(self, frame, **kwargs)

    monkeypatch.setattr(offline_store.OfflineStore, "write", failing)
    if when == "online":
        monkeypatch.setattr(
            online_store.SQLiteOnlineStore,
            "put",
            lambda self, frame: (_ for _ in ()).throw(OSError("disk full online")),
        )
    with pytest.raises(OSError, match="disk full"):
        ingest_in_process(
            IngestionRequest.build(
                "synthetic", "2023-06-05", "2023-06-06", tickers=TICKERS, group=make_offline_store()
            ),
            make_group_stores(settings),
        )
    pd.testing.assert_frame_equal(make_offline_store(settings).read(include_history=True), before)
    assert IngestionJournal(make_offline_store(settings)).pending() is None
