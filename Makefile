# fashionops: `make run` runs the pipeline, `make test` runs the tests; both install what they need.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
# Prefect: ephemeral API by default, state kept inside the repo.
export PREFECT_HOME ?= $(CURDIR)/.prefect

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the pinned, hash-checked dependencies (requirements.lock)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	awk '/^uv==/{p=1} p{print; if ($$0 !~ /\\$$/) exit}' requirements.lock > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(VENV)/uv-requirement.txt
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

data: setup ## import the catalogue into data/raw and track it with DVC
	$(BIN)/fashionops import

run: setup ## run the training-pipeline flow end to end with the defaults (ephemeral Prefect API)
	$(BIN)/python flows/training_pipeline.py

repro: setup ## run the DVC pipeline (dvc repro)
	$(BIN)/dvc repro

test: setup ## run the test suite (CPU; real data from ../shared; installs Debian's chromium and postgresql when missing)
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_postgres.sh
	$(BIN)/python -m pytest -q

lint: setup ## ruff (lint + format check) over all the code, mypy over src/ and flows/
	$(BIN)/ruff check src flows tests benchmarks scripts
	$(BIN)/ruff format --check src flows tests benchmarks scripts
	$(BIN)/mypy

format: setup ## apply ruff's formatter and safe fixes
	$(BIN)/ruff check --fix src flows tests benchmarks scripts
	$(BIN)/ruff format src flows tests benchmarks scripts

test-fast: setup ## tests without the slow ones
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup ## run the benchmarks; results in benchmarks/results/*.json
	$(BIN)/python benchmarks/run_all.py

mlflow-ui: setup ## MLflow UI on http://127.0.0.1:5000 over the embedded stores
	$(BIN)/mlflow server --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlflow/artifacts

ui: setup ## Prefect server + deployments + MLflow UI (prints the URLs)
	bash scripts/ui.sh

stack: setup ## start the production stack on 127.0.0.1 (PostgreSQL, S3, MLflow + Prefect servers, worker); then `source .stack/env`
	bash scripts/ensure_postgres.sh
	$(BIN)/fashionops stack up

stack-down: ## stop exactly the processes `make stack` started
	$(BIN)/fashionops stack down

stack-status: ## each stack service: running (pid) or stopped, URL, log file
	$(BIN)/fashionops stack status

deploy-smoke: setup ## load both @champion models in a fresh process and predict on real images
	$(BIN)/python scripts/deploy_smoke.py

clean: ## remove caches (not data, models or the MLflow store)
	rm -rf .pytest_cache **/__pycache__

.PHONY: help setup data run repro lint format test test-fast bench mlflow-ui ui stack stack-down stack-status deploy-smoke clean
