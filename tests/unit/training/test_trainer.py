"""The trainer: exact resume with subsampling, refused checkpoints, the script-mode contract, bad inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from moto import mock_aws

from quant_engine.aws.s3 import S3FileSystem
from quant_engine.training.trainer import (
    EXIT_BAD_INPUT,
    TrainingInputError,
    TrainingInterrupted,
    TrainingParams,
    main,
    train,
)

HP = {
    "num_round": 30,
    "max_depth": 3,
    "subsample": 0.7,
    "colsample_bytree": 0.5,
    "checkpoint_every": 4,
    "seed": 11,
    "nthread": 1,
}


def frame(n: int = 600, seed: int = 0, features: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(rng.normal(size=(n, features)), columns=[f"f{i}" for i in range(features)])
    data["label"] = (data["f0"] - data["f1"] + rng.normal(size=n) > 0).astype(int)
    return data


def stop_after(*polls: int):
    """A ``should_stop`` that says stop on the given polls (one poll per round)."""
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] in polls

    return should_stop


def model_bytes(result) -> bytes:
    return result.model_path.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """The uninterrupted model, trained without any checkpoints."""
    return model_bytes(train(frame(), tmp_path_factory.mktemp("ref"), hyperparameters=HP))


def test_interrupted_runs_resume_to_identical_model_bytes(tmp_path: Path, reference: bytes) -> None:
    data, ckpt = frame(), tmp_path / "ckpt"
    stops = [3, 9, 2, 6]  # stopping on poll p means p - 1 more rounds were trained
    done = 0
    for poll in stops:
        with pytest.raises(TrainingInterrupted) as info:
            train(data, tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt, should_stop=stop_after(poll))
        done += poll - 1
        assert info.value.round == done
    result = train(data, tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt)
    assert result.resumed_from == done
    assert model_bytes(result) == reference


def test_checkpoints_on_s3_resume_exactly(tmp_path: Path, reference: bytes) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="jobs")
        uri = "s3://jobs/spot/run-1/checkpoints"

        def store(bucket: str, prefix: str) -> S3FileSystem:
            return S3FileSystem(client, bucket, prefix)

        with pytest.raises(TrainingInterrupted):
            train(
                frame(),
                tmp_path / "m",
                hyperparameters=HP,
                checkpoint_dir=uri,
                s3_store=store,
                should_stop=stop_after(11),
            )
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="jobs")["Contents"]]
        assert "spot/run-1/checkpoints/round-000000010.json" in keys
        result = train(frame(), tmp_path / "m", hyperparameters=HP, checkpoint_dir=uri, s3_store=store)
    assert result.resumed_from == 10 and model_bytes(result) == reference


def test_subsampling_really_samples_rows_and_columns(tmp_path: Path, reference: bytes) -> None:
    full = train(frame(), tmp_path / "full", hyperparameters={**HP, "subsample": 1, "colsample_bytree": 1})
    assert model_bytes(full) != reference
    trees = json.loads(reference)["learner"]["gradient_booster"]["model"]["trees"]
    used = [{f for f, left in zip(t["split_indices"], t["left_children"], strict=True) if left != -1} for t in trees]
    assert max(len(u) for u in used) <= 3  # colsample_bytree=0.5 of 6 features
    assert len(set().union(*used)) > 3  # ...a different draw each round


def test_a_restart_with_more_threads_resumes_exactly(tmp_path: Path, reference: bytes) -> None:
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted):
        train(frame(), tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt, should_stop=stop_after(10))
    result = train(frame(), tmp_path / "m", hyperparameters={**HP, "nthread": 2}, checkpoint_dir=ckpt)
    assert result.resumed_from == 9 and model_bytes(result) == reference


def test_a_longer_run_resumes_from_a_shorter_runs_checkpoint(tmp_path: Path, reference: bytes) -> None:
    ckpt = tmp_path / "ckpt"
    train(frame(), tmp_path / "short", hyperparameters={**HP, "num_round": 18}, checkpoint_dir=ckpt)
    result = train(frame(), tmp_path / "long", hyperparameters=HP, checkpoint_dir=ckpt)
    assert result.resumed_from == 16 and model_bytes(result) == reference


def test_corrupt_latest_checkpoint_falls_back_and_stays_exact(tmp_path: Path, reference: bytes, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted):
        train(frame(), tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt, should_stop=stop_after(14))
    (ckpt / "round-000000013.ubj").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        result = train(frame(), tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt)
    assert "round-000000013.json is corrupt" in caplog.text
    assert result.resumed_from == 12 and model_bytes(result) == reference


def test_checkpoint_of_other_data_is_refused_and_training_starts_clean(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    train(frame(seed=1), tmp_path / "other", hyperparameters=HP, checkpoint_dir=ckpt)
    with caplog.at_level(logging.INFO):
        result = train(frame(seed=2), tmp_path / "m", hyperparameters=HP, checkpoint_dir=ckpt)
    assert "it was trained on other data" in caplog.text and "starting clean" in caplog.text
    clean = train(frame(seed=2), tmp_path / "clean", hyperparameters=HP)
    assert result.resumed_from == 0 and model_bytes(result) == model_bytes(clean)


def test_checkpoint_of_other_params_is_refused(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "ckpt"
    train(frame(), tmp_path / "a", hyperparameters={**HP, "seed": 1}, checkpoint_dir=ckpt)
    with caplog.at_level(logging.WARNING):
        result = train(frame(), tmp_path / "b", hyperparameters={**HP, "seed": 2}, checkpoint_dir=ckpt)
    assert "it was trained with other parameters" in caplog.text and result.resumed_from == 0


def test_metrics_and_model_are_written(tmp_path: Path) -> None:
    result = train(frame(), tmp_path / "m", validation_data=frame(seed=5), hyperparameters=HP)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["validation"]["rows"] == 600 and 0.5 < metrics["validation"]["auc"] <= 1
    assert metrics["features"] == [f"f{i}" for i in range(6)] and metrics["num_round"] == 30
    booster = xgb.Booster(model_file=str(result.model_path))
    assert booster.num_boosted_rounds() == 30


def test_sagemaker_contract_from_environment(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    frame().iloc[:300].to_parquet(tmp_path / "train" / "part-0.parquet")
    frame().iloc[300:].to_parquet(tmp_path / "train" / "part-1.parquet")
    frame(seed=3).to_parquet(tmp_path / "validation" / "v.parquet")
    hps = tmp_path / "hyperparameters.json"
    hps.write_text(json.dumps({k: str(v) for k, v in HP.items()}))  # SageMaker passes strings
    env = {
        "SM_CHANNEL_TRAIN": str(tmp_path / "train"),
        "SM_CHANNEL_VALIDATION": str(tmp_path / "validation"),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "QE_HYPERPARAMETERS_FILE": str(hps),
        "QE_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
    }
    assert main([], env) == 0
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["train"]["rows"] == 600 and metrics["validation"]["rows"] == 600
    assert metrics["checkpoints_written"] == 7 and (tmp_path / "ckpt" / "round-000000028.json").exists()
    # Flags override the environment; SM_HPS overrides the file.
    env["SM_HPS"] = json.dumps({**HP, "num_round": 5})
    assert main(["--model-dir", str(tmp_path / "flagged"), "--no-checkpoints"], env) == 0
    assert json.loads((tmp_path / "flagged" / "metrics.json").read_text())["num_round"] == 5


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({}, [], "no training channel: set SM_CHANNEL_TRAIN or pass --train"),
        ({"SM_CHANNEL_TRAIN": "{missing}", "SM_MODEL_DIR": "{model}"}, [], "channel 'train': {missing} does not exist"),
        ({"SM_CHANNEL_TRAIN": "{train}"}, [], "no model dir: set SM_MODEL_DIR"),
        (
            {"SM_CHANNEL_TRAIN": "{train}", "SM_MODEL_DIR": "{model}", "SM_HPS": "[1]"},
            [],
            "SM_HPS='[1]' must be a JSON object",
        ),
        (
            {"SM_CHANNEL_TRAIN": "{train}", "SM_MODEL_DIR": "{model}"},
            ["--hyperparameters", "{{"],
            "--hyperparameters is not valid JSON",
        ),
        ({"SM_CHANNEL_TRAIN": "{empty_dir}", "SM_MODEL_DIR": "{model}"}, [], "holds no *.parquet file"),
    ],
)
def test_entry_point_reports_bad_inputs(tmp_path: Path, caplog, env, argv, message) -> None:
    (tmp_path / "empty").mkdir()
    frame().to_parquet(tmp_path / "train.parquet")
    paths = {
        "missing": tmp_path / "nope",
        "train": tmp_path / "train.parquet",
        "model": tmp_path / "m",
        "empty_dir": tmp_path / "empty",
    }
    env = {k: v.format(**paths) for k, v in env.items()}
    env["QE_HYPERPARAMETERS_FILE"] = str(tmp_path / "absent.json")
    with caplog.at_level(logging.ERROR):
        assert main([a.format(**paths) for a in argv] + ["--no-checkpoints"], env) == EXIT_BAD_INPUT
    assert message.format(**paths) in caplog.text


def one_class() -> pd.DataFrame:
    return frame().assign(label=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frame().iloc[:0], "train data is empty"),
        (one_class(), "has only the class 1 in 600 rows; a classifier needs both 0 and 1"),
        (frame().assign(label=2), "'label' must be 0 or 1 (binary:logistic); rows [0, 1, 2, 3, 4] are not"),
        (frame().drop(columns="label"), "train data has no 'label' column"),
        (frame().assign(f0="text"), "train feature columns ['f0'] are not numeric"),
        (frame()[["label"]], "has only a 'label' column and no features"),
    ],
)
def test_bad_training_data_is_refused(tmp_path: Path, data: pd.DataFrame, message: str) -> None:
    with pytest.raises(TrainingInputError) as info:
        train(data, tmp_path, hyperparameters=HP)
    assert message in str(info.value)


def test_validation_without_the_training_features_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match=r"validation data lacks the training features \['f5'\]"):
        train(frame(), tmp_path, validation_data=frame().drop(columns="f5"), hyperparameters=HP)


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"num_round": 0}, "num_round=0 must be a whole number >= 1"),
        ({"num_round": "2.5"}, "num_round=2.5 must be a whole number >= 1"),
        ({"checkpoint_every": -1}, "checkpoint_every=-1 must be a whole number >= 0"),
        ({"subsample": 0}, "subsample=0 must be a finite number > 0 and <= 1"),
        ({"colsample_bytree": "1.5"}, "colsample_bytree=1.5 must be a finite number > 0 and <= 1"),
        ({"colsample_bynode": 0.5}, "colsample_bynode=0.5 is not supported: only 1"),
        ({"booster": "dart"}, "booster='dart' is not supported: only 'gbtree'"),
        ({"tree_method": "approx"}, "tree_method='approx' is not supported"),
        ({"objective": "reg:squarederror"}, "objective='reg:squarederror' is not supported"),
        ({"seed": 1, "random_state": 2}, "give both 'random_state' and 'seed'"),
        # XGBoost's own parameters, judged by XGBoost before any data moves
        ({"max_depth": -3}, "value -3 for Parameter max_depth should be greater equal to 0"),
        ({"max_bin": 0}, "value 0 for Parameter max_bin should be greater equal to 2"),
        ({"eval_metric": "sharpe"}, "Unknown metric function sharpe"),
        ({"learning_rate": float("nan")}, "learning_rate=nan must be finite numbers"),
        ({"learning_rate": "inf"}, "learning_rate='inf' must be finite numbers"),  # as SageMaker passes text
        ({"lerning_rate": 0.1}, "unknown hyperparameter(s) ['lerning_rate']: XGBoost does not use them"),
    ],
)
def test_bad_hyperparameters_are_refused(hyperparameters: dict, message: str) -> None:
    with pytest.raises(TrainingInputError) as info:
        TrainingParams.from_hyperparameters(hyperparameters)
    assert message in str(info.value)


def test_hyperparameters_parse_sagemaker_strings() -> None:
    params = TrainingParams.from_hyperparameters(
        {
            "num_round": "50",
            "eta": "0.3",
            "subsample": "0.8",
            "objective": "binary:logistic",
            "random_state": "7",
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": "s3://b/code.tar.gz",
        }
    )
    assert (params.num_round, params.subsample, params.seed) == (50, 0.8, 7)
    assert params.xgb_params == {"objective": "binary:logistic", "tree_method": "hist", "seed": 7, "eta": 0.3}
    same = TrainingParams.from_hyperparameters({"num_round": 99, "eta": 0.3, "subsample": 0.8, "seed": 7})
    assert params.fingerprint == same.fingerprint  # num_round is not part of it
    threads = TrainingParams.from_hyperparameters({"eta": 0.3, "subsample": 0.8, "seed": 7, "nthread": 16})
    assert threads.fingerprint == same.fingerprint  # nor the thread count of the instance
    assert params.fingerprint != TrainingParams.from_hyperparameters({"eta": 0.3, "subsample": 0.8}).fingerprint
