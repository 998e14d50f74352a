# custseg: `make run` sets up and runs the pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
OUT ?= artifacts
# Embedded Airflow for `make run` / `make airflow`: SQLite in .airflow/, the project's DAGs.
AIRFLOW_HOME ?= $(CURDIR)/.airflow
AIRFLOW_PORT ?= 8080
RUN_CONF ?= {"input_path": "data/sample/customers.csv", "test_path": "data/sample/test.csv"}
AIRFLOW_ENV = AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False \
	CUSTSEG_HOME=$(CURDIR) CUSTSEG_ARTIFACTS_ROOT=$(abspath $(OUT)) PATH="$(BIN):$$PATH"

.PHONY: run test test-fast venv dev-venv lint cli-run airflow serve clean help

help:
	@echo "make run      - set up and run the DAG once through Airflow on the bundled sample"
	@echo "make cli-run  - the same pipeline through the plain custseg CLI"
	@echo "make airflow  - Airflow UI at http://127.0.0.1:$(AIRFLOW_PORT) (login admin/admin, dev only)"
	@echo "make serve    - HTTP scoring service on http://127.0.0.1:8000 for the promoted model in OUT"
	@echo "make test     - set up and run the test suite"
	@echo "make test-fast - the quick loop: no slow, Airflow, live or distributed tests (~2 min)"
	@echo "make lint     - ruff"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

# `make run` installs the product (all extras, no dev tools); `make test` adds the dev group.
$(VENV)/.run-stamp: pyproject.toml uv.lock | $(UV)
	@echo "installing custseg and Airflow into $(VENV) (uv sync, pinned by uv.lock) ..."
	@$(UV) sync --frozen --all-extras --no-dev --inexact --compile-bytecode --quiet --python $(PYTHON)
	@touch $@

$(VENV)/.test-stamp: pyproject.toml uv.lock | $(UV)
	@echo "installing custseg, Airflow and the test tools into $(VENV) ..."
	@$(UV) sync --frozen --all-extras --compile-bytecode --quiet --python $(PYTHON)
	@touch $@ $(VENV)/.run-stamp

venv: $(VENV)/.run-stamp
dev-venv: $(VENV)/.test-stamp

cli-run: venv
	$(BIN)/custseg run --input data/sample/customers.csv --test data/sample/test.csv --out $(OUT)

# Created and migrated on first use (and again when the lock file changes).
$(AIRFLOW_HOME)/airflow.db: uv.lock | $(VENV)/.run-stamp
	@mkdir -p $(AIRFLOW_HOME)
	@echo "migrating the Airflow metadata DB in $(AIRFLOW_HOME) ..."
	@env $(AIRFLOW_ENV) $(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 \
		|| { tail -n 30 $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	@touch $@

run: venv $(AIRFLOW_HOME)/airflow.db
	@echo "running DAG customer_segmentation through Airflow (log: $(AIRFLOW_HOME)/dags-test.log) ..."
	@env $(AIRFLOW_ENV) $(BIN)/airflow dags test customer_segmentation -c '$(RUN_CONF)' \
		> $(AIRFLOW_HOME)/dags-test.log 2>&1 \
		|| { grep -E "ERROR|error|Exception|failed" $(AIRFLOW_HOME)/dags-test.log | tail -n 20; \
		     echo "make run: the DAG run failed; full log: $(AIRFLOW_HOME)/dags-test.log"; exit 1; }
	@echo "the DAG run succeeded; its summary:"
	@echo
	@$(BIN)/custseg show --out $(OUT)

# The HTTP scoring service for the model promoted in $(OUT) (run `make cli-run` first).
SERVE_PORT ?= 8000
serve: venv
	$(BIN)/custseg serve --model $(OUT) --port $(SERVE_PORT)

# `airflow standalone` (api-server, scheduler, dag-processor, triggerer) for local use only.
airflow: venv
	@mkdir -p $(AIRFLOW_HOME)
	@echo '{"admin": "admin"}' > $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT)  login: admin / admin (dev only)"
	env $(AIRFLOW_ENV) AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
		AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT) \
		AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin \
		AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated \
		AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$$(( $(AIRFLOW_PORT) + 713 )) \
		AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$$(( $(AIRFLOW_PORT) + 714 )) \
		AIRFLOW__CORE__PARALLELISM=4 $(BIN)/airflow standalone

lint: dev-venv
	$(BIN)/ruff check src tests dags bench
	$(BIN)/ruff format --check src tests dags bench

test: dev-venv
	$(BIN)/ruff check src tests dags bench
	$(BIN)/pytest
	@test -z "$$(git status --porcelain 2>/dev/null)" || \
		{ echo "make test: the tests left files in the repository:"; git status --porcelain; exit 1; }

test-fast: dev-venv
	$(BIN)/pytest -m "not slow and not airflow and not live and not distributed"

clean:
	rm -rf $(VENV) .tools .airflow artifacts .pytest_cache
