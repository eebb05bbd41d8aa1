# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv bench clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# lint and types first: a finding stops `make test` (and so CI) before the suite runs
lint: $(STAMP)
	$(BIN)/python -m ruff check nmt data_prep bench tests
	$(BIN)/python -m mypy nmt data_prep

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 tests

demo: $(STAMP)
	$(BIN)/python -m data_prep.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench.train_throughput
