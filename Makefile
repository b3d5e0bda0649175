# The README's two commands: `make demo` and `make test`. Each installs what it needs into .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AIRFLOW_VERSION ?= 3.3.2
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)

# The real Unpod server kit (tests/real_server): beside the clone in CI, overridable.
UNPOD_SERVER_KIT ?= $(abspath $(CURDIR)/../shared/unpod-server)
# Outside the repo and kept between runs (the kit's venv and migrated database are the cache).
UNPOD_SERVER_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/airflow-provider-unpod/unpod-server

SOURCES := unpod_provider tests dags_examples benchmarks scripts

.PHONY: demo test test-fast test-pythons test-real-server lint typecheck bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) "apache-airflow==$(AIRFLOW_VERSION)" -e ".[test]"
	touch $@

demo: $(STAMP)
	$(PY) scripts/demo.py

# Everything: lint, types, the whole suite (campaign, Airflow end to end, oldest Airflow), the fast
# suite on Python 3.10 and 3.13, and the contract suite against the real Unpod server.
test: lint typecheck
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-pythons
	$(MAKE) --no-print-directory test-real-server

# Your own loop: unit and contract tests, under 2 minutes on 2 cores (tests marked slow spawn
# Airflow or run for minutes; tests/real_server is collected only by test-real-server).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The fast suite on the oldest and newest claimed Python (own venvs; with CI set a missing
# interpreter fails the run, elsewhere it is skipped loudly).
test-pythons: $(STAMP)
	$(PY) scripts/test_pythons.py 3.10 3.13

# The contract suite against the real Unpod server: starts the kit, runs tests/real_server, and
# stops the kit whatever happened (the suite's fixture does; stop.sh again here as a fallback).
# With CI set, a missing kit or a failed start fails the run; otherwise the suite skips, loudly.
test-real-server: $(STAMP)
	@rc=0; UNPOD_SERVER_KIT="$(UNPOD_SERVER_KIT)" UNPOD_SERVER_HOME="$(UNPOD_SERVER_HOME)" \
	  $(PY) -m pytest -q tests/real_server || rc=$$?; \
	if [ -f "$(UNPOD_SERVER_KIT)/stop.sh" ]; then \
	  UNPOD_SERVER_HOME="$(UNPOD_SERVER_HOME)" bash "$(UNPOD_SERVER_KIT)/stop.sh" || true; fi; \
	exit $$rc

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .venv-py3.* build dist *.egg-info
