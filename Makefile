# Every target sets itself up: a fresh machine needs only Python 3.11 and the package registries.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test smoke lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lmforge run $(CONFIG)

# Two test processes, each with its own Prefect server, one test file at a time (module fixtures
# are built once): on 2 cores the suite takes 10 to 11 minutes, less than in one process, since
# many tests wait on subprocesses and servers. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The README's "Run as a service" commands end to end: server, pool, deploy, worker, schedule,
# kill -9 of the worker mid-run (a few minutes on 2 cores).
smoke: $(STAMP)
	scripts/service-smoke

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf $(VENV) .lmforge .pytest_cache .ruff_cache build dist *.egg-info
