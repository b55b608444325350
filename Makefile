# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Both create or refresh the project virtualenv only when requirements.txt or pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export QE_HOME ?= $(CURDIR)/var
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

AIRFLOW_DB_STAMP := $(AIRFLOW_HOME)/.migrated-$(DEPS_HASH)

.PHONY: run test venv airflow-db bench clean help

help:
	@echo "make run   - install what is missing, then run the main job on the embedded default"
	@echo "make test  - install what is missing, then run the whole test suite"
	@echo "make bench - run the benchmarks under bench/"

venv: $(DEPS_STAMP)

$(DEPS_STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "quant-engine needs Python 3.11 (found %d.%d at %s): the SageMaker SDK and Airflow 3 cannot share a 3.12 environment. Install 3.11 or set PYTHON=/path/to/python3.11." % (sys.version_info[0], sys.version_info[1], sys.executable))'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.deps-* && touch $@

airflow-db: $(AIRFLOW_DB_STAMP)

$(AIRFLOW_DB_STAMP): $(DEPS_STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -40 $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	@rm -f $(AIRFLOW_HOME)/.migrated-* && touch $@

# The main job: ingest the embedded synthetic market, then walk-forward validation through Airflow.
MAIN_JOB_LOGS := $(QE_HOME)/logs
INGEST_CONF := {"source": "synthetic", "start": "2015-01-01", "end": "2024-12-31"}

run: venv airflow-db
	@mkdir -p $(MAIN_JOB_LOGS)
	@echo "[1/2] airflow dags test market_data_ingestion (synthetic market, 2015-2024; log: $(MAIN_JOB_LOGS)/ingestion.log)"
	@$(BIN)/airflow dags test market_data_ingestion --conf '$(INGEST_CONF)' > $(MAIN_JOB_LOGS)/ingestion.log 2>&1 \
		&& grep -q "state=success" $(MAIN_JOB_LOGS)/ingestion.log \
		|| (tail -60 $(MAIN_JOB_LOGS)/ingestion.log; echo "ingestion failed; full log: $(MAIN_JOB_LOGS)/ingestion.log"; exit 1)
	@grep -o "ingested .*" $(MAIN_JOB_LOGS)/ingestion.log | head -1
	@echo "[2/2] airflow dags test wfo_pipeline (log: $(MAIN_JOB_LOGS)/wfo_pipeline.log)"
	@$(BIN)/airflow dags test wfo_pipeline > $(MAIN_JOB_LOGS)/wfo_pipeline.log 2>&1 \
		&& grep -q "state=success" $(MAIN_JOB_LOGS)/wfo_pipeline.log \
		|| (tail -60 $(MAIN_JOB_LOGS)/wfo_pipeline.log; echo "wfo_pipeline failed; full log: $(MAIN_JOB_LOGS)/wfo_pipeline.log"; exit 1)
	@$(BIN)/quant-engine wfo show --latest

test: venv airflow-db
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(AIRFLOW_HOME) $(QE_HOME) .pytest_cache
