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

# The CPU loops compiled ahead of time for this machine (19-54 s here; a first CPU call then
# needs no numba; a no-op off x86-64), and the C++ autograd node (fastdrop/_op.cpp, 20 s).
# Rebuilt when their source changes.
$(VENV)/.aot: $(VENV)/.installed fastdrop/_jit.py fastdrop/_job.py fastdrop/_aot.py \
		fastdrop/_op.py fastdrop/_op.cpp
	$(BIN)/python -m fastdrop._aot
	touch $@

.PHONY: bench bench-full test test-slow
bench: $(VENV)/.aot
	$(BIN)/python -m bench.microbench

bench-full: $(VENV)/.aot
	$(BIN)/python -m bench.microbench --full

test: $(VENV)/.aot
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.aot
	$(BIN)/python -m pytest -q -m slow
