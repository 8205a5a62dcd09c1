# The README's two quick-start commands are `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

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
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .

bench:
	$(PYTHON) -m bench.q1_epoch
