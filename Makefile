# ecgbridge: the two README commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := tests/fhir_server
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install node system-deps demo test check lint typecheck bench bench-gpu bench-explain train evaluate fairness clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The FHIR test server (Medplum's engine from npm, tests/fhir_server).
node: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

# redis-server, Node (FHIR test server) and Chromium (review-page browser test), from Debian
# when missing (needs root). Playwright drives the system Chromium; it downloads no browser.
# Only what is missing: Debian's npm conflicts with a NodeSource nodejs (which bundles npm).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && apt-get install -y -q $$missing; \
	fi

demo: install
	$(BIN)/ecgbridge demo

test: system-deps install node
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

# Speed goals as ratios against a peer in the same run; results in var/bench/*.json.
bench: system-deps install node
	$(BIN)/python -m tests.bench.run
	$(BIN)/python -m tests.bench.audit_bench
	$(BIN)/python -m tests.bench.load --workers 1
	$(BIN)/python -m tests.bench.load --workers 2
	$(BIN)/python -m tests.bench.alert_latency --rate 5 --duration 30
	$(BIN)/python -m tests.bench.batching_bench --device cpu

# The same batching bench on CUDA (fails clearly, exit 2, when torch sees no CUDA device).
bench-gpu: install
	$(BIN)/python -m tests.bench.batching_bench --device cuda

# Explanation quality and speed on all of fold 9 (about 20 min on 2 cores; issue 7).
bench-explain: install
	$(BIN)/python -m tests.bench.explain_bench --data-dir ../shared/data/ptbxl --part 0/2 --out var/bench/explain-0.json
	$(BIN)/python -m tests.bench.explain_bench --data-dir ../shared/data/ptbxl --part 1/2 --out var/bench/explain-1.json
	$(BIN)/python -m tests.bench.explain_bench --merge var/bench/explain-0.json var/bench/explain-1.json --out var/bench/explain.json

# Refit the back-door / per-group-threshold fairness model on fold 9 (about 20 s; issue 6).
fairness: install
	$(BIN)/python -m inference.fairness --data-dir ../shared/data/ptbxl --out inference/weights

train: install
	$(BIN)/ecgbridge train --data ../shared/data/ptbxl --out inference/weights --seed 0

evaluate: install
	$(BIN)/ecgbridge evaluate --data ../shared/data/ptbxl --folds 9 --out var/eval/fold9.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
