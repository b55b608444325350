"""A local spot market: run the trainer as a subprocess, interrupt it, restart it until it finishes.

Spot capacity is reclaimed with a notice (SageMaker/EC2 send SIGTERM, then SIGKILL after a grace
period) or, when a host dies, with none. :func:`simulate` reproduces both on a seeded schedule or
at a rate, so exact resume and the cost of checkpointing can be checked on one machine before a
managed spot job pays for them. It reads the trainer's ``--progress`` lines to know which round
each attempt reached and which it had checkpointed, hence the rounds lost to each interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from quant_engine.training.trainer import EXIT_INTERRUPTED, PROGRESS_PREFIX

__all__ = ["AttemptReport", "Interruption", "SpotReport", "SpotRunError", "random_schedule", "simulate"]

Kind = Literal["term", "kill"]
_KINDS: tuple[str, ...] = ("term", "kill")


class SpotRunError(RuntimeError):
    """An attempt failed for a reason other than an interruption (bad input, a crash)."""


@dataclass(frozen=True)
class Interruption:
    """One reclaimed instance.

    Parameters
    ----------
    delay_s : float
        Seconds to wait, after ``at_round`` is reached, before the signal.
    at_round : int, optional
        Wait until the attempt has finished this many rounds (counted over the whole job, so an
        attempt that resumes beyond it is interrupted ``delay_s`` after it resumes); None: count
        ``delay_s`` from the attempt's start.
    kind : {"term", "kill"}
        ``"term"``: SIGTERM, then SIGKILL after the grace period (a spot notice); ``"kill"``:
        SIGKILL at once (no notice).
    """

    delay_s: float = 0.0
    at_round: int | None = None
    kind: Kind = "kill"

    def __post_init__(self) -> None:
        if not isinstance(self.delay_s, (int, float)) or not self.delay_s >= 0:
            raise ValueError(f"delay_s={self.delay_s!r} must be a number of seconds >= 0")
        if self.at_round is not None and (not isinstance(self.at_round, int) or self.at_round < 0):
            raise ValueError(f"at_round={self.at_round!r} must be None or a whole number >= 0")
        if self.kind not in _KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {_KINDS}")


@dataclass(frozen=True)
class AttemptReport:
    """One run of the trainer process.

    ``ready_seconds`` is the time from spawn until the trainer was ready to train (imports, data,
    checkpoint restored) and ``first_round_seconds`` until its first new round was done; None
    when it never got there.
    """

    exit_code: int
    interruption: Interruption | None
    resumed_from: int
    last_round: int
    last_checkpoint: int
    checkpoint_seconds: float
    wall_seconds: float
    ready_seconds: float | None = None
    first_round_seconds: float | None = None

    @property
    def lost_rounds(self) -> int:
        """Rounds this attempt computed that no checkpoint kept (0 when it finished)."""
        return 0 if self.exit_code == 0 else self.last_round - max(self.resumed_from, self.last_checkpoint)


@dataclass(frozen=True)
class SpotReport:
    """The whole job across its attempts."""

    attempts: list[AttemptReport] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def interruptions(self) -> int:
        return sum(a.interruption is not None and a.exit_code != 0 for a in self.attempts)

    @property
    def lost_rounds(self) -> int:
        return sum(a.lost_rounds for a in self.attempts)

    @property
    def checkpoint_seconds(self) -> float:
        return sum(a.checkpoint_seconds for a in self.attempts)

    @property
    def checkpoint_overhead(self) -> float:
        """Share of the job's wall time spent writing checkpoints."""
        return self.checkpoint_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        """Figures for a log line or a JSON report."""
        return {
            "attempts": len(self.attempts),
            "interruptions": self.interruptions,
            "lost_rounds": self.lost_rounds,
            "wall_seconds": round(self.wall_seconds, 3),
            "checkpoint_seconds": round(self.checkpoint_seconds, 3),
            "checkpoint_overhead": round(self.checkpoint_overhead, 4),
            "exit_codes": [a.exit_code for a in self.attempts],
        }


def random_schedule(
    n: int, num_round: int, *, seed: int = 0, kind: Kind | Literal["mixed"] = "kill", max_delay_s: float = 0.5
) -> list[Interruption]:
    """``n`` interruptions at seeded random moments: a random round, then a random delay.

    Rounds come in increasing order, so the job gets further before each one, as it would when
    interruptions fall at random times of a long job.

    Examples
    --------
    >>> [(i.at_round, i.kind) for i in random_schedule(2, 50, seed=1)]
    [(23, 'kill'), (25, 'kill')]
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be a whole number >= 0")
    if not isinstance(num_round, int) or num_round < 1:
        raise ValueError(f"num_round={num_round!r} must be a whole number >= 1")
    if kind not in (*_KINDS, "mixed"):
        raise ValueError(f"kind={kind!r} must be one of {(*_KINDS, 'mixed')}")
    rng = np.random.default_rng(seed)
    rounds = np.sort(rng.integers(0, num_round, size=n))
    delays = rng.uniform(0, max_delay_s, size=n)
    kinds = rng.choice(_KINDS, size=n) if kind == "mixed" else [kind] * n
    return [Interruption(float(d), int(r), str(k)) for r, d, k in zip(rounds, delays, kinds, strict=True)]  # type: ignore[arg-type]


class _Progress:
    """What the reader thread has seen of one attempt's ``--progress`` lines."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.ready_seconds: float | None = None
        self.first_round_seconds: float | None = None
        self.cond = threading.Condition()
        self.resumed_from: int | None = None
        self.last_round = 0
        self.last_checkpoint = 0
        self.checkpoint_seconds = 0.0

    def follow(self, stream) -> None:  # noqa: ANN001 - a text pipe
        for line in stream:
            if not line.startswith(PROGRESS_PREFIX):
                continue
            event = json.loads(line[len(PROGRESS_PREFIX) :])
            with self.cond:
                if event["event"] == "resume":
                    self.resumed_from = self.last_round = self.last_checkpoint = event["round"]
                    self.ready_seconds = time.perf_counter() - self.started
                elif event["event"] == "round":
                    self.last_round = event["round"]
                    if self.first_round_seconds is None:
                        self.first_round_seconds = time.perf_counter() - self.started
                elif event["event"] == "checkpoint":
                    self.last_checkpoint = event["round"]
                    self.checkpoint_seconds += event["seconds"]
                self.cond.notify_all()

    def reached(self, at_round: int | None) -> bool:
        return self.resumed_from is not None and (at_round is None or self.last_round >= at_round)


def _interrupt(proc: subprocess.Popen, progress: _Progress, event: Interruption, grace_s: float) -> bool:
    """Deliver ``event`` to ``proc``; False when the process ended before it was due."""
    if event.at_round is not None:
        with progress.cond:
            while not progress.reached(event.at_round) and proc.poll() is None:
                progress.cond.wait(timeout=0.05)
    try:
        proc.wait(timeout=event.delay_s)
        return False
    except subprocess.TimeoutExpired:
        pass
    if event.kind == "kill":
        proc.send_signal(signal.SIGKILL)
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # the notice ran out, as on a real spot instance
    return True


def simulate(
    trainer_args: Sequence[str],
    *,
    schedule: Sequence[Interruption] = (),
    rate_per_hour: float = 0.0,
    rate_kind: Kind = "term",
    seed: int = 0,
    grace_s: float = 120.0,
    max_attempts: int = 100,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> SpotReport:
    """Run ``python -m quant_engine.training.trainer <trainer_args> --progress`` until it finishes.

    Attempt ``j`` is interrupted by ``schedule[j]``; once the schedule is used up, by a random
    interruption at ``rate_per_hour`` (exponential waits from each start, seeded), or not at all.

    Parameters
    ----------
    trainer_args : sequence of str
        Flags for the trainer (``--train``, ``--model-dir``, ``--checkpoint-dir``, ...).
    schedule : sequence of Interruption
        One per attempt, in order.
    rate_per_hour : float
        Interruptions per hour of attempt time after the schedule (0: none).
    rate_kind : {"term", "kill"}
        How the rate's interruptions arrive.
    seed : int
        Seed of the rate's waits.
    grace_s : float
        Seconds between SIGTERM and SIGKILL (SageMaker gives two minutes).
    max_attempts : int
        Give up (``SpotRunError``) after this many attempts.
    env : mapping, optional
        Environment of the trainer (default: this process's).
    python : str
        Interpreter that runs the trainer.

    Returns
    -------
    SpotReport

    Raises
    ------
    SpotRunError
        An attempt exited with a code no interruption explains, or ``max_attempts`` ran out.
    """
    if isinstance(trainer_args, str):
        raise TypeError(f"trainer_args={trainer_args!r} must be a sequence of flags, not one string")
    if not isinstance(rate_per_hour, (int, float)) or rate_per_hour < 0:
        raise ValueError(f"rate_per_hour={rate_per_hour!r} must be a number >= 0")
    if rate_kind not in _KINDS:
        raise ValueError(f"rate_kind={rate_kind!r} must be one of {_KINDS}")
    if not isinstance(grace_s, (int, float)) or grace_s < 0:
        raise ValueError(f"grace_s={grace_s!r} must be a number of seconds >= 0")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts={max_attempts!r} must be a whole number >= 1")
    rng = np.random.default_rng(seed)
    command = [python, "-m", "quant_engine.training.trainer", *trainer_args, "--progress"]
    attempts: list[AttemptReport] = []
    began = time.perf_counter()
    for j in range(max_attempts):
        if j < len(schedule):
            event: Interruption | None = schedule[j]
        elif rate_per_hour > 0:
            event = Interruption(float(rng.exponential(3600.0 / rate_per_hour)), None, rate_kind)
        else:
            event = None
        start = time.perf_counter()
        progress = _Progress(start)
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=dict(os.environ if env is None else env)
            )
            reader = threading.Thread(target=progress.follow, args=(proc.stdout,), daemon=True)
            reader.start()
            delivered = event is not None and _interrupt(proc, progress, event, grace_s)
            code = proc.wait()
            reader.join()
            assert proc.stdout is not None, "Popen was given stdout=PIPE"
            proc.stdout.close()
            stderr.seek(0)
            log_tail = stderr.read()[-4000:].decode(errors="replace")
        expected = {0} | ({EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGKILL} if delivered else set())
        if code not in expected:
            raise SpotRunError(f"trainer attempt {j + 1} exited with code {code}; its log ends:\n{log_tail}")
        attempts.append(
            AttemptReport(
                exit_code=code,
                interruption=event if delivered else None,
                resumed_from=progress.resumed_from or 0,
                last_round=progress.last_round,
                last_checkpoint=progress.last_checkpoint,
                checkpoint_seconds=progress.checkpoint_seconds,
                wall_seconds=time.perf_counter() - start,
                ready_seconds=progress.ready_seconds,
                first_round_seconds=progress.first_round_seconds,
            )
        )
        if code == 0:
            return SpotReport(attempts, time.perf_counter() - began)
    raise SpotRunError(f"the trainer did not finish in max_attempts={max_attempts} attempts")
