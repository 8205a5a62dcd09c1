# The README's two quick-start commands are `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
# Every run ends with its 15 slowest tests (--durations): where the suite's time goes.
# Test files run on this many processes (pytest-xdist; a file stays on one): most tests
# wait on servers and child processes, so two workers roughly halve the time on 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: install install-dev run test lint bench

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e '.[dev]'

# Every question on the embedded default (smoke profile, CPU, file://./artifacts, no Prefect
# server), then the final comparison report.
run: install
	visionflows run all

test: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .

bench:
	$(PYTHON) -m bench.q1_epoch
