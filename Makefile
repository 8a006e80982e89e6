# pop-agent: `make run` sets up and runs the daemon; `make test` sets up and runs the checks.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# `make run` needs the agent and its runtime libraries only; the development tools come with `make test`.
RUN_STAMP := $(VENV)/.installed-run
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run once test lint typecheck pytest bench soak schema clean

$(PYTHON):
	@$(PY) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: $(PY) lacks venv/ensurepip: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet -e .
	@touch $@

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $@ $(RUN_STAMP)

setup: $(STAMP)

## The daemon in the foreground on embedded defaults: community edition, state in ./.pop-agent/.
## --no-config: no /etc/pop-agent/agent.toml, nor $$POP_AGENT_CONFIG's file; POP_AGENT_* variables still apply.
run: $(RUN_STAMP)
	$(VENV)/bin/agent run --no-config --log-level debug

## One heartbeat on stdout.
once: $(RUN_STAMP)
	$(VENV)/bin/agent --once --no-config

test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

## PYTEST_WORKERS=N runs the tests in N processes, a module to each (module fixtures stay shared);
## the Debian package tests install into this machine (/etc, /usr, /var/lib), so they run alone, afterwards.
## Two by default: the suite mostly waits on daemons and engines (8 min 15 s in one process, 4 min 50 s in two).
PYTEST_WORKERS ?= 2
DEB_TESTS := tests/packaging/test_deb.py

pytest: setup
ifeq ($(PYTEST_WORKERS),0)
	$(VENV)/bin/pytest -q -p no:cacheprovider
else
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --ignore=$(DEB_TESTS)
	$(VENV)/bin/pytest -q -p no:cacheprovider $(DEB_TESTS)
endif

## Benchmarks (never part of `make test`): one JSON report in bench/results/report.json.
bench: setup
	$(PYTHON) bench/run_all.py

## A long, bounded run of the daemon at a 0.1 s interval against a flapping local central.
soak: setup
	$(PYTHON) bench/soak.py

## Regenerate central's Grafana dashboards (central/dashboards/*.json) from central/build_dashboards.py.
.PHONY: central
central: setup
	$(PYTHON) central/build_dashboards.py

## Regenerate the published heartbeat schema from the model.
schema: setup
	$(PYTHON) -c 'import json; from agent.heartbeat import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/heartbeat.schema.json

clean:
	rm -rf $(VENV) dist build .pop-agent .mypy_cache .ruff_cache .pytest_cache .hypothesis

-include mk/packaging.mk
-include mk/deb.mk

## Regenerate docs/configuration.md from the settings model.
docs: setup
	$(PYTHON) -m agent.docgen > docs/configuration.md
