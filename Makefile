# Two commands do everything on a fresh machine: `make demo` and `make test` (both run `setup` first).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3.11
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-bad test test-fast test-integration bench cluster cluster-stop lock clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/airflow-wrapper.sh
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng sox libsndfile1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r requirements.txt  # the full pinned set: nothing to resolve
	$(PY) -m pip check
	$(PY) -m pip install -q --no-deps -e .
	sed -e "s|@REPO@|$(CURDIR)|" -e "s|@PYTHON@|$(CURDIR)/$(PY)|" scripts/airflow-wrapper.sh > $(VENV)/bin/airflow
	chmod +x $(VENV)/bin/airflow
	$(VENV)/bin/airflow db migrate > /dev/null
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tuneloop demo

demo-bad: setup
	$(VENV)/bin/tuneloop demo --bad-candidate

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

test-integration: setup
	$(PY) -m pytest -m integration

# The production topology as local processes (Postgres, Redis, Celery workers, MLflow server): docs/cluster.md
cluster: setup
	scripts/cluster/cluster.sh start

cluster-stop:
	scripts/cluster/cluster.sh stop --drop

bench: setup
	$(PY) benchmarks/bench_gate.py

# Re-resolve the pinned set from requirements.in (needs uv; torch comes from the CPU wheel).
lock:
	uv pip compile requirements.in --python-version 3.11 --find-links /opt/wheels \
		--override <(echo "torch==2.13.0+cpu") -o requirements.txt

clean:
	rm -rf $(VENV) .airflow .tuneloop .demo
