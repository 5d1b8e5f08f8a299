"""import fastdrop stays cheap: triton, numba and torch._dynamo load only when needed."""

import subprocess
import sys

import torch

from fastdrop import family

HEAVY = ("triton", "numba", "torch._dynamo")


def loaded_after(code: str) -> set:
    code += f"\nimport sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    return set(eval(out.stdout.strip().splitlines()[-1]))


def test_import_loads_none_of_triton_numba_dynamo():
    assert loaded_after("import torch, fastdrop") == set()


def test_a_cpu_call_loads_numba_only():
    code = ("import torch, fastdrop\nfastdrop.dropout(torch.ones(10), 0.5, seed=1)\n"
            "fastdrop.alpha_dropout(torch.ones(10), 0.5, True)")
    assert loaded_after(code) <= {"numba"}


def test_alpha_constants_are_marked_as_dynamo_marks_them():
    # family marks _alpha_constants itself, as torch._dynamo.assume_constant_result would.
    marked = torch._dynamo.assume_constant_result(lambda: 0)
    assert {k: v for k, v in vars(marked).items()} == {"_dynamo_marked_constant": True}
    assert family._alpha_constants._dynamo_marked_constant is True
