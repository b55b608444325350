"""OnlineLayer: labels learnt only once settled, its guard rails, reset on a new champion, exact restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_engine.online.layer import UPDATE_COLUMNS, OnlineLayer

TICKERS = ["A", "B", "C"]
SESSIONS = pd.date_range("2024-01-02 21:00", periods=120, freq="B", tz="UTC")


def market(seed: int, flip_at: int | None = None) -> pd.DataFrame:
    """Per session and ticker a batch probability and a next-session label; after ``flip_at`` the edge reverses."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, ts in enumerate(SESSIONS[:-1]):
        for ticker in TICKERS:
            p = float(rng.uniform(0.3, 0.7))
            truth = 1 - p if flip_at is not None and i >= flip_at else p
            rows.append((ticker, ts, SESSIONS[i + 1], int(rng.random() < truth), p))
    return pd.DataFrame(rows, columns=["ticker", "ts", "t1", "label", "prob"])


def serve(layer: OnlineLayer, frame: pd.DataFrame, version: str = "v1", sessions=None) -> list:  # noqa: ANN001
    """What the bridge does at each bar close: settle what the close settles, then adapt its predictions."""
    out = []
    for ts, group in frame.groupby("ts", sort=True):
        if sessions is not None and ts not in sessions:
            continue
        layer.settle(frame, ts)
        out += [layer.adapt(t, ts, p, version) for t, p in zip(group["ticker"], group["prob"], strict=True)]
    return out


def test_before_any_label_the_batch_probability_is_served_and_kept_pending() -> None:
    layer = OnlineLayer()
    adapted = layer.adapt("A", SESSIONS[0], 0.61, "v1")
    assert (adapted.prob, adapted.prob_batch, adapted.prob_adapted, adapted.used) == (0.61, 0.61, 0.61, "adapted")
    assert layer.pending == {("A", SESSIONS[0].value): (0.61, 0.61, True)}
    assert layer.status()["reason"] == "on: 0 of 100 labels judged"


def test_a_label_is_learnt_only_once_its_t1_has_passed_in_settlement_order() -> None:
    layer = OnlineLayer()
    for ticker in ("B", "A"):
        layer.adapt(ticker, SESSIONS[0], 0.6, "v1")
    layer.adapt("A", SESSIONS[1], 0.4, "v1")
    labels = pd.DataFrame(
        {
            "ticker": ["A", "B", "A", "Z"],
            "ts": [SESSIONS[0], SESSIONS[0], SESSIONS[1], SESSIONS[0]],
            "t1": [SESSIONS[1], SESSIONS[1], SESSIONS[2], SESSIONS[1]],
            "label": [1, 0, 1, 1],
        }
    )
    assert layer.settle(labels, SESSIONS[0]).empty  # nothing settled yet
    updates = layer.settle(labels, SESSIONS[1])
    assert list(updates.columns) == list(UPDATE_COLUMNS)
    assert updates[["ticker", "label"]].values.tolist() == [["A", 1], ["B", 0]]  # Z was never predicted
    assert layer.labels == 2 and list(layer.pending) == [("A", SESSIONS[1].value)]
    assert layer.settle(labels, SESSIONS[1]).empty  # each label once
    assert len(layer.settle(labels, SESSIONS[2])) == 1 and not layer.pending


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 1000),
    max_shift=st.floats(0.0, 0.5),
    probe=st.floats(0.001, 0.999),
)
def test_the_adapted_probability_never_moves_further_than_max_shift(seed: int, max_shift: float, probe: float) -> None:
    layer = OnlineLayer(max_shift=max_shift, forgetting=0.9)
    for adapted in serve(layer, market(seed, flip_at=0)):
        assert abs(adapted.prob_adapted - adapted.prob_batch) <= max_shift + 1e-12
    adapted = layer.adapt("A", SESSIONS[-1], probe, "v1")
    assert abs(adapted.prob_adapted - probe) <= max_shift + 1e-12
    if max_shift == 0:
        assert adapted.used == "batch" and not layer.active


def test_after_a_flip_it_adapts_and_when_adapting_hurts_it_switches_itself_off() -> None:
    layer = OnlineLayer(min_labels=30, forgetting=0.97, max_shift=0.3)
    flipped = market(1, flip_at=0)
    served = serve(layer, flipped)
    late = served[len(served) // 2 :]
    assert np.mean([a.prob_adapted < a.prob_batch for a in late if a.prob_batch > 0.55]) > 0.9  # learnt the flip
    assert layer.active
    # the edge flips back: the adapted map is now wrong and worse than the batch model until it relearns
    back = market(2).assign(
        ts=lambda f: f["ts"] + pd.Timedelta(days=400), t1=lambda f: f["t1"] + pd.Timedelta(days=400)
    )
    served = serve(layer, back)
    assert layer.switched_off >= 1
    assert any(a.used == "batch" for a in served)
    losses = layer.rolling_logloss
    assert set(losses) == {"batch", "adapted"}


def test_a_new_champion_resets_the_layer() -> None:
    layer = OnlineLayer(forgetting=0.9)
    serve(layer, market(3, flip_at=0))
    assert layer.labels > 0 and layer.calibration.a != 1.0
    adapted = layer.adapt("A", SESSIONS[-1], 0.6, "v2")
    assert layer.version == "v2" and layer.labels == 0 and adapted.prob_adapted == 0.6
    assert list(layer.pending) == [("A", SESSIONS[-1].value)]


def test_a_restart_from_the_saved_state_gives_exactly_the_outputs_without_one(tmp_path: Path) -> None:
    frame = market(4, flip_at=40)
    first, second = set(SESSIONS[:70]), set(SESSIONS[70:])
    through = OnlineLayer(forgetting=0.98)
    expected = serve(through, frame, sessions=first) + serve(through, frame, sessions=second)
    before = OnlineLayer(forgetting=0.98)
    got = serve(before, frame, sessions=first)
    before.save(tmp_path / "state.json")
    after = OnlineLayer(forgetting=0.98)
    assert after.load(tmp_path / "state.json")
    got += serve(after, frame, sessions=second)
    assert got == expected  # the same floats, not approximately
    assert after.to_json() == through.to_json()
    assert not OnlineLayer(forgetting=0.9).load(tmp_path / "state.json")  # saved under other settings
    assert not OnlineLayer().load(tmp_path / "missing.json")


def test_warm_up_from_the_prediction_log_replays_what_the_live_layer_did() -> None:
    frame = market(5, flip_at=30)
    live = OnlineLayer()
    serve(live, frame)
    warm = OnlineLayer()
    learnt = warm.warm_up(frame[["ticker", "ts", "prob"]], frame, "v1")
    assert learnt == live.labels and warm.to_json() == live.to_json()


def test_updates_are_logged_once_per_settlement_and_read_back(tmp_path: Path) -> None:
    layer = OnlineLayer(updates_dir=tmp_path / "updates")
    frame = market(6)
    for ts, group in list(frame.groupby("ts", sort=True))[:5]:
        layer.write_updates(layer.settle(frame, ts))
        for t, p in zip(group["ticker"], group["prob"], strict=True):
            layer.adapt(t, ts, p, "v1")
    logged = layer.read_updates()
    assert len(logged) == layer.labels == 12 and len(list((tmp_path / "updates").iterdir())) == 4
    assert logged["ts"].is_monotonic_increasing and set(logged["model_version"]) == {"v1"}


def test_bad_settings_and_labels_are_named() -> None:
    with pytest.raises(ValueError, match="max_shift=0.7"):
        OnlineLayer(max_shift=0.7)
    with pytest.raises(ValueError, match="min_labels"):
        OnlineLayer(min_labels=-1)
    with pytest.raises(ValueError, match="labels.*label"):
        OnlineLayer().settle(pd.DataFrame({"ticker": [], "ts": [], "t1": []}), SESSIONS[0])
