# ccq: every way to install, run, test and benchmark goes through here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ccq needs Python 3.11+, found " + sys.version.split()[0])'
	@echo "install: creating $(VENV) and installing ccq with its dev tools (pip install -e '.[dev]')"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install ccq (idempotent)

.PHONY: bootstrap
bootstrap: install ## Install and start Docker, Redis, PostgreSQL (apt, as root), idempotent
	@bash scripts/bootstrap.sh

.PHONY: image
image: bootstrap ## Build the worker image with the real Claude Code CLI (only when inputs change)
	@$(BIN)/ccq image

.PHONY: up
up: image ## Start api, worker, beat, flower (and the model server without credentials)
	@bash scripts/stack.sh up

.PHONY: down
down: ## Stop exactly what `make up` started
	@bash scripts/stack.sh down

.PHONY: demo
demo: up ## Show the main job: prompts submitted and tailed through ccq
	@$(BIN)/python scripts/demo.py

.PHONY: lint
lint: install ## ruff (lint and format check) and mypy
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

.PHONY: test
test: image lint ## Bootstrap, build the image, then run every test against the real stack
	@$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: bench
bench: image ## Benchmarks against their baselines (prints ratios, writes bench/results/latest.json)
	@$(BIN)/python -m bench $(BENCH_ARGS)

.PHONY: bench-gateway
bench-gateway: install ## The gateway's serving stacks against direct model access (writes bench/results/gateway.json)
	@$(BIN)/python -m bench.gateway_stacks $(BENCH_GATEWAY_ARGS)

.PHONY: clean
clean: down ## Remove the virtualenv and local state (keeps Docker images)
	rm -rf $(VENV) .ccq .mypy_cache .ruff_cache .pytest_cache
