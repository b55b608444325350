"""The local spot simulator: kills and notices at random moments never change the final model bytes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.training.spot import Interruption, SpotRunError, random_schedule, simulate
from quant_engine.training.trainer import EXIT_INTERRUPTED, train

HP = {
    "num_round": 60,
    "max_depth": 4,
    "subsample": 0.7,
    "colsample_bytree": 0.5,
    "checkpoint_every": 3,
    "seed": 5,
    "nthread": 1,
}


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, bytes]:
    """A training file and the model an uninterrupted run makes of it."""
    root = tmp_path_factory.mktemp("spot")
    rng = np.random.default_rng(7)
    data = pd.DataFrame(rng.normal(size=(3000, 8)), columns=[f"f{i}" for i in range(8)])
    data["label"] = (data["f0"] + 0.5 * data["f3"] + rng.normal(size=len(data)) > 0).astype(int)
    data.to_parquet(root / "train.parquet")
    reference = train(root / "train.parquet", root / "reference", hyperparameters=HP).model_path.read_bytes()
    return root / "train.parquet", reference


def args(train_path: Path, out: Path, **hp: object) -> list[str]:
    return [
        "--train",
        str(train_path),
        "--model-dir",
        str(out / "model"),
        "--checkpoint-dir",
        str(out / "ckpt"),
        "--hyperparameters",
        json.dumps({**HP, **hp}),
    ]


def test_sigkill_at_random_moments_leaves_the_model_bytes_unchanged(job, tmp_path: Path) -> None:
    train_path, reference = job
    schedule = random_schedule(11, HP["num_round"], seed=2024, kind="kill", max_delay_s=0.05)
    report = simulate(args(train_path, tmp_path), schedule=schedule)
    assert report.interruptions >= 10
    assert [a.exit_code for a in report.attempts if a.interruption] == [-signal.SIGKILL] * report.interruptions
    assert report.attempts[-1].exit_code == 0
    assert (tmp_path / "model" / "model.json").read_bytes() == reference


def test_sigterm_checkpoints_the_finished_round_and_exits_with_its_code(job, tmp_path: Path) -> None:
    train_path, reference = job
    report = simulate(args(train_path, tmp_path), schedule=[Interruption(0.0, at_round=16, kind="term")], grace_s=60)
    first, second = report.attempts
    assert first.exit_code == EXIT_INTERRUPTED
    assert first.lost_rounds == 0 and first.last_checkpoint == first.last_round >= 16
    assert second.resumed_from == first.last_round and second.exit_code == 0
    assert 0 < second.ready_seconds < second.first_round_seconds  # restored, then trained on
    assert (tmp_path / "model" / "model.json").read_bytes() == reference
    assert report.as_dict()["interruptions"] == 1 and report.lost_rounds == 0


def test_kill_without_notice_loses_the_rounds_since_the_last_checkpoint(job, tmp_path: Path) -> None:
    train_path, reference = job
    report = simulate(
        args(train_path, tmp_path, checkpoint_every=25), schedule=[Interruption(0.0, at_round=40, kind="kill")]
    )
    first, second = report.attempts
    # Checkpoints are written beside training, so the kill (sent once round 40 is seen) can land
    # before the checkpoint of round 25 (or, on a slow machine, after rounds past 50) is reported;
    # whatever it hit, the rounds after the last reported checkpoint are the ones lost, and the
    # restart resumes from a checkpoint at least that recent.
    assert first.exit_code == -signal.SIGKILL and first.last_round >= 40
    assert first.last_checkpoint % 25 == 0 and first.last_checkpoint <= first.last_round
    assert first.lost_rounds == first.last_round - first.last_checkpoint
    assert second.resumed_from % 25 == 0 and first.last_checkpoint <= second.resumed_from <= first.last_round
    assert report.lost_rounds == first.lost_rounds
    assert (tmp_path / "model" / "model.json").read_bytes() == reference


def test_rate_driven_notices_restart_until_done(job, tmp_path: Path) -> None:
    train_path, reference = job
    report = simulate(args(train_path, tmp_path), rate_per_hour=3600 / 1.5, rate_kind="term", seed=3, grace_s=60)
    assert report.attempts[-1].exit_code == 0
    # A notice during start-up, before the trainer installs its handler, ends it like a kill.
    assert {a.exit_code for a in report.attempts[:-1]} <= {EXIT_INTERRUPTED, -signal.SIGTERM}
    assert report.interruptions == len(report.attempts) - 1
    assert (tmp_path / "model" / "model.json").read_bytes() == reference


def test_a_failing_trainer_is_reported_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(SpotRunError, match=r"exited with code 2; its log ends:\n.*channel 'train'"):
        simulate(["--train", str(tmp_path / "nope"), "--model-dir", str(tmp_path / "m"), "--no-checkpoints"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Interruption(delay_s=-1), "delay_s=-1 must be a number of seconds >= 0"),
        (lambda: Interruption(at_round=-2), "at_round=-2 must be None or a whole number >= 0"),
        (lambda: Interruption(kind="stop"), "kind='stop' must be one of"),
        (lambda: random_schedule(3, 0), "num_round=0 must be a whole number >= 1"),
        (lambda: random_schedule(3, 10, kind="soft"), "kind='soft' must be one of"),
        (lambda: simulate("--train x"), "must be a sequence of flags, not one string"),
        (lambda: simulate([], rate_per_hour=-1), "rate_per_hour=-1 must be a number >= 0"),
        (lambda: simulate([], max_attempts=0), "max_attempts=0 must be a whole number >= 1"),
    ],
)
def test_arguments_are_validated(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace("[", r"\[")):
        call()


def test_random_schedule_is_seeded_and_mixed_kinds_appear() -> None:
    first = random_schedule(20, 100, seed=9, kind="mixed")
    assert first == random_schedule(20, 100, seed=9, kind="mixed")
    assert {i.kind for i in first} == {"term", "kill"}
    assert [i.at_round for i in first] == sorted(i.at_round for i in first)
