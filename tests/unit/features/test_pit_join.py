"""The bitemporal point-in-time join against a brute-force oracle, and its contract at the edges."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from unittest import mock

import boto3
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from quant_engine.aws.s3 import S3FileSystem
from quant_engine.features import offline_store
from quant_engine.features.offline_store import FeatureFrameError, OfflineStore, OfflineStoreError, UnknownFeatureError
from quant_engine.storage.filesystem import LocalFileSystem

GROUP = "pit_features"
BASE = pd.Timestamp("2024-01-01", tz="UTC")
WRITE_BASE = pd.Timestamp("2024-06-01", tz="UTC")
FEATURES = ["f1", "f2"]
TICKERS = ["A", "B", "C"]


def minute(k: int) -> pd.Timestamp:
    return BASE + pd.Timedelta(minutes=k)


def write_slot(k: int) -> pd.Timestamp:
    return WRITE_BASE + pd.Timedelta(hours=k)


# -- the oracle ----------------------------------------------------------------------------------


def oracle(versions, entities, *, as_of=None, ttl=None) -> list[tuple[float, float]]:
    """For each entity row, by brute force: the latest qualifying write of the latest event_time <= ts."""
    answers = []
    for ticker, ts in zip(entities["ticker"], entities["ts"], strict=True):
        known = [
            v
            for v in versions
            if v["ticker"] == ticker and v["event_time"] <= ts and (as_of is None or v["write_time"] <= as_of)
        ]
        if not known:
            answers.append((math.nan, math.nan))
            continue
        event_time = max(v["event_time"] for v in known)
        latest = max((v for v in known if v["event_time"] == event_time), key=lambda v: v["write_time"])
        if ttl is not None and event_time < ts - ttl:
            answers.append((math.nan, math.nan))
        else:
            answers.append((latest["f1"], latest["f2"]))
    return answers


def assert_matches(result: pd.DataFrame, expected: list[tuple[float, float]]) -> None:
    got = result[FEATURES].to_numpy()
    want = np.array(expected, dtype="float64").reshape(-1, 2)
    np.testing.assert_array_equal(got, want)  # NaN == NaN here; values must be bit-identical


# -- property: the join equals the oracle -------------------------------------------------------

values = st.integers(-50, 50).map(float)
version_rows = st.tuples(st.sampled_from(TICKERS), st.integers(0, 12), values, values)
commits = st.lists(st.lists(version_rows, max_size=12), min_size=1, max_size=3)
entity_rows = st.lists(st.tuples(st.sampled_from([*TICKERS, "D"]), st.integers(-1, 14)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=commits,
    entity_keys=entity_rows,
    as_of_slot=st.one_of(st.none(), st.integers(0, 3)),
    as_of_nudge_ns=st.sampled_from([0, 1, -1]),
    ttl_minutes=st.one_of(st.none(), st.integers(1, 6)),
    compact_after=st.one_of(st.none(), st.integers(1, 3)),
    base=st.datetimes(
        min_value=pd.Timestamp("1900-01-01").to_pydatetime(), max_value=pd.Timestamp("2100-01-01").to_pydatetime()
    ),
    data=st.data(),
)
def test_join_equals_brute_force_oracle(
    batches, entity_keys, as_of_slot, as_of_nudge_ns, ttl_minutes, compact_after, base, data
):
    """Event times from 1900 to 2100 (before 1970 their epoch nanoseconds are negative), with corrections."""
    origin = pd.Timestamp(base, tz="UTC")

    def minute(k: int) -> pd.Timestamp:
        return origin + pd.Timedelta(minutes=k)

    versions = []
    # Every snapshot is worth reading here, so compacted runs exercise the snapshot path.
    with tempfile.TemporaryDirectory() as root, mock.patch.object(offline_store, "SNAPSHOT_MIN_FILES", 1):
        store = OfflineStore(LocalFileSystem(Path(root)), GROUP)
        for slot, rows in enumerate(batches, start=1):
            if slot - 1 == compact_after and versions:
                store.compact()
            batch = {}
            for ticker, event_minute, f1, f2 in rows:  # later rows win within one batch: keys are unique per write
                batch[(ticker, event_minute)] = (f1, f2)
            if not batch:
                continue
            frame = pd.DataFrame(
                [(t, minute(m), f1, f2) for (t, m), (f1, f2) in batch.items()],
                columns=["ticker", "event_time", *FEATURES],
            )
            store.write(frame, write_time=write_slot(slot))
            versions += [
                dict(ticker=t, event_time=minute(m), write_time=write_slot(slot), f1=f1, f2=f2)
                for (t, m), (f1, f2) in batch.items()
            ]
        if not versions:
            return
        if compact_after is not None and compact_after >= len(batches):
            store.compact()
        entities = pd.DataFrame({"ticker": [t for t, _ in entity_keys], "ts": [minute(m) for _, m in entity_keys]})
        entities["label"] = np.arange(len(entities)) * 10
        entities.index = data.draw(st.permutations(range(100, 100 + len(entities))))
        as_of = None if as_of_slot is None else write_slot(as_of_slot) + pd.Timedelta(as_of_nudge_ns, "ns")
        ttl = None if ttl_minutes is None else pd.Timedelta(minutes=ttl_minutes)

        result = store.point_in_time_join(entities, as_of=as_of, ttl=ttl)

    assert list(result.index) == list(entities.index)
    pd.testing.assert_frame_equal(result[["ticker", "ts", "label"]], entities)
    assert_matches(result, oracle(versions, entities, as_of=as_of, ttl=ttl))


# -- named cases --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> OfflineStore:
    """A: f1 = 1, 2, 3 at minutes 0, 5, 10; minute 5 corrected to 20 later. B: one row at minute 3."""
    store = OfflineStore(LocalFileSystem(tmp_path), GROUP)
    store.write(
        pd.DataFrame(
            {
                "ticker": ["A", "A", "A", "B"],
                "event_time": [minute(0), minute(5), minute(10), minute(3)],
                "f1": [1.0, 2.0, 3.0, 7.0],
                "f2": [-1.0, -2.0, -3.0, -7.0],
            }
        ),
        write_time=write_slot(1),
    )
    store.write(
        pd.DataFrame({"ticker": ["A"], "event_time": [minute(5)], "f1": [20.0], "f2": [-20.0]}),
        write_time=write_slot(2),
    )
    return store


def entities_at(*keys: tuple[str, int], **extra) -> pd.DataFrame:
    return pd.DataFrame({"ticker": [t for t, _ in keys], "ts": [minute(m) for _, m in keys], **extra})


def test_a_row_at_exactly_the_event_time_sees_it(store):
    result = store.point_in_time_join(entities_at(("A", 10), ("A", 9), ("B", 3), ("B", 2)))
    assert result["f1"].tolist()[:3] == [3.0, 20.0, 7.0] and math.isnan(result["f1"].iloc[3])


def test_late_corrections_never_leak_into_an_earlier_as_of(store):
    entities = entities_at(("A", 7))
    assert store.point_in_time_join(entities)["f1"].item() == 20.0
    assert store.point_in_time_join(entities, as_of=write_slot(2))["f1"].item() == 20.0  # inclusive
    assert store.point_in_time_join(entities, as_of=write_slot(2) - pd.Timedelta(1, "ns"))["f1"].item() == 2.0
    assert math.isnan(store.point_in_time_join(entities, as_of=write_slot(0))["f1"].item())


def test_ttl_turns_stale_values_into_nan(store):
    entities = entities_at(("A", 12), ("A", 13), ("A", 14))
    result = store.point_in_time_join(entities, ttl=pd.Timedelta(minutes=3))
    assert result["f1"].tolist()[:2] == [3.0, 3.0]  # 13 - 3 == 10: the boundary still counts
    assert math.isnan(result["f1"].iloc[2])


def test_rows_order_index_and_extra_columns_are_preserved(store):
    entities = entities_at(("B", 9), ("Z", 1), ("A", 6), ("B", 9), ("A", -5), label=[1.5, 2.5, 3.5, 4.5, 5.5])
    entities.index = ["e", "d", "c", "b", "a"]
    result = store.point_in_time_join(entities, ["f2"])
    assert list(result.columns) == ["ticker", "ts", "label", "f2"]
    pd.testing.assert_frame_equal(result.drop(columns="f2"), entities)
    np.testing.assert_array_equal(result["f2"].to_numpy(), [-7.0, np.nan, -20.0, -7.0, np.nan])
    assert result["f2"].dtype == "float64"


def test_a_custom_entity_time_column(store):
    entities = entities_at(("A", 6)).rename(columns={"ts": "decision_time"})
    result = store.point_in_time_join(entities, entity_time_col="decision_time")
    assert result["f1"].item() == 20.0


def test_an_empty_entity_frame_gives_an_empty_result(store):
    entities = entities_at()
    entities["ts"] = entities["ts"].astype("datetime64[ns, UTC]")
    result = store.point_in_time_join(entities)
    assert result.empty and list(result.columns) == ["ticker", "ts", *FEATURES]


def test_entity_times_in_other_time_zones_are_compared_as_instants(store):
    entities = entities_at(("A", 6))
    entities["ts"] = entities["ts"].dt.tz_convert("America/New_York")
    assert store.point_in_time_join(entities)["f1"].item() == 20.0


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda s: s.point_in_time_join(entities_at(("A", 1)), ["f1", "nope"]),
            UnknownFeatureError,
            r"no feature\(s\) \['nope'\]; known: f1, f2",
        ),
        (lambda s: s.point_in_time_join(entities_at(("A", 1)), "f1"), TypeError, "not one string"),
        (
            lambda s: s.point_in_time_join(entities_at(("A", 1)).drop(columns="ticker")),
            FeatureFrameError,
            r"lacks column\(s\) \['ticker'\]",
        ),
        (
            lambda s: s.point_in_time_join(entities_at(("A", 1)), entity_time_col="when"),
            FeatureFrameError,
            r"lacks column\(s\) \['when'\]",
        ),
        (
            lambda s: s.point_in_time_join(entities_at(("A", 1)).assign(ts=pd.Timestamp("2024-01-01"))),
            FeatureFrameError,
            "naive timestamps",
        ),
        (
            lambda s: s.point_in_time_join(
                entities_at(("A", 1)).assign(ts=pd.Series([pd.NaT], dtype="datetime64[ns, UTC]"))
            ),
            FeatureFrameError,
            "NaT",
        ),
        (lambda s: s.point_in_time_join(entities_at(("A", 1)).assign(f1=0.0)), FeatureFrameError, "already has column"),
        (lambda s: s.point_in_time_join(entities_at(("A", 1)), as_of="2024-06-01"), ValueError, "as_of=.*naive"),
        (lambda s: s.point_in_time_join(entities_at(("A", 1)), ttl=pd.Timedelta(0)), ValueError, "must be positive"),
        (lambda s: s.point_in_time_join(entities_at(("A", 1)), ttl=5), TypeError, "must be a timedelta"),
        (
            lambda s: s.point_in_time_join(entities_at(("A", 1)).assign(ticker=None)),
            FeatureFrameError,
            "non-empty strings",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(store, call, error, message):
    with pytest.raises(error, match=message):
        call(store)


def test_joining_a_group_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(OfflineStoreError, match="does not exist yet"):
        OfflineStore(LocalFileSystem(tmp_path), GROUP).point_in_time_join(entities_at(("A", 1)))


def test_the_join_reads_committed_files_from_s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="qe-pit")
        store = OfflineStore(S3FileSystem(client, "qe-pit", "offline"), GROUP)
        store.write(
            pd.DataFrame(
                {"ticker": ["A", "A"], "event_time": [minute(0), minute(1440)], "f1": [1.0, 2.0], "f2": [3.0, 4.0]}
            ),
            write_time=write_slot(1),
        )
        store.write(
            pd.DataFrame({"ticker": ["A"], "event_time": [minute(0)], "f1": [9.0], "f2": [9.0]}),
            write_time=write_slot(2),
        )
        entities = entities_at(("A", 10), ("A", 1500), ("A", -1))
        latest = store.point_in_time_join(entities)
        before_fix = store.point_in_time_join(entities, as_of=write_slot(1))
    np.testing.assert_array_equal(latest["f1"].to_numpy(), [9.0, 2.0, np.nan])
    np.testing.assert_array_equal(before_fix["f1"].to_numpy(), [1.0, 2.0, np.nan])
