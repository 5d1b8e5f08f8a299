"""bench.train_step: the GPU-busy helpers on made-up profiler events, and a CPU rehearsal of the
real-model set (tiny GPT-2, eager) end to end through its CSV."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from bench import train_step

ROOT = Path(__file__).resolve().parents[1]


def test_union_length_counts_overlaps_once():
    assert train_step.union_length([]) == 0
    # Two streams overlapping (0-10, 5-12), one kernel inside another (20-30, 22-25), a gap 12-20.
    assert train_step.union_length([(20, 30), (0, 10), (22, 25), (5, 12), (30, 31)]) == 23


def test_only_device_kernels_count():
    def event(name, device, activity=None, annotation=False):
        return FunctionEvent(0, name, 0, 0.0, 1.0, device_type=device, activity_type=activity,
                             is_user_annotation=annotation)
    assert train_step._is_kernel(event("gemm", DeviceType.CUDA, "kernel"))
    for e in (event("aten::mm", DeviceType.CPU, "cpu_op"), event("Memcpy HtoD", DeviceType.CUDA, "gpu_memcpy"),
              event("Context Sync", DeviceType.CUDA, "cuda_sync"),
              event("Optimizer.step", DeviceType.CUDA, "gpu_user_annotation", annotation=True)):
        assert not train_step._is_kernel(e), e.name
    # A torch whose events carry no category: the names and the annotation flag decide.
    bare = lambda name, **kw: types.SimpleNamespace(name=name, device_type=DeviceType.CUDA, **kw)  # noqa: E731
    assert train_step._is_kernel(bare("gemm"))
    assert not train_step._is_kernel(bare("Memset (Device)"))
    assert not train_step._is_kernel(bare("ProfilerStep#1", is_user_annotation=True))


def test_quick_gpt2_on_cpu_writes_the_csv(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "train_step.csv"
    cmd = [sys.executable, "-m", "bench.train_step", "--device", "cpu", "--quick", "--modes", "eager",
           "--steps", "1", "--warmup", "1", "--models", "gpt2", "--csv", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == train_step.COLUMNS
    assert [(r["model"], r["mode"]) for r in rows] == [("gpt2", "eager")]
    assert math.isfinite(float(rows[0]["ratio"])) and float(rows[0]["torch_ms"]) > 0
    assert rows[0]["torch_busy_ms"] == "n/a"  # no GPU-busy time on a CPU
