"""Amazon SageMaker Feature Store: the feature group (``sagemaker``) and its records (runtime).

The group mirrors the local offline store: record identifier ``ticker``, event time
``event_time``, one ``Fractional`` feature per ``float64`` feature of a
:class:`~quant_engine.features.offline_store.FeatureGroupSchema`, an S3 offline store and an
online store. Records travel in the runtime's ``[{"FeatureName": ..., "ValueAsString": ...}]``
shape; ``BatchWriteRecord`` (at most 25 entries per call, per the service model) carries frames,
``PutRecord`` single rows.

SageMaker accepts an event time as ``Fractional`` (Unix seconds) or ``String``
(``yyyy-MM-dd'T'HH:mm:ssZ`` or ``yyyy-MM-dd'T'HH:mm:ss.SSSZ``). ``Fractional`` is the default
here because it keeps sub-millisecond precision; ``String`` rejects times it cannot represent
rather than rounding them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.features.offline_store import (
    EVENT_TIME,
    RECORD_IDENTIFIER,
    FeatureGroupSchema,
    check_name,
)
from quant_engine.features.pit import FeatureFrameError, ticker_column, utc_ns_column
from quant_engine.timeutil import utc_timestamp

log = logging.getLogger(__name__)

EVENT_TIME_TYPES: tuple[str, ...] = ("Fractional", "String")
#: ``BatchWriteRecordEntries`` holds at most this many entries (botocore's service model).
MAX_BATCH_ENTRIES = 25
_FEATURE_TYPES = {"float64": "Fractional"}
_NS_PER_MS = 10**6


class FeatureStoreError(RuntimeError):
    """SageMaker Feature Store refused or could not finish a request; the message says which."""


def feature_definitions(schema: FeatureGroupSchema, *, event_time_type: str = "Fractional") -> list[dict[str, str]]:
    """``FeatureDefinitions`` for ``CreateFeatureGroup``: the two key columns, then every feature.

    Examples
    --------
    >>> feature_definitions(FeatureGroupSchema.for_features(["rsi_14"]))  # doctest: +NORMALIZE_WHITESPACE
    [{'FeatureName': 'ticker', 'FeatureType': 'String'},
     {'FeatureName': 'event_time', 'FeatureType': 'Fractional'},
     {'FeatureName': 'rsi_14', 'FeatureType': 'Fractional'}]
    """
    _check_event_time_type(event_time_type)
    return [
        {"FeatureName": RECORD_IDENTIFIER, "FeatureType": "String"},
        {"FeatureName": EVENT_TIME, "FeatureType": event_time_type},
        *({"FeatureName": name, "FeatureType": _FEATURE_TYPES[dtype]} for name, dtype in schema.features.items()),
    ]


def _check_event_time_type(event_time_type: str) -> None:
    if event_time_type not in EVENT_TIME_TYPES:
        raise ValueError(f"event_time_type={event_time_type!r}; SageMaker accepts {', '.join(EVENT_TIME_TYPES)}")


def format_event_time(event_ns: int, event_time_type: str) -> str:
    """An event time (ns since the epoch, UTC) as SageMaker's ``ValueAsString``.

    Examples
    --------
    >>> ns = pd.Timestamp("2024-01-02 14:30:00.25", tz="UTC").value
    >>> format_event_time(ns, "Fractional"), format_event_time(ns, "String")
    ('1704205800.250000000', '2024-01-02T14:30:00.250Z')
    """
    _check_event_time_type(event_time_type)
    if event_time_type == "Fractional":
        return f"{Decimal(int(event_ns)).scaleb(-9):.9f}"
    if event_ns % _NS_PER_MS:
        raise FeatureFrameError(
            f"event_time {pd.Timestamp(event_ns, tz='UTC')} has sub-millisecond precision, which a String "
            "event time cannot hold; use event_time_type='Fractional'"
        )
    stamp = pd.Timestamp(event_ns, tz="UTC")
    if stamp.microsecond:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(
    ticker: str, event_ns: int, values: Mapping[str, float], *, event_time_type: str
) -> list[dict[str, str]]:
    """One record in the runtime's ``FeatureName``/``ValueAsString`` shape; NaN features are left out.

    SageMaker treats an absent feature as missing, which is what NaN means in a feature frame
    (a window without enough history). Infinite values have no such meaning and are an error.
    """
    record = [
        {"FeatureName": RECORD_IDENTIFIER, "ValueAsString": ticker},
        {"FeatureName": EVENT_TIME, "ValueAsString": format_event_time(event_ns, event_time_type)},
    ]
    for name, value in values.items():
        value = float(value)
        if math.isnan(value):
            continue
        if math.isinf(value):
            raise FeatureFrameError(f"feature {name!r} of {ticker}@{pd.Timestamp(event_ns, tz='UTC')} is {value}")
        record.append({"FeatureName": name, "ValueAsString": repr(value)})
    return record


class SageMakerFeatureGroup:
    """One SageMaker feature group: create/describe it, put records into it.

    Parameters
    ----------
    sagemaker_client : botocore client
        ``boto3.client("sagemaker")``, for the group itself.
    runtime_client : botocore client
        ``boto3.client("sagemaker-featurestore-runtime")``, for records.
    feature_group_name : str
        The group's name.
    event_time_type : {"Fractional", "String"}
        How ``event_time`` is typed and written.
    """

    def __init__(
        self,
        sagemaker_client: Any,
        runtime_client: Any,
        feature_group_name: str,
        *,
        event_time_type: str = "Fractional",
        offline_s3_uri: str | None = None,
        role_arn: str | None = None,
        poll_s: float = 5.0,
        timeout_s: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_event_time_type(event_time_type)
        self.name = check_name(feature_group_name, "feature group name")
        self.sagemaker = sagemaker_client
        self.runtime = runtime_client
        self.event_time_type = event_time_type
        self.offline_s3_uri = offline_s3_uri
        self.role_arn = role_arn
        self.poll_s, self.timeout_s, self._sleep = poll_s, timeout_s, sleep
        self._ready = False

    def __repr__(self) -> str:
        return f"SageMakerFeatureGroup({self.name!r}, event_time_type={self.event_time_type!r})"

    # -- the group ----------------------------------------------------------------------------
    def create_request(
        self,
        schema: FeatureGroupSchema,
        *,
        offline_s3_uri: str,
        role_arn: str,
        enable_online_store: bool = True,
        description: str | None = None,
    ) -> dict[str, Any]:
        """The ``CreateFeatureGroup`` parameters for ``schema``."""
        if not isinstance(schema, FeatureGroupSchema):
            raise TypeError(f"schema must be a FeatureGroupSchema, not {type(schema).__name__}")
        if not isinstance(offline_s3_uri, str) or not offline_s3_uri.startswith("s3://") or len(offline_s3_uri) <= 5:
            raise ValueError(f"offline_s3_uri={offline_s3_uri!r} must be an s3://bucket/prefix URI")
        if not isinstance(role_arn, str) or not role_arn.startswith("arn:"):
            raise ValueError(f"role_arn={role_arn!r} must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        request: dict[str, Any] = {
            "FeatureGroupName": self.name,
            "RecordIdentifierFeatureName": RECORD_IDENTIFIER,
            "EventTimeFeatureName": EVENT_TIME,
            "FeatureDefinitions": feature_definitions(schema, event_time_type=self.event_time_type),
            "OnlineStoreConfig": {"EnableOnlineStore": bool(enable_online_store)},
            "OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": offline_s3_uri}},
            "RoleArn": role_arn,
        }
        if description:
            request["Description"] = description
        return request

    def create(
        self,
        schema: FeatureGroupSchema,
        *,
        offline_s3_uri: str,
        role_arn: str,
        enable_online_store: bool = True,
        description: str | None = None,
    ) -> str:
        """Create the group and return its ARN; a no-op if it exists with the same definitions.

        Raises
        ------
        FeatureStoreError
            The group exists with other feature definitions or keys.
        """
        request = self.create_request(
            schema,
            offline_s3_uri=offline_s3_uri,
            role_arn=role_arn,
            enable_online_store=enable_online_store,
            description=description,
        )
        try:
            arn = self.sagemaker.create_feature_group(**request)["FeatureGroupArn"]
        except self.sagemaker.exceptions.ResourceInUse:
            existing = self.describe()
            wanted = (
                request["RecordIdentifierFeatureName"],
                request["EventTimeFeatureName"],
                _definitions_key(request["FeatureDefinitions"]),
            )
            found = (
                existing["RecordIdentifierFeatureName"],
                existing["EventTimeFeatureName"],
                _definitions_key(existing["FeatureDefinitions"]),
            )
            if wanted != found:
                raise FeatureStoreError(
                    f"feature group {self.name!r} exists with keys/definitions {found}, not {wanted}"
                ) from None
            log.info("feature group %s already exists with the same definitions", self.name)
            return existing["FeatureGroupArn"]
        log.info("created feature group %s (%s)", self.name, arn)
        return arn

    def ensure(self, schema: FeatureGroupSchema) -> str:
        """Create the group for ``schema`` if needed (offline store under ``offline_s3_uri``, online
        store on) and wait until it is ``Created``; return its ARN.

        Idempotent: an existing group with the same definitions is kept (:meth:`create`). SageMaker
        creates a group asynchronously and refuses records until it is ``Created``, so this waits.

        Raises
        ------
        FeatureStoreError
            No ``offline_s3_uri`` / ``role_arn`` to create with, the creation failed, or it took
            longer than ``timeout_s``.
        """
        if self.offline_s3_uri is None or self.role_arn is None:
            raise FeatureStoreError(
                f"feature group {self.name!r} can only be created with an offline store S3 URI and a role "
                "(QE_SAGEMAKER_ROLE_ARN)"
            )
        arn = self.create(schema, offline_s3_uri=self.offline_s3_uri, role_arn=self.role_arn)
        waited = 0.0
        while True:
            described = self.describe()
            status = described.get("FeatureGroupStatus", "Created")
            if status == "Created":
                return arn
            if status in ("CreateFailed", "Deleting", "DeleteFailed"):
                raise FeatureStoreError(
                    f"feature group {self.name!r} is {status}: {described.get('FailureReason', 'no reason given')}"
                )
            if waited >= self.timeout_s:
                raise FeatureStoreError(f"feature group {self.name!r} still {status} after {self.timeout_s:g} s")
            self._sleep(self.poll_s)
            waited += self.poll_s

    def describe(self) -> dict[str, Any]:
        """``DescribeFeatureGroup`` for this group."""
        return self.sagemaker.describe_feature_group(FeatureGroupName=self.name)

    def schema(self) -> FeatureGroupSchema:
        """The group's features as a :class:`FeatureGroupSchema` (keys must be ticker/event_time)."""
        described = self.describe()
        keys = (described["RecordIdentifierFeatureName"], described["EventTimeFeatureName"])
        if keys != (RECORD_IDENTIFIER, EVENT_TIME):
            raise FeatureStoreError(
                f"feature group {self.name!r} is keyed by {keys}, not {(RECORD_IDENTIFIER, EVENT_TIME)}"
            )
        features = {}
        for definition in described["FeatureDefinitions"]:
            name, kind = definition["FeatureName"], definition["FeatureType"]
            if name in keys:
                continue
            if kind != "Fractional":
                raise FeatureStoreError(
                    f"feature {name!r} of group {self.name!r} is {kind}; only Fractional maps to float64"
                )
            features[name] = "float64"
        return FeatureGroupSchema(features)

    # -- records ------------------------------------------------------------------------------
    def put_record(self, ticker: str, event_time: object, values: Mapping[str, float]) -> None:
        """``PutRecord`` one row (a full overwrite of the record in the online store)."""
        if not isinstance(ticker, str) or not ticker:
            raise ValueError(f"ticker={ticker!r} must be a non-empty string")
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping of feature name -> float, not {type(values).__name__}")
        event_ns = utc_timestamp(event_time, "event_time").value
        self.runtime.put_record(
            FeatureGroupName=self.name,
            Record=make_record(ticker, event_ns, values, event_time_type=self.event_time_type),
        )

    def records(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        """Every row of a feature frame as a runtime record, in order."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, not {type(frame).__name__}")
        missing = [c for c in (RECORD_IDENTIFIER, EVENT_TIME) if c not in frame.columns]
        if missing:
            raise FeatureFrameError(f"the frame lacks column(s) {missing}; have {list(frame.columns)}")
        names = [c for c in frame.columns if c not in (RECORD_IDENTIFIER, EVENT_TIME)]
        not_float = [f"{n!r} is {frame[n].dtype}" for n in names if frame[n].dtype != np.float64]
        if not_float:
            raise FeatureFrameError(f"feature columns must be float64: {'; '.join(not_float)}")
        tickers = ticker_column(frame[RECORD_IDENTIFIER])
        event_ns = utc_ns_column(frame[EVENT_TIME], EVENT_TIME)
        values = frame[names].to_numpy(dtype="float64")
        return [
            make_record(
                tickers[i],
                int(event_ns[i]),
                dict(zip(names, values[i], strict=True)),
                event_time_type=self.event_time_type,
            )
            for i in range(len(frame))
        ]

    def write(self, frame: pd.DataFrame, *, batch_size: int = MAX_BATCH_ENTRIES, max_attempts: int = 3) -> int:
        """Write a feature frame with ``BatchWriteRecord`` and return the number of records written.

        Entries the service returns as unprocessed are retried (up to ``max_attempts`` calls per
        batch); entries it rejects raise at once.

        Raises
        ------
        FeatureStoreError
            Some entries were rejected, or still unprocessed after ``max_attempts``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_ENTRIES:
            raise ValueError(f"batch_size={batch_size!r} must be an integer in [1, {MAX_BATCH_ENTRIES}]")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r} must be an integer >= 1")
        records = self.records(frame)
        if not self._ready and self.offline_s3_uri is not None:
            # the first write creates the group (once per instance; later writes go straight to records)
            names = [c for c in frame.columns if c not in (RECORD_IDENTIFIER, EVENT_TIME)]
            self.ensure(FeatureGroupSchema.for_features(names))
            self._ready = True
        for start in range(0, len(records), batch_size):
            self._write_batch(records[start : start + batch_size], max_attempts)
        return len(records)

    def _write_batch(self, records: Sequence[list[dict[str, str]]], max_attempts: int) -> None:
        entries: list[dict[str, Any]] = [{"FeatureGroupName": self.name, "Record": record} for record in records]
        for _attempt in range(max_attempts):
            response = self.runtime.batch_write_record(Entries=entries)
            if response["Errors"]:
                quoted = "; ".join(
                    f"{_record_key(e['Entry']['Record'])}: {e['ErrorCode']} {e['ErrorMessage']}"
                    for e in response["Errors"][:5]
                )
                raise FeatureStoreError(
                    f"BatchWriteRecord rejected {len(response['Errors'])} of {len(entries)} records "
                    f"of feature group {self.name!r}: {quoted}"
                )
            entries = response["UnprocessedEntries"]
            if not entries:
                return
        raise FeatureStoreError(
            f"{len(entries)} records of feature group {self.name!r} still unprocessed after {max_attempts} "
            f"BatchWriteRecord calls, e.g. {_record_key(entries[0]['Record'])}"
        )


def _definitions_key(definitions: Sequence[Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((d["FeatureName"], d["FeatureType"]) for d in definitions)


def _record_key(record: Sequence[Mapping[str, str]]) -> str:
    values = {v["FeatureName"]: v.get("ValueAsString") for v in record}
    return f"{values.get(RECORD_IDENTIFIER)}@{values.get(EVENT_TIME)}"
