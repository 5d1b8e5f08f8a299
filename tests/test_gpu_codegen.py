"""The kernels compile for a real GPU (sm_90) on any machine, and the hot one vectorizes.

The interpreter runs kernels with numpy semantics, so typing errors that only the
compiler sees (an int32 argument bitcast to float64, say) would pass unnoticed without a
GPU. triton.compile needs no GPU to produce PTX. The checks run in a subprocess: under
TRITON_INTERPRET=1 (set by conftest without a GPU) the kernels are not compilable objects.
"""

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU runs the kernels for real")
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silences a 3.9 notice; the launcher sets fusion per kernel
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [case.__name__ for case in CASES]

H100 = ("cuda", 90, 32)
ALIGNED = [["tt.divisibility", 16]]


def compile_ptx(fn, signature, constexprs, aligned_args):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    names = list(fn.arg_names)
    attrs = {(names.index(a),): ALIGNED for a in aligned_args}
    src = ASTSource(fn=fn, signature={k: sig[k] for k in names}, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget(*H100)).asm["ptx"]


def scalars(names, seed_ptr):
    """The run-time scalars' types: ints, or (seed_ptr: the CUDA-graph capture form) the seed, the
    generator's counter offset and the saved state as pointers."""
    sig = {n: "i64" for n in names}
    if seed_ptr:
        sig.update(seed="*i64", base_ptr="*i64", save_ptr="*i64")
    return sig


def flags(seed_ptr):
    return {"SEED_PTR": seed_ptr, "BASE_PTR": seed_ptr, "SAVE": seed_ptr}


def contiguous_kernel_compiles_with_16_byte_loads():
    for dtype in ("fp16", "bf16", "fp32"):
        for seed_ptr in (False, True):
            _contiguous(dtype, seed_ptr)
    _contiguous("fp32", False, small_ints=True)


def _contiguous(dtype, seed_ptr, small_ints=False):
    from fastdrop.kernels import dropout as K
    sig = {"X_ptr": f"*{dtype}", "Y_ptr": f"*{dtype}",
           **scalars(["n", "seed", "base", "base_ptr", "save_ptr", "threshold", "scale_bits", "add_bits",
                      "drop_bits"], seed_ptr)}
    if small_ints:  # Triton types an int argument below 2**31 as i32: 0.0's bits at p == 1, seed 0
        sig.update(seed="i32", base="i32", base_ptr="i32", save_ptr="i32", threshold="i32", scale_bits="i32")
    ptx = compile_ptx(K._dropout_kernel, sig,
                      {"SHIFT": 0, "BLOCK": K.BLOCK, "AFFINE": False, **flags(seed_ptr),
                       "VEC": 8 if dtype in ("fp16", "bf16") else 4},
                      ["X_ptr", "Y_ptr", "n"])
    # 16-byte vector loads and stores: the kernel reads x once and writes y once at full width.
    assert set(re.findall(r"ld\.global[.\w]*", ptx)) & {"ld.global.v4.b32", "ld.global.v4.u32"}
    assert set(re.findall(r"st\.global[.\w]*", ptx)) & {"st.global.v4.b32", "st.global.v4.u32"}
    assert "mul.wide.u32" in ptx  # Philox (each product one wide multiply), not a float RNG


def strided_grouped_and_broadcast_kernels_compile():
    from fastdrop.kernels import dropout as K
    runtime = ["seed", "base", "base_ptr", "save_ptr", "threshold", "scale_bits", "add_bits", "drop_bits"]
    names = ["n", *runtime, "S1", "S2", "S3"]
    names += [f"{k}S{i}" for k in "XYL" for i in range(4)]
    compile_ptx(K._dropout_strided_kernel, {"X_ptr": "*bf16", "Y_ptr": "*bf16", **scalars(names, True)},
                {"SHIFT": 1, "BLOCK": K.BLOCK, "AFFINE": True, **flags(True)}, ["X_ptr", "Y_ptr"])
    names = [*runtime, "O1", "A", "B"]
    names += [f"{k}{d}" for k in "XYL" for d in ("O0", "O1", "A", "B")]
    for keep in range(5):
        sig = {"X_ptr": "*fp32", "Y_ptr": "*fp32", **scalars(names, keep == 0)}
        compile_ptx(K._dropout_bcast_kernel, sig,
                    {"SHIFT": 0, "AFFINE": keep == 1, **flags(keep == 0), "KEEP": keep, "BLOCK_A": 32,
                     "BLOCK_B": 64, "VEC": 4, "IDX64": keep == 2}, ["X_ptr", "Y_ptr"])
    names = [*runtime, "O1", "NG", "I", "W"]
    names += [f"{k}{d}" for k in "XY" for d in ("O0", "O1", "W", "I")] + ["QO0", "QO1", "QI"]
    for vec, dtype in ((8, "fp16"), (4, "fp32"), (2, "fp64")):
        sig = {"X_ptr": f"*{dtype}", "Y_ptr": f"*{dtype}", **scalars(names, True)}
        compile_ptx(K._dropout_grouped_kernel, sig,
                    {"SHIFT": 3, "AFFINE": True, **flags(True), "BLOCK_G": 16, "BLOCK_I": 64, "VEC": vec,
                     "IDX64": vec == 2}, ["X_ptr", "Y_ptr"])


def residual_kernel_compiles():
    from fastdrop.kernels import dropout as K
    from fastdrop.kernels import residual as R
    sig = {"X_ptr": "*fp16", "B_ptr": "*fp16", "R_ptr": "*fp16", "Y_ptr": "*fp16",
           **scalars(["n", "H", "seed", "base", "base_ptr", "save_ptr", "threshold", "scale_bits"], False)}
    for seed_ptr in (False, True):
        if seed_ptr:
            sig.update(seed="*i64", base_ptr="*i64", save_ptr="*i64")
        compile_ptx(R._dropout_add_kernel, sig,
                    {"SHIFT": 0, "HAS_BIAS": True, "BLOCK": K.BLOCK, **flags(seed_ptr), "VEC": 8},
                    ["X_ptr", "B_ptr", "R_ptr", "Y_ptr", "n"])


CASES = [contiguous_kernel_compiles_with_16_byte_loads, strided_grouped_and_broadcast_kernels_compile,
         residual_kernel_compiles]

if __name__ == "__main__":
    for case in CASES:
        case()
        print(case.__name__)
