"""A SageMaker endpoint that hangs, fails and recovers, through boto3 against a loopback fake: calls never block
the event loop, the circuit opens and closes again, signals fall back to the local champion or are marked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from bridge_process import FEATURES, register_champion
from fake_endpoint import FakeEndpoint

from quant_engine.backends import make_model_registry
from quant_engine.bridge.bars import Bar
from quant_engine.bridge.inference import LocalChampionModel, SageMakerEndpointModel
from quant_engine.bridge.remote import CircuitBreaker, EndpointPredictor, endpoint_client_config
from quant_engine.bridge.state import PreparedBatch


def batch_of(n: int) -> PreparedBatch:
    rng = np.random.default_rng(n)
    rows = [
        (
            Bar(f"SYN{i:02d}", pd.Timestamp("2024-03-04 21:00", tz="UTC"), 1.0, 1.0, 1.0, 1.0, 1.0, "feed"),
            dict(zip(FEATURES, rng.normal(size=len(FEATURES)).tolist(), strict=True)),
        )
        for i in range(n)
    ]
    return PreparedBatch(rows, frozenset(), tuple(FEATURES), np.ones(n, dtype=bool))


def predictor_for(
    fake: FakeEndpoint, now: list[float], fallback: LocalChampionModel | None = None
) -> EndpointPredictor:
    client = boto3.client(
        "sagemaker-runtime", region_name="us-east-1", endpoint_url=fake.url, config=endpoint_client_config(0.5, 2)
    )
    return EndpointPredictor(
        SageMakerEndpointModel(client, "direction", FEATURES),
        CircuitBreaker(failures=2, reset_s=10, clock=lambda: now[0]),
        fallback=fallback,
        workers=2,
        timeout_s=0.5,
        retries=1,
        backoff_s=0.01,
        seed=0,
    )


async def predict_while_the_loop_runs(predictor: EndpointPredictor, batch: PreparedBatch):  # noqa: ANN201
    """The prediction, and whether another task ran to the end while it was awaited (the loop was free)."""
    other_task_done = asyncio.Event()

    async def other_task() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        other_task_done.set()

    other = asyncio.create_task(other_task())
    prediction = await predictor.predict(batch)
    await other
    return prediction, other_task_done.is_set()


def test_a_hanging_then_failing_endpoint_opens_the_circuit_and_recovery_closes_it() -> None:
    now = [0.0]
    batch = batch_of(3)

    async def main(fake: FakeEndpoint) -> None:
        predictor = predictor_for(fake, now)
        answered = await predictor.predict(batch)
        assert answered.probs.tolist() == [0.625] * 3 and answered.detail is None
        assert answered.version == "endpoint:direction"
        fake.mode = "hang"
        hung, loop_was_free = await predict_while_the_loop_runs(predictor, batch)
        assert loop_was_free and hung.detail == "endpoint_unavailable" and np.isnan(hung.probs).all()
        assert predictor.calls["timeout"] == 2 and predictor.breaker.state == "open"  # the call and its retry
        assert "no answer within 0.5 s" in predictor.problem
        calls = sum(fake.calls.values())
        skipped = await predictor.predict(batch)  # open: not even tried
        assert skipped.detail == "endpoint_unavailable" and sum(fake.calls.values()) == calls
        assert predictor.calls["short_circuited"] == 1
        fake.mode = "error"
        now[0] = 10.0  # half-open: one trial, which fails: open again
        assert (await predictor.predict(batch)).detail == "endpoint_unavailable"
        assert predictor.calls["error"] == 1 and predictor.breaker.state == "open" and predictor.breaker.opened == 2
        assert "ModelError" in predictor.problem
        fake.mode = "ok"
        now[0] = 20.0  # the next trial succeeds: closed
        recovered = await predictor.predict(batch)
        assert recovered.probs.tolist() == [0.625] * 3 and recovered.detail is None
        assert predictor.breaker.state == "closed" and predictor.problem is None
        predictor.close()

    with FakeEndpoint() as fake:
        asyncio.run(asyncio.wait_for(main(fake), 60))


def test_the_local_champion_answers_while_the_endpoint_cannot(qe_home: Path) -> None:
    version = register_champion(qe_home)
    local = LocalChampionModel(make_model_registry())
    now = [0.0]
    batch = batch_of(4)

    async def main(fake: FakeEndpoint) -> None:
        predictor = predictor_for(fake, now, fallback=local)
        fake.mode = "error"
        fallen_back = await predictor.predict(batch)
        assert fallen_back.detail == "local_fallback" and fallen_back.version == version
        assert np.array_equal(fallen_back.probs, local.predict(batch.inputs())) and predictor.fallbacks == 1
        fake.mode = "ok"
        now[0] = 10.0
        assert (await predictor.predict(batch)).detail is None
        predictor.close()

    with FakeEndpoint() as fake:
        asyncio.run(asyncio.wait_for(main(fake), 60))


def test_bad_predictor_settings_are_named() -> None:
    endpoint = SageMakerEndpointModel(object(), "e", FEATURES)
    with pytest.raises(ValueError, match="workers=0"):
        EndpointPredictor(endpoint, CircuitBreaker(), workers=0)
    with pytest.raises(ValueError, match="timeout_s=0"):
        EndpointPredictor(endpoint, CircuitBreaker(), timeout_s=0)
    with pytest.raises(ValueError, match="failures=0"):
        CircuitBreaker(failures=0)
