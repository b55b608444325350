"""Training checkpoints that are atomic, self-checking and refuse to mix runs.

A checkpoint of boosting round ``r`` is two objects under one prefix of a store:

* ``round-0000000r.ubj``: the booster after ``r`` rounds, XGBoost's UBJSON (never pickle);
* ``round-0000000r.json``: its manifest: round, data fingerprint, params fingerprint, format
  version, the model's SHA-256 and the XGBoost version.

The model is written first and the manifest last, each in one atomic step (temp file + fsync +
rename on disk, one ``PutObject`` on S3), so a process killed at any moment leaves either a whole
checkpoint or one without a manifest, which readers ignore. On load the newest checkpoint whose
manifest parses, whose fingerprints match this run and whose model bytes hash to the manifest's
value wins; every one skipped on the way gets a log line that says why. A checkpoint of other data
or other parameters is never resumed from: resuming would silently train a model of neither.

The store is the offline store's :class:`~quant_engine.storage.filesystem.FileSystem`
(:class:`~quant_engine.storage.filesystem.LocalFileSystem` or
:class:`~quant_engine.aws.s3.S3FileSystem`), so checkpoints live on local disk or
S3 with the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quant_engine.storage.filesystem import FileSystem, LocalFileSystem, overwrite_atomic

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointManager",
    "open_checkpoint_store",
    "sha256_hex",
]

log = logging.getLogger(__name__)

#: Version of the checkpoint layout and manifest; a manifest of another version is skipped.
FORMAT_VERSION = 1
_MANIFEST = re.compile(r"^round-(\d{9})\.json$")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


#: Makes the store of ``s3://bucket/prefix`` from ``(bucket, prefix)`` (``quant_engine.aws.s3.s3_store``).
S3Store = Callable[[str, str], FileSystem]


def open_checkpoint_store(location: str | Path, s3_store: S3Store | None = None) -> tuple[FileSystem, str]:
    """The store and key prefix for a checkpoint location: a directory or ``s3://bucket/prefix``.

    Parameters
    ----------
    location : str or Path
        Local directory (e.g. ``/opt/ml/checkpoints``) or an ``s3://bucket/prefix`` URI.
    s3_store : callable, optional
        Makes the store of an S3 location from its bucket and prefix (required for one).

    Returns
    -------
    (FileSystem, str)
        The store and the non-empty key prefix inside it: the location's last path component,
        with the store rooted at its parent (``s3://bucket`` alone gets the prefix
        ``checkpoints``).
    """
    text = str(location)
    if not text:
        raise ValueError("checkpoint location is empty; give a directory or s3://bucket/prefix")
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"checkpoint location {text!r} names no bucket; use s3://bucket/prefix")
        if s3_store is None:
            raise ValueError(
                f"checkpoint location {text!r} is on S3: pass the s3_store to reach it with "
                "(python -m quant_engine.aws.trainer_entry does)"
            )
        parent, _, name = key.strip("/").rpartition("/")
        return s3_store(bucket, parent), name or "checkpoints"
    path = Path(text).expanduser().absolute()
    if path.parent == path:
        raise ValueError(f"checkpoint location {text!r} is a filesystem root; give a directory below it")
    return LocalFileSystem(path.parent), path.name


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint.

    Parameters
    ----------
    round : int
        Boosting rounds the model holds.
    model : bytes
        The booster as UBJSON, its hash checked against the manifest.
    key : str
        The manifest's key in the store.
    """

    round: int
    model: bytes
    key: str


class CheckpointManager:
    """Save, find and prune the checkpoints of one training run.

    Parameters
    ----------
    fs : FileSystem
        Where checkpoints live (:func:`open_checkpoint_store`).
    data_fingerprint : str
        Hash of the training data; a checkpoint of other data is refused.
    params_fingerprint : str
        Hash of the parameters that shape the model; a checkpoint of other parameters is refused.
    prefix : str
        Key prefix inside ``fs``, non-empty (the folder that holds the checkpoints).
    keep : int
        How many of this run's newest checkpoints to keep (at least 1).
    xgboost_version : str
        Recorded in each manifest for the reader.

    Examples
    --------
    >>> import tempfile
    >>> manager = CheckpointManager(LocalFileSystem(tempfile.mkdtemp()), "d" * 64, "p" * 64, keep=2)
    >>> for r in (10, 20, 30):
    ...     _ = manager.save(r, b"model-%d" % r)
    >>> manager.latest().round, manager.rounds()
    (30, [20, 30])
    """

    def __init__(
        self,
        fs: FileSystem,
        data_fingerprint: str,
        params_fingerprint: str,
        *,
        prefix: str = "checkpoints",
        keep: int = 3,
        xgboost_version: str = "",
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} must be a whole number >= 1 (checkpoints kept)")
        for name, value in (("data_fingerprint", data_fingerprint), ("params_fingerprint", params_fingerprint)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}={value!r} must be a non-empty string")
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"prefix={prefix!r} must name the folder of the checkpoints")
        self.fs = fs
        self.prefix = prefix.strip("/")
        self.keep = keep
        self.data_fingerprint = data_fingerprint
        self.params_fingerprint = params_fingerprint
        self.xgboost_version = xgboost_version
        self._owners: dict[int, str] = {}  # round -> "ours" | "other" | "corrupt", read once

    def __repr__(self) -> str:
        return f"CheckpointManager({self.fs!r}, prefix={self.prefix!r})"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _put(self, key: str, data: bytes) -> None:
        overwrite_atomic(self.fs, key, data)  # only a rerun of a round finds one there

    def save(self, round: int, model: bytes) -> str:
        """Store the model after ``round`` rounds, then drop this run's checkpoints beyond ``keep``.

        Returns
        -------
        str
            The manifest's key.
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < 1:
            raise ValueError(f"round={round!r} must be a whole number >= 1")
        stem = f"round-{round:09d}"
        manifest = {
            "format_version": FORMAT_VERSION,
            "round": round,
            "data_fingerprint": self.data_fingerprint,
            "params_fingerprint": self.params_fingerprint,
            "model_key": f"{stem}.ubj",
            "model_sha256": sha256_hex(model),
            "xgboost_version": self.xgboost_version,
        }
        self._put(self._key(f"{stem}.ubj"), model)
        key = self._key(f"{stem}.json")
        self._put(key, json.dumps(manifest, sort_keys=True).encode())
        self._owners[round] = "ours"
        self._prune(round)
        return key

    def _owner(self, round: int) -> str:
        """``"ours"`` (this data and params), ``"other"`` or ``"corrupt"`` for the manifest of ``round``."""
        if round not in self._owners:
            try:
                manifest = json.loads(self.fs.read(self._key(f"round-{round:09d}.json")))
            except (ValueError, UnicodeDecodeError, FileNotFoundError):
                manifest = None
            if not isinstance(manifest, dict):
                self._owners[round] = "corrupt"
            elif (manifest.get("data_fingerprint"), manifest.get("params_fingerprint")) == (
                self.data_fingerprint,
                self.params_fingerprint,
            ):
                self._owners[round] = "ours"
            else:
                self._owners[round] = "other"
        return self._owners[round]

    def _prune(self, newest: int) -> None:
        """Keep the ``keep`` newest checkpoints of this data and params up to ``newest``.

        Unparsable ones go too. Checkpoints of other data or params are left alone: they are
        another run's, and a misconfigured shared prefix should lose nothing.
        """
        older = [r for r in reversed(self._manifest_rounds()) if r <= newest]
        ours = [r for r in older if self._owner(r) == "ours"]
        doomed = ours[self.keep :] + [r for r in older if self._owner(r) == "corrupt"]
        for old in doomed:
            stem = f"round-{old:09d}"
            self.fs.delete(self._key(f"{stem}.json"))  # manifest first: a crash leaves an ignored model
            self.fs.delete(self._key(f"{stem}.ubj"))
            self._owners.pop(old, None)

    def _manifest_rounds(self) -> list[int]:
        names = (k.rsplit("/", 1)[-1] for k in self.fs.list(self.prefix) if k.endswith(".json"))
        return sorted({int(m.group(1)) for n in names if (m := _MANIFEST.match(n))})

    def rounds(self) -> list[int]:
        """Rounds of every checkpoint that has a manifest, verified or not, oldest first."""
        return self._manifest_rounds()

    def latest(self, max_round: int | None = None) -> Checkpoint | None:
        """The newest checkpoint this run may resume from, or None to start clean.

        Parameters
        ----------
        max_round : int, optional
            Ignore checkpoints beyond this round (a run asked for fewer rounds than stored).

        Returns
        -------
        Checkpoint or None
            Verified: manifest parses, fingerprints match, model hash matches. Every checkpoint
            skipped on the way is logged with the reason.
        """
        found: Checkpoint | None = None
        for round in reversed(self._manifest_rounds()):
            key = self._key(f"round-{round:09d}.json")
            reason = None
            try:
                manifest = json.loads(self.fs.read(key))
                if not isinstance(manifest, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError, FileNotFoundError) as exc:
                log.warning("checkpoint %s is corrupt (unparsable manifest: %s); skipping it", key, exc)
                continue
            if manifest.get("format_version") != FORMAT_VERSION:
                reason = f"format version {manifest.get('format_version')!r}, this trainer reads {FORMAT_VERSION}"
            elif manifest.get("round") != round:
                reason = f"manifest says round {manifest.get('round')!r} but its name says {round}"
            elif manifest.get("data_fingerprint") != self.data_fingerprint:
                reason = (
                    f"it was trained on other data (data fingerprint {manifest.get('data_fingerprint')!r}, "
                    f"this run's is {self.data_fingerprint!r})"
                )
            elif manifest.get("params_fingerprint") != self.params_fingerprint:
                reason = (
                    f"it was trained with other parameters (params fingerprint "
                    f"{manifest.get('params_fingerprint')!r}, this run's is {self.params_fingerprint!r})"
                )
            elif max_round is not None and round > max_round:
                reason = f"it holds {round} rounds, more than the {max_round} asked for"
            if reason is not None:
                log.warning("refusing to resume from checkpoint %s: %s", key, reason)
                continue
            model_key = self._key(str(manifest.get("model_key", "")))
            try:
                model = self.fs.read(model_key)
            except (FileNotFoundError, ValueError) as exc:
                log.warning("checkpoint %s is corrupt (model %s unreadable: %s); skipping it", key, model_key, exc)
                continue
            if sha256_hex(model) != manifest.get("model_sha256"):
                log.warning(
                    "checkpoint %s is corrupt (model %s hash %s, manifest says %s); skipping it",
                    key,
                    model_key,
                    sha256_hex(model),
                    manifest.get("model_sha256"),
                )
                continue
            found = Checkpoint(round, model, key)
            break
        if found is None:
            log.info("no usable checkpoint in %r; starting clean", self)
        return found
