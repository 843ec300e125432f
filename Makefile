# The two commands of the README: `make demo` and `make test`. Both install first.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .evguard/tools/bin/uv)
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install demo test lint chromium compose node-ocpp services-up services-down clean help

help:
	@echo "make demo   - install, start the local stack, run the platform end to end"
	@echo "make test   - install, then run the whole test suite against real services"

$(UV):
	$(PYTHON) -m venv .evguard/tools
	.evguard/tools/bin/pip install --quiet uv

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (it is on the build
# machine) Python never caches it, and every new process (a worker, a CLI, a flow) compiled
# every module it imports again: ~10 s of a worker's start, measured.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	touch $@

PACKAGES := pipelines keyed_state messaging serving monitoring dashboard gateway telemetry fleet \
	evaluation flows evguard tests benchmarks

# the hot pure modules compiled with mypyc (pipelines/native.py); a no-op when up to date
install: $(VENV)/.installed
	@$(VENV)/bin/python -m compileall -q -j 0 $(PACKAGES) > /dev/null
	@$(VENV)/bin/python scripts/build_native.py

demo: install
	$(VENV)/bin/evguard demo $(DEMO_ARGS)

chromium:
	@bash scripts/ensure-chromium.sh

node-ocpp:
	@bash scripts/ensure-node-ocpp.sh

compose:
	@bash scripts/ensure-compose.sh

lint: install
	$(VENV)/bin/ruff check --quiet .

test: install chromium compose node-ocpp lint
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

services-up: install
	$(VENV)/bin/evguard services up --ui

services-down:
	$(VENV)/bin/evguard services down

clean: services-down
	rm -rf .evguard $(VENV)
