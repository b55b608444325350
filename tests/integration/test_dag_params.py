"""Every DAG's params make a usable trigger form: each has a type, a default that its own schema
accepts, and a description the form shows under the field; tickers are taken as users write them."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_engine.validation import parse_tickers

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))


def _dags(dag_file: Path) -> list:
    from airflow.sdk import DAG

    sys.path.insert(0, str(REPO_ROOT / "plugins"))  # qe_airflow, as Airflow puts it on sys.path
    namespace = runpy.run_path(str(dag_file))
    return [value for value in namespace.values() if isinstance(value, DAG)]


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_every_param_has_a_type_a_valid_default_and_a_description(dag_file: Path) -> None:
    (dag,) = _dags(dag_file)
    assert dag.params, f"{dag.dag_id} has no params: the trigger form would be empty"
    for key in dag.params:
        param = dag.params.get_param(key)
        where = f"{dag.dag_id}.params[{key!r}]"
        assert "type" in param.schema, f"{where} has no type"
        assert param.description and len(param.description) > 10, f"{where} has no description"
        param.resolve()  # raises ParamValidationError when the default breaks its own schema


@pytest.mark.parametrize("dag_file", ["market_data_ingestion.py", "wfo_pipeline.py", "spot_training.py"])
def test_tickers_take_a_json_list_or_a_comma_separated_string(dag_file: str) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    (dag,) = _dags(REPO_ROOT / "dags" / dag_file)
    param = dag.params.get_param("tickers")
    for written in (["GOOG", "MSFT"], "GOOG,MSFT", "GOOG, MSFT", '["GOOG", "MSFT"]'):
        assert parse_tickers(param.resolve(written)) == ("GOOG", "MSFT"), written
    assert param.resolve(None) is None
    for wrong in (3, ["GOOG", 3], {"GOOG": 1}):
        with pytest.raises(ParamValidationError):
            param.resolve(wrong)


@pytest.mark.airflow
def test_a_run_takes_its_tickers_as_a_json_list(run_dag: Callable) -> None:
    result = run_dag("market_data_ingestion", {"tickers": ["SYN00", "SYN01"], "start": "2024-03-04"})
    assert "ingested 2 feature rows for 2 tickers" in result.stdout + result.stderr
