# One entry point for people and CI alike: CI runs `make test`, exactly as a developer does.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FEAST := $(VENV)/bin/feast
STAMP := $(VENV)/.installed

ROWS ?= 100000
SEED ?= 7
DAYS ?= 35
FEATURE_SERVICE ?= fraud_model_v1
HOST ?= 127.0.0.1
PORT ?= 8000
# STORE=sqlite (embedded default) or STORE=redis (a local redis-server, or REDIS_CONNECTION_STRING)
STORE ?= sqlite
REDIS_PORT ?= 6379
export REDIS_CONNECTION_STRING ?= 127.0.0.1:$(REDIS_PORT)

ifeq ($(STORE),redis)
FS_YAML := feature_store.redis.yaml
export SCORING_FEATURE_STORE_YAML := feature_repo/feature_store.redis.yaml
YAML_OPT := --yaml feature_repo/feature_store.redis.yaml
else
FS_YAML := feature_store.yaml
YAML_OPT :=
endif

.PHONY: help setup setup-gpu system-deps redis-up redis-down data generate aggregate apply \
	materialize train dataset serve run test lint format bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) system-deps ## Virtual environment with all dependencies, plus redis-server

setup-gpu: $(STAMP) ## Swap the CPU onnxruntime for onnxruntime-gpu (CUDA 12, cuDNN 9)
	$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet -e '.[gpu]'

system-deps: ## redis-server (and wrk for benchmarks) from Debian when missing
	@command -v redis-server >/dev/null && command -v wrk >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server wrk >/dev/null; }

redis-up: system-deps ## Start a local redis-server on REDIS_PORT (STORE=redis uses it)
	@mkdir -p data
	@redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 || redis-server --port $(REDIS_PORT) \
		--bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
		--pidfile $(CURDIR)/data/redis.pid --logfile $(CURDIR)/data/redis.log
	@until redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; do sleep 0.1; done

redis-down: ## Stop the local redis-server started by redis-up
	-@test -f data/redis.pid && kill $$(cat data/redis.pid) && rm -f data/redis.pid

generate: $(STAMP) ## Synthetic transactions -> data/transactions.parquet
	$(PY) -m feature_pipelines generate --rows $(ROWS) --seed $(SEED) --days $(DAYS) \
		--out data/transactions.parquet

aggregate: $(STAMP) ## Hourly entity features -> feature_repo/data/*.parquet
	$(PY) -m feature_pipelines aggregate --transactions data/transactions.parquet \
		--out-dir feature_repo/data

data: generate aggregate ## generate + aggregate

apply: $(STAMP) $(if $(filter redis,$(STORE)),redis-up) ## feast apply (plain Feast CLI)
	cd feature_repo && ../$(FEAST) -f $(FS_YAML) apply

materialize: $(STAMP) ## Incremental materialization into the online store
	$(PY) -m feature_pipelines materialize --repo feature_repo $(YAML_OPT)

dataset: $(STAMP) ## Point-in-time training set -> data/training_set.parquet
	$(PY) -m models dataset --feature-service $(FEATURE_SERVICE) $(YAML_OPT)

train: $(STAMP) ## Train, export ONNX, check parity, publish models/packages/fraud_model/<v>
	$(PY) -m models train --feature-service $(FEATURE_SERVICE) $(YAML_OPT)

serve: $(STAMP) ## Run the scoring service on HOST:PORT
	SCORING_HOST=$(HOST) SCORING_PORT=$(PORT) $(PY) -m scoring_service serve

run: setup data apply materialize train ## Whole path on a fresh machine, then serve
	@SCORING_HOST=$(HOST) SCORING_PORT=$(PORT) $(PY) -m scoring_service serve & \
	SERVER=$$!; trap 'kill $$SERVER 2>/dev/null' INT TERM EXIT; \
	$(PY) -m scoring_service score-sample --url http://$(HOST):$(PORT) || exit 1; \
	echo; echo "Service listening on http://$(HOST):$(PORT) (docs at /docs); Ctrl-C stops it."; \
	wait $$SERVER

test: setup ## Unit, integration (real redis-server) and end-to-end tests
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## Apply ruff formatting and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove generated data, registries, model packages and caches (keeps the venv)
	rm -rf data feature_repo/data models/packages .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
