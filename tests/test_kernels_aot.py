"""Every lookup kernel compiles ahead of time for sm_80 and sm_90, for every accepted dtype.

No GPU is needed: ``triton.compile`` lowers to PTX and runs ``ptxas`` for a
named target. This catches what the interpreter lets through.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("triton")

from lamini_lite.kernels import aot  # noqa: E402
from lamini_lite.kernels.triton_lookup import KERNELS  # noqa: E402

# Full value-dtype x arch matrix with int64 indices; int32 indices once per kernel.
MATRIX = [(k, a, v, "i64") for k in KERNELS for a in aot.ARCHS for v in aot.VALUE_DTYPES]
MATRIX += [(k, 90, "bf16", "i32") for k in KERNELS if k != "values_grad_sorted"]


@pytest.mark.parametrize("kernel,arch,value_dtype,index_dtype", MATRIX)
def test_kernel_compiles(kernel, arch, value_dtype, index_dtype):
    c = aot.compile_kernel(kernel, arch, value_dtype, index_dtype)
    assert f".target sm_{arch}" in c.ptx
    assert f".entry {KERNELS[kernel].fn.__name__}(" in c.ptx
    assert c.cubin_bytes > 0
    # Registers: at most 255 per thread; no spills to local memory at these block sizes.
    if c.registers is not None:
        assert 0 < c.registers <= 255
    if c.spills is not None:
        assert c.spills == 0
    assert c.shared_bytes < 48 * 1024  # fits the default shared-memory carve-out


def test_unaligned_variant_compiles_and_aligned_one_vectorises():
    general = aot.compile_kernel("forward", 90, "bf16", aligned=False)
    aligned = aot.compile_kernel("forward", 90, "bf16", aligned=True)
    assert "ld.global.v4" in aligned.ptx
    assert general.cubin_bytes > 0


def test_atomic_kernel_emits_atomics_and_sorted_kernel_does_not():
    atomic = aot.compile_kernel("values_grad_atomic", 90, "fp32")
    sorted_ = aot.compile_kernel("values_grad_sorted", 90, "fp32")
    atomics = re.compile(r"\b(atom|red)\.global")
    assert atomics.search(atomic.ptx)
    assert not atomics.search(sorted_.ptx)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel must be one of"):
        aot.compile_kernel("nope")
    with pytest.raises(ValueError, match="value_dtype"):
        aot.compile_kernel("forward", 90, "fp64")


def test_compiles_after_the_interpreter_ran():
    """Running a kernel under Triton's interpreter must not leave triton.language patched."""
    import torch
    import triton.language as tl

    from lamini_lite.kernels import memory_lookup

    def state():
        return {(o.__name__, k): v for o in (tl.core, tl.math, tl.core.tensor)
                for k, v in vars(o).items()}

    before = state()
    values = torch.randn(8, 4, requires_grad=True)
    weights = torch.rand(3, 2, requires_grad=True)
    out = memory_lookup(values, torch.randint(0, 8, (3, 2)), weights, backend="triton")
    out.sum().backward()                       # forward and backward kernels, interpreted
    after = state()
    assert after.keys() == before.keys()
    assert [k for k in before if after[k] is not before[k]] == []
    assert aot.compile_kernel("weights_grad", 90, "fp32").cubin_bytes > 0
