# Two commands do everything on a fresh machine: `make demo` and `make test` (both run `setup` first).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3.11
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-bad demo-canary ui test test-fast test-integration bench cluster cluster-stop lock clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/airflow-wrapper.sh
	@# espeak-ng speaks the demo's audio; chromium and its driver run the status page's browser tests
	@command -v espeak-ng >/dev/null && command -v chromedriver >/dev/null || command -v apt-get >/dev/null || {\
	 echo "make setup: espeak-ng or chromedriver is missing and there is no apt-get to install them: install\
	 espeak-ng, sox, libsndfile, chromium and chromedriver (macOS: brew install espeak-ng sox libsndfile; brew install\
	 --cask chromium chromedriver), then run make again" >&2; exit 1; }
	@command -v espeak-ng >/dev/null && command -v chromedriver >/dev/null || { $(SUDO) apt-get update -qq &&\
	 $(SUDO) apt-get install -y -qq espeak-ng sox libsndfile1 chromium chromium-driver; }
	@[ -x $(PY) ] || command -v $(PYTHON) >/dev/null || { echo "make setup: $(PYTHON) not found: install Python 3.11\
	 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; macOS: brew install python@3.11), or name one:\
	 make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:3] < (3, 11, 3))' || { echo "make setup:\
	 $$(command -v $(PYTHON)) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); the\
	 pinned requirements need 3.11.3 or newer (gcloud-aio-auth 5.6.0): install a newer 3.11, or name one:\
	 make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r requirements.txt  # the full pinned set: nothing to resolve
	@# ...except what torch itself needs, which depends on the build pip found: none for PyTorch's CPU wheel, the
	@# CUDA libraries for PyPI's Linux build (torch pins their versions).
	$(PY) -m pip install -q "$$(grep '^torch==' requirements.txt)"
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

demo-canary: setup
	$(VENV)/bin/tuneloop demo --strategy canary

# The same loop for a chat model: a tiny causal LM answering questions about nicknames (data: the nicknames package).
.PHONY: demo-llm demo-llm-bad
demo-llm: setup
	$(VENV)/bin/tuneloop demo --llm

demo-llm-bad: setup
	$(VENV)/bin/tuneloop demo --llm --bad-candidate

# The Airflow UI on http://localhost:8080 (user admin, password printed at first start and kept in
# .airflow/simple_auth_manager_passwords.json.generated); Ctrl-C stops every component.
ui: setup
	$(VENV)/bin/airflow standalone

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (a module's tests
# may share one installation, in order); TEST_WORKERS=0 runs it in this process. Three on two cores: the end-to-end
# tests wait on subprocesses and servers a good part of the time (two workers kept 1.3 cores busy).
TEST_WORKERS ?= 3

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-integration: setup
	$(PY) -m pytest -m integration

# The production topology as local processes (Postgres, Redis, Celery workers, MLflow server): docs/cluster.md
cluster: setup
	scripts/cluster/cluster.sh start

cluster-stop:
	scripts/cluster/cluster.sh stop --drop

bench: setup
	$(PY) benchmarks/bench_gate.py
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_page.py

# Re-resolve the pinned set from requirements.in on PyPI alone, whatever this machine's pip or uv configuration
# (needs uv). torch's CUDA stack (nvidia-*, cuda-*, triton: PyPI's Linux build only) is left out: setup installs
# what the torch build it got asks for (nothing for PyTorch's CPU wheel), at the versions torch pins.
lock:
	@command -v uv >/dev/null || { echo "make lock: uv not found: install it (pip install uv, or\
	 https://docs.astral.sh/uv/getting-started/installation/)" >&2; exit 1; }
	env -u UV_FIND_LINKS -u UV_INDEX -u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_DEFAULT_INDEX -u UV_CONSTRAINT \
		-u UV_OVERRIDE -u UV_TORCH_BACKEND uv pip compile requirements.in --no-config --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --default-index https://pypi.org/simple \
		--no-annotate --no-header -o requirements.txt.new
	{ sed -n '/^#/p' requirements.txt; grep -vE '^(nvidia-|cuda-|triton==)' requirements.txt.new; } > requirements.txt.tmp
	mv requirements.txt.tmp requirements.txt && rm requirements.txt.new

clean:
	rm -rf $(VENV) .airflow .tuneloop .demo
