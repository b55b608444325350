"""Model registry: immutable versions, an atomic champion pointer, S3 through moto, no pickle, the promotion rule."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from moto import mock_aws
from sklearn.metrics import log_loss

from quant_engine.aws.s3 import S3FileSystem
from quant_engine.backends import make_model_registry
from quant_engine.config import Settings
from quant_engine.storage import atomic
from quant_engine.storage.filesystem import ConcurrentCommitError, LocalFileSystem
from quant_engine.training.registry import (
    ModelMetadata,
    ModelRegistry,
    PromotionRule,
    RegistryError,
    UnknownVersionError,
    holdout_metrics,
    parse_version,
)

FEATURES = ["ret_1", "ret_5", "vol_20"]


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return pd.DataFrame(x, columns=FEATURES).assign(label=y)


def _model(path: Path, rounds: int = 5, seed: int = 0) -> Path:
    frame = _frame(seed=seed)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": seed},
        xgb.DMatrix(frame[FEATURES], frame["label"], feature_names=FEATURES),
        rounds,
    )
    booster.save_model(path)
    return path


def _metadata(**changes: object) -> ModelMetadata:
    fields = {
        "features": FEATURES,
        "data_start": "2020-01-01T00:00Z",
        "data_end": "2021-12-31T00:00Z",
        "data_fingerprint": "abc123",
        "params": {"max_depth": 2},
        "metrics": {"logloss": np.float64(0.6)},
        "wfo_report": "reports/wfo/run-1/report.json",
        "training": {"runner": "local_spot"},
    }
    return ModelMetadata(**{**fields, **changes})


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalFileSystem(tmp_path / "models"))


def test_register_stores_json_model_and_metadata_as_a_new_version(registry: ModelRegistry, tmp_path: Path) -> None:
    v1 = registry.register(_model(tmp_path / "a.json"), _metadata(), now="2026-01-02T03:04Z")
    v2 = registry.register(_model(tmp_path / "b.ubj", rounds=7), _metadata(data_fingerprint="def"))
    assert (v1, v2) == ("v0001", "v0002") and registry.versions() == [v1, v2]
    first = registry.get(1)
    assert first.created_at == "2026-01-02T03:04:00+00:00" and first.model_format == "json"
    assert first.metadata.features == tuple(FEATURES) and first.metadata.metrics == {"logloss": 0.6}
    assert first.metadata.wfo_report == "reports/wfo/run-1/report.json"
    assert registry.get("v2").model_format == "ubj"
    assert [m.version for m in registry.list()] == [v1, v2] and registry.latest().version == v2
    # the same bytes on the same data are the same version (a rerun); on other data, a new one
    assert registry.register(tmp_path / "a.json", _metadata(metrics={"logloss": 0.5})) == v1
    assert registry.register(tmp_path / "a.json", _metadata(data_fingerprint="other")) == "v0003"
    # the stored model is the same booster: same predictions as the file that was registered
    frame = _frame(seed=3)
    original = xgb.Booster(model_file=str(tmp_path / "a.json"))
    matrix = xgb.DMatrix(frame[FEATURES], feature_names=FEATURES)
    np.testing.assert_array_equal(registry.load_booster(v1).predict(matrix), original.predict(matrix))


def test_versions_are_immutable(registry: ModelRegistry, tmp_path: Path) -> None:
    version = registry.register(_model(tmp_path / "a.json"), _metadata())
    folder = tmp_path / "models" / registry.name / "versions" / version
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    registry.register(_model(tmp_path / "b.json", rounds=9), _metadata())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # the commit is create-only: a second metadata for the same version is refused
    with pytest.raises(ConcurrentCommitError):
        registry.fs.replace_atomic(f"{registry.name}/versions/{version}/metadata.json", b"{}", expected_version=None)
    # a tampered model file is detected on load rather than served
    (model_file,) = folder.glob("model-*.json")
    model_file.write_bytes(model_file.read_bytes() + b" ")  # still valid JSON, different bytes
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        registry.load_booster(version)


def test_a_crashed_register_leaves_no_visible_version(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry.fs, "replace_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        registry.register(_model(tmp_path / "a.json"), _metadata())
    monkeypatch.undo()
    assert registry.versions() == []
    # the half-written folder's number is not reused, so its orphan file never joins a real version
    assert registry.register(_model(tmp_path / "a.json"), _metadata()) == "v0002"


def test_champion_pointer_moves_atomically(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = registry.register(_model(tmp_path / "a.json"), _metadata())
    v2 = registry.register(_model(tmp_path / "b.json", rounds=8), _metadata())
    assert registry.champion() is None
    first = registry.promote(v1, "first model", now="2026-01-01T00:00Z")
    assert (first.version, first.previous, first.reason) == (v1, None, "first model")

    def crash(src: object, dst: object) -> None:
        raise OSError("killed between the temp file and the rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        registry.promote(v2, "better")
    monkeypatch.undo()
    assert registry.champion() == first
    assert [p.name for p in (tmp_path / "models" / registry.name).iterdir() if p.name.startswith(".champion")] == []

    second = registry.promote(v2, "better")
    assert (second.version, second.previous) == (v2, v1)
    assert json.loads((tmp_path / "models" / registry.name / "champion.json").read_text())["version"] == v2
    assert registry.promote(v2, "rerun") == second  # already champion: nothing written


def test_a_stale_promoter_cannot_overwrite_a_newer_champion(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = registry.register(_model(tmp_path / "a.json"), _metadata())
    v2 = registry.register(_model(tmp_path / "b.json", rounds=8), _metadata())
    v3 = registry.register(_model(tmp_path / "c.json", rounds=9), _metadata())
    registry.promote(v1, "first")
    stale = iter([registry.fs.read_versioned(f"{registry.name}/champion.json")])
    ModelRegistry(registry.fs, registry.name).promote(v2, "someone else was faster")
    real = registry.fs.read_versioned
    monkeypatch.setattr(registry.fs, "read_versioned", lambda key: next(stale, None) or real(key))
    with pytest.raises(ConcurrentCommitError):
        registry.promote(v3, "promoted from a view read before the other promotion")
    monkeypatch.undo()
    assert registry.champion().version == v2


def test_no_pickle_ever(registry: ModelRegistry, tmp_path: Path) -> None:
    booster = xgb.Booster(model_file=str(_model(tmp_path / "a.json")))
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(booster))
    with pytest.raises(RegistryError, match="not an XGBoost JSON or UBJ model"):
        registry.register(tmp_path / "m.pkl", _metadata())
    (tmp_path / "disguised.json").write_bytes(pickle.dumps(booster))
    with pytest.raises(RegistryError, match="is not an XGBoost JSON/UBJ model"):
        registry.register(tmp_path / "disguised.json", _metadata())
    registry.register(tmp_path / "a.json", _metadata())
    stored = [p for p in (tmp_path / "models").rglob("*") if p.is_file() and p.name != ".lock"]
    assert sorted(p.suffix for p in stored) == [".json", ".json"]
    assert all(not p.read_bytes().startswith(b"\x80") for p in stored)  # pickle's protocol marker


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["ret_1", "ret_5"]}, "expects 3 features but the metadata names 2"),
        ({"features": ["ret_1", "vol_20", "ret_5"]}, "was trained on features"),
        ({"features": []}, "must be a non-empty list"),
        ({"data_start": "2020-01-01"}, "must be a time zone-aware time"),
        ({"data_end": "2019-01-01T00:00Z"}, "is before data_start"),
        ({"data_fingerprint": ""}, "must be a non-empty digest"),
        ({"metrics": {"auc": float("nan")}}, "must hold finite numbers"),
    ],
)
def test_register_refuses_bad_metadata(registry: ModelRegistry, tmp_path: Path, change: dict, message: str) -> None:
    model = _model(tmp_path / "a.json")
    with pytest.raises(RegistryError, match=message):
        registry.register(model, {**_metadata().to_json(), **change})
    assert registry.versions() == []


def test_version_names_and_unknown_versions(registry: ModelRegistry, tmp_path: Path) -> None:
    assert [parse_version(v) for v in (3, "3", "v3", "v0003")] == ["v0003"] * 4
    for bad in (0, "x1", True, -1, "v"):
        with pytest.raises(RegistryError, match="is not a model version"):
            parse_version(bad)
    with pytest.raises(UnknownVersionError, match="has no version v0004 \\(versions: none\\)"):
        registry.get(4)
    with pytest.raises(UnknownVersionError):
        registry.promote(4, "does not exist")
    with pytest.raises(RegistryError, match="must say why"):
        registry.promote(1, " ")
    with pytest.raises(RegistryError, match="model name"):
        ModelRegistry(registry.fs, "bad/name")


def test_s3_registry_with_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="qe-bucket")
        monkeypatch.setenv("QE_BACKEND", "aws")
        monkeypatch.setenv("QE_S3_BUCKET", "qe-bucket")
        registry = make_model_registry(Settings.from_env())
        assert isinstance(registry.fs, S3FileSystem)
        v1 = registry.register(_model(tmp_path / "a.json"), _metadata())
        v2 = registry.register(_model(tmp_path / "b.ubj", rounds=6), _metadata())
        registry.promote(v1, "first")
        registry.promote(v2, "second")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="qe-bucket")["Contents"])
        assert keys[0] == f"quant-engine/models/{registry.name}/champion.json"
        assert sum(k.endswith("metadata.json") for k in keys) == 2
        assert registry.champion().version == v2 and registry.champion().previous == v1
        assert registry.load_booster(v2).num_features() == len(FEATURES)
        # the create-only commit is enforced by S3 itself (If-None-Match)
        with pytest.raises(ConcurrentCommitError):
            registry.fs.replace_atomic(f"{registry.name}/versions/{v1}/metadata.json", b"{}", expected_version=None)


def test_holdout_metrics_and_promotion_rule(tmp_path: Path) -> None:
    holdout = _frame(n=600, seed=9)
    strong = xgb.Booster(model_file=str(_model(tmp_path / "strong.json", rounds=30)))
    weak = xgb.Booster(model_file=str(_model(tmp_path / "weak.json", rounds=1)))
    good, bad = holdout_metrics(strong, holdout, FEATURES), holdout_metrics(weak, holdout, FEATURES)
    assert good["rows"] == 600 and good["logloss"] < bad["logloss"] and good["auc"] > 0.8
    assert good["base_logloss"] == pytest.approx(log_loss(holdout["label"], np.full(600, holdout["label"].mean())))
    rule = PromotionRule()
    assert rule.decide(good, None).promote
    assert rule.decide(good, bad).promote and "beats the champion" in rule.decide(good, bad).reason
    assert not rule.decide(bad, good).promote
    champion = {"logloss": 0.600, "auc": 0.700}
    base = {"base_logloss": 0.693}
    assert rule.decide({"logloss": 0.597, "auc": 0.700, **base}, champion).promote  # exactly 0.5% lower
    assert not rule.decide({"logloss": 0.598, "auc": 0.750, **base}, champion).promote  # 0.33%: noise
    decision = rule.decide({"logloss": 0.550, "auc": 0.694, **base}, champion)  # calibrated but ranks worse
    assert not decision.promote and "AUC drop beyond 0.0050" in decision.reason
    assert rule.decide({"logloss": 0.550, "auc": 0.696, **base}, champion).promote
    # the floor, for the first model too: below the base rate's log-loss and AUC above 0.505
    coin = rule.decide({"logloss": 0.6935, "auc": 0.53, **base}, None)
    assert not coin.promote and "not below the base rate 0.69300" in coin.reason
    flat = rule.decide({"logloss": 0.69, "auc": 0.504, **base}, champion)
    assert not flat.promote and "AUC 0.5040 is not above 0.5 + 0.005" in flat.reason
    with pytest.raises(RegistryError, match="must be a number in \\[0, 1\\)"):
        PromotionRule(min_logloss_gain=1.5)
    with pytest.raises(RegistryError, match="one class only"):
        holdout_metrics(strong, holdout.assign(label=1), FEATURES)


def _models_cli(*argv: str) -> int:
    """``quant-engine models ...`` through the group's own ``register``."""
    import argparse

    from quant_engine.cli import training as cli

    parser = argparse.ArgumentParser(prog="quant-engine")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_models_cli_lists_shows_and_promotes(qe_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _models_cli("models", "list") == 0
    assert "has no versions yet" in capsys.readouterr().out
    registry = make_model_registry()
    v1 = registry.register(_model(tmp_path / "a.json"), _metadata(metrics={"logloss": 0.6912, "auc": 0.5311}))
    v2 = registry.register(_model(tmp_path / "b.json", rounds=8), _metadata())
    registry.promote(v1, "first")
    _models_cli("models", "list")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"* {v1}") and "0.6912" in lines[1] and "0.5311" in lines[1]
    assert lines[2].startswith(f"  {v2}") and "2020-01-01..2021-12-31" in lines[2] and "local_spot" in lines[2]
    _models_cli("models", "show", "2")
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["champion"], shown["features"]) == (v2, False, FEATURES)
    assert _models_cli("models", "promote", "v2", "--reason", "reviewed the holdout report") == 0
    assert capsys.readouterr().out.strip() == f"champion: {v2} (was {v1}): reviewed the holdout report"
    assert registry.champion().version == v2
    with pytest.raises(UnknownVersionError):
        _models_cli("models", "show", "9")


def test_evaluate_candidate_scores_both_on_the_same_holdout(registry: ModelRegistry, tmp_path: Path) -> None:
    from quant_engine.training.registry import evaluate_candidate

    # every holdout row lies after the champion's data (it ends 2021-12-31): unseen by both
    holdout = _frame(n=600, seed=9).assign(ts=pd.date_range("2022-01-03", periods=600, freq="h", tz="UTC"))
    weak, strong = _model(tmp_path / "weak.json", rounds=1), _model(tmp_path / "strong.json", rounds=30)
    first = evaluate_candidate(registry, weak, holdout, FEATURES)
    assert (first["promote"], first["champion"], first["champion_metrics"]) == (True, None, None)
    v1 = registry.register(weak, _metadata(metrics=first["candidate"]))
    registry.promote(v1, first["reason"], expected_champion=first["champion"])
    better = evaluate_candidate(registry, strong, holdout, FEATURES)
    assert better["promote"] and better["champion"] == v1
    assert better["champion_metrics"] == holdout_metrics(registry.load_booster(v1), holdout, FEATURES)
    assert better["compared_on"] == {"rows": 600, "from": "2021-12-31 00:00:00+00:00"}
    worse = evaluate_candidate(registry, weak, holdout, FEATURES)
    assert not worse["promote"] and "log-loss gain below 0.50%" in worse["reason"]
    # a champion whose features this holdout lacks cannot be judged on it: no automatic promotion
    renamed = holdout.rename(columns={"vol_20": "vol_60"})
    names = ["ret_1", "ret_5", "vol_60"]
    xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(renamed[names], renamed["label"], feature_names=names), 5
    ).save_model(tmp_path / "other.json")
    other = evaluate_candidate(registry, tmp_path / "other.json", renamed, names)
    assert not other["promote"] and "needs feature(s) ['vol_20']" in other["reason"]


def test_a_champion_is_compared_only_on_rows_it_did_not_train_on(registry: ModelRegistry, tmp_path: Path) -> None:
    from quant_engine.training.registry import evaluate_candidate

    weak, strong = _model(tmp_path / "weak.json", rounds=1), _model(tmp_path / "strong.json", rounds=30)
    # the champion's holdout began 2022-03-01: it trained on everything before
    v1 = registry.register(weak, _metadata(data_end="2022-06-30T00:00Z", training={"holdout_start": "2022-03-01"}))
    registry.promote(v1, "first")
    inside = _frame(n=600, seed=9).assign(ts=pd.date_range("2022-01-03", periods=600, freq="h", tz="UTC"))
    refused = evaluate_candidate(registry, strong, inside, FEATURES)  # the whole holdout precedes 2022-03-01
    assert not refused["promote"] and refused["champion_metrics"] is None
    assert (
        "trained on data until 2022-03-01 00:00:00+00:00; the candidate's holdout leaves 0 row(s)" in refused["reason"]
    )
    straddling = inside.assign(ts=pd.date_range("2022-02-20", periods=600, freq="h", tz="UTC"))
    judged = evaluate_candidate(registry, strong, straddling, FEATURES)
    assert judged["compared_on"]["rows"] == 600 - 9 * 24  # from March 1 on
    unseen = straddling[straddling["ts"] >= "2022-03-01"]
    assert judged["champion_metrics"] == holdout_metrics(registry.load_booster(v1), unseen, FEATURES)
    assert judged["candidate_on_unseen"] == holdout_metrics(xgb.Booster(model_file=str(strong)), unseen, FEATURES)
    assert judged["promote"]


def test_promote_refuses_when_the_judged_champion_was_replaced(registry: ModelRegistry, tmp_path: Path) -> None:
    v1 = registry.register(_model(tmp_path / "a.json"), _metadata())
    v2 = registry.register(_model(tmp_path / "b.json", rounds=8), _metadata())
    v3 = registry.register(_model(tmp_path / "c.json", rounds=9), _metadata())
    registry.promote(v1, "first", expected_champion=None)
    with pytest.raises(ConcurrentCommitError, match="is v0001, not none as when v0003 was judged"):
        registry.promote(v3, "judged before v1 was promoted", expected_champion=None)
    registry.promote(v2, "judged against v1", expected_champion=v1)
    assert registry.champion().version == v2


WFO_RUN = {
    "run_id": "manual__2026-12-01",
    "splitter": "walk_forward",
    "pbo": 0.25,
    "deflated_sharpe": 0.71,
    "psr": 0.93,
    "selected_trial": 1,
    "selected_params": {"max_depth": 3, "threshold": 0.0},
    "n_trials": 4,
}


def test_docstring_examples_run() -> None:
    import doctest

    from quant_engine.training import registry as module

    assert doctest.testmod(module).failed == 0


def test_metadata_keeps_the_walk_forward_run(registry: ModelRegistry, tmp_path: Path) -> None:
    version = registry.register(_model(tmp_path / "a.json"), _metadata(wfo_run={**WFO_RUN, "pbo": np.float64(0.25)}))
    stored = json.loads((tmp_path / "models" / registry.name / "versions" / version / "metadata.json").read_text())
    assert stored["wfo_run"] == WFO_RUN
    assert registry.get(version).metadata.wfo_run == WFO_RUN
    # a version registered before the field existed reads back without one
    old = {k: v for k, v in _metadata().to_json().items() if k != "wfo_run"}
    assert ModelMetadata.from_json(old).wfo_run is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"wfo_run": "run-1"}, "wfo_run='run-1' must be a mapping"),
        ({"wfo_run": {**WFO_RUN, "run_id": ""}}, r"wfo_run\['run_id'\]='' must be a non-empty string"),
        ({"wfo_run": {k: v for k, v in WFO_RUN.items() if k != "splitter"}}, r"wfo_run\['splitter'\]=None must be"),
        ({"wfo_run": {**WFO_RUN, "pbo": 1.5}}, r"wfo_run\['pbo'\]=1.5 must be a probability in \[0, 1\], or None"),
        ({"wfo_run": {**WFO_RUN, "deflated_sharpe": float("nan")}}, r"wfo_run.deflated_sharpe is nan"),
    ],
)
def test_a_bad_walk_forward_record_is_refused(change: dict, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        _metadata(**change)


def test_min_deflated_sharpe_refuses_a_candidate_whose_search_may_be_luck(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    from quant_engine.training.registry import evaluate_candidate

    holdout = _frame(n=600, seed=9).assign(ts=pd.date_range("2022-01-03", periods=600, freq="h", tz="UTC"))
    strong = _model(tmp_path / "strong.json", rounds=30)
    assert evaluate_candidate(registry, strong, holdout, FEATURES, wfo_run=WFO_RUN)["promote"]  # not asked: passes
    rule = PromotionRule(min_deflated_sharpe=0.9)
    refused = evaluate_candidate(registry, strong, holdout, FEATURES, rule, wfo_run=WFO_RUN)
    assert not refused["promote"] and refused["reason"] == (
        "deflated Sharpe 0.710 of walk-forward run manual__2026-12-01 is not above min_deflated_sharpe=0.9: "
        "the selected trial may owe its Sharpe ratio to the luck of searching 4 trials"
    )
    passed = evaluate_candidate(
        registry, strong, holdout, FEATURES, PromotionRule(min_deflated_sharpe=0.7), wfo_run=WFO_RUN
    )
    assert passed["promote"] and passed["reason"].startswith("first model")
    # equal is not above; a run without a deflated Sharpe, or no run at all, cannot pass
    assert PromotionRule(min_deflated_sharpe=0.71).research(WFO_RUN) is not None
    assert "deflated Sharpe n/a" in rule.research({**WFO_RUN, "deflated_sharpe": None}).reason
    assert "names none" in evaluate_candidate(registry, strong, holdout, FEATURES, rule)["reason"]
    # against a champion too: the comparison may say promote, the research still refuses
    registry.promote(registry.register(_model(tmp_path / "weak.json", rounds=1), _metadata()), "first")
    beaten = evaluate_candidate(registry, strong, holdout, FEATURES, rule, wfo_run=WFO_RUN)
    assert beaten["champion_metrics"] is not None and not beaten["promote"]
    assert beaten["reason"].startswith("deflated Sharpe 0.710")
    assert evaluate_candidate(registry, strong, holdout, FEATURES, wfo_run=WFO_RUN)["promote"]
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(RegistryError, match="min_deflated_sharpe=.* must be a number in \\[0, 1\\), or None"):
            PromotionRule(min_deflated_sharpe=bad)
