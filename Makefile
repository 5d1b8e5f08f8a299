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

# The C++ operators (fastdrop/csrc) built for this machine and torch into fastdrop's cache folder,
# which the first call would otherwise do. Rebuilt when they change.
$(VENV)/.built: $(VENV)/.installed $(wildcard fastdrop/csrc/*) fastdrop/_library.py
	$(BIN)/python -m fastdrop.build
	touch $@

.PHONY: bench bench-full test test-slow
bench: $(VENV)/.built
	$(BIN)/python -m bench.microbench

bench-full: $(VENV)/.built
	$(BIN)/python -m bench.microbench --full

# On every core (pytest-xdist): the suite takes about 5 minutes on 2 cores.
test: $(VENV)/.built
	$(BIN)/python -m pytest -q -n auto

test-slow: $(VENV)/.built
	$(BIN)/python -m pytest -q -m slow
