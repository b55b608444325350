"""Deployments: which registry version serves, who approved it, when, and which attempts were rolled back.

Promotion (``champion.json``) says which version scored best on the holdout; deployment says which
version actually serves, after a person approved it and a health check passed. The two differ
while a promoted champion waits for approval, or after a deployment was rolled back. Before the
first deployment the champion serves (:func:`served_version`), as it always did.

The history is one file beside the versions, ``<name>/deployments.json``::

    {"format_version": 1, "live": 2, "history": [{...Deployment...}, ...]}

``live`` is the index of the history entry that serves now (None: nothing deployed). Every change
(a deployment, a rollback) reads the file with its version and replaces it in one compare-and-swap
step (:meth:`FileSystem.replace_atomic`: a rename locally, a conditional put on S3), so readers see
the old or the new history, and two deployers cannot overwrite each other unseen.

A deployment that fails its health check is rolled back: the history gains a ``rolled_back`` entry
and ``live`` returns to the entry that served before (None for a first deployment).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from quant_engine.storage.filesystem import ConcurrentCommitError
from quant_engine.training.registry import ModelRegistry, RegistryError, parse_version

if TYPE_CHECKING:
    from quant_engine.features.offline_store import OfflineStore

__all__ = [
    "DEPLOYED",
    "ROLLED_BACK",
    "Deployment",
    "DeploymentHistory",
    "HealthCheckError",
    "check_probabilities",
    "health_sample",
    "newest_stored_rows",
    "score_version",
    "served_version",
]

DEPLOYED = "deployed"
ROLLED_BACK = "rolled_back"
FORMAT_VERSION = 1
_FILE = "deployments.json"
#: Attempts at the compare-and-swap when another writer changed the history in between.
_ATTEMPTS = 5


class HealthCheckError(RuntimeError):
    """A deployed model failed its health check; the message says what was wrong."""


@dataclass(frozen=True)
class Deployment:
    """One entry of the history: a version put live (``deployed``) or taken back (``rolled_back``).

    ``target`` is ``local`` (the bridge's in-process model) or ``endpoint:<name>``; ``previous`` is
    the version that served before (for a rollback: the one serving again). ``endpoint_config`` and
    ``previous_endpoint_config`` name the SageMaker endpoint configurations on the endpoint target.
    """

    version: str
    outcome: str
    target: str
    by: str
    at: str
    reason: str
    previous: str | None = None
    endpoint_config: str | None = None
    previous_endpoint_config: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DeploymentHistory:
    """The deployment history of one registry's model, in the registry's storage."""

    def __init__(self, registry: ModelRegistry) -> None:
        if not isinstance(registry, ModelRegistry):
            raise TypeError(f"registry must be a ModelRegistry, not {type(registry).__name__}")
        self.registry = registry
        self._key = f"{registry.name}/{_FILE}"

    def __repr__(self) -> str:
        return f"DeploymentHistory({self.registry!r})"

    def _read(self) -> tuple[dict[str, Any], str | None]:
        current = self.registry.fs.read_versioned(self._key)
        if current is None:
            return {"format_version": FORMAT_VERSION, "live": None, "history": []}, None
        return json.loads(current[0]), current[1]

    def entries(self) -> list[Deployment]:
        """Every deployment and rollback, oldest first."""
        return [Deployment(**entry) for entry in self._read()[0]["history"]]

    def live(self) -> Deployment | None:
        """The deployment serving now, or None when nothing was deployed (or the first one was rolled back)."""
        state = self._read()[0]
        return None if state["live"] is None else Deployment(**state["history"][state["live"]])

    def record_deployed(
        self,
        version: object,
        *,
        target: str,
        by: str,
        reason: str,
        endpoint_config: str | None = None,
        previous_endpoint_config: str | None = None,
        now: object = None,
    ) -> Deployment:
        """Make ``version`` the live deployment; deploying what is live already on ``target`` adds nothing."""
        version = self.registry.get(version).version  # an unknown version is refused here
        for name, value in (("target", target), ("by", by), ("reason", reason)):
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"{name}={value!r} must be a non-empty string")

        def change(state: dict[str, Any]) -> Deployment | None:
            live = None if state["live"] is None else Deployment(**state["history"][state["live"]])
            if live is not None and (live.version, live.target) == (version, target):
                return None
            entry = Deployment(
                version=version,
                outcome=DEPLOYED,
                target=target,
                by=by.strip(),
                at=_now(now),
                reason=reason.strip(),
                previous=None if live is None else live.version,
                endpoint_config=endpoint_config,
                previous_endpoint_config=previous_endpoint_config,
            )
            state["history"].append(entry.to_json())
            state["live"] = len(state["history"]) - 1
            return entry

        return self._commit(change) or self.live()  # type: ignore[return-value]

    def record_rollback(self, version: object, *, by: str, reason: str, now: object = None) -> Deployment | None:
        """Take the live deployment of ``version`` back, the deployment before it serving again.

        Returns the rollback entry, or None when ``version`` is not live (rolled back already: a
        retried rollback changes nothing).
        """
        version = parse_version(version)

        def change(state: dict[str, Any]) -> Deployment | None:
            index = state["live"]
            if index is None or state["history"][index]["version"] != version:
                return None
            failed = Deployment(**state["history"][index])
            restored = _index_before(state["history"], index, failed.previous)
            entry = Deployment(
                version=version,
                outcome=ROLLED_BACK,
                target=failed.target,
                by=by,
                at=_now(now),
                reason=reason,
                previous=failed.previous,
                endpoint_config=failed.previous_endpoint_config,
                previous_endpoint_config=failed.endpoint_config,
            )
            state["history"].append(entry.to_json())
            state["live"] = restored
            return entry

        return self._commit(change)

    def _commit(self, change: Any) -> Deployment | None:
        for _ in range(_ATTEMPTS):
            state, token = self._read()
            entry = change(state)
            if entry is None:
                return None
            payload = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
            try:
                self.registry.fs.replace_atomic(self._key, payload, expected_version=token)
            except ConcurrentCommitError:
                continue  # another deployer wrote in between: apply the change to what it wrote
            return entry
        raise ConcurrentCommitError(f"the deployment history of {self.registry.name!r} kept changing; try again")


def _index_before(history: Sequence[Mapping[str, Any]], index: int, version: str | None) -> int | None:
    """The latest ``deployed`` entry of ``version`` before ``index``: what served before that deployment."""
    if version is None:
        return None
    for i in range(index - 1, -1, -1):
        if history[i]["outcome"] == DEPLOYED and history[i]["version"] == version:
            return i
    return None


def _now(now: object) -> str:
    stamp = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    if stamp.tzinfo is None:
        raise RegistryError(f"now={now!r} must be time zone-aware")
    return stamp.tz_convert("UTC").isoformat()


def served_version(registry: ModelRegistry) -> str | None:
    """The version the bridge serves: the live deployment once ``model_deployment`` has deployed one,
    else the champion (a registry that never used the deployment DAG serves as it always did)."""
    state = DeploymentHistory(registry)._read()[0]  # one read: the bridge asks on every reload check
    if state["live"] is not None:
        return state["history"][state["live"]]["version"]
    if state["history"]:
        return None  # the only deployment was rolled back: nothing approved serves
    promotion = registry.champion()
    return None if promotion is None else promotion.version


def health_sample(frame: pd.DataFrame, features: Sequence[str], rows: int = 64) -> np.ndarray:
    """The newest ``rows`` complete rows of ``features`` in ``frame``: by ``event_time`` across every
    ticker when the frame has it (the store returns rows by ticker first, whose tail is one ticker's),
    else the frame's last rows."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise HealthCheckError(f"the feature store lacks feature(s) {missing} the model needs")
    if "event_time" in frame.columns:
        frame = frame.sort_values("event_time", kind="stable")
    complete = frame[list(features)].dropna()
    if complete.empty:
        raise HealthCheckError(f"the feature store holds no complete row of {list(features)} to score")
    return complete.tail(rows).to_numpy(dtype=np.float64)


def newest_stored_rows(
    store: OfflineStore, features: Sequence[str], rows: int = 64, window_days: int = 31
) -> np.ndarray:
    """:func:`health_sample` of ``store``'s newest rows, read back from its newest stored day in
    doubling windows (``window_days``, twice that, ...) until ``rows`` complete rows are found, or
    everything once a window would reach past the oldest stored day: a health check of 64 rows
    should not read a 500-ticker history."""
    span = store.stored_event_days()
    days = window_days
    while span is not None and span[1] - pd.Timedelta(days=days) > span[0]:
        sample = health_sample(store.read(start=span[1] - pd.Timedelta(days=days)), features, rows)
        if len(sample) >= rows:
            return sample
        days *= 2
    return health_sample(store.read(), features, rows)


def score_version(registry: ModelRegistry, version: object, rows: np.ndarray) -> np.ndarray:
    """``version``'s probabilities on ``rows`` (float32 inputs, as the batch scorer and the bridge);
    an unloadable or altered model file is a :class:`HealthCheckError`."""
    record = registry.get(version)
    try:
        booster = registry.load_booster(record.version)
    except (RegistryError, OSError) as exc:
        raise HealthCheckError(f"{registry.name} {record.version} cannot be loaded: {exc}") from None
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(record.metadata.features):
        raise HealthCheckError(f"sample of shape {rows.shape} does not fit {len(record.metadata.features)} features")
    return check_probabilities(
        booster.inplace_predict(rows.astype(np.float32)).astype(np.float64), len(rows), record.version
    )


def check_probabilities(probs: np.ndarray, rows: int, what: str) -> np.ndarray:
    """``probs`` when it is one finite probability in [0, 1] per row, else a :class:`HealthCheckError`."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (rows,):
        raise HealthCheckError(f"{what} returned {probs.size} values for {rows} rows")
    if not np.isfinite(probs).all() or not ((probs >= 0) & (probs <= 1)).all():
        raise HealthCheckError(f"{what} returned values outside [0, 1]: {probs[:5].tolist()}")
    return probs
