"""Your own features: registered once, found through the setting or an entry point, parity-checked.

Every test that registers gets a fresh process registry and writes its feature module to its own
``tmp_path`` under a name no other test uses, so the import cache never carries one test's
registrations into another.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.backends import make_group_stores, make_offline_store
from quant_engine.cli import main
from quant_engine.config import SettingsError, feature_modules_from_env
from quant_engine.features import registry as registry_module
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.parity import check_parity, registered_features, synthetic_bars
from quant_engine.features.registry import (
    BUILTIN_FEATURE_SETS,
    ENTRY_POINT_GROUP,
    FeatureRegistrationError,
    FeatureRegistry,
    declared_feature_set_names,
    feature_set_names,
    get_feature_set,
)
from quant_engine.wfo.config import WfoConfig

REPO_ROOT = Path(__file__).resolve().parents[3]

_DEFINITIONS = """
import numpy as np
from quant_engine.features import register_feature, register_feature_set


def _log_return(close):
    return np.log(close[:, -1] / close[:, 0])


def _range_position(high, low, close):
    lowest, highest = low.min(axis=1), high.max(axis=1)
    span = highest - lowest
    return np.where(span > 0, (close[:, -1] - lowest) / np.where(span > 0, span, 1.0), 0.5)
"""
_REGISTRATIONS = """
register_feature("log_return_10", ("close",), 11, _log_return, "10-bar log return")
register_feature("range_position_10", ("high", "low", "close"), 10, _range_position, "close in the 10-bar range")
register_feature_set("momentum_plus", ["log_return_1", "log_return_10", "range_position_10"])
"""
#: A user's module as the docs show it: two features and a set mixing them with a built-in one.
USER_MODULE = _DEFINITIONS + _REGISTRATIONS
#: The same, registering when its entry point's callable is called rather than when imported.
ENTRY_POINT_MODULE = _DEFINITIONS + "\ndef register():" + textwrap.indent(_REGISTRATIONS, "    ")

#: A feature that reads the next row: the next bar's close in the batch path's history.
LOOK_AHEAD_MODULE = """
import numpy as np
from quant_engine.features import register_feature

register_feature("next_close", ("close",), 1, lambda close: np.roll(close[:, -1], -1), "peeks at the next bar")
"""


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> FeatureRegistry:
    """This test's own process registry, with no feature modules configured."""
    fresh = FeatureRegistry()
    monkeypatch.setattr(registry_module, "_REGISTRY", fresh)
    monkeypatch.delenv("QE_FEATURE_MODULES", raising=False)
    return fresh


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module under a fresh name into a folder on ``sys.path``; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"qe_user_features_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return name

    return write


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return synthetic_bars(253)


# --- the parity check over everything registered -----------------------------------------------


@pytest.mark.parametrize("feature", registered_features(), ids=lambda f: f.definition.name)
def test_every_registered_feature_streams_as_it_batches(feature, market) -> None:
    (result,) = check_parity([feature], bars=market)
    assert result.ok, result.describe()
    assert result.values == 2 * len(market)


def test_a_module_named_by_the_setting_registers_sets_that_resolve_and_pass_the_check(
    fresh_registry, write_module, monkeypatch, market
) -> None:
    module = write_module(USER_MODULE)
    monkeypatch.setenv("QE_FEATURE_MODULES", module)

    assert feature_set_names() == (*BUILTIN_FEATURE_SETS, "momentum_plus")
    feature_set = get_feature_set("momentum_plus")
    assert feature_set.names == ["log_return_1", "log_return_10", "range_position_10"]
    assert fresh_registry.feature_sets()["momentum_plus"].module == module

    user_features = list(fresh_registry.features().values())
    assert [f.module for f in user_features] == [module, module]
    results = check_parity(user_features, bars=market)
    assert [r.ok for r in results] == [True, True], [r.describe() for r in results]

    # The batch values against an independent oracle: pandas' shift and rolling extremes.
    one = market[market["ticker"] == "SYN01"].reset_index(drop=True)
    frame = feature_set.compute_batch(one)
    close = one["close"]
    lowest, highest = one["low"].rolling(10).min(), one["high"].rolling(10).max()
    np.testing.assert_allclose(frame["log_return_10"], np.log(close / close.shift(10)), rtol=1e-12)
    np.testing.assert_allclose(frame["range_position_10"], (close - lowest) / (highest - lowest), rtol=1e-12)


def test_the_documented_example_module_registers_and_passes_the_check(fresh_registry, monkeypatch, market) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "examples"))
    monkeypatch.delitem(sys.modules, "my_features", raising=False)
    monkeypatch.setenv("QE_FEATURE_MODULES", "my_features")
    assert declared_feature_set_names() == feature_set_names() == (*BUILTIN_FEATURE_SETS, "trend_range")
    assert get_feature_set("trend_range").names[-2:] == ["trend_slope_20", "range_position_20"]
    results = check_parity(fresh_registry.features().values(), bars=market)
    assert [(r.feature, r.ok) for r in results] == [("trend_slope_20", True), ("range_position_20", True)]


def _install_entry_point(tmp_path: Path, value: str) -> None:
    """A distribution's metadata on ``sys.path`` whose one entry point of our group is ``value``."""
    name = f"qe_demo_{uuid.uuid4().hex[:10]}"
    dist_info = tmp_path / f"{name}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ndemo = {value}\n")
    importlib.invalidate_caches()


def test_an_entry_point_of_an_installed_distribution_registers_through_its_callable(
    fresh_registry, write_module, tmp_path, market
) -> None:
    module = write_module(ENTRY_POINT_MODULE)
    _install_entry_point(tmp_path, f"{module}:register")

    assert declared_feature_set_names() == (*BUILTIN_FEATURE_SETS, "momentum_plus")
    assert module not in sys.modules, "listing the names must not import the module"
    assert get_feature_set("momentum_plus").names == ["log_return_1", "log_return_10", "range_position_10"]
    results = check_parity(fresh_registry.features().values(), bars=market)
    assert [(r.module, r.ok) for r in results] == [(module, True), (module, True)]


def test_an_entry_point_naming_a_module_registers_on_import(fresh_registry, write_module, tmp_path) -> None:
    module = write_module(USER_MODULE)
    _install_entry_point(tmp_path, module)
    assert get_feature_set("momentum_plus").names[-1] == "range_position_10"
    assert fresh_registry.feature_sets()["momentum_plus"].module == module


def test_an_entry_point_naming_a_missing_function_says_so(fresh_registry, write_module, tmp_path) -> None:
    module = write_module(USER_MODULE)
    _install_entry_point(tmp_path, f"{module}:no_such_function")
    with pytest.raises(FeatureRegistrationError, match=f"entry point 'demo'.*{module} has no no_such_function"):
        feature_set_names()


def test_a_look_ahead_feature_fails_the_check_and_the_command(fresh_registry, write_module, monkeypatch) -> None:
    monkeypatch.setenv("QE_FEATURE_MODULES", write_module(LOOK_AHEAD_MODULE))
    (peek,) = fresh_registry.features().values()
    bars = synthetic_bars(1)
    (result,) = check_parity([peek], bars=bars)
    assert not result.ok
    # Streamed, each window row is its own: update() gets back its own close, update_many another ticker's.
    assert result.mismatches > len(bars)
    assert "next_close" in result.describe() and "MISMATCH" in result.describe()
    assert main(["features", "check", "--feature", "next_close"]) == 1
    assert main(["features", "check", "--feature", "rsi_14"]) == 0


# --- registered sets go where built-in ones go ----------------------------------------------------


def test_a_registered_set_is_ingested_and_accepted_by_walk_forward(fresh_registry, write_module, monkeypatch) -> None:
    monkeypatch.setenv("QE_FEATURE_MODULES", write_module(USER_MODULE))
    request = IngestionRequest.build(
        "synthetic", "2024-03-04", "2024-03-08", tickers=("SYN00",), feature_set="momentum_plus"
    )
    result = ingest(request, make_group_stores())
    assert result.rows_written_offline == 5
    stored = make_offline_store().read(include_history=True)
    assert {"log_return_10", "range_position_10"} <= set(stored.columns)
    assert stored[["log_return_10", "range_position_10"]].notna().all().all()
    assert WfoConfig.from_params({"feature_set": "momentum_plus"}).feature_set == "momentum_plus"


_FORMS_PROBE = """
import json, sys
from qe_forms import ingestion_form, training_form, wfo_form
offered = [form()["feature_set"].schema["enum"] for form in (ingestion_form, wfo_form, training_form)]
heavy = sorted(m for m in ("numpy", "pandas", "{module}") if m in sys.modules)
print(json.dumps({{"offered": offered, "heavy": heavy}}))
"""


def test_the_dag_forms_offer_registered_sets_without_importing_anything_heavy(write_module, tmp_path) -> None:
    module = write_module(USER_MODULE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT / "plugins"), str(tmp_path)]),
        "QE_FEATURE_MODULES": module,
    }
    probe = subprocess.run(
        [sys.executable, "-c", _FORMS_PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["offered"] == [[*BUILTIN_FEATURE_SETS, "momentum_plus"]] * 3
    assert found["heavy"] == [], f"listing the feature sets imported {found['heavy']} while parsing a DAG"


# --- clear errors ---------------------------------------------------------------------------------

_ERRORS = {
    "a built-in name": (
        'register_feature("rsi_14", ("close",), 2, lambda c: c[:, -1], "x")',
        r"feature 'rsi_14': the name is a built-in feature's",
    ),
    "a duplicate": (
        'register_feature("twice", ("close",), 2, lambda c: c[:, -1], "x")\n'
        'register_feature("twice", ("close",), 3, lambda c: c[:, -1], "y")',
        r"feature 'twice': already registered by {module}",
    ),
    "a bad lookback": (
        'register_feature("no_window", ("close",), 0, lambda c: c[:, -1], "x")',
        r"feature 'no_window': .*window=0 must be an integer >= 1",
    ),
    "an unknown input": (
        'register_feature("vwap", ("price",), 3, lambda p: p[:, -1], "x")',
        r"feature 'vwap': .*unknown: \['price'\]",
    ),
    "the wrong shape": (
        'register_feature("whole_window", ("close",), 5, lambda c: c, "x")',
        r"feature 'whole_window': compute failed on 4 probe windows .*returned shape \(4, 5\)",
    ),
    "a crash": (
        'register_feature("crashes", ("close",), 5, lambda c: 1 / 0, "x")',
        r"feature 'crashes': compute failed .*ZeroDivisionError",
    ),
    "an unknown feature in a set": (
        'register_feature_set("mine", ["log_return_1", "log_return_7"])',
        r"feature set 'mine' names unknown feature\(s\) \['log_return_7'\]",
    ),
    "a built-in set name": (
        'register_feature_set("default", ["log_return_1"])',
        r"feature set 'default': the name is a built-in set's",
    ),
}


@pytest.mark.parametrize("case", list(_ERRORS))
def test_registration_errors_name_the_module_and_the_feature(case, fresh_registry, write_module, monkeypatch) -> None:
    body, message = _ERRORS[case]
    module = write_module(f"from quant_engine.features import register_feature, register_feature_set\n{body}\n")
    monkeypatch.setenv("QE_FEATURE_MODULES", module)
    with pytest.raises(FeatureRegistrationError, match=f"^{module}: {message.format(module=module)}"):
        feature_set_names()
    # Discovery ran once: the same error again, and the built-in sets still resolve without it.
    with pytest.raises(FeatureRegistrationError, match=module):
        get_feature_set("anything_registered")
    assert get_feature_set("default").name == "default"


def test_a_module_that_cannot_be_imported_names_the_setting(fresh_registry, monkeypatch) -> None:
    monkeypatch.setenv("QE_FEATURE_MODULES", "qe_no_such_features_module")
    with pytest.raises(FeatureRegistrationError, match="QE_FEATURE_MODULES names 'qe_no_such_features_module'"):
        feature_set_names()
    with pytest.raises(FeatureRegistrationError, match="QE_FEATURE_MODULES names 'qe_no_such_features_module'"):
        declared_feature_set_names()


def test_the_setting_takes_dotted_module_names_only() -> None:
    assert feature_modules_from_env({"QE_FEATURE_MODULES": " mypkg.features , other "}) == ("mypkg.features", "other")
    assert feature_modules_from_env({}) == ()
    with pytest.raises(SettingsError, match=r"QE_FEATURE_MODULES=.*\['my-pkg'\] are not module names"):
        feature_modules_from_env({"QE_FEATURE_MODULES": "my-pkg,ok"})


def test_the_builtin_names_the_forms_list_are_the_definitions_sets(fresh_registry) -> None:
    assert tuple(feature_set_names()) == BUILTIN_FEATURE_SETS == declared_feature_set_names()
