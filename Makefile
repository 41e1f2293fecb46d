# One entry point for people and CI alike: CI runs `make test`, exactly as a developer does.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FEAST := $(VENV)/bin/feast
STAMP := $(VENV)/.installed

# PLATFORM_CLOCK_AT=2026-12-31T23:55:00Z places every step at another instant
# (feature_repo/clock.py): the offset is fixed once here, so all steps share one clock.
ifdef PLATFORM_CLOCK_AT
export PLATFORM_CLOCK_OFFSET_S := $(shell echo $$(( $$(date -u -d '$(PLATFORM_CLOCK_AT)' +%s) - $$(date -u +%s) )))
endif

# END=<ISO instant>: where the generated history ends, and up to where it is aggregated,
# materialized and skew-checked (default: each step's own now). `make run` fixes one END for
# all its steps, so an hour boundary passing during the run changes nothing: no snapshot of an
# hour that has not ended is published, and the check compares at the materialization's end.
END ?=
END_OPT = $(if $(END),--end $(END))
RUN_END := $(shell date -u -d "@$$(( $$(date -u +%s) + $(or $(PLATFORM_CLOCK_OFFSET_S),0) ))" +%Y-%m-%dT%H:%M:00)

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
export SCORING_FEATURE_STORE_YAML := feature_repo/fraud/feature_store.redis.yaml
# Every other served domain reads its own feature_store.redis.yaml.
export SCORING_FEATURE_STORE_VARIANT := redis
YAML_OPT := --yaml feature_repo/fraud/feature_store.redis.yaml
CREDIT_YAML_OPT := --yaml feature_repo/credit/feature_store.redis.yaml
else
FS_YAML := feature_store.yaml
YAML_OPT :=
CREDIT_YAML_OPT :=
endif

# `make run DOMAIN=credit`: the credit domain too (its data, store and model); both are served and
# a loan application is scored. The payment domain stays the primary one.
DOMAIN ?= fraud
COMMA := ,
SERVED_DOMAINS := feature_repo/fraud$(if $(filter-out fraud,$(DOMAIN)),$(COMMA)feature_repo/$(DOMAIN))

.PHONY: help setup setup-gpu system-deps redis-up redis-down data generate aggregate apply \
	materialize train dataset serve run credit test lint format bench clean soak bench-predict \
	replay stream produce skew-check train-compare bench-freshness lint-imports \
	check-serve-install lock lock-check rematerialize test-clock orchestrate bench-admission bench-family

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Locked installs: every dependency at the version and sha256 pinned in infra/locks/ (made by
# `make lock` from pyproject.toml's ranges; `make lint` fails when they no longer match). The venv
# gets the dev lock (dev,serve,train,spark,cpu,orchestrate), then the project itself without
# dependencies.
LOCKS := infra/locks
DEV_LOCK := $(LOCKS)/dev.txt
# ONNX Runtime build of the venv: the dev lock's onnxruntime unless `make setup-gpu` swapped in
# onnxruntime-gpu; on a GPU machine pass ORT=gpu (or gpu-cuda) so a reinstall keeps it.
ORT ?= cpu
GPU_EXTRA ?= gpu
ORT_LOCK := $(if $(filter-out cpu,$(ORT)),$(LOCKS)/serve-$(ORT).txt)
# onnxruntime and onnxruntime-gpu share one module: remove both, then install the GPU build (and,
# for gpu-cuda, NVIDIA's CUDA and cuDNN wheels) at the pins of infra/locks/serve-<extra>.txt. That
# lock follows the dev lock's versions, so nothing else changes.
define install-ort-gpu
$(PY) -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
$(PY) -m pip install --quiet --require-hashes -r $(LOCKS)/serve-$(1).txt
endef

# A change of pyproject.toml or of a lock reinstalls.
$(STAMP): pyproject.toml $(DEV_LOCK) $(ORT_LOCK)
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(if $(ORT_LOCK),$(call install-ort-gpu,$(ORT)))
	@touch $(STAMP)

setup: $(STAMP) system-deps ## Virtual environment from the dev lock (infra/locks/dev.txt), plus redis-server and the other servers

setup-gpu: $(STAMP) ## Swap onnxruntime for onnxruntime-gpu from its lock (CUDA 13 + cuDNN 9; GPU_EXTRA=gpu-cuda pulls them from pip)
	$(call install-ort-gpu,$(GPU_EXTRA))
	$(PY) -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

# uv resolves on PyPI; versions already pinned stay unless pyproject.toml's ranges exclude them.
UPGRADE ?=
lock: | $(STAMP) ## Refresh the hashed locks in infra/locks from pyproject.toml (UPGRADE=1: newest allowed versions)
	$(PY) $(LOCKS)/lock.py compile $(if $(filter-out 0,$(UPGRADE)),--upgrade)

lock-check: $(STAMP) ## The locks were made from pyproject.toml's current ranges (offline)
	$(PY) $(LOCKS)/lock.py check

# The real servers and tools the tests start: Redis (and Redis Cluster), PostgreSQL (the SQL
# registry), nginx (replicas), promtool (alert rules), Chromium (reports), Java (Spark), wrk.
SYSTEM_COMMANDS := redis-server redis-cli wrk nginx promtool chromium java
SYSTEM_PACKAGES := redis-server redis-tools wrk postgresql nginx prometheus chromium openjdk-17-jre-headless
system-deps: ## The Debian packages above, from apt-get when any command is missing
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing initdb"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			$(SYSTEM_PACKAGES) >/dev/null; \
	fi

redis-up: system-deps ## Start a local redis-server on REDIS_PORT (STORE=redis uses it)
	@mkdir -p data
	@redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 || redis-server --port $(REDIS_PORT) \
		--bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
		--pidfile $(CURDIR)/data/redis.pid --logfile $(CURDIR)/data/redis.log
	@until redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; do sleep 0.1; done

redis-down: ## Stop the local redis-server started by redis-up
	-@test -f data/redis.pid && kill $$(cat data/redis.pid) && rm -f data/redis.pid

# NEW_PATTERN_FROM_DAY=<day>: the new fraud pattern (account_takeover) from that day of the range.
NEW_PATTERN_FROM_DAY ?=
generate: $(STAMP) ## Synthetic transactions -> data/transactions.parquet
	$(PY) -m feature_pipelines generate --rows $(ROWS) --seed $(SEED) --days $(DAYS) \
		--out data/transactions.parquet $(END_OPT) \
		$(if $(NEW_PATTERN_FROM_DAY),--new-pattern-from-day $(NEW_PATTERN_FROM_DAY))

aggregate: $(STAMP) ## Hourly entity features -> feature_repo/fraud/data/*.parquet
	$(PY) -m feature_pipelines aggregate --transactions data/transactions.parquet \
		--out-dir feature_repo/fraud/data $(END_OPT)

replay: $(STAMP) ## Streaming window features of the history (the consumer's code) -> feature_repo/fraud/data
	$(PY) -m feature_pipelines replay --transactions data/transactions.parquet \
		--out-dir feature_repo/fraud/data

data: generate aggregate replay ## generate + aggregate + replay

apply: $(STAMP) $(if $(filter redis,$(STORE)),redis-up) ## feast apply (plain Feast CLI)
	cd feature_repo/fraud && ../../$(FEAST) -f $(FS_YAML) apply

materialize: $(STAMP) ## Incremental materialization into the online store
	$(PY) -m feature_pipelines materialize --repo feature_repo/fraud $(YAML_OPT)

# `make data` rewrites the history relative to a new "now"; incremental loading would keep rows
# of the old history online. This empties each view's online rows and reloads its TTL window.
rematerialize: $(STAMP) ## Rebuild the online store from the offline history (after make data rewrote it)
	$(PY) -m feature_pipelines materialize --rebuild --repo feature_repo/fraud $(YAML_OPT) $(END_OPT)

dataset: $(STAMP) ## Point-in-time training set -> data/training_set.parquet
	$(PY) -m models dataset --domain feature_repo/fraud --feature-service $(FEATURE_SERVICE) \
		$(YAML_OPT)

# The summary (holdout figures of the model, a decision tree and the rules baseline) is kept in
# data/training_summary.txt: `make run` shows it again once the service answers.
train: $(STAMP) ## Train, export ONNX, check parity, publish models/packages/fraud_model/<v>
	@mkdir -p data
	set -o pipefail; $(PY) -m models train --domain feature_repo/fraud \
		--feature-service $(FEATURE_SERVICE) $(YAML_OPT) | tee data/training_summary.txt

train-compare: $(STAMP) ## Train v1 and v2 on one time split, holdout metrics side by side
	$(PY) -m models train --domain feature_repo/fraud \
		--feature-service fraud_model_v1 --feature-service fraud_model_v2 \
		$(YAML_OPT)

credit: $(STAMP) $(if $(filter redis,$(STORE)),redis-up) ## Credit domain: load Feast's credit-scoring files (feature_pipelines/credit/source_data, or CREDIT_DATA_DIR), apply, materialize, train
	$(PY) -m feature_pipelines credit load
	cd feature_repo/credit && ../../$(FEAST) -f $(FS_YAML) apply
	$(PY) -m feature_pipelines materialize --repo feature_repo/credit $(CREDIT_YAML_OPT)
	$(PY) -m models train --domain feature_repo/credit $(CREDIT_YAML_OPT)

# The stream and the window state live in Redis (redis-up) whatever the online store is.
stream: $(STAMP) redis-up ## Stream consumer: events -> windowed features pushed to Feast (Ctrl-C stops)
	$(PY) -m feature_pipelines stream --repo feature_repo/fraud $(YAML_OPT) \
		--redis $(REDIS_CONNECTION_STRING)

produce: $(STAMP) redis-up ## Append the latest 1,000 transactions to the stream, shifted to now
	$(PY) -m feature_pipelines produce --last 1000 --shift-to-now --redis $(REDIS_CONNECTION_STRING)

SKEW_SERVICE ?= fraud_model_v2
skew-check: $(STAMP) ## Online vs offline point-in-time feature vectors now; fails on skew
	$(PY) -m feature_pipelines skew-check --feature-service $(SKEW_SERVICE) $(YAML_OPT) \
		$(if $(END),--at $(END))

# Secure by default: the service does not start without API keys. Locally, serve and run make
# key files in data/ once (mode 0600) and pass their sha256 digests; export
# SCORING_API_KEY_HASHES / SCORING_ADMIN_KEY_HASHES to use keys of your own instead (and
# SCORING_API_KEY for score-sample).
DEV_API_KEY ?= data/dev_api_key
DEV_ADMIN_KEY ?= data/dev_admin_key
KEY_ENV = SCORING_API_KEY_HASHES="$${SCORING_API_KEY_HASHES:-$$($(PY) -m scoring_service dev-key --file $(DEV_API_KEY))}" \
	SCORING_ADMIN_KEY_HASHES="$${SCORING_ADMIN_KEY_HASHES:-$$($(PY) -m scoring_service dev-key --file $(DEV_ADMIN_KEY))}"

serve: $(STAMP) ## Run the scoring service on HOST:PORT (key in data/dev_api_key; DOMAIN=credit serves both domains)
	$(KEY_ENV) SCORING_DOMAINS=$(SERVED_DOMAINS) SCORING_HOST=$(HOST) SCORING_PORT=$(PORT) \
		$(PY) -m scoring_service serve

run: END = $(RUN_END)
run: setup data apply rematerialize train $(filter-out fraud,$(DOMAIN)) skew-check ## Whole path on a fresh machine, online store checked against the history, then serve and score (DOMAIN=credit: both domains, a loan application)
	@$(KEY_ENV) SCORING_DOMAINS=$(SERVED_DOMAINS) SCORING_HOST=$(HOST) SCORING_PORT=$(PORT) \
		$(PY) -m scoring_service serve & \
	SERVER=$$!; trap 'kill $$SERVER 2>/dev/null' INT TERM EXIT; \
	$(PY) -m scoring_service score-sample --url http://$(HOST):$(PORT) \
		--domain feature_repo/$(DOMAIN) --api-key-file $(DEV_API_KEY) || exit 1; \
	echo; echo "Generated world ($(ROWS) rows, seed $(SEED), $(DAYS) days), its holdout:"; \
	cat data/training_summary.txt; \
	echo; echo "Service listening on http://$(HOST):$(PORT) (docs at /docs); Ctrl-C stops it."; \
	wait $$SERVER

# The orchestrator on this machine: Dagster's UI and daemon (schedules, the retraining sensor, the
# run queue) over orchestration.definitions, its instance (SQLite) in data/dagster with the
# settings of infra/orchestration/dagster.yaml. ORCHESTRATION_* variables move its paths and
# champion (orchestration/resources.py); schedules start stopped (ORCHESTRATION_SCHEDULES=running).
ORCHESTRATE_PORT ?= 3000
DAGSTER_HOME_DIR := $(CURDIR)/data/dagster
orchestrate: $(STAMP) ## Dagster UI + daemon on HOST:ORCHESTRATE_PORT (assets, gates, schedules; state in data/dagster; Ctrl-C stops)
	@mkdir -p $(DAGSTER_HOME_DIR)
	@cp infra/orchestration/dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	@echo "Dagster UI: http://$(HOST):$(ORCHESTRATE_PORT) (DAGSTER_HOME=$(DAGSTER_HOME_DIR));" \
		"decision log: $(PY) -m orchestration decisions; Ctrl-C stops it."
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(VENV)/bin/dagster dev -m orchestration.definitions \
		--host $(HOST) --port $(ORCHESTRATE_PORT)

test: setup ## Lint and architecture contracts, then unit, integration (real servers) and end-to-end tests
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q

# The time-sensitive tests (marker `clock`) with the platform clock placed at 8 instants (over a
# day, a month end, a year end): tests/clock_runs.py. CLOCK_SET=ci runs 3 of them (.ci/run).
CLOCK_SET ?= all
test-clock: setup ## Time-sensitive tests at 8 instants of the platform clock (CLOCK_SET=ci: 3)
	$(PY) -m tests.clock_runs --set $(CLOCK_SET)

SOAK_SECONDS ?= 600
soak: $(STAMP) system-deps $(if $(filter redis,$(STORE)),redis-up) ## Soak: 10 min at half the measured max rate -> bench/results/soak.json
	$(PY) bench/soak.py --duration $(SOAK_SECONDS) --out bench/results/soak.json

bench: setup ## Score path vs feast serve, trivial FastAPI and Feast's SDK (wrk, own Redis) -> bench/results/latest.json
	$(PY) -m bench.run --out bench/results

BENCH_ADMISSION_SECONDS ?= 5
BENCH_ADMISSION_SERVER ?= uvicorn
bench-admission: setup ## Only the admission rows, briefly: capacity, open loop 0.5x-5x, closed c=256, noisy key -> bench/results/admission.json
	$(PY) -m bench.run --out bench/results --only admission --rows 20000 --entities 20000 --duration $(BENCH_ADMISSION_SECONDS) --server $(BENCH_ADMISSION_SERVER)

BENCH_FAMILY_SECONDS ?= 8
bench-family: setup ## Only the family row, briefly: 200 members under a budget of 50, Zipf mix, vs one model -> bench/results/family.json
	$(PY) -m bench.run --out bench/results --only family --rows 20000 --entities 20000 --duration $(BENCH_FAMILY_SECONDS)

bench-predict: $(STAMP) ## Predict throughput by batch size: CPU graphs, and CUDA when present -> bench/results/predict_devices.json
	$(PY) bench/predict_devices.py --out bench/results/predict_devices.json

FRESHNESS_EVENTS ?= 1000
bench-freshness: $(STAMP) system-deps ## Event appended -> changed score, p50/p99 (own Redis, v2) -> bench/results/freshness.json
	$(PY) bench/freshness.py --events $(FRESHNESS_EVENTS) --out bench/results/freshness.json

.PHONY: stream-chaos bench-stream
BENCH_STREAM_SECONDS ?= 8
bench-stream: setup ## Only the stream-scoring rows, briefly: events/s at saturation, p50/p99 at half rate, vs the service at c=16 -> bench/results/stream.json
	$(PY) -m bench.run --out bench/results --only stream --rows 20000 --entities 20000 --duration $(BENCH_STREAM_SECONDS)

STREAM_CHAOS_EVENTS ?= 100000
stream-chaos: setup ## Stream scoring under kill -9 (3 kills and restarts, then 2 members, one killed) with 100,000 events: each decided exactly once
	STREAM_CHAOS_EVENTS=$(STREAM_CHAOS_EVENTS) $(PY) -m pytest -q -p no:cacheprovider -o timeout=3600 tests/scoring_service/stream_scoring/test_runner.py

lint: $(STAMP) ## The locks' freshness, ruff (lint + format check), mypy and the import-linter layer contracts
	$(MAKE) --no-print-directory lock-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory lint-imports

lint-imports: $(STAMP) ## The architecture: layers and forbidden imports (pyproject [tool.importlinter])
	$(VENV)/bin/lint-imports

check-serve-install: setup ## A fresh venv with only the serving set starts the service and scores
	$(PY) -m pytest -q tests/scenarios/test_serving_install.py

format: $(STAMP) ## Apply ruff formatting and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## Remove generated data, registries, model packages and caches (keeps the venv)
	rm -rf data feature_repo/*/data models/packages .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
