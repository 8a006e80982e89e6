# pop-agent: `make run` sets up and runs the daemon; `make test` sets up and runs the checks.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The log scan's C module, built in place for the interpreter the venv is made from.
HLLSCAN := collectors/_hllscan$(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run once test lint typecheck pytest bench soak schema clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: $(PY) lacks venv/ensurepip: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $@

# Rebuilt when its source changes; without a C compiler or Python headers, a notice and the log scan runs in pure Python.
$(HLLSCAN): collectors/_hllscan.c hatch_build.py | $(STAMP)
	$(PYTHON) hatch_build.py collectors/_hllscan.c $@

setup: $(STAMP) $(HLLSCAN)

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

## Regenerate central's Grafana dashboards (central/dashboards/*.json) from central/build_dashboards.py.
.PHONY: central
central: setup
	$(PYTHON) central/build_dashboards.py

## Regenerate the published heartbeat schema from the model.
schema: setup
	$(PYTHON) -c 'import json; from agent.heartbeat import json_schema; print(json.dumps(json_schema(), indent=2))' > docs/heartbeat.schema.json

clean:
	rm -rf $(VENV) dist build .pop-agent .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -f collectors/_hllscan.*.so

-include mk/packaging.mk

## Regenerate docs/configuration.md from the settings model.
docs: setup
	$(PYTHON) -m agent.docgen > docs/configuration.md
