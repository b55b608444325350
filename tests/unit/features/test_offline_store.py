"""The offline store: layout, idempotent bitemporal writes, atomic commits and reverts, on disk and S3."""

from __future__ import annotations

import io
import json
import os

import boto3
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from quant_engine.aws.s3 import S3FileSystem
from quant_engine.backends import make_offline_store
from quant_engine.config import Settings
from quant_engine.features.offline_store import (
    FeatureFrameError,
    FeatureGroupSchema,
    OfflineStore,
    OfflineStoreError,
    SchemaMismatchError,
    UnknownCommitError,
)
from quant_engine.storage.filesystem import ConcurrentCommitError, LocalFileSystem

GROUP = "market_features"
BUCKET = "qe-offline"
T0 = pd.Timestamp("2024-03-01", tz="UTC")


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def make_frame(tickers=("AAA", "BBB"), days=3, start="2024-01-02", seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=days, freq="D", tz="UTC")
    frame = pd.DataFrame({"ticker": np.repeat(list(tickers), days), "event_time": np.tile(times, len(tickers))})
    frame["ret_1"] = rng.normal(size=len(frame))
    frame["vol_5"] = rng.uniform(size=len(frame))
    return frame


@pytest.fixture(scope="module")
def mocked_s3():
    """One moto S3 for the module (starting moto is the slow part); each test gets its own bucket."""
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def aws_env(mocked_s3):
    mocked_s3.create_bucket(Bucket=BUCKET)
    yield mocked_s3
    for page in mocked_s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            mocked_s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    mocked_s3.delete_bucket(Bucket=BUCKET)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> OfflineStore:
    if request.param == "local":
        return OfflineStore(LocalFileSystem(tmp_path / "offline"), GROUP)
    client = request.getfixturevalue("aws_env")
    return OfflineStore(S3FileSystem(client, BUCKET, "quant-engine/offline-store"), GROUP)


def data_keys(store: OfflineStore) -> list[str]:
    return store.fs.list(f"{GROUP}/data")


def snapshot(store: OfflineStore):
    """Everything a reader can observe: history, live commits, schema."""
    return store.read(include_history=True), store.commits(), store.schema


def assert_same_state(store: OfflineStore, before) -> None:
    history, commits, schema = snapshot(store)
    pd.testing.assert_frame_equal(history, before[0])
    assert commits == before[1]
    assert schema == before[2]


# -- layout and metadata -------------------------------------------------------------------------


def test_first_write_creates_sagemaker_layout_and_metadata(store):
    frame = make_frame(days=2)
    commit = store.write(frame, write_time=T0)

    assert commit.rows_written == commit.rows_new == 4
    assert sorted(data_keys(store)) == sorted(f"{GROUP}/{k}" for k in commit.files)
    assert sorted(commit.files) == [
        f"data/year=2024/month=01/day=02/{commit.commit_id}.parquet",
        f"data/year=2024/month=01/day=03/{commit.commit_id}.parquet",
    ]
    metadata = json.loads(store.fs.read(f"{GROUP}/feature_group.json"))
    assert metadata["record_identifier_feature_name"] == "ticker"
    assert metadata["event_time_feature_name"] == "event_time"
    assert metadata["features"] == [{"name": "ret_1", "dtype": "float64"}, {"name": "vol_5", "dtype": "float64"}]
    assert metadata["schema_version"] == 1
    assert pd.Timestamp(metadata["created_time"]).tzinfo is not None

    table = pq.read_table(io.BytesIO(store.fs.read(f"{GROUP}/{commit.files[0]}")))
    assert table.column_names == [
        "ticker",
        "event_time",
        "ret_1",
        "vol_5",
        "write_time",
        "api_invocation_time",
        "is_deleted",
    ]
    rows = table.to_pandas()
    assert (rows["event_time"].dt.normalize() == utc("2024-01-02")).all()
    assert (rows["write_time"] == T0).all() and not rows["is_deleted"].any()


def test_read_returns_exactly_what_was_written(store):
    frame = make_frame(days=4, seed=3)
    store.write(frame.sample(frac=1.0, random_state=1), write_time=T0)  # order of the batch does not matter
    pd.testing.assert_frame_equal(store.read(), frame, check_dtype=False)
    assert store.read().dtypes.to_dict() == {
        "ticker": store.read()["ticker"].dtype,
        "event_time": "datetime64[ns, UTC]",
        "ret_1": "float64",
        "vol_5": "float64",
    }


def test_create_group_explicitly_then_write_and_reject_other_schema(tmp_path):
    store = OfflineStore(LocalFileSystem(tmp_path), GROUP)
    created = store.create_group(FeatureGroupSchema.for_features(["ret_1", "vol_5"], version=3))
    assert created.version == 3 and created.created_time is not None
    assert store.create_group(FeatureGroupSchema.for_features(["ret_1", "vol_5"])) == created
    with pytest.raises(SchemaMismatchError, match="exists with features"):
        store.create_group(FeatureGroupSchema.for_features(["ret_1"]))
    assert store.write(make_frame(), write_time=T0).rows_written == 6
    assert store.schema == created


def test_make_offline_store_from_settings(tmp_path):
    store = make_offline_store(Settings(home=tmp_path), "ingest-test")
    store.write(make_frame(), write_time=T0)
    assert (tmp_path / "offline-store" / "ingest-test" / "feature_group.json").is_file()
    assert len(store.read()) == 6


def test_make_offline_store_on_aws_uses_the_configured_bucket(aws_env):
    settings = Settings(backend="aws", s3_bucket=BUCKET, s3_prefix="qe")
    make_offline_store(settings).write(make_frame(), write_time=T0)
    keys = [o["Key"] for o in aws_env.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "qe/offline-store/market_features/feature_group.json" in keys
    assert any(k.startswith("qe/offline-store/market_features/data/year=2024/month=01/day=02/") for k in keys)


# -- idempotent, bitemporal writes -----------------------------------------------------------------


def test_rerunning_the_same_batch_writes_nothing(store):
    frame = make_frame()
    first = store.write(frame, write_time=T0)
    again = store.write(frame, write_time=T0 + pd.Timedelta(hours=1))

    assert again.commit_id is None and again.rows_written == 0 and again.rows_unchanged == len(frame)
    assert store.commits() == [first]
    assert len(store.read(include_history=True)) == len(frame)
    assert sorted(data_keys(store)) == sorted(f"{GROUP}/{k}" for k in first.files)


def test_overlapping_batch_appends_only_new_and_changed_records(store):
    batch = make_frame(days=4)
    store.write(batch[batch["event_time"] < utc("2024-01-05")], write_time=T0)  # the batch adds one day per ticker
    batch = batch.copy()
    batch.loc[(batch["ticker"] == "AAA") & (batch["event_time"] == utc("2024-01-03")), "vol_5"] += 1.0

    commit = store.write(batch, write_time=T0 + pd.Timedelta(days=1))

    assert (commit.rows_new, commit.rows_corrected, commit.rows_unchanged, commit.rows_written) == (2, 1, 5, 3)
    assert len(store.read(include_history=True)) == 6 + 3
    pd.testing.assert_frame_equal(
        store.read(), batch.sort_values(["ticker", "event_time"]).reset_index(drop=True), check_dtype=False
    )


def test_a_correction_appends_a_version_and_keeps_the_old_one(store):
    original = make_frame(days=2)
    store.write(original, write_time=T0)
    corrected = original.copy()
    corrected.loc[0, "ret_1"] = 42.0
    store.write(corrected, write_time=T0 + pd.Timedelta(days=2))

    history = store.read(include_history=True)
    versions = history[(history["ticker"] == "AAA") & (history["event_time"] == utc("2024-01-02"))]
    assert versions["ret_1"].tolist() == [original.loc[0, "ret_1"], 42.0]
    assert versions["write_time"].tolist() == [T0, T0 + pd.Timedelta(days=2)]
    assert store.read()["ret_1"].iloc[0] == 42.0
    assert store.read(as_of=T0 + pd.Timedelta(days=1))["ret_1"].iloc[0] == original.loc[0, "ret_1"]
    assert store.read(as_of=T0 - pd.Timedelta(seconds=1)).empty


def test_a_correction_must_be_written_after_the_version_it_corrects(store):
    original = make_frame(days=1)
    store.write(original, write_time=T0)
    before = snapshot(store)
    corrected = original.assign(ret_1=original["ret_1"] + 1.0)

    with pytest.raises(FeatureFrameError, match="correction needs a later write_time"):
        store.write(corrected, write_time=T0)
    assert_same_state(store, before)


def test_naive_write_time_is_rejected(store):
    with pytest.raises(ValueError, match="write_time.*naive"):
        store.write(make_frame(), write_time=pd.Timestamp("2024-01-01"))


# -- bad batches: clear errors, nothing written ----------------------------------------------------


def _bad_batches():
    frame = make_frame()
    naive = frame.assign(event_time=frame["event_time"].dt.tz_localize(None))
    with_nan = frame.copy()
    with_nan.loc[4, "vol_5"] = np.nan
    duplicated = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
    return [
        ("missing feature", frame.drop(columns="vol_5"), SchemaMismatchError, r"missing feature\(s\) \['vol_5'\]"),
        ("extra feature", frame.assign(mom=1.0), SchemaMismatchError, r"unknown feature\(s\) \['mom'\]"),
        (
            "mistyped feature",
            frame.assign(vol_5=frame["vol_5"].astype("float32")),
            SchemaMismatchError,
            r"'vol_5' is float32, not float64",
        ),
        ("naive event_time", naive, FeatureFrameError, "naive timestamps"),
        ("NaN value", with_nan, FeatureFrameError, r"NaN or infinite values in feature\(s\) \['vol_5'\] at BBB@"),
        ("duplicate key", duplicated, FeatureFrameError, r"duplicate \(ticker, event_time\).*AAA@2024-01-04"),
        ("missing ticker", frame.drop(columns="ticker"), FeatureFrameError, r"lacks column\(s\) \['ticker'\]"),
        ("non-string ticker", frame.assign(ticker=1), FeatureFrameError, "must hold non-empty strings"),
        ("reserved column", frame.assign(write_time=frame["event_time"]), SchemaMismatchError, "write_time"),
    ]


@pytest.mark.parametrize(("case", "batch", "error", "message"), _bad_batches(), ids=[c[0] for c in _bad_batches()])
def test_bad_batches_raise_and_leave_the_store_unchanged(tmp_path, case, batch, error, message):
    store = OfflineStore(LocalFileSystem(tmp_path), GROUP)  # validation runs before any storage call
    store.write(make_frame(tickers=("CCC",)), write_time=T0)
    before = snapshot(store)
    files = data_keys(store)

    with pytest.raises(error, match=message):
        store.write(batch, write_time=T0 + pd.Timedelta(days=1))
    assert_same_state(store, before)
    assert data_keys(store) == files


def test_first_write_with_a_bad_schema_creates_nothing(store):
    with pytest.raises(SchemaMismatchError, match="dtype 'int64'"):
        store.write(make_frame().assign(ret_1=1), write_time=T0)
    assert store.schema is None and data_keys(store) == []
    assert store.fs.read_versioned(f"{GROUP}/feature_group.json") is None
    with pytest.raises(TypeError, match="DataFrame"):
        store.write([1, 2, 3])


# -- atomic commits ----------------------------------------------------------------------------


class InjectedFailure(RuntimeError):
    pass


def fail_on_call(monkeypatch, fs, method: str, call: int) -> None:
    """Make ``fs.method`` raise on its ``call``-th invocation."""
    original = getattr(fs, method)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise InjectedFailure(f"{method} call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(fs, method, failing)


def test_a_failure_midway_through_a_multi_partition_write_leaves_the_store_as_before(store, monkeypatch):
    store.write(make_frame(days=2), write_time=T0)
    before = snapshot(store)
    batch = make_frame(days=5, seed=1)  # corrections and three new day partitions
    fail_on_call(monkeypatch, store.fs, "write", call=3)

    with pytest.raises(InjectedFailure):
        store.write(batch, write_time=T0 + pd.Timedelta(days=1))

    assert_same_state(store, before)
    live = {f"{GROUP}/{k}" for c in store.commits() for k in c.files}
    orphans = set(data_keys(store)) - live
    assert len(orphans) == 2  # staged before the failure, never committed, never read

    monkeypatch.undo()
    commit = store.write(batch, write_time=T0 + pd.Timedelta(days=1))
    assert set(data_keys(store)) == live | {f"{GROUP}/{k}" for k in commit.files}  # orphans cleaned
    pd.testing.assert_frame_equal(
        store.read(), batch.sort_values(["ticker", "event_time"]).reset_index(drop=True), check_dtype=False
    )


def test_a_failure_in_the_commit_step_itself_leaves_the_store_as_before(store, monkeypatch):
    store.write(make_frame(days=2), write_time=T0)
    before = snapshot(store)
    fail_on_call(monkeypatch, store.fs, "replace_atomic", call=1)

    with pytest.raises(InjectedFailure):
        store.write(make_frame(days=4, seed=2), write_time=T0 + pd.Timedelta(days=1))
    assert_same_state(store, before)


def test_local_commit_is_a_rename_that_leaves_no_temp_file_when_it_fails(tmp_path, monkeypatch):
    store = OfflineStore(LocalFileSystem(tmp_path), GROUP)
    store.write(make_frame(days=2), write_time=T0)
    manifest = (tmp_path / GROUP / "feature_group.json").read_bytes()

    def crash(src, dst):
        raise InjectedFailure("power cut before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(InjectedFailure):
        store.write(make_frame(days=3, seed=5), write_time=T0 + pd.Timedelta(days=1))
    monkeypatch.undo()

    assert (tmp_path / GROUP / "feature_group.json").read_bytes() == manifest
    assert not list((tmp_path / GROUP).glob(".feature_group.json.tmp-*"))


def test_vacuum_removes_only_unreferenced_files(store):
    commit = store.write(make_frame(), write_time=T0)
    stray = f"{GROUP}/data/year=2024/month=01/day=09/stray.parquet"
    store.fs.write(stray, b"half-written")

    assert store.vacuum() == [stray]
    assert sorted(data_keys(store)) == sorted(f"{GROUP}/{k}" for k in commit.files)
    assert len(store.read()) == 6


def test_revert_removes_exactly_one_commit(store):
    store.write(make_frame(days=2), write_time=T0)
    before = snapshot(store)
    batch = make_frame(days=3, seed=9)
    commit = store.write(batch, write_time=T0 + pd.Timedelta(days=1))
    assert len(store.read(include_history=True)) > len(before[0])

    reverted = store.revert(commit.commit_id)

    assert reverted == commit
    assert_same_state(store, before)
    assert not set(data_keys(store)) & {f"{GROUP}/{k}" for k in commit.files}
    with pytest.raises(UnknownCommitError, match=commit.commit_id):
        store.revert(commit.commit_id)


def test_revert_rejects_a_missing_id(store):
    with pytest.raises(ValueError, match="commit_id=None"):
        store.revert(None)


def test_a_second_writer_on_s3_cannot_overwrite_a_concurrent_commit(aws_env, monkeypatch):
    fs = S3FileSystem(aws_env, BUCKET, "qe")
    writer_a, writer_b = OfflineStore(fs, GROUP), OfflineStore(S3FileSystem(aws_env, BUCKET, "qe"), GROUP)
    writer_a.write(make_frame(tickers=("AAA",)), write_time=T0)
    original_write = fs.write
    interleaved = {"done": False}

    def write_then_let_b_commit(key, data):
        original_write(key, data)
        if not interleaved["done"]:
            interleaved["done"] = True
            writer_b.write(make_frame(tickers=("BBB",)), write_time=T0 + pd.Timedelta(hours=1))

    monkeypatch.setattr(fs, "write", write_then_let_b_commit)
    with pytest.raises(ConcurrentCommitError, match="another writer committed"):
        writer_a.write(make_frame(tickers=("CCC",)), write_time=T0 + pd.Timedelta(hours=2))

    assert sorted(writer_b.read()["ticker"].unique()) == ["AAA", "BBB"]
    assert len(writer_b.commits()) == 2


# -- reading -----------------------------------------------------------------------------------


def test_the_stored_event_days_come_from_the_manifest_and_bound_a_recent_read(store):
    assert store.stored_event_days() is None
    store.write(make_frame(days=5, start="1969-12-29"), write_time=T0)  # across the epoch
    store.write(make_frame(days=2, start="1969-12-30", seed=1), write_time=T0 + pd.Timedelta(hours=1))  # corrections
    stored = store.read()
    first, latest = store.stored_event_days()
    assert latest == stored["event_time"].max().normalize() == utc("1970-01-02")
    assert first == stored["event_time"].min().normalize() == utc("1969-12-29")
    store.compact()
    assert store.stored_event_days() == (utc("1969-12-29"), utc("1970-01-02"))
    recent = store.read(start=latest - pd.Timedelta(days=1))
    pd.testing.assert_frame_equal(
        recent.reset_index(drop=True),
        stored[stored["event_time"] >= utc("1970-01-01")].reset_index(drop=True),
    )


def test_read_filters_by_ticker_and_inclusive_time_range(store):
    store.write(make_frame(tickers=("AAA", "BBB", "CCC"), days=5), write_time=T0)
    rows = store.read(["CCC", "AAA"], start=utc("2024-01-03"), end=utc("2024-01-05"))
    assert rows["ticker"].tolist() == ["AAA"] * 3 + ["CCC"] * 3
    assert rows["event_time"].min() == utc("2024-01-03") and rows["event_time"].max() == utc("2024-01-05")
    assert store.read(["ZZZ"]).empty


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": pd.Timestamp("2024-01-01")}, "start=.*naive"),
        ({"as_of": "2024-01-01"}, "as_of=.*naive"),
        ({"start": utc("2024-01-05"), "end": utc("2024-01-01")}, "is before start"),
        ({"tickers": "AAA"}, "not one string"),
    ],
)
def test_read_rejects_bad_arguments(store, kwargs, message):
    store.write(make_frame(), write_time=T0)
    with pytest.raises((ValueError, TypeError), match=message):
        store.read(**kwargs)


def test_reading_a_group_that_does_not_exist_is_an_error(store):
    with pytest.raises(OfflineStoreError, match="does not exist yet"):
        store.read()


def test_bad_constructor_arguments(tmp_path):
    with pytest.raises(ValueError, match="feature group name 'bad name'"):
        OfflineStore(LocalFileSystem(tmp_path), "bad name")
    with pytest.raises(ValueError, match="bucket="):
        S3FileSystem(object(), "", "prefix")
    with pytest.raises(ValueError, match=r"storage key '\.\./x'"):
        LocalFileSystem(tmp_path).read("../x")


# -- compaction --------------------------------------------------------------------------------


def bitemporal_answers(store: OfflineStore) -> list[pd.DataFrame]:
    """Reads and joins at every interesting as_of, to compare a store before and after a change."""
    entities = pd.DataFrame(
        {
            "ticker": ["AAA", "BBB", "AAA", "ZZZ"],
            "ts": [utc("2024-01-05 12:00"), utc("2024-01-21"), utc("2024-01-01"), utc("2024-01-09")],
        }
    )
    answers = [store.read(include_history=True)]
    for as_of in (None, T0, T0 - pd.Timedelta(hours=1)):  # all versions, the first commit only, nothing
        answers += [
            store.read(as_of=as_of),
            store.point_in_time_join(entities, as_of=as_of),
            store.read(["BBB"], start=utc("2024-01-04"), end=utc("2024-01-06"), as_of=as_of),
        ]
    return answers


def assert_same_answers(left: list[pd.DataFrame], right: list[pd.DataFrame]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        pd.testing.assert_frame_equal(a, b)


def corrected_store(store: OfflineStore) -> OfflineStore:
    """20 day files, then corrections of three days, then three more days."""
    history = make_frame(days=20)
    store.write(history, write_time=T0)
    fix = history[history["event_time"].between(utc("2024-01-04"), utc("2024-01-06"))].copy()
    fix["ret_1"] += 10.0
    store.write(fix, write_time=T0 + pd.Timedelta(days=1))
    return store


def test_compaction_changes_no_answer_and_reads_stop_opening_day_files(store):
    corrected_store(store)
    before = bitemporal_answers(store)

    snapshot = store.compact()

    assert snapshot.startswith(f"{GROUP}/snapshots/") and snapshot in store.fs.list(f"{GROUP}/snapshots")
    assert store.compact() == snapshot  # nothing new to compact
    assert_same_answers(bitemporal_answers(store), before)
    first_day_file = f"{GROUP}/{store.commits()[0].files[0]}"
    store.fs.delete(first_day_file)  # whole-history reads now come from the snapshot alone
    assert_same_answers([store.read(as_of=T0)], [before[4]])


def test_writes_after_compaction_are_read_beside_the_snapshot(store):
    corrected_store(store)
    store.compact()
    later = make_frame(days=3, start="2024-01-22", seed=4)
    store.write(later, write_time=T0 + pd.Timedelta(days=3))
    store.compact()
    old_snapshot = store.fs.list(f"{GROUP}/snapshots")
    store.write(make_frame(days=1, start="2024-01-30", seed=5), write_time=T0 + pd.Timedelta(days=4))

    assert len(old_snapshot) == 1  # the second compaction replaced the first
    assert len(store.read()) == 2 * (20 + 3 + 1)
    pd.testing.assert_frame_equal(
        store.read(start=utc("2024-01-22"), end=utc("2024-01-24")),
        later.sort_values(["ticker", "event_time"]).reset_index(drop=True),
        check_dtype=False,
    )


def test_reverting_a_compacted_commit_drops_the_snapshot(store):
    store.write(make_frame(days=20), write_time=T0)
    before = bitemporal_answers(store)
    commit = store.write(make_frame(days=20, seed=7), write_time=T0 + pd.Timedelta(days=1))
    snapshot = store.compact()

    store.revert(commit.commit_id)

    assert store.fs.list(f"{GROUP}/snapshots") == []
    assert snapshot not in store.fs.list(GROUP)
    assert_same_answers(bitemporal_answers(store), before)


def test_a_failed_compaction_leaves_the_store_as_before(store, monkeypatch):
    corrected_store(store)
    before, answers = snapshot(store), bitemporal_answers(store)
    fail_on_call(monkeypatch, store.fs, "replace_atomic", call=1)

    with pytest.raises(InjectedFailure):
        store.compact()

    assert_same_state(store, before)
    assert_same_answers(bitemporal_answers(store), answers)
    assert len(store.vacuum()) == 1  # the staged snapshot, never committed
    assert store.fs.list(f"{GROUP}/snapshots") == []


def test_compaction_names_a_manifest_commit_without_an_id(tmp_path):
    # Only a write that changed nothing lacks a commit_id, and it is never stored: a manifest
    # holding one was damaged, and the snapshot must not be keyed on a missing id.
    store = OfflineStore(LocalFileSystem(tmp_path), GROUP)
    store.write(make_frame(days=2), write_time=T0)
    manifest_path = tmp_path / GROUP / "feature_group.json"
    manifest = json.loads(manifest_path.read_bytes())
    manifest["commits"][0]["commit_id"] = None
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(OfflineStoreError, match="lists a commit without a commit_id"):
        store.compact()
    assert not list((tmp_path / GROUP).glob("snapshots/*"))
