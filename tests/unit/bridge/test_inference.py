"""Inference: the local champion equals the batch scorer and hot-reloads; the SageMaker client speaks CSV."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from quant_engine.backends import make_model_registry
from quant_engine.bridge.inference import LocalChampionModel, NoModelError, SageMakerEndpointModel
from quant_engine.monitoring.predictions import predict_proba

from .conftest import FEATURES, register_model


def test_local_champion_predicts_as_the_batch_scorer(qe_home: Path) -> None:
    version = register_model(qe_home, seed=1, vol_range=(0.12, 0.35))
    model = LocalChampionModel(make_model_registry())
    rows = np.random.default_rng(0).normal(size=(17, len(FEATURES)))
    expected = predict_proba(
        make_model_registry().load_booster(version), pd.DataFrame(rows, columns=FEATURES), FEATURES
    )
    assert model.version == version and model.features == tuple(FEATURES)
    assert np.array_equal(model.predict(rows), expected)
    low, high = model.volatility_range
    assert 0.12 <= low < high <= 0.35
    with pytest.raises(ValueError, match=r"shape \(n, 10\)"):
        model.predict(rows[:, :3])


def test_champion_is_hot_reloaded_between_batches(qe_home: Path) -> None:
    first = register_model(qe_home, seed=1)
    now = [0.0]
    model = LocalChampionModel(make_model_registry(), check_every_s=10, clock=lambda: now[0])
    rows = np.random.default_rng(0).normal(size=(5, len(FEATURES)))
    before = model.predict(rows)
    second = register_model(qe_home, seed=2)  # promoted
    assert not model.refresh() and model.version == first  # not yet time to look
    now[0] = 11.0
    assert model.refresh() and model.version == second and model.reloads == 1
    assert not np.array_equal(model.predict(rows), before)
    now[0] = 30.0
    assert not model.refresh()  # unchanged champion: nothing reloaded


def test_without_a_champion_it_serves_nothing_until_one_is_promoted(qe_home: Path) -> None:
    version = register_model(qe_home, seed=1, promote=False)
    now = [0.0]
    model = LocalChampionModel(make_model_registry(), check_every_s=10, clock=lambda: now[0])
    assert model.version is None and model.features == () and model.volatility_range is None
    assert model.volatility_percentile(0.2) is None
    with pytest.raises(NoModelError, match="has no champion yet"):
        model.predict(np.zeros((1, len(FEATURES))))
    now[0] = 11.0
    assert not model.refresh()  # still none
    make_model_registry().promote(version, "first model")
    now[0] = 22.0
    assert model.refresh() and model.version == version and model.features == tuple(FEATURES)


@pytest.fixture
def moto_endpoint() -> str:
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def queue_results(url: str, bodies: list[str]) -> None:
    payload = {"results": [{"Body": b, "ContentType": "text/csv"} for b in bodies]}
    request = urllib.request.Request(
        f"{url}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).read()


def test_sagemaker_endpoint_against_moto_server(moto_endpoint: str) -> None:
    import boto3

    client = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=moto_endpoint)
    queue_results(moto_endpoint, ["0.25\n0.75\n0.5", "0.9", "not,a,number"])
    model = SageMakerEndpointModel(client, "direction", FEATURES, volatility_range=(0.1, 0.3))
    rows = np.random.default_rng(0).normal(size=(3, len(FEATURES)))
    assert model.predict(rows).tolist() == [0.25, 0.75, 0.5]
    assert model.version == "endpoint:direction" and model.volatility_range == (0.1, 0.3)
    with pytest.raises(ValueError, match="returned 1 values for 2 rows"):
        model.predict(rows[:2])
    with pytest.raises(ValueError, match="not probabilities"):
        model.predict(rows[:1])
    assert not model.refresh()


def test_volatility_percentile_reads_the_training_distribution(qe_home: Path) -> None:
    register_model(qe_home, seed=3, vol_range=(0.1, 0.3))
    model = LocalChampionModel(make_model_registry())
    assert model.volatility_percentile(0.05) == 0.0 and model.volatility_percentile(0.5) == 1.0
    assert 0.3 < model.volatility_percentile(0.2) < 0.7
    endpoint = SageMakerEndpointModel(object(), "e", FEATURES, volatility_range=(0.1, 0.3))
    assert endpoint.volatility_percentile(0.15) == pytest.approx(0.25)
    assert SageMakerEndpointModel(object(), "e", FEATURES).volatility_percentile(0.2) is None
