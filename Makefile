# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Both create or refresh the project virtualenv only when requirements.txt or pyproject.toml changed.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)

# Where this checkout keeps things. `make venv` also writes them into the venv (ops/shell_defaults.py),
# so a plain shell (`.venv/bin/airflow dags test wfo_pipeline`, `source .venv/bin/activate`) finds the
# same DAGs, plugins, Airflow home and QE_HOME; there as here, a variable already exported wins.
CHECKOUT_DEFAULTS := AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False QE_HOME=$(CURDIR)/var

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export QE_HOME ?= $(CURDIR)/var
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

AIRFLOW_DB_STAMP := $(AIRFLOW_HOME)/.migrated-$(DEPS_HASH)

.PHONY: run test lint up down browser-deps stack-deps venv shell-defaults airflow-db bench clean help

help:
	@echo "make run   - install what is missing, then run the main job on the embedded default"
	@echo "make test  - install what is missing, then run the whole test suite"
	@echo "make bench - run the benchmarks under bench/"
	@echo "make up    - start the stack natively (Postgres, Airflow, feed, bridge); make down stops it"
	@echo "             make up DATA=my.csv: quant-engine quickstart on your bars first, the feed replaying them"
	@echo "             make up SCALE=1 (or QE_STACK_WORKERS=N): CeleryExecutor on Redis with 2 (N) workers"

venv: shell-defaults

# The checkout's defaults for a plain shell: a .pth file in the venv's site-packages that sets each
# one when a Python process of the venv starts, unless the environment already holds it.
shell-defaults: $(DEPS_STAMP)
	@$(BIN)/python ops/shell_defaults.py $(CHECKOUT_DEFAULTS)

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
# Each DAG's full log goes to $(QE_HOME)/logs; the terminal shows one line per finished task.
MAIN_JOB_LOGS := $(QE_HOME)/logs
INGEST_CONF := {"source": "synthetic", "start": "2015-01-01", "end": "2024-12-31"}
define dag_test
	@echo "== airflow dags test $(1) (log: $(MAIN_JOB_LOGS)/$(1).log)"
	@set -o pipefail; $(BIN)/airflow dags test $(1) $(2) 2>&1 | tee $(MAIN_JOB_LOGS)/$(1).log \
		| grep --line-buffered -o "end task task_id=[a-z_]* map_index=[-0-9]*" | sed -u 's/^/   /' \
		&& grep -q "DagRun Finished.*state=success" $(MAIN_JOB_LOGS)/$(1).log \
		|| (tail -40 $(MAIN_JOB_LOGS)/$(1).log; echo "$(1) failed; full log: $(MAIN_JOB_LOGS)/$(1).log"; exit 1)
endef

run: venv airflow-db
	@mkdir -p $(MAIN_JOB_LOGS)
	$(call dag_test,market_data_ingestion,--conf '$(INGEST_CONF)')
	@grep -o "ingested .*" $(MAIN_JOB_LOGS)/market_data_ingestion.log | head -1
	$(call dag_test,wfo_pipeline)
	@$(BIN)/quant-engine wfo show --latest

# Two pytest workers: the stack tests (tests/e2e, kept together on one worker by tests/conftest.py)
# mostly wait for Airflow, so the other worker runs the rest meanwhile. TEST_WORKERS=0: one process.
# --durations: the 25 slowest tests, so a run shows where the suite's time goes.
TEST_WORKERS ?= 2
test: venv airflow-db browser-deps stack-deps lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=25

# Style and obvious mistakes (pyproject.toml's [tool.ruff]), then types of the domain library
# (pyproject.toml's [tool.mypy]: include/): the same checks locally and in CI.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser test drives Debian's Chromium through its chromedriver; CI starts on a clean machine.
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
		echo "== installing chromium and chromium-driver (browser test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Postgres for the stack's Airflow metadata database, Redis for scale mode's Celery broker (Debian's
# packages; CI starts on a clean machine).
stack-deps:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "== installing postgresql (make up's metadata database)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || { \
		echo "== installing redis-server (make up SCALE=1's Celery broker)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The compose stack's processes on this machine, for real end-to-end runs (see ops/stack.py).
# `make up SCALE=1` (or QE_STACK_WORKERS=N make up): CeleryExecutor, Redis and 2 (N) Celery workers.
ifneq ($(filter-out 0,$(SCALE)),)
export QE_STACK_WORKERS ?= 2
endif
# `make up DATA=my.csv`: `quant-engine quickstart` on your file first (ingest, walk-forward, a champion), then
# the stack, its feed replaying the file's stored bars (the settings the quickstart writes) instead of SYN00..
up: venv stack-deps
ifneq ($(DATA),)
	@$(BIN)/quant-engine quickstart $(DATA) --stack-env $(QE_HOME)/quickstart-stack.env
	@set -a && . $(QE_HOME)/quickstart-stack.env && set +a && $(BIN)/python ops/stack.py up
else
	@$(BIN)/python ops/stack.py up
endif

down:
	@$(BIN)/python ops/stack.py down

bench: venv stack-deps
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(AIRFLOW_HOME) $(QE_HOME) .pytest_cache
