"""Chapter 6 (Triton kernels for the memory lookup): its claims and the quantities they test.

The chapter checks its kernels on a machine without a GPU in two ways, and
each claim below says which:

* numerics, under Triton's interpreter: the forward kernel against an fp32
  reference (:func:`bf16_steps_error`) and both backward algorithms against
  the reference gradient (:func:`relative_max_error`);
* the compiled code, from ahead-of-time compilation for sm_80 / sm_90: what the
  PTX contains (:func:`ptx_count`) and the registers and spills of every
  kernel (:func:`worst_resources`). These depend on the Triton version, not on
  the run's seed.

Two claims are recomputations the chapter teaches (the roofline and the byte
count of a fused scoring kernel): arithmetic on vendor figures, kept because
the chapter's argument rests on them. One is a fact of float32 arithmetic
(:data:`ORDER_CHANGES_SUM`), and one is measured on a GPU only
(:data:`GPU_BANDWIDTH_AT_MOST_PEAK`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from lamini_lite.claims import Claim
from lamini_lite.profiles import register_sizes

__all__ = ["BF16_STEP", "LOOKUP_BANDWIDTH_BOUND", "FORWARD_WITHIN_ONE_BF16_STEP",
           "ORDER_CHANGES_SUM", "TABLE_GRAD_MATCHES_REFERENCE", "PTX_ROUNDS_TO_NEAREST",
           "PTX_VECTOR_LOADS", "NO_REGISTER_SPILLS", "AT_MOST_128_REGISTERS",
           "SCORES_SMALL_NEXT_TO_ROWS", "GPU_BANDWIDTH_AT_MOST_PEAK",
           "bf16_steps_error", "relative_max_error", "ptx_count", "worst_resources"]

# Sizes for the chapter on these kernels (book/06): the interpreter runs one
# program per (query, column block) at ~3 ms each, so the checks stay small.
register_sizes(
    "kernels",
    ci=dict(n_rows=64, D=48, K=8, n_tokens=12, hot_rows=3, sum_terms=2000, sum_orders=20),
    book=dict(n_rows=256, D=96, K=16, n_tokens=32, hot_rows=4, sum_terms=20000,
              sum_orders=50),
    full=dict(n_rows=1024, D=200, K=32, n_tokens=64, hot_rows=8, sum_terms=200000,
              sum_orders=100),
)

BF16_STEP = 2.0 ** -7  # relative spacing of bf16 numbers (8 significant bits)

LOOKUP_BANDWIDTH_BOUND = Claim(
    "ch06.lookup_bandwidth_bound",
    "the memory lookup is bandwidth bound by two orders of magnitude on an H100: the ridge "
    "point's FLOP/byte over the lookup's largest FLOP/byte (datasheet arithmetic)",
    ">", 100.0, unit="x")
FORWARD_WITHIN_ONE_BF16_STEP = Claim(
    "ch06.forward_within_one_bf16_step",
    "the Triton forward kernel (interpreted) matches the fp32 reference up to the final "
    "conversion to bf16: its largest relative error is at most one bf16 step (2^-7)",
    "<=", 1.0, unit="bf16 steps")
ORDER_CHANGES_SUM = Claim(
    "ch06.order_changes_sum",
    "summing the same float32 terms in different random orders, as colliding atomic adds "
    "do, gives more than one result",
    ">", 1.0, unit="distinct sums")
TABLE_GRAD_MATCHES_REFERENCE = Claim(
    "ch06.table_grad_matches_reference",
    "both backward algorithms (sorted, atomic) give the fp32 reference's table gradient to "
    "float32 precision: largest |difference| over largest |reference entry|",
    "<", 1e-5)
PTX_ROUNDS_TO_NEAREST = Claim(
    "ch06.ptx_rounds_to_nearest",
    "the forward kernel compiled for sm_90 converts fp32 to bf16 with round-to-nearest "
    "(cvt.rn.bf16 instructions in its PTX)",
    ">=", 1.0, unit="PTX lines")
PTX_VECTOR_LOADS = Claim(
    "ch06.ptx_vector_loads",
    "the forward kernel compiled for sm_90 reads rows 16 bytes per instruction "
    "(ld.global.v4 instructions in its PTX)",
    ">=", 1.0, unit="PTX lines")
NO_REGISTER_SPILLS = Claim(
    "ch06.no_register_spills",
    "every lookup kernel compiles for sm_80 and sm_90 without spilling registers "
    "(largest spill over kernels and archs)",
    "<=", 0.0, unit="bytes")
AT_MOST_128_REGISTERS = Claim(
    "ch06.at_most_128_registers",
    "every lookup kernel needs at most 128 registers per thread on sm_80 and sm_90, so "
    "at least four 128-thread programs fit on an SM",
    "<=", 128.0, unit="registers")
SCORES_SMALL_NEXT_TO_ROWS = Claim(
    "ch06.scores_small_next_to_rows",
    "a fused scoring + top-k kernel could save at most the score traffic, under a fifth "
    "of the lookup's bytes per token (N = 2^20, K = 32, D = 1024; byte arithmetic)",
    "<", 0.2)
GPU_BANDWIDTH_AT_MOST_PEAK = Claim(
    "ch06.gpu_bandwidth_at_most_peak",
    "no measured lookup moves its bytes faster than the GPU's peak bandwidth (10% slack "
    "for the vendor figure): a sanity check of the timing, GPU only",
    "<", 1.1, unit="x peak")


def bf16_steps_error(out: torch.Tensor, ref: torch.Tensor, *, floor: float = 2.0 ** -8
                     ) -> float:
    """Largest relative error of ``out`` against ``ref``, in bf16 steps (units of 2^-7).

    ``out`` is the kernel's output (any dtype), ``ref`` the fp32 reference of
    the same shape. Truncating to bf16 gives up to one step, rounding to
    nearest up to half a step. An entry that cancels to nearly zero would
    measure float32 rounding instead (the kernel and the reference add in
    different orders), so ``|ref|`` is floored at ``floor`` times the RMS of
    ``ref``: below 1/256 of the typical magnitude by default.
    """
    if out.shape != ref.shape:
        raise ValueError(f"out and ref must have the same shape, got {tuple(out.shape)} "
                         f"and {tuple(ref.shape)}")
    if out.numel() == 0:
        raise ValueError("out and ref are empty")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor!r}")
    ref = ref.double()
    rms = ref.pow(2).mean().sqrt().item()
    if rms == 0:
        raise ValueError("ref is all zero: no scale for a relative error")
    rel = (out.double() - ref).abs() / ref.abs().clamp_min(floor * rms)
    return rel.max().item() / BF16_STEP


def relative_max_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |x - ref| / max |ref|``: the largest error relative to the reference's scale."""
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    if scale == 0:
        raise ValueError("ref is empty or all zero: no scale to compare with")
    return (x.double() - ref.double()).abs().max().item() / scale


def ptx_count(ptx: str, instruction: str) -> int:
    """Number of PTX lines that contain ``instruction`` (e.g. ``"cvt.rn.bf16"``)."""
    if not instruction:
        raise ValueError("instruction must be a non-empty string")
    return sum(instruction in line for line in ptx.splitlines())


def worst_resources(rows: Iterable[Mapping]) -> dict[str, float]:
    """Largest ``spill_bytes`` and ``registers`` over the rows of ``aot.resource_table``.

    A value the compiler's tools could not report (None or NaN) makes the
    result NaN, so that a claim on it fails instead of passing unmeasured.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: compile at least one kernel")

    def worst(key: str) -> float:
        vals = [r.get(key) for r in rows]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
            return math.nan
        return float(max(vals))

    return {"spill_bytes": worst("spill_bytes"), "registers": worst("registers")}
