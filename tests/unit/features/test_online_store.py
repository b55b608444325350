"""Online store: newer-wins upserts, idempotency, TTL, get_many, transactions; SQLite and DynamoDB (moto)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from quant_engine.aws.dynamodb import DynamoDBOnlineStore
from quant_engine.backends import make_online_store
from quant_engine.config import Settings
from quant_engine.features.online_store import (
    OnlineStore,
    OnlineStoreError,
    SQLiteOnlineStore,
)
from quant_engine.features.registry import get_feature_set

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def frame(rows: list[tuple[str, pd.Timestamp, float]], **extra_columns: list[float]) -> pd.DataFrame:
    """A feature frame with features ``a`` (given) and ``b = 2a`` (plus any extra columns)."""
    tickers, times, a = zip(*rows, strict=True)
    data = {"ticker": list(tickers), "event_time": pd.to_datetime(list(times), utc=True), "a": list(a)}
    data["b"] = [2 * x for x in a]
    return pd.DataFrame({**data, **extra_columns})


@pytest.fixture
def aws_client() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


@pytest.fixture(params=["sqlite", "dynamodb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Factory of stores for a feature group, all sharing one database/table."""
    if request.param == "sqlite":
        opened: list[SQLiteOnlineStore] = []

        def make_sqlite(group: str = "prices") -> SQLiteOnlineStore:
            opened.append(SQLiteOnlineStore(tmp_path / "nested" / "online.sqlite", group))
            return opened[-1]

        yield make_sqlite
        for store in opened:
            store.close()
    else:
        with mock_aws():
            client = boto3.client("dynamodb", region_name="us-east-1")

            def make_dynamodb(group: str = "prices") -> DynamoDBOnlineStore:
                store = DynamoDBOnlineStore(client, "online-features", group)
                store.create_table_if_missing()
                return store

            yield make_dynamodb


@pytest.fixture
def store(make_store: Any) -> Any:
    return make_store()


# --- behaviour shared by both backends -------------------------------------------------------------


def test_both_backends_satisfy_the_protocol(store: Any) -> None:
    assert isinstance(store, OnlineStore)


def test_put_keeps_each_tickers_latest_row(store: Any) -> None:
    written = store.put(frame([("A", T0, 1.0), ("A", T0 + pd.Timedelta(days=1), 2.0), ("B", T0, 3.0)]))
    assert written == 2
    assert store.get("A") == {"event_time": T0 + pd.Timedelta(days=1), "a": 2.0, "b": 4.0}
    assert store.get("B") == {"event_time": T0, "a": 3.0, "b": 6.0}
    assert store.get("A")["event_time"].tz == UTC


def test_values_round_trip_bit_for_bit_including_nan_and_infinities(store: Any) -> None:
    values = [0.1 + 0.2, -1e-300, 1.7976931348623157e308, np.nextafter(1.0, 2.0), 1e-130, -1e126, 9e125, 0.0, -0.0]
    weird = {"nan": [math.nan], "inf": [math.inf], "minus_inf": [-math.inf]}
    for i, value in enumerate(values):
        store.put(frame([(f"T{i}", T0, value)], **weird))
        got = store.get(f"T{i}")
        assert got["a"] == value and got["b"] == 2 * value
        assert math.copysign(1.0, got["a"]) == math.copysign(1.0, value)
        assert math.isnan(got["nan"]) and got["inf"] == math.inf and got["minus_inf"] == -math.inf


def test_re_putting_the_same_frame_changes_nothing(store: Any) -> None:
    data = frame([("A", T0, 1.0), ("B", T0, 2.0)])
    assert store.put(data) == 2
    before = store.get_many(["A", "B"])
    assert store.put(data) == 0
    assert store.get_many(["A", "B"]) == before


def test_newer_wins_older_writes_are_ignored_and_same_time_corrections_apply(store: Any) -> None:
    store.put(frame([("A", T0, 1.0), ("B", T0, 1.0)]))
    older_a_newer_b = frame([("A", T0 - pd.Timedelta(hours=1), 9.0), ("B", T0 + pd.Timedelta(hours=1), 5.0)])
    assert store.put(older_a_newer_b) == 1
    assert store.get("A") == {"event_time": T0, "a": 1.0, "b": 2.0}
    assert store.put(frame([("A", T0, 7.0)])) == 1  # same event time, new values: a correction
    assert store.get("A") == {"event_time": T0, "a": 7.0, "b": 14.0}
    assert store.put(frame([("A", T0, 7.0)])) == 0  # and repeating it changes nothing
    assert store.get("B") == {"event_time": T0 + pd.Timedelta(hours=1), "a": 5.0, "b": 10.0}


def test_a_newer_record_replaces_the_whole_vector(store: Any) -> None:
    store.put(frame([("A", T0, 1.0)], c=[3.0]))
    store.put(frame([("A", T0 + pd.Timedelta(days=1), 4.0)]))
    assert store.get("A") == {"event_time": T0 + pd.Timedelta(days=1), "a": 4.0, "b": 8.0}


def test_unknown_tickers_are_absent(store: Any) -> None:
    store.put(frame([("A", T0, 1.0)]))
    assert store.get("ZZZ") is None
    assert store.get_many(["ZZZ", "A"]) == {"A": store.get("A")}
    assert store.get_many([]) == {}


def test_get_many_keeps_request_order_and_crosses_batch_limits(store: Any) -> None:
    tickers = [f"T{i:04d}" for i in range(620)]  # > DynamoDB's 100 keys and SQLite's 500-ticker chunks
    store.put(frame([(t, T0, float(i)) for i, t in enumerate(tickers)]))
    requested = [*reversed(tickers), "MISSING", tickers[0]]
    got = store.get_many(requested)
    assert list(got) == list(reversed(tickers))
    assert all(got[t]["a"] == float(i) for i, t in enumerate(tickers))


def test_features_selects_in_the_order_given_and_names_missing_ones(store: Any) -> None:
    store.put(frame([("A", T0, 1.0), ("B", T0, 2.0)]))
    assert list(store.get("A", ["b", "a"])) == ["event_time", "b", "a"]
    assert store.get_many(["A", "B"], features=["b"]) == {
        "A": {"event_time": T0, "b": 2.0},
        "B": {"event_time": T0, "b": 4.0},
    }
    with pytest.raises(ValueError, match=r"feature\(s\) \['rsi', 'x'\] are not stored for 'A' .* stored: a, b"):
        store.get("A", ["a", "rsi", "x"])
    with pytest.raises(TypeError, match="list of names, got the string 'a'"):
        store.get("A", "a")


def test_ttl_is_honoured_on_read(store: Any) -> None:
    store.put(frame([("OLD", T0, 1.0), ("NEW", T0 + pd.Timedelta(hours=2), 2.0)]))
    now = (T0 + pd.Timedelta(hours=3)).to_pydatetime()
    assert store.get("OLD", ttl=timedelta(hours=3), now=now) is not None  # exactly ttl old: still served
    assert store.get("OLD", ttl=timedelta(hours=3) - timedelta(microseconds=1), now=now) is None
    assert list(store.get_many(["OLD", "NEW"], ttl=timedelta(hours=2), now=now)) == ["NEW"]
    assert store.get("OLD", now=now) is not None  # no ttl: age does not matter


def test_ttl_defaults_to_the_current_time(store: Any) -> None:
    an_hour_ago = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    store.put(frame([("A", an_hour_ago, 1.0)]))
    assert store.get("A", ttl=timedelta(days=1)) is not None
    assert store.get("A", ttl=timedelta(minutes=5)) is None


def test_feature_groups_are_isolated(make_store: Any) -> None:
    prices, other = make_store("prices"), make_store("other")
    prices.put(frame([("A", T0, 1.0)]))
    assert other.get("A") is None and other.get_many(["A"]) == {}
    assert other.put(frame([("A", T0 - pd.Timedelta(days=1), 5.0)])) == 1  # not "older" than prices' A
    assert prices.get("A")["a"] == 1.0 and other.get("A")["a"] == 5.0


def test_transaction_rolls_back_every_put_in_a_failed_block(store: Any) -> None:
    store.put(frame([("A", T0, 1.0)]))
    with pytest.raises(RuntimeError, match="offline write failed"), store.transaction():
        assert store.put(frame([("A", T0 + pd.Timedelta(days=1), 2.0)])) == 1
        assert store.put(frame([("B", T0, 3.0)])) == 1
        raise RuntimeError("offline write failed")
    assert store.get("A") == {"event_time": T0, "a": 1.0, "b": 2.0}
    assert store.get("B") is None


def test_transaction_commits_a_successful_block_and_nested_blocks_join(store: Any) -> None:
    with store.transaction():
        store.put(frame([("A", T0, 1.0)]))
        with store.transaction():
            store.put(frame([("B", T0, 2.0)]))
    assert set(store.get_many(["A", "B"])) == {"A", "B"}
    with pytest.raises(KeyError), store.transaction():
        with store.transaction():
            store.put(frame([("C", T0, 3.0)]))
        raise KeyError("outer block fails after the inner one finished")
    assert store.get("C") is None


def test_features_computed_in_batch_round_trip(store: Any) -> None:
    rng = np.random.default_rng(0)
    bars = pd.DataFrame(
        {
            "ticker": np.repeat(["X", "Y"], 300),
            "ts": np.tile(pd.date_range("2023-01-02", periods=300, freq="B", tz="UTC"), 2),
            "close": 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(600))),
            "volume": rng.integers(1_000, 5_000, 600).astype(float),
        }
    )
    features = get_feature_set("default").compute_batch(bars)
    assert store.put(features) == 2
    last = features.groupby("ticker").tail(1).set_index("ticker")
    for ticker, row in last.iterrows():
        assert store.get(ticker) == {"event_time": row["event_time"], **row.drop("event_time").to_dict()}


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (pd.DataFrame({"ticker": ["A"], "a": [1.0]}), ValueError, r"missing column\(s\) \['event_time'\]"),
        (pd.DataFrame({"ticker": ["A"], "event_time": [T0]}), ValueError, "no feature columns"),
        (
            frame([("A", T0, 1.0)]).assign(event_time=lambda f: f["event_time"].dt.tz_localize(None)),
            ValueError,
            "'event_time' has dtype datetime64.*must be tz-aware",
        ),
        (frame([("A", T0, 1.0)]).assign(note=["x"]), ValueError, r"\['note'\] are not numeric"),
        (frame([("A", T0, 1.0), ("A", T0, 2.0)]), ValueError, r"more than one row .*A@2024-03-01"),
        (frame([("", T0, 1.0)]), ValueError, "non-empty strings; got \\[''\\]"),
        ([("A", T0, 1.0)], TypeError, "got list"),
    ],
)
def test_bad_frames_are_rejected_and_nothing_is_written(store: Any, bad: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        store.put(bad)
    assert store.get("A") is None


def test_bad_read_arguments_are_rejected(store: Any) -> None:
    with pytest.raises(ValueError, match="ttl=.* must be a positive timedelta"):
        store.get("A", ttl=timedelta(0))
    with pytest.raises(ValueError, match="must be a tz-aware datetime"):
        store.get("A", ttl=timedelta(hours=1), now=datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="got the string 'AB'; use get"):
        store.get_many("AB")
    with pytest.raises(ValueError, match="ticker '' must be a non-empty string"):
        store.get("")


# --- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_file_is_in_wal_mode_and_shared_by_connections(tmp_path: Path) -> None:
    path = tmp_path / "online.sqlite"
    with SQLiteOnlineStore(path, "g") as writer:
        writer.put(frame([("A", T0, 1.0)]))
        reader = sqlite3.connect(path)
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with writer.transaction():
            writer.put(frame([("B", T0, 2.0)]))
            # Another connection never sees a transaction in progress.
            assert reader.execute("SELECT ticker FROM online_features").fetchall() == [("A",)]
        assert sorted(reader.execute("SELECT ticker FROM online_features").fetchall()) == [("A",), ("B",)]
        reader.close()
    with SQLiteOnlineStore(path, "g") as reopened:
        assert reopened.get("B") == {"event_time": T0, "a": 2.0, "b": 4.0}


def test_sqlite_store_refuses_use_after_close(tmp_path: Path) -> None:
    store = SQLiteOnlineStore(tmp_path / "online.sqlite", "g")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.get("A")


def test_sqlite_constructor_validates_the_group(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feature_group '' must be a non-empty string"):
        SQLiteOnlineStore(tmp_path / "online.sqlite", "")


# --- DynamoDB -------------------------------------------------------------------------------------


def test_dynamodb_item_layout(aws_client: Any) -> None:
    store = DynamoDBOnlineStore(aws_client, "t", "prices")
    assert store.create_table_if_missing() is True
    assert store.create_table_if_missing() is False
    store.put(frame([("A", T0, 1.5)], gap=[math.nan]))
    item = aws_client.get_item(TableName="t", Key={"record_id": {"S": "prices#A"}})["Item"]
    assert item["event_time"] == {"N": str(T0.value)}
    assert item["features"]["M"] == {"a": {"N": "1.5"}, "b": {"N": "3.0"}, "gap": {"S": "nan"}}
    assert (item["ticker"], item["feature_group"]) == ({"S": "A"}, {"S": "prices"})


def test_dynamodb_missing_table_says_what_to_do(aws_client: Any) -> None:
    store = DynamoDBOnlineStore(aws_client, "absent", "prices")
    for call in (lambda: store.get("A"), lambda: store.get_many(["A"]), lambda: store.put(frame([("A", T0, 1.0)]))):
        with pytest.raises(OnlineStoreError, match="'absent' does not exist; call create_table_if_missing"):
            call()


def test_dynamodb_constructor_validates_arguments(aws_client: Any) -> None:
    with pytest.raises(ValueError, match="without '#'"):
        DynamoDBOnlineStore(aws_client, "t", "a#b")
    with pytest.raises(ValueError, match="table_name '' must be a non-empty string"):
        DynamoDBOnlineStore(aws_client, "", "g")


class FlakyClient:
    """A real (moto) client that fails the n-th put_item, or throttles batch_get_item once."""

    def __init__(self, client: Any, *, fail_put_number: int | None = None, unprocess_first_batch: bool = False):
        self._client = client
        self._fail_put_number = fail_put_number
        self._unprocess_first_batch = unprocess_first_batch
        self.puts = 0
        self.batch_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **kwargs: Any) -> Any:
        self.puts += 1
        if self.puts == self._fail_put_number:
            raise ConnectionError("network down")
        return self._client.put_item(**kwargs)

    def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:  # noqa: N803 - boto3's argument name
        self.batch_calls += 1
        if self._unprocess_first_batch and self.batch_calls == 1:
            return {"Responses": {}, "UnprocessedKeys": RequestItems}
        return self._client.batch_get_item(RequestItems=RequestItems)


def test_dynamodb_put_is_undone_when_a_later_put_fails(aws_client: Any) -> None:
    DynamoDBOnlineStore(aws_client, "t", "g").create_table_if_missing()
    DynamoDBOnlineStore(aws_client, "t", "g").put(frame([("A", T0, 1.0)]))
    flaky = FlakyClient(aws_client, fail_put_number=3)
    store = DynamoDBOnlineStore(flaky, "t", "g")
    with pytest.raises(ConnectionError, match="network down"):
        store.put(frame([("A", T0 + pd.Timedelta(days=1), 2.0), ("B", T0, 3.0), ("C", T0, 4.0)]))
    assert store.get("A") == {"event_time": T0, "a": 1.0, "b": 2.0}  # replaced, then restored
    assert store.get_many(["B", "C"]) == {}  # created, then deleted


def test_dynamodb_undo_keeps_a_newer_write_made_meanwhile(aws_client: Any) -> None:
    mine = DynamoDBOnlineStore(aws_client, "t", "g")
    mine.create_table_if_missing()
    someone_else = DynamoDBOnlineStore(aws_client, "t", "g")
    with pytest.raises(RuntimeError), mine.transaction():
        mine.put(frame([("A", T0, 1.0)]))
        someone_else.put(frame([("A", T0 + pd.Timedelta(minutes=1), 9.0)]))
        raise RuntimeError("fails after another writer updated A")
    assert mine.get("A")["a"] == 9.0


def test_dynamodb_get_many_retries_unprocessed_keys(aws_client: Any) -> None:
    DynamoDBOnlineStore(aws_client, "t", "g").create_table_if_missing()
    DynamoDBOnlineStore(aws_client, "t", "g").put(frame([("A", T0, 1.0), ("B", T0, 2.0)]))
    flaky = FlakyClient(aws_client, unprocess_first_batch=True)
    assert set(DynamoDBOnlineStore(flaky, "t", "g").get_many(["A", "B"])) == {"A", "B"}
    assert flaky.batch_calls == 2


# --- wiring ---------------------------------------------------------------------------------------


def test_config_builds_the_backends_with_these_constructors(tmp_path: Path) -> None:
    local = make_online_store(Settings(home=tmp_path), "grp")
    assert isinstance(local, SQLiteOnlineStore)
    assert (local.path, local.feature_group) == (tmp_path / "online-store.sqlite", "grp")
    local.close()
    with mock_aws():
        remote = make_online_store(Settings(backend="aws", s3_bucket="b", dynamodb_table="tbl"), "grp")
        assert isinstance(remote, DynamoDBOnlineStore)
        assert (remote.table_name, remote.feature_group) == ("tbl", "grp")
