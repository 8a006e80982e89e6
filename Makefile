# pop-agent: `make run` sets up and runs the daemon; `make test` sets up and runs the checks.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run once test lint typecheck pytest bench soak schema clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: $(PY) lacks venv/ensurepip: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(STAMP)

## The daemon in the foreground on embedded defaults: community edition, state in ./.pop-agent/.
run: setup
	$(VENV)/bin/agent run

## One heartbeat on stdout.
once: setup
	$(VENV)/bin/agent --once

test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider

## Benchmarks (never part of `make test`): one JSON report in bench/results/report.json.
bench: setup
	$(PYTHON) bench/run_all.py

## A long, bounded run of the daemon at a 0.1 s interval against a flapping local central.
soak: setup
	$(PYTHON) bench/soak.py

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
