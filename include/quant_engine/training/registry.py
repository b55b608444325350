"""The model registry: immutable, versioned XGBoost models and an atomically moved champion pointer.

Models are stored as XGBoost JSON or UBJ, never pickle, so a model can be read by any XGBoost
release and loading one never runs code. Layout under the registry's root (``$QE_HOME/models``
locally, ``s3://<bucket>/<prefix>/models`` on AWS), through the same :class:`FileSystem` seam as
the offline store::

    <name>/versions/v0001/model-<sha256[:16]>.json   the booster (or .ubj), named by its content
    <name>/versions/v0001/metadata.json              the commit: written last, and only if absent
    <name>/champion.json                             {"version", "reason", "promoted_at", "previous"}

A version exists once its ``metadata.json`` does. :meth:`ModelRegistry.register` writes the model
file first and then creates the metadata with a create-only put (``If-None-Match: *`` on S3, an
existence check under the registry lock locally), so a crash leaves at most an unreferenced model
file and a version, once visible, never changes. :meth:`ModelRegistry.promote` replaces
``champion.json`` in one atomic step conditioned on the pointer it read, so readers see the old or
the new champion, never a mix, and two promoters cannot overwrite each other unseen.

Promotion rule
--------------
A candidate becomes champion when there is no champion yet, or when, evaluated on the candidate's
own holdout together with the current champion, its log-loss is lower by at least
``min_logloss_gain`` (relative, default 0.5%) **and** its AUC is not lower by more than
``max_auc_drop`` (absolute, default 0.005). With ``min_deflated_sharpe`` set, the walk-forward run
the candidate came from must also have a deflated Sharpe ratio above it. See :class:`PromotionRule`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import log_loss, roc_auc_score

from quant_engine.storage.filesystem import ConcurrentCommitError, FileSystem, overwrite_atomic
from quant_engine.training.defaults import DEFAULT_MODEL_NAME

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MODEL_FORMATS",
    "ModelMetadata",
    "ModelRegistry",
    "ModelVersion",
    "Promotion",
    "PromotionDecision",
    "PromotionRule",
    "RegistryError",
    "UnknownVersionError",
    "evaluate_candidate",
    "holdout_metrics",
]

#: File suffixes the registry stores; both are XGBoost's own formats, which hold no code.
MODEL_FORMATS: tuple[str, ...] = ("json", "ubj")
FORMAT_VERSION = 1
_VERSION = re.compile(r"^v?0*(\d{1,9})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Attempts at a new version number when another writer takes the one chosen (S3 has no lock).
_REGISTER_ATTEMPTS = 5
#: ``promote``'s default: promote whoever the champion is now.
_ANY = object()


class RegistryError(ValueError):
    """A registry request that cannot be served; the message names the value and the rule."""


class UnknownVersionError(RegistryError, LookupError):
    """The registry holds no committed version of that number."""


def format_version(number: int) -> str:
    """``7 -> "v0007"``: sortable as text up to 9999 versions, still valid beyond."""
    return f"v{number:04d}"


def parse_version(value: object) -> str:
    """The canonical name of a version given as ``3``, ``"3"``, ``"v3"`` or ``"v0003"``.

    Examples
    --------
    >>> parse_version("v3"), parse_version(12)
    ('v0003', 'v0012')
    """
    match = _VERSION.match(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if match is None or int(match.group(1)) < 1:
        raise RegistryError(f"version {value!r} is not a model version; use a number >= 1 such as 3, 'v3' or 'v0003'")
    return format_version(int(match.group(1)))


def _utc_iso(value: object, what: str) -> str:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise RegistryError(f"{what}={value!r} is not a time") from None
    if stamp is pd.NaT or stamp.tzinfo is None:
        raise RegistryError(f"{what}={value!r} must be a time zone-aware time (naive times are ambiguous)")
    return stamp.tz_convert("UTC").isoformat()


def _json_ready(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (numpy scalars unwrapped); non-finite floats are refused."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise RegistryError(f"{what} is {value!r}; metadata must hold finite numbers")
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, f"{what}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise RegistryError(f"{what}={value!r} ({type(value).__name__}) cannot be stored as JSON")


@dataclass(frozen=True)
class ModelMetadata:
    """What a model was trained on and how well it did; stored beside the model, never changed.

    Parameters
    ----------
    features : sequence of str
        Feature columns in the order the booster expects them.
    data_start, data_end : time
        First and last ``ts`` of the training data (tz-aware).
    data_fingerprint : str
        Digest of the training and holdout data, so two models can be told apart by their data.
    params : mapping
        Hyperparameters the model was trained with.
    metrics : mapping
        Holdout metrics (``logloss``, ``auc``, ...).
    wfo_report : str, optional
        The walk-forward report that justified this configuration.
    wfo_run : mapping, optional
        The walk-forward run whose selected trial this model is (``run_id``, ``splitter``, ``pbo``,
        ``deflated_sharpe``, ``psr``, the selected trial and its parameters; see
        :meth:`quant_engine.wfo.run_folder.WfoOutcome.record`).
    training : mapping
        How it was trained (runner, interruptions, spot savings, job name).
    """

    features: tuple[str, ...]
    data_start: str
    data_end: str
    data_fingerprint: str
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    wfo_report: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    wfo_run: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        features = self.features
        if (
            isinstance(features, str)
            or not isinstance(features, Sequence)
            or not features
            or not all(isinstance(f, str) and f for f in features)
        ):
            raise RegistryError(f"features={features!r} must be a non-empty list of feature names")
        if len(set(features)) != len(features):
            raise RegistryError(f"features={list(features)!r} repeat a name; each feature appears once")
        object.__setattr__(self, "features", tuple(features))
        start, end = _utc_iso(self.data_start, "data_start"), _utc_iso(self.data_end, "data_end")
        if pd.Timestamp(end) < pd.Timestamp(start):
            raise RegistryError(f"data_end {end} is before data_start {start}")
        object.__setattr__(self, "data_start", start)
        object.__setattr__(self, "data_end", end)
        if not isinstance(self.data_fingerprint, str) or not self.data_fingerprint:
            raise RegistryError(f"data_fingerprint={self.data_fingerprint!r} must be a non-empty digest")
        if self.wfo_report is not None and not isinstance(self.wfo_report, str):
            raise RegistryError(f"wfo_report={self.wfo_report!r} must be a path or URI, or None")
        for name in ("params", "metrics", "training"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise RegistryError(f"{name}={value!r} must be a mapping")
            object.__setattr__(self, name, _json_ready(value, name))
        if self.wfo_run is not None:
            object.__setattr__(self, "wfo_run", _check_wfo_run(self.wfo_run))

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "data_start": self.data_start,
            "data_end": self.data_end,
            "data_fingerprint": self.data_fingerprint,
            "params": dict(self.params),
            "metrics": dict(self.metrics),
            "wfo_report": self.wfo_report,
            "wfo_run": None if self.wfo_run is None else dict(self.wfo_run),
            "training": dict(self.training),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Read :meth:`to_json`'s form back; a version registered before ``wfo_run`` existed has none."""
        return cls(
            wfo_run=data.get("wfo_run"),
            **{
                k: data[k]
                for k in (
                    "features",
                    "data_start",
                    "data_end",
                    "data_fingerprint",
                    "params",
                    "metrics",
                    "wfo_report",
                    "training",
                )
            },
        )


def _check_wfo_run(value: object) -> dict[str, Any]:
    """A walk-forward run's record: a run id, a splitter, and its statistics as probabilities or None."""
    if not isinstance(value, Mapping):
        raise RegistryError(
            f"wfo_run={value!r} must be a mapping with the run's run_id, splitter, pbo, deflated_sharpe"
        )
    record = _json_ready(value, "wfo_run")
    for key in ("run_id", "splitter"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise RegistryError(f"wfo_run[{key!r}]={record.get(key)!r} must be a non-empty string")
    for key in ("pbo", "deflated_sharpe", "psr"):
        number = record.get(key)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 1
        ):
            raise RegistryError(f"wfo_run[{key!r}]={number!r} must be a probability in [0, 1], or None")
    return record


@dataclass(frozen=True)
class ModelVersion:
    """One committed version: where its model file is, its digest, and its metadata."""

    name: str
    version: str
    created_at: str
    model_key: str
    model_format: str
    model_sha256: str
    metadata: ModelMetadata

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "model": {"key": self.model_key, "format": self.model_format, "sha256": self.model_sha256},
            **self.metadata.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelVersion:
        model = data["model"]
        return cls(
            name=data["name"],
            version=data["version"],
            created_at=data["created_at"],
            model_key=model["key"],
            model_format=model["format"],
            model_sha256=model["sha256"],
            metadata=ModelMetadata.from_json(data),
        )


@dataclass(frozen=True)
class Promotion:
    """The champion pointer: which version serves, why, since when, and which one it replaced."""

    version: str
    reason: str
    promoted_at: str
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "reason": self.reason,
            "promoted_at": self.promoted_at,
            "previous": self.previous,
        }


class ModelRegistry:
    """Versions of one model name on a :class:`FileSystem`.

    Parameters
    ----------
    fs : FileSystem
        Where versions live; :func:`quant_engine.config.make_model_registry` picks it for the backend.
    name : str
        Model name: letters, digits, ``-`` and ``_``.

    Examples
    --------
    >>> registry = ModelRegistry(LocalFileSystem(tmp / "models"))          # doctest: +SKIP
    >>> version = registry.register("model.json", metadata)                 # doctest: +SKIP
    >>> registry.promote(version, "first model")                            # doctest: +SKIP
    """

    def __init__(self, fs: FileSystem, name: str = DEFAULT_MODEL_NAME) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise RegistryError(
                f"model name {name!r} must start with a letter or digit and hold only letters, digits, '-' and '_' "
                "(at most 64 characters)"
            )
        self.fs = fs
        self.name = name

    def __repr__(self) -> str:
        return f"ModelRegistry({self.fs!r}, name={self.name!r})"

    def _key(self, *parts: str) -> str:
        return "/".join((self.name, *parts))

    # --- versions --------------------------------------------------------------------------------

    def _version_numbers(self) -> tuple[list[int], list[int]]:
        """(committed, every number with any file) under ``versions/``."""
        committed, seen = set(), set()
        for key in self.fs.list(self._key("versions")):
            parts = key.split("/")
            match = _VERSION.match(parts[2]) if len(parts) == 4 else None
            if match is None:
                continue
            number = int(match.group(1))
            seen.add(number)
            if parts[3] == "metadata.json":
                committed.add(number)
        return sorted(committed), sorted(seen)

    def versions(self) -> list[str]:
        """Committed versions, oldest first."""
        return [format_version(n) for n in self._version_numbers()[0]]

    def list(self) -> list[ModelVersion]:
        """Every committed version with its metadata, oldest first."""
        return [self.get(v) for v in self.versions()]

    def get(self, version: object) -> ModelVersion:
        """The committed version ``version``; :class:`UnknownVersionError` when there is none."""
        version = parse_version(version)
        try:
            data = self.fs.read(self._key("versions", version, "metadata.json"))
        except FileNotFoundError:
            known = ", ".join(self.versions()) or "none"
            raise UnknownVersionError(f"model {self.name!r} has no version {version} (versions: {known})") from None
        return ModelVersion.from_json(json.loads(data))

    def latest(self) -> ModelVersion | None:
        versions = self.versions()
        return self.get(versions[-1]) if versions else None

    def register(
        self, model_path: Path | str, metadata: ModelMetadata | Mapping[str, Any], *, now: object = None
    ) -> str:
        """Store the booster at ``model_path`` as a new immutable version and return its name.

        The file must be XGBoost JSON (``.json``) or UBJ (``.ubj``) and load as a booster whose
        feature count (and names, when it has them) match ``metadata.features``. The same model
        bytes trained on the same data (``data_fingerprint``) return the version that already
        holds them, so a rerun of a training run adds nothing.
        """
        if not isinstance(metadata, ModelMetadata):
            if not isinstance(metadata, Mapping):
                raise RegistryError(f"metadata={metadata!r} must be a ModelMetadata or a mapping of its fields")
            metadata = ModelMetadata.from_json(
                {"params": {}, "metrics": {}, "wfo_report": None, "training": {}, **metadata}
            )
        path = Path(model_path)
        model_format = path.suffix.lstrip(".").lower()
        if model_format not in MODEL_FORMATS:
            raise RegistryError(
                f"{path.name!r} is not an XGBoost JSON or UBJ model; the registry stores only "
                f"{', '.join('.' + f for f in MODEL_FORMATS)} files (save with booster.save_model('model.json'))"
            )
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        data = path.read_bytes()
        _check_booster(_booster_from_bytes(data, str(path)), metadata.features, str(path))
        digest = hashlib.sha256(data).hexdigest()
        for existing in self.list():
            if existing.model_sha256 == digest and existing.metadata.data_fingerprint == metadata.data_fingerprint:
                return existing.version
        created = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
        for _ in range(_REGISTER_ATTEMPTS):
            with self.fs.lock(self._key(".lock")):
                seen = self._version_numbers()[1]
                version = format_version((seen[-1] if seen else 0) + 1)
                record = ModelVersion(
                    name=self.name,
                    version=version,
                    created_at=_utc_iso(created, "now"),
                    model_key=f"model-{digest[:16]}.{model_format}",
                    model_format=model_format,
                    model_sha256=digest,
                    metadata=metadata,
                )
                self.fs.write(self._key("versions", version, record.model_key), data)
                try:
                    self.fs.replace_atomic(
                        self._key("versions", version, "metadata.json"), _dumps(record.to_json()), expected_version=None
                    )
                except ConcurrentCommitError:
                    continue  # another writer took this number first: take the next one
                return version
        raise ConcurrentCommitError(f"could not claim a version of {self.name!r} in {_REGISTER_ATTEMPTS} attempts")

    def model_bytes(self, version: object) -> bytes:
        """The model file of ``version``, after checking its bytes against the digest in its metadata."""
        return self._checked_model_bytes(self.get(version))

    def load_booster(self, version: object) -> xgb.Booster:
        """The booster of ``version``, its bytes checked against the digest in its metadata."""
        record = self.get(version)
        return _booster_from_bytes(self._checked_model_bytes(record), f"{self.name} {record.version}")

    def _checked_model_bytes(self, record: ModelVersion) -> bytes:
        data = self.fs.read(self._key("versions", record.version, record.model_key))
        if hashlib.sha256(data).hexdigest() != record.model_sha256:
            raise RegistryError(
                f"model file of {self.name} {record.version} does not match its recorded sha256; it was altered"
            )
        return data

    # --- experiment tracking ----------------------------------------------------------------------

    def record_tracked_run(self, version: object, tracked: Mapping[str, Any]) -> None:
        """Keep where ``version``'s training run was logged (:class:`quant_engine.tracking.TrackedRun`) at
        ``<name>/tracking/<version>.json``: beside the version, whose own folder never changes."""
        version = self.get(version).version
        overwrite_atomic(self.fs, self._key("tracking", f"{version}.json"), _dumps(dict(tracked)))

    def tracked_run(self, version: object) -> dict[str, Any] | None:
        """What :meth:`record_tracked_run` kept for ``version``; None when its run was not tracked."""
        try:
            return json.loads(self.fs.read(self._key("tracking", f"{parse_version(version)}.json")))
        except FileNotFoundError:
            return None

    # --- champion --------------------------------------------------------------------------------

    def champion(self) -> Promotion | None:
        """The current champion pointer, or None before the first promotion."""
        current = self.fs.read_versioned(self._key("champion.json"))
        return None if current is None else Promotion(**json.loads(current[0]))

    def promote(
        self, version: object, reason: str, *, expected_champion: object = _ANY, now: object = None
    ) -> Promotion:
        """Make ``version`` the champion in one atomic replace of the pointer.

        Promoting the version that is already champion changes nothing (a rerun is harmless).
        ``expected_champion`` (a version, or None for "no champion yet") is the champion a
        decision was made against; when another one serves by now, nothing changes and
        :class:`ConcurrentCommitError` says so. The same error comes when the pointer changes
        between this read and the replace.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryError(f"reason={reason!r} must say why the version is promoted")
        record = self.get(version)
        key = self._key("champion.json")
        current = self.fs.read_versioned(key)
        previous = None if current is None else Promotion(**json.loads(current[0]))
        if previous is not None and previous.version == record.version:
            return previous
        if expected_champion is not _ANY:
            expected = None if expected_champion is None else parse_version(expected_champion)
            if expected != (None if previous is None else previous.version):
                raise ConcurrentCommitError(
                    f"the champion of {self.name!r} is {previous.version if previous else 'none'}, not "
                    f"{expected or 'none'} as when {record.version} was judged; evaluate again"
                )
        promotion = Promotion(
            version=record.version,
            reason=reason.strip(),
            promoted_at=_utc_iso(pd.Timestamp.now(tz="UTC") if now is None else now, "now"),
            previous=None if previous is None else previous.version,
        )
        self.fs.replace_atomic(
            key, _dumps(promotion.to_json()), expected_version=None if current is None else current[1]
        )
        return promotion


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def _booster_from_bytes(data: bytes, what: str) -> xgb.Booster:
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise RegistryError(f"{what} is not an XGBoost JSON/UBJ model: {first_line}") from None
    return booster


def _check_booster(booster: xgb.Booster, features: Sequence[str], what: str) -> None:
    if booster.num_features() != len(features):
        raise RegistryError(
            f"{what} expects {booster.num_features()} features but the metadata names {len(features)}: {list(features)}"
        )
    if booster.feature_names is not None and list(booster.feature_names) != list(features):
        raise RegistryError(
            f"{what} was trained on features {booster.feature_names} but the metadata names {list(features)}"
        )


# --- evaluation and the promotion rule -----------------------------------------------------------


def holdout_metrics(
    booster: xgb.Booster, holdout: pd.DataFrame, features: Sequence[str], label: str = "label"
) -> dict[str, float]:
    """Log-loss, AUC and accuracy of ``booster`` on ``holdout`` (features in the booster's order), and
    the base-rate log-loss: what always predicting the holdout's share of ups would score."""
    missing = [c for c in (*features, label) if c not in holdout.columns]
    if missing:
        raise RegistryError(f"holdout lacks column(s) {missing}")
    y = holdout[label].to_numpy()
    if len(np.unique(y)) < 2:
        raise RegistryError(f"holdout of {len(y)} rows holds one class only; AUC and log-loss need both")
    matrix = xgb.DMatrix(
        holdout[list(features)].to_numpy(dtype=np.float32),
        feature_names=None if booster.feature_names is None else list(features),
    )
    prob = booster.predict(matrix).astype(np.float64)
    share = float(y.mean())
    return {
        "logloss": float(log_loss(y, prob, labels=[0, 1])),
        "auc": float(roc_auc_score(y, prob)),
        "accuracy": float(((prob > 0.5) == (y == 1)).mean()),
        "rows": int(len(y)),
        "base_logloss": float(log_loss(y, np.full(len(y), share), labels=[0, 1])),
    }


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class PromotionRule:
    """When a candidate becomes champion: it must beat a coin flip, and the champion on unseen data.

    Parameters
    ----------
    min_logloss_gain : float
        Relative log-loss reduction required over the champion: ``candidate <= champion * (1 -
        min_logloss_gain)``. The default 0.5% keeps noise-level differences from churning the champion.
    max_auc_drop : float
        Largest AUC loss tolerated against the champion: ``candidate >= champion - max_auc_drop``, so
        better calibration cannot buy a worse ranking.
    min_auc_margin : float
        The floor every model, the first included, must clear: AUC above ``0.5 + min_auc_margin``
        and a log-loss below the holdout's base rate (what always predicting the share of ups scores).
    min_unseen_rows : int
        Fewest rows neither model trained on that a comparison with the champion needs.
    min_deflated_sharpe : float, optional
        When set, a candidate must come from a walk-forward run whose deflated Sharpe ratio (the
        probability that the selected trial's Sharpe is not the luck of the search) is above it;
        None (the default) does not ask.

    Examples
    --------
    >>> rule = PromotionRule()
    >>> rule.decide({"logloss": 0.689, "auc": 0.52, "base_logloss": 0.6931}, None).promote
    True
    >>> rule.decide({"logloss": 0.700, "auc": 0.52, "base_logloss": 0.6931}, None).reason
    'log-loss 0.70000 is not below the base rate 0.69310 (always predicting the share of ups): no better than a coin'
    >>> rule.decide({"logloss": 0.689, "auc": 0.55, "base_logloss": 0.6931},
    ...             {"logloss": 0.690, "auc": 0.55}).promote
    False
    """

    min_logloss_gain: float = 0.005
    max_auc_drop: float = 0.005
    min_auc_margin: float = 0.005
    min_unseen_rows: int = 100
    min_deflated_sharpe: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_logloss_gain", "max_auc_drop", "min_auc_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise RegistryError(f"{name}={value!r} must be a number in [0, 1)")
        if (
            isinstance(self.min_unseen_rows, bool)
            or not isinstance(self.min_unseen_rows, int)
            or self.min_unseen_rows < 1
        ):
            raise RegistryError(f"min_unseen_rows={self.min_unseen_rows!r} must be a whole number >= 1")
        threshold = self.min_deflated_sharpe
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1
        ):
            raise RegistryError(f"min_deflated_sharpe={threshold!r} must be a number in [0, 1), or None")

    def research(self, wfo_run: Mapping[str, Any] | None) -> PromotionDecision | None:
        """The refusal of a candidate whose walk-forward evidence is too weak, or None when it passes
        (or ``min_deflated_sharpe`` is not set).

        Examples
        --------
        >>> rule = PromotionRule(min_deflated_sharpe=0.9)
        >>> rule.research({"run_id": "r7", "deflated_sharpe": 0.95, "n_trials": 4}) is None
        True
        >>> print(rule.research({"run_id": "r7", "deflated_sharpe": 0.62, "n_trials": 4}).reason)
        ... # doctest: +NORMALIZE_WHITESPACE
        deflated Sharpe 0.620 of walk-forward run r7 is not above min_deflated_sharpe=0.9: the selected
        trial may owe its Sharpe ratio to the luck of searching 4 trials
        """
        threshold = self.min_deflated_sharpe
        if threshold is None:
            return None
        if not wfo_run:
            return PromotionDecision(
                False,
                f"min_deflated_sharpe={threshold:g} needs the walk-forward run the model came from, and it names "
                "none: nothing measured its deflated Sharpe",
            )
        dsr = wfo_run.get("deflated_sharpe")
        if dsr is None or not dsr > threshold:
            shown = "n/a" if dsr is None else f"{dsr:.3f}"
            return PromotionDecision(
                False,
                f"deflated Sharpe {shown} of walk-forward run {wfo_run['run_id']} is not above "
                f"min_deflated_sharpe={threshold:g}: the selected trial may owe its Sharpe ratio to the luck of "
                f"searching {wfo_run.get('n_trials', 'several')} trials",
            )
        return None

    def floor(self, candidate: Mapping[str, float]) -> PromotionDecision | None:
        """The refusal of a candidate no better than a coin flip, or None when it clears the floor."""
        if not candidate["logloss"] < candidate["base_logloss"]:
            return PromotionDecision(
                False,
                f"log-loss {candidate['logloss']:.5f} is not below the base rate "
                f"{candidate['base_logloss']:.5f} (always predicting the share of ups): "
                "no better than a coin",
            )
        if not candidate["auc"] > 0.5 + self.min_auc_margin:
            return PromotionDecision(
                False,
                f"AUC {candidate['auc']:.4f} is not above 0.5 + {self.min_auc_margin}: "
                "it does not rank ups above downs",
            )
        return None

    def decide(self, candidate: Mapping[str, float], champion: Mapping[str, float] | None) -> PromotionDecision:
        """The decision on ``candidate``'s metrics, and the champion's on the same rows (None: no champion)."""
        for what, metrics, keys in (
            ("candidate", candidate, ("logloss", "auc", "base_logloss")),
            ("champion", champion, ("logloss", "auc")),
        ):
            if metrics is not None and not all(k in metrics for k in keys):
                raise RegistryError(f"{what} metrics {dict(metrics)!r} need {', '.join(repr(k) for k in keys)}")
        refused = self.floor(candidate)
        if refused is not None:
            return refused
        if champion is None:
            return PromotionDecision(
                True,
                f"first model: log-loss {candidate['logloss']:.5f} below the base rate "
                f"{candidate['base_logloss']:.5f}, AUC {candidate['auc']:.4f}",
            )
        gain = 1.0 - candidate["logloss"] / champion["logloss"]
        auc_change = candidate["auc"] - champion["auc"]
        summary = (
            f"log-loss {candidate['logloss']:.5f} vs {champion['logloss']:.5f} ({gain:+.2%}), "
            f"AUC {candidate['auc']:.4f} vs {champion['auc']:.4f} ({auc_change:+.4f}) on the same rows"
        )
        if gain < self.min_logloss_gain:
            return PromotionDecision(False, f"{summary}: log-loss gain below {self.min_logloss_gain:.2%}")
        if auc_change < -self.max_auc_drop:
            return PromotionDecision(False, f"{summary}: AUC drop beyond {self.max_auc_drop:.4f}")
        return PromotionDecision(True, f"{summary}: beats the champion")


def trained_until(version: ModelVersion) -> pd.Timestamp:
    """Where a version's training data ended: its holdout's first ``ts`` (no training row's label
    reaches it), else the end of its data."""
    stamp = pd.Timestamp(version.metadata.training.get("holdout_start") or version.metadata.data_end)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def evaluate_candidate(
    registry: ModelRegistry,
    model_path: Path | str,
    holdout: pd.DataFrame,
    features: Sequence[str],
    rule: PromotionRule | None = None,
    *,
    wfo_run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a candidate, and the champion on rows neither trained on, and apply ``rule``.

    The candidate is scored on its whole holdout, against the floor. The champion is compared on
    the part of that holdout after its own training data ended (:func:`trained_until`): rows it
    trained on would flatter it. When fewer than ``rule.min_unseen_rows`` such rows are left (or
    one label class only, or the holdout lacks a feature the champion needs), the comparison is
    refused and said so: the candidate is not promoted automatically. ``wfo_run`` is the record of
    the walk-forward run the candidate came from, which ``rule.min_deflated_sharpe`` judges.

    Returns
    -------
    dict
        ``candidate`` metrics on its holdout, ``compared_on`` (the rows and first ``ts`` of the
        comparison), ``candidate_on_unseen`` and ``champion_metrics`` on those rows (or None),
        ``champion`` (its version or None), ``promote`` (bool) and ``reason``.
    """
    rule = rule or PromotionRule()
    path = Path(model_path)
    candidate_booster = _booster_from_bytes(path.read_bytes(), str(path))
    _check_booster(candidate_booster, features, str(path))
    candidate = holdout_metrics(candidate_booster, holdout, features)
    promotion = registry.champion()
    result: dict[str, Any] = {
        "candidate": candidate,
        "champion": None if promotion is None else promotion.version,
        "champion_metrics": None,
        "candidate_on_unseen": None,
        "compared_on": None,
    }
    if promotion is None:
        decision = rule.floor(candidate) or rule.research(wfo_run) or rule.decide(candidate, None)
        return {**result, "promote": decision.promote, "reason": decision.reason}
    champion = registry.get(promotion.version)
    since = trained_until(champion)
    unseen = (
        holdout.iloc[:0]
        if "ts" not in holdout.columns
        else holdout.loc[pd.to_datetime(holdout["ts"], utc=True) >= since]
    )
    missing = [f for f in champion.metadata.features if f not in holdout.columns]
    result["compared_on"] = {"rows": int(len(unseen)), "from": str(since)}
    if missing:
        decision = PromotionDecision(
            False,
            f"champion {champion.version} needs feature(s) {missing} this holdout "
            "lacks, so they cannot be compared on the same rows; compare by hand "
            "and use `quant-engine models promote`",
        )
    elif len(unseen) < rule.min_unseen_rows or unseen["label"].nunique() < 2:
        decision = PromotionDecision(
            False,
            f"champion {champion.version} trained on data until {since}; the "
            f"candidate's holdout leaves {len(unseen)} row(s) after that (fewer than "
            f"{rule.min_unseen_rows}, or one label class): no fair comparison, so no "
            "automatic promotion; retrain on later data or promote by hand",
        )
    else:
        result["candidate_on_unseen"] = holdout_metrics(candidate_booster, unseen, features)
        result["champion_metrics"] = holdout_metrics(
            registry.load_booster(champion.version), unseen, champion.metadata.features
        )
        decision = rule.decide(result["candidate_on_unseen"], result["champion_metrics"])
    # The floor judges the candidate on its whole holdout, and the walk-forward evidence its search,
    # whatever the comparison said.
    decision = rule.floor(candidate) or rule.research(wfo_run) or decision
    return {**result, "promote": decision.promote, "reason": decision.reason}
