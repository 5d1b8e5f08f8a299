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

# The CPU operators (fastdrop/backends/cpu/ops.cpp) built for this torch into fastdrop's cache
# folder, which the first CPU call would otherwise do (about 20 s). Rebuilt when they change.
$(VENV)/.built: $(VENV)/.installed fastdrop/backends/cpu/ops.cpp fastdrop/backends/cpu/__init__.py
	$(BIN)/python -m fastdrop.backends.cpu
	touch $@

.PHONY: bench bench-full test test-slow
bench: $(VENV)/.built
	$(BIN)/python -m bench.microbench

bench-full: $(VENV)/.built
	$(BIN)/python -m bench.microbench --full

test: $(VENV)/.built
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.built
	$(BIN)/python -m pytest -q -m slow
