"""Ahead-of-time compilation of the lookup kernels for real GPUs, on a machine without one.

``triton.compile`` lowers a kernel through Triton IR, TritonGPU IR, LLVM IR and
PTX down to a cubin (``ptxas``) for a named target such as sm_80 (A100) or
sm_90 (H100) without a driver. It catches what the lenient interpreter lets
through (type errors, unsupported ops, too much shared memory) and tells us the
registers each thread uses, which sets how many programs fit on an SM.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from . import triton_lookup as tk

# Triton's names for the pointer element types the API accepts.
VALUE_DTYPES = ("fp32", "bf16", "fp16")
INDEX_DTYPES = ("i32", "i64")
ARCHS = (80, 90)  # sm_80 = A100, sm_90 = H100


@dataclasses.dataclass
class CompiledKernel:
    """What one ahead-of-time compilation produced."""

    kernel: str  # key in triton_lookup.KERNELS
    arch: int  # compute capability, e.g. 90 for sm_90
    value_dtype: str  # Triton dtype name of the value table ("bf16", ...)
    index_dtype: str  # Triton dtype name of the indices ("i32" or "i64")
    ptx: str  # the PTX text
    cubin_bytes: int  # size of the cubin ptxas produced
    registers: int | None  # registers per thread (from the cubin), None if unreadable
    shared_bytes: int  # static shared memory Triton reserved (metadata.shared)
    spills: int | None  # bytes of local memory (register spills), None if unreadable
    num_warps: int  # warps per program


def kernel_signature(kernel: str, value_dtype: str = "bf16", index_dtype: str = "i64",
                     block_k: int = tk.DEFAULT_BLOCK_K, block_d: int = tk.DEFAULT_BLOCK_D):
    """``(signature, constexprs)`` for ``triton.compiler.ASTSource`` of one kernel.

    Weights and the output gradient share the values' dtype; accumulators are
    float32.
    """
    v, i = f"*{value_dtype}", f"*{index_dtype}"
    ints = {"D": "i32", "K": "i32"}
    blocks = {"BLOCK_K": block_k, "BLOCK_D": block_d, "ACC_DTYPE": tl.float32}
    if kernel == "forward":
        sig = {"values_ptr": v, "indices_ptr": i, "weights_ptr": v, "out_ptr": v, **ints,
               "stride_vn": "i32"}
    elif kernel == "weights_grad":
        sig = {"values_ptr": v, "indices_ptr": i, "grad_out_ptr": v, "grad_w_ptr": v, **ints,
               "stride_vn": "i32"}
    elif kernel == "values_grad_atomic":
        sig = {"targets_ptr": i, "weights_ptr": v, "grad_out_ptr": v, "grad_acc_ptr": "*fp32",
               **ints}
    elif kernel == "values_grad_sorted":
        sig = {"order_ptr": "*i64", "seg_start_ptr": "*i64", "seg_count_ptr": "*i64",
               "seg_dest_ptr": "*i64", "seg_order_ptr": "*i64", "weights_ptr": v,
               "grad_out_ptr": v, "grad_ptr": v, **ints}
        blocks = {"BLOCK_M": block_k, "BLOCK_D": block_d, "ACC_DTYPE": tl.float32}
    else:
        raise ValueError(f"kernel must be one of {sorted(tk.KERNELS)}, got {kernel!r}")
    sig.update({name: "constexpr" for name in blocks})
    return sig, blocks


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local-memory bytes) of the kernel in ``cubin``, via cuobjdump."""
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:  # pragma: no cover - depends on the Triton build
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        try:
            text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None, None
    reg = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    return (int(reg.group(1)) if reg else None, int(local.group(1)) if local else None)


def compile_kernel(kernel: str, arch: int = 90, value_dtype: str = "bf16",
                   index_dtype: str = "i64", aligned: bool = True, **blocks) -> CompiledKernel:
    """Compile one lookup kernel for ``sm_{arch}`` and report PTX, registers and shared memory.

    ``aligned=True`` tells the compiler what Triton's JIT finds out by itself
    at launch in the common case: every pointer is 16-byte aligned and ``D``
    and the row stride are multiples of 16, which lets it vectorise row loads
    (``ld.global.v4``). ``aligned=False`` compiles the general (any ``D``) code.
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {VALUE_DTYPES}, got {value_dtype!r}")
    if index_dtype not in INDEX_DTYPES:
        raise ValueError(f"index_dtype must be one of {INDEX_DTYPES}, got {index_dtype!r}")
    sig, constexprs = kernel_signature(kernel, value_dtype, index_dtype, **blocks)
    fn = tk.runnable(tk.KERNELS[kernel], interpret=False)
    names = list(sig)
    attrs = {}
    if aligned:
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
                 if t.startswith("*") or n in ("D", "stride_vn")}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
    cubin = compiled.asm["cubin"]
    registers, spills = _resource_usage(cubin)
    return CompiledKernel(
        kernel=kernel, arch=arch, value_dtype=value_dtype, index_dtype=index_dtype,
        ptx=compiled.asm["ptx"], cubin_bytes=len(cubin), registers=registers,
        shared_bytes=int(compiled.metadata.shared), spills=spills,
        num_warps=int(compiled.metadata.num_warps),
    )


def resource_table(archs=ARCHS, value_dtype: str = "bf16", index_dtype: str = "i64",
                   aligned: bool = True) -> list[dict]:
    """Registers, spills, shared memory and cubin size of every kernel for each arch."""
    rows = []
    for name in tk.KERNELS:
        for arch in archs:
            c = compile_kernel(name, arch, value_dtype, index_dtype, aligned=aligned)
            rows.append({"kernel": name, "arch": f"sm_{arch}", "registers": c.registers,
                         "spill_bytes": c.spills, "shared_bytes": c.shared_bytes,
                         "num_warps": c.num_warps, "cubin_bytes": c.cubin_bytes})
    return rows
