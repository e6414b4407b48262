# arbridge's front door. CI calls the same targets (.ci/run -> make test).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.ONESHELL:

UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := libs/protos/src/arbridge/py.typed
NPM_STAMP := node_modules/.package-lock.json

.PHONY: help setup gen fmt lint typecheck browser test test-fast run demo bench chaos manifests clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.synced ## install uv if missing, create .venv and sync the workspace from uv.lock

$(VENV)/.synced: uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) $(wildcard libs/intacct-speedups/src/arbridge_intacct_speedups/*.pyx)
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || python3 -m pip install --quiet --user uv
	$(UV) sync --frozen --all-packages --group dev
	touch $@

gen: $(GEN_STAMP) ## generate Python code and mypy stubs from protos/ (ignored, never committed)

$(GEN_STAMP): $(VENV)/.synced $(PROTOS) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

fmt: setup ## format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: setup $(NPM_STAMP) ## buf lint the protos, ruff the Python
	npx --no-install buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: gen ## mypy (strict) over our code, using the generated stubs
	$(VENV)/bin/mypy

browser: ## install Debian's headless Chromium for the pay-page browser tests (once)
	bash scripts/ensure_chromium.sh

test: gen lint typecheck browser ## lint, typecheck and every test against real PostgreSQL, NATS and gRPC
	$(PY) -m pytest tests; code=$$?
	if [ $$code -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi
	exit $$code

test-fast: gen browser ## the tests only, without lint and typecheck
	$(PY) -m pytest tests -x -q

run: gen ## run every service with embedded PostgreSQL/NATS when none is given; Ctrl-C stops all
	$(VENV)/bin/arbridge dev up

demo: gen ## the whole story with no input: connect, sync, rule, charge, link, summary
	$(VENV)/bin/arbridge dev demo

manifests: ## render the Kubernetes overlays (kubectl or kustomize on PATH) into deploy/rendered/
	mkdir -p deploy/rendered
	for overlay in dev production; do \
	  if command -v kustomize >/dev/null; then kustomize build deploy/kubernetes/overlays/$$overlay; \
	  else kubectl kustomize deploy/kubernetes/overlays/$$overlay; fi > deploy/rendered/$$overlay.yaml; \
	done

bench: gen ## run every benchmark; writes bench/results.json and bench/report.md with plots
	$(PY) -m bench

chaos: gen ## the fault-injection scenarios (CHAOS_SEED=n to vary them); a table, bench/chaos.json
	$(PY) -m pytest tests/chaos -m chaos -p no:cacheprovider; code=$$?
	$(PY) -m bench.report >/dev/null
	exit $$code

clean: ## remove generated code, the venv and private infrastructure
	rm -rf $(VENV) libs/protos/src/arbridge node_modules .infra .mypy_cache .ruff_cache .pytest_cache
	rm -rf libs/intacct-speedups/build libs/intacct-speedups/src/arbridge_intacct_speedups/_records.c libs/intacct-speedups/src/arbridge_intacct_speedups/*.so
