# GovESB developer commands. Every target sets up what it needs on a fresh machine
# (Python venv, pinned packages, Kafka + Apicurio jars from Maven Central into .cache/).
# Needs: Python 3.11+, Java 17+, Maven; for `make test` also Node.js 20+ and npm (the official
# AsyncAPI parser, installed into .cache/ by the tests from tests/asyncapi/package-lock.json);
# `make setup` installs Debian's prometheus, postgresql and chromium when they are missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CACHE  ?= .cache
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-unit test-chaos demo bench kafka lint format typecheck clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/.installed ## Create the venv, install pinned packages, fetch Kafka + Apicurio once
	$(BIN)/python -m deploy.kafka.launcher --cache $(CACHE) fetch
	@# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus/.
	@command -v promtool >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }
	@# A PostgreSQL server (Debian's postgresql) for the audit index's PostgreSQL tests.
	@{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	@# Debian's chromium: the portal's browser tests drive it with Playwright (no browser download).
	@command -v chromium >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup ## Run the test suite (unit + integration on a real broker and registry; not chaos)
	$(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS)

test-unit: $(BIN)/.installed ## Run only the fast unit tests (no network)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-chaos: setup ## Run every test, fault-injection (chaos) ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup ## The whole bus on this machine with a stream flowing (python -m deploy.dev; ARGS=--keep-running)
	$(BIN)/python -m deploy.dev $(ARGS)

bench: setup ## Benchmarks against bare baselines, side by side; last line JSON (not in make test)
	$(BIN)/python -m tests.benchmarks $(ARGS)

kafka: setup ## Run a local broker + registry in the foreground (data in .cache/data) until Ctrl-C
	$(BIN)/python -m deploy.kafka.launcher --cache $(CACHE) up --data-dir $(CACHE)/data/dev

lint: $(BIN)/.installed ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(BIN)/.installed ## mypy --strict on streams/, connectors/ and the launcher
	$(BIN)/mypy

clean: ## Remove the venv and every cache (downloads included)
	rm -rf $(VENV) $(CACHE) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
