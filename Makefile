# custseg: `make run` sets up and runs the pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
OUT ?= artifacts
export AIRFLOW_HOME ?= $(CURDIR)/.airflow

.PHONY: run test venv lint cli-run clean help

help:
	@echo "make run   - set up and run the pipeline on the bundled sample"
	@echo "make test  - set up and run the test suite"
	@echo "make lint  - ruff"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/custseg: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --python $(PYTHON)
	@touch $@

venv: $(BIN)/custseg

cli-run: venv
	$(BIN)/custseg run --input data/sample/customers.csv --test data/sample/test.csv --out $(OUT)

run: cli-run

lint: venv
	$(BIN)/ruff check src tests dags bench
	$(BIN)/ruff format --check src tests dags bench

test: venv
	$(BIN)/ruff check src tests dags bench
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .tools .airflow artifacts .pytest_cache
