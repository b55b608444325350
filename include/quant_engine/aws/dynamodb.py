"""The online feature store in DynamoDB: :class:`DynamoDBOnlineStore`, the AWS side of
:class:`~quant_engine.features.online_store.OnlineStore` (same rules as the SQLite store: newer
wins, a record is a whole vector, all or nothing with compensation on failure)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from quant_engine.features.online_store import (
    FeatureRecord,
    OnlineStoreError,
    _check_features,
    _check_ticker,
    _check_tickers,
    _cutoff_ns,
    _latest_rows,
    _record,
    _values_digest,
)

__all__ = ["DynamoDBOnlineStore"]

log = logging.getLogger(__name__)

#: Keys per BatchGetItem request (the service's limit).
_DYNAMODB_BATCH = 100
_DYNAMODB_RETRIES = 8


#: A DynamoDB number (besides 0) has magnitude in [1e-130, 1e126); doubles outside travel as strings.
_DYNAMODB_MIN_MAGNITUDE = 1e-130
_DYNAMODB_MAGNITUDE_BOUND = 1e126


def _encode_number(value: float) -> dict[str, str]:
    """An attribute value for a double: N where DynamoDB can hold it exactly, else S with its repr.

    DynamoDB numbers have no NaN, infinities or negative zero, and a narrower range than doubles.
    """
    if value == 0.0:
        representable = math.copysign(1.0, value) > 0
    else:
        representable = _DYNAMODB_MIN_MAGNITUDE <= abs(value) < _DYNAMODB_MAGNITUDE_BOUND
    return {"N": repr(value)} if representable else {"S": repr(value)}


def _decode_number(attribute: Mapping[str, str]) -> float:
    return float(attribute["N"] if "N" in attribute else attribute["S"])


class DynamoDBOnlineStore:
    """Online store in a DynamoDB table, one item per ``(feature_group, ticker)``.

    Item layout: partition key ``record_id = "{feature_group}#{ticker}"``, plus ``feature_group``,
    ``ticker``, ``event_time`` (N, UTC nanoseconds) and ``features`` (a map of name -> N). Floats
    travel as their shortest round-trip ``repr``, so values come back bit for bit; the few a DynamoDB
    number cannot hold (NaN, infinities, magnitudes beyond 1e-130..1e126) are stored as that ``repr``
    in an S attribute instead.

    Writes are conditional puts (``attribute_not_exists(record_id) OR event_time < :new``), so an
    older write never overwrites a newer one, whatever the order they arrive in. Reads are strongly
    consistent, as SQLite's are.

    Parameters
    ----------
    client : botocore client
        ``boto3.client("dynamodb")``.
    table_name : str
    feature_group : str
        ``#`` is the record-id separator, so it may not appear in the group name.

    Examples
    --------
    >>> import boto3, pandas as pd
    >>> from moto import mock_aws
    >>> with mock_aws():
    ...     store = DynamoDBOnlineStore(boto3.client("dynamodb", region_name="us-east-1"), "online", "demo")
    ...     store.create_table_if_missing()
    ...     frame = pd.DataFrame({"ticker": ["A"], "event_time": pd.to_datetime(["2024-01-03"], utc=True),
    ...                           "rsi_14": [55.0]})
    ...     store.put(frame), store.put(frame), store.get("A")["rsi_14"]
    True
    (1, 0, 55.0)
    """

    def __init__(self, client: Any, table_name: str, feature_group: str) -> None:
        if not isinstance(table_name, str) or not table_name:
            raise ValueError(f"table_name {table_name!r} must be a non-empty string")
        if not isinstance(feature_group, str) or not feature_group or "#" in feature_group:
            raise ValueError(f"feature_group {feature_group!r} must be a non-empty string without '#'")
        self._client = client
        self.table_name = table_name
        self.feature_group = feature_group
        self._undo_log: list[tuple[str, int, dict[str, Any] | None]] | None = None

    def __repr__(self) -> str:
        return f"DynamoDBOnlineStore(<client>, {self.table_name!r}, {self.feature_group!r})"

    def _record_id(self, ticker: str) -> str:
        return f"{self.feature_group}#{ticker}"

    @contextmanager
    def _table_errors(self) -> Iterator[None]:
        """Turn a missing table into an error that says what to do."""
        try:
            yield
        except self._client.exceptions.ResourceNotFoundException as exc:
            raise OnlineStoreError(
                f"DynamoDB table {self.table_name!r} does not exist; call create_table_if_missing() first"
            ) from exc

    def create_table_if_missing(self) -> bool:
        """Create the table (on-demand billing) unless it exists; True when it was created."""
        try:
            self._client.describe_table(TableName=self.table_name)
            return False
        except self._client.exceptions.ResourceNotFoundException:
            pass
        self._client.create_table(
            TableName=self.table_name,
            KeySchema=[{"AttributeName": "record_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "record_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self._client.get_waiter("table_exists").wait(TableName=self.table_name)
        return True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every ``put`` in the block if it raises; a block inside another joins it.

        Undo restores each replaced item (or deletes a new one) on the condition that it still holds
        what this block wrote, so a newer write made meanwhile by someone else is kept.
        """
        if self._undo_log is not None:
            yield
            return
        self._undo_log = []
        try:
            yield
        except BaseException:
            self._undo(self._undo_log)
            raise
        finally:
            self._undo_log = None

    def _undo(self, undo_log: list[tuple[str, int, dict[str, Any] | None]]) -> None:
        for record_id, written_ns, previous in reversed(undo_log):
            condition = {
                "ConditionExpression": "event_time = :written",
                "ExpressionAttributeValues": {":written": {"N": str(written_ns)}},
            }
            try:
                if previous is None:
                    self._client.delete_item(
                        TableName=self.table_name, Key={"record_id": {"S": record_id}}, **condition
                    )
                else:
                    self._client.put_item(TableName=self.table_name, Item=previous, **condition)
            except self._client.exceptions.ConditionalCheckFailedException:
                log.info("not undoing %s: a newer write replaced it meanwhile", record_id)
            except Exception:  # keep undoing the rest; the caller re-raises the original error
                log.exception("could not undo the online write of %s", record_id)

    def delete_group(self) -> int:
        """Delete every item of this feature group (a scan of the table: a rare, administrative act)."""
        deleted = 0
        with self._table_errors():
            pages = self._client.get_paginator("scan").paginate(
                TableName=self.table_name,
                FilterExpression="feature_group = :g",
                ExpressionAttributeValues={":g": {"S": self.feature_group}},
                ProjectionExpression="record_id",
            )
            for page in pages:
                for item in page.get("Items", []):
                    self._client.delete_item(TableName=self.table_name, Key={"record_id": item["record_id"]})
                    deleted += 1
        return deleted

    def put(self, frame: pd.DataFrame) -> int:
        """Conditionally put each ticker's latest row; all undone if any put fails.

        Arguments and return value as :meth:`SQLiteOnlineStore.put`.
        """
        names, rows = _latest_rows(frame)
        written = 0
        with self._table_errors(), self.transaction():
            undo_log = self._undo_log
            assert undo_log is not None, "transaction() keeps an undo log while its block runs"
            for row in rows:
                record_id = self._record_id(row.ticker)
                event_time = {"N": str(row.event_time_ns)}
                digest = {"S": _values_digest(names, row.values)}
                item = {
                    "record_id": {"S": record_id},
                    "feature_group": {"S": self.feature_group},
                    "ticker": {"S": row.ticker},
                    "event_time": event_time,
                    "features": {"M": {n: _encode_number(v) for n, v in zip(names, row.values, strict=True)}},
                    "digest": digest,
                }
                try:
                    response = self._client.put_item(
                        TableName=self.table_name,
                        Item=item,
                        ConditionExpression=(
                            "attribute_not_exists(record_id) OR event_time < :new"
                            " OR (event_time = :new AND digest <> :digest)"
                        ),
                        ExpressionAttributeValues={":new": event_time, ":digest": digest},
                        ReturnValues="ALL_OLD",
                    )
                except self._client.exceptions.ConditionalCheckFailedException:
                    continue  # the stored record is newer, or the same one
                undo_log.append((record_id, row.event_time_ns, response.get("Attributes")))
                written += 1
        return written

    def _decode(self, item: Mapping[str, Any], features: tuple[str, ...] | None) -> FeatureRecord:
        stored = item["features"]["M"]
        return _record(
            item["ticker"]["S"],
            int(item["event_time"]["N"]),
            list(stored),
            [_decode_number(v) for v in stored.values()],
            features,
            self.feature_group,
        )

    def get(
        self,
        ticker: str,
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> FeatureRecord | None:
        """As :meth:`SQLiteOnlineStore.get`."""
        cutoff = _cutoff_ns(ttl, now)
        wanted = _check_features(features)
        key = {"record_id": {"S": self._record_id(_check_ticker(ticker))}}
        with self._table_errors():
            item = self._client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True).get("Item")
        if item is None or (cutoff is not None and int(item["event_time"]["N"]) < cutoff):
            return None
        return self._decode(item, wanted)

    def get_many(
        self,
        tickers: Iterable[str],
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> dict[str, FeatureRecord]:
        """As :meth:`SQLiteOnlineStore.get_many`, through ``BatchGetItem`` (100 keys a request).

        Keys the service leaves unprocessed (throttling) are retried with exponential backoff.
        """
        cutoff = _cutoff_ns(ttl, now)
        wanted = _check_features(features)
        unique = _check_tickers(tickers)
        items: list[Mapping[str, Any]] = []
        with self._table_errors():
            for start in range(0, len(unique), _DYNAMODB_BATCH):
                keys = [{"record_id": {"S": self._record_id(t)}} for t in unique[start : start + _DYNAMODB_BATCH]]
                items += self._batch_get(keys)
        found = {
            item["ticker"]["S"]: self._decode(item, wanted)
            for item in items
            if cutoff is None or int(item["event_time"]["N"]) >= cutoff
        }
        return {t: found[t] for t in unique if t in found}

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
        request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
        items: list[Mapping[str, Any]] = []
        for attempt in range(_DYNAMODB_RETRIES):
            response = self._client.batch_get_item(RequestItems=request)
            items += response["Responses"].get(self.table_name, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return items
            time.sleep(min(0.05 * 2**attempt, 2.0))
        raise OnlineStoreError(
            f"DynamoDB left {len(request[self.table_name]['Keys'])} key(s) of {self.table_name!r} unprocessed "
            f"after {_DYNAMODB_RETRIES} attempts (throttled?)"
        )
