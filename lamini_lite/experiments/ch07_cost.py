"""Chapter 7 (the cost of memorizing): its claims and the quantities they test.

Two kinds of claim, and the chapter says which is which:

* **recomputations of the paper's compute claim** (Li et al. 2024): arithmetic
  on the paper's own inputs (N, D, epochs, fleet, power, price) and datasheet
  figures. They are the same on every seed and machine; they are claims
  because the chapter's verdict on the paper rests on them, and they would
  fail if the package's formulas or presets changed;
* **measurements** of training steps timed on the machine that runs the
  notebook: the MFU of training against a large matmul, the saving of a
  frozen bottom, and how well the calibrated cost model predicts a job. Their
  thresholds leave room for another CPU and for a loaded machine (see each
  claim's text).

The ratios of the dense to the memory-tuning cost *model* (2x, about 27x) are
not claims: they follow from the formulas and the stated assumptions alone.
"""

from __future__ import annotations

import math

from lamini_lite.claims import Claim
from lamini_lite.profiles import register_sizes

__all__ = ["PRINTED_FLOPS_TOO_SMALL", "FLEET_NEEDS_OVER_180_DAYS", "ELECTRICITY_CHECKS_OUT",
           "FULL_JOB_COSTS_OVER_TWICE", "TRAINING_BELOW_MATMUL_PEAK", "FROZEN_BOTTOM_CHEAPER",
           "PREDICTION_WITHIN_FACTOR", "percent_off", "timing_factor"]

register_sizes(
    "cost",
    # matmul_n: side of the square matmul that measures the CPU's peak FLOP/s;
    # smol_* / tiny_*: batch x seq and number of timed steps of each calibration run;
    # job_facts / tiny_job_facts: random facts (one sequence each, same batch x seq as
    # the calibration) of the memorization jobs whose time is predicted, then measured.
    ci=dict(matmul_n=1024, smol_batch=4, smol_seq=32, smol_steps=2, job_facts=4,
            job_epochs=2, tiny_vocab=1024, tiny_batch=16, tiny_seq=32, tiny_steps=4,
            tiny_job_facts=32, tiny_job_epochs=2),
    book=dict(matmul_n=2048, smol_batch=4, smol_seq=32, smol_steps=3, job_facts=8,
              job_epochs=2, tiny_vocab=1024, tiny_batch=16, tiny_seq=64, tiny_steps=8,
              tiny_job_facts=64, tiny_job_epochs=4),
    full=dict(matmul_n=4096, smol_batch=16, smol_seq=64, smol_steps=10, job_facts=64,
              job_epochs=10, tiny_vocab=1024, tiny_batch=32, tiny_seq=128, tiny_steps=30,
              tiny_job_facts=512, tiny_job_epochs=20),
)

# --- recomputations of the paper's example (arithmetic; identical on every run) ----------
PRINTED_FLOPS_TOO_SMALL = Claim(
    "ch07.printed_flops_too_small",
    "the paper's printed 3.43e24 FLOPs is about a thousand times too small: "
    "6 N D E / printed, recomputed",
    ">", 900.0, unit="x")
FLEET_NEEDS_OVER_180_DAYS = Claim(
    "ch07.fleet_needs_over_180_days",
    "350,000 MI300X at 45% MFU need more than twice the stated 90 days for 6 N D E, "
    "recomputed",
    ">", 180.0, unit="days")
ELECTRICITY_CHECKS_OUT = Claim(
    "ch07.electricity_checks_out",
    "the paper's $68M electricity bill checks out: 350 MW x 90 days x $0.09/kWh is within "
    "1% of it, recomputed",
    "<", 1.0, unit="%")
FULL_JOB_COSTS_OVER_TWICE = Claim(
    "ch07.full_job_costs_over_twice",
    "at 1 kW per GPU for the days the corrected FLOPs need, the electricity costs more than "
    "twice the paper's $68M, recomputed",
    ">", 2.0, unit="x")

# --- measurements on this machine (timings) ------------------------------------------------
TRAINING_BELOW_MATMUL_PEAK = Claim(
    "ch07.training_below_matmul_peak",
    "a full training step (forward, backward, AdamW) reaches less model FLOP/s than a "
    "large fp32 matmul: MFU vs the matmul peak below 1, for SmolLM2 and the tiny model",
    "<", 1.0, unit="MFU")
FROZEN_BOTTOM_CHEAPER = Claim(
    "ch07.frozen_bottom_cheaper",
    "training only SmolLM2's top layer (backward through a quarter of the parameters) "
    "makes a step at least 1.5x faster than training every weight (the formula: about "
    "2.4x), measured time of the same job",
    ">", 1.5, unit="x")
PREDICTION_WITHIN_FACTOR = Claim(
    "ch07.prediction_within_factor",
    "from the calibration runs alone, the cost model predicts each memorization job's "
    "measured time within a factor of 3 (max of measured/predicted and its inverse)",
    "<", 3.0, unit="x")


def percent_off(value: float, target: float) -> float:
    """``100 * |value / target - 1|``: how far ``value`` is from ``target``, in percent."""
    if not (math.isfinite(value) and math.isfinite(target)) or target == 0:
        raise ValueError(f"value and target must be finite and target non-zero, "
                         f"got {value!r} and {target!r}")
    return 100.0 * abs(value / target - 1.0)


def timing_factor(ratio: float) -> float:
    """``max(ratio, 1 / ratio)``: a measured/predicted ratio as a factor off, either way (>= 1)."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a positive finite number, got {ratio!r}")
    return max(ratio, 1.0 / ratio)
