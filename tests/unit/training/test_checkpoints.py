"""Checkpoint store: atomic, verified, refuses other runs' checkpoints, keeps the last K, local and S3."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from quant_engine.aws.s3 import S3FileSystem
from quant_engine.storage.atomic import write_bytes_atomic
from quant_engine.storage.filesystem import LocalFileSystem
from quant_engine.training.checkpoints import FORMAT_VERSION, CheckpointManager, open_checkpoint_store, sha256_hex

DATA, PARAMS = "d" * 64, "p" * 64


def manager(root: Path, data: str = DATA, params: str = PARAMS, keep: int = 3) -> CheckpointManager:
    fs, prefix = open_checkpoint_store(root / "ckpt")
    return CheckpointManager(fs, data, params, prefix=prefix, keep=keep, xgboost_version="test")


def test_save_then_latest_returns_the_newest_with_its_manifest(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.save(10, b"ten")
    key = m.save(20, b"twenty")
    found = m.latest()
    assert (found.round, found.model, found.key) == (20, b"twenty", key)
    manifest = json.loads((tmp_path / "ckpt" / "round-000000020.json").read_text())
    assert manifest == {
        "format_version": FORMAT_VERSION,
        "round": 20,
        "data_fingerprint": DATA,
        "params_fingerprint": PARAMS,
        "model_key": "round-000000020.ubj",
        "model_sha256": sha256_hex(b"twenty"),
        "xgboost_version": "test",
    }


def test_keeps_only_the_last_k_and_no_temp_files(tmp_path: Path) -> None:
    m = manager(tmp_path, keep=2)
    for r in (5, 10, 15, 20):
        m.save(r, b"m%d" % r)
    assert m.rounds() == [15, 20]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "round-000000015.json",
        "round-000000015.ubj",
        "round-000000020.json",
        "round-000000020.ubj",
    ]


def test_a_new_manager_prunes_older_checkpoints_of_the_same_run(tmp_path: Path) -> None:
    first = manager(tmp_path, keep=2)
    for r in (1, 2, 3):
        first.save(r, b"x")
    again = manager(tmp_path, keep=2)  # a restarted process
    assert again.latest().round == 3
    again.save(4, b"y")
    assert again.rounds() == [3, 4]


def test_resaving_a_round_replaces_it(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.save(10, b"old")
    m.save(10, b"new")
    assert m.latest().model == b"new"


def test_corrupt_model_falls_back_to_the_previous_checkpoint(tmp_path: Path, caplog) -> None:
    m = manager(tmp_path)
    m.save(10, b"good")
    m.save(20, b"will be damaged")
    (tmp_path / "ckpt" / "round-000000020.ubj").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        found = m.latest()
    assert (found.round, found.model) == (10, b"good")
    assert "round-000000020.json is corrupt" in caplog.text and "hash" in caplog.text


def test_unparsable_manifest_and_missing_model_are_skipped(tmp_path: Path, caplog) -> None:
    m = manager(tmp_path)
    m.save(10, b"good")
    m.save(20, b"x")
    m.save(30, b"y")
    (tmp_path / "ckpt" / "round-000000030.json").write_text("{not json")
    (tmp_path / "ckpt" / "round-000000020.ubj").unlink()
    with caplog.at_level(logging.WARNING):
        assert m.latest().round == 10
    assert "round-000000030.json is corrupt (unparsable manifest" in caplog.text
    assert "round-000000020.json is corrupt (model" in caplog.text


def test_a_model_without_manifest_is_invisible(tmp_path: Path) -> None:
    """What a kill between the two writes leaves: the model of the next round, no manifest."""
    m = manager(tmp_path)
    m.save(10, b"ten")
    (tmp_path / "ckpt" / "round-000000020.ubj").write_bytes(b"half-done")
    assert m.latest().round == 10


@pytest.mark.parametrize(
    ("data", "params", "why"),
    [("e" * 64, PARAMS, "trained on other data"), (DATA, "q" * 64, "trained with other parameters")],
)
def test_checkpoint_of_other_data_or_params_is_refused_and_kept(tmp_path: Path, caplog, data, params, why) -> None:
    manager(tmp_path).save(10, b"theirs")
    mine = manager(tmp_path, data=data, params=params, keep=1)
    with caplog.at_level(logging.WARNING):
        assert mine.latest() is None
    assert f"refusing to resume from checkpoint ckpt/round-000000010.json: it was {why}" in caplog.text
    mine.save(5, b"mine")
    mine.save(8, b"mine again")  # prunes its own round 5, never the other run's round 10
    assert mine.rounds() == [8, 10]
    assert mine.latest().model == b"mine again"


def test_other_format_version_and_rounds_beyond_the_run_are_skipped(tmp_path: Path, caplog) -> None:
    m = manager(tmp_path)
    m.save(10, b"ten")
    m.save(20, b"twenty")
    assert m.latest(max_round=15).round == 10
    path = tmp_path / "ckpt" / "round-000000010.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
    with caplog.at_level(logging.WARNING):
        assert m.latest(max_round=15) is None
    assert "format version 99" in caplog.text and "more than the 15 asked for" in caplog.text


def test_write_file_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.json"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["model.json"]


def _s3(client: object):
    return lambda bucket, prefix: S3FileSystem(client, bucket, prefix)


def test_open_checkpoint_store_local_and_s3() -> None:
    fs, prefix = open_checkpoint_store("/opt/ml/checkpoints")
    assert isinstance(fs, LocalFileSystem) and fs.root == Path("/opt/ml") and prefix == "checkpoints"
    fs, prefix = open_checkpoint_store("s3://bucket/jobs/run-1/checkpoints/", s3_store=_s3(object()))
    assert isinstance(fs, S3FileSystem) and (fs.bucket, fs.prefix, prefix) == ("bucket", "jobs/run-1", "checkpoints")
    fs, prefix = open_checkpoint_store("s3://bucket", s3_store=_s3(object()))
    assert (fs.prefix, prefix) == ("", "checkpoints")
    with pytest.raises(ValueError, match="is on S3: pass the s3_store"):
        open_checkpoint_store("s3://bucket/x")


@pytest.mark.parametrize(
    ("location", "message"),
    [("", "is empty"), ("s3:///x", "names no bucket"), ("/", "is a filesystem root")],
)
def test_open_checkpoint_store_rejects_bad_locations(location: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_checkpoint_store(location, s3_store=_s3(object()))


def test_manager_validates_its_arguments(tmp_path: Path) -> None:
    fs = LocalFileSystem(tmp_path)
    with pytest.raises(ValueError, match=r"keep=0 must be a whole number >= 1"):
        CheckpointManager(fs, DATA, PARAMS, keep=0)
    with pytest.raises(ValueError, match=r"data_fingerprint='' must be a non-empty string"):
        CheckpointManager(fs, "", PARAMS)
    with pytest.raises(ValueError, match=r"prefix='/' must name the folder"):
        CheckpointManager(fs, DATA, PARAMS, prefix="/")
    with pytest.raises(ValueError, match=r"round=0 must be a whole number >= 1"):
        CheckpointManager(fs, DATA, PARAMS).save(0, b"x")


def test_s3_store_saves_verifies_prunes_and_skips_corruption() -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ckpts")
        fs, prefix = open_checkpoint_store("s3://ckpts/jobs/run-1/checkpoints", s3_store=_s3(client))
        m = CheckpointManager(fs, DATA, PARAMS, prefix=prefix, keep=2)
        for r in (10, 20, 30):
            m.save(r, b"model-%d" % r)
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="ckpts")["Contents"])
        assert keys == [f"jobs/run-1/checkpoints/round-0000000{r}.{ext}" for r in (20, 30) for ext in ("json", "ubj")]
        client.put_object(Bucket="ckpts", Key="jobs/run-1/checkpoints/round-000000030.ubj", Body=b"torn")
        restarted = CheckpointManager(fs, DATA, PARAMS, prefix=prefix, keep=2)
        found = restarted.latest()
        assert (found.round, found.model) == (20, b"model-20")
