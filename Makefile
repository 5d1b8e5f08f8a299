# Set-up is part of each target: a fresh clone needs only `make bench` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch, pinned here (not in pyproject) so pip never pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

.PHONY: bench bench-full test test-slow
bench: $(VENV)/.installed
	$(BIN)/python -m bench.microbench

bench-full: $(VENV)/.installed
	$(BIN)/python -m bench.microbench --full

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow
