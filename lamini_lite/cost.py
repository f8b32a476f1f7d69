"""What memorizing facts costs: FLOPs, time, energy and money.

Two ways to drive a set of facts to near-zero training loss are priced here:

* **dense memorization** -- keep training every weight of the model on the
  facts for ~100 epochs, as Li et al. (2024) estimate. A training step costs
  ``6 * N`` FLOPs per token (2 for the forward pass, 4 for the backward pass:
  gradients of the activations and of the weights), so the job costs
  ``6 * N * D * epochs`` FLOPs for ``N`` parameters and ``D`` fact tokens;
* **memory tuning** -- a frozen backbone with a memory of expert rows, of
  which only the few rows each token selects are trained (MoME / memory
  layers). Per token and epoch: a forward pass through the backbone
  (``2 * N``), a backward pass that only crosses the layers *above* the
  memory and computes no weight gradients there (``2 * N * above_fraction``),
  and the selected rows (``2 * rows * width`` forward, ``4 * rows * width``
  backward). If the hidden states under the memory are computed once and
  reused (the backbone and the selector are frozen, so they never change),
  each epoch only runs the layers above the memory.

FLOPs become time through a :class:`Hardware` (peak FLOP/s at the training
precision and the share of it a training job achieves, the MFU), time
becomes energy through the power each device draws, and energy becomes money
through a price per kWh. Units are in every name: ``_flops`` (floating-point
operations), ``_flops_per_s``, ``_s`` (seconds), ``_w`` (watts), ``_kwh``,
``_usd``.

:func:`paper_llama3_400b_example` recomputes the paper's worked example;
:func:`measure_training_run`, :func:`measure_matmul_flops` and
:func:`compare_runs` calibrate the formulas against this machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .models import count_parameters

__all__ = [
    "SECONDS_PER_HOUR", "SECONDS_PER_DAY", "JOULES_PER_KWH",
    "Hardware", "HARDWARE", "get_hardware", "cpu_hardware",
    "MemoryTuning", "Cost", "training_flops", "dense_memorization_flops",
    "memory_tuning_flops", "estimate_cost", "memorization_costs", "memory_variants",
    "PaperExample", "paper_llama3_400b_example",
    "format_flops", "format_duration", "format_power", "format_usd", "format_energy",
    "MeasuredRun", "RunComparison", "run_flops", "compare_runs",
    "measure_matmul_flops", "measure_training_run", "random_fact_batches",
    "train_top_layers_only",
]

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0
JOULES_PER_KWH = 3.6e6


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------

def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def _fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# hardware
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """One accelerator (or CPU) as the cost model sees it."""

    name: str                 # label shown in tables and plots
    peak_flops_per_s: float   # FLOP/s per device, dense (no 2:4 sparsity), at `precision`
    mfu: float                # model FLOPs utilization of a training job, in (0, 1]
    power_w: float            # watts per device (board power, or package power for a CPU)
    overhead: float = 1.0     # multiplier on power_w for host, network, cooling (1.0 = device only)
    precision: str = "bf16"   # number format the peak refers to
    source: str = ""          # where the numbers come from

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        _positive("peak_flops_per_s", self.peak_flops_per_s)
        _fraction("mfu", self.mfu)
        _positive("power_w", self.power_w)
        if _positive("overhead", self.overhead) < 1.0:
            raise ValueError(f"overhead must be >= 1 (a multiplier on device power), "
                             f"got {self.overhead!r}")

    @property
    def achieved_flops_per_s(self) -> float:
        """FLOP/s one device delivers to a training job: peak x MFU."""
        return self.peak_flops_per_s * self.mfu

    @property
    def all_in_power_w(self) -> float:
        """Watts per device including the overhead multiplier."""
        return self.power_w * self.overhead


# Datasheet numbers: dense bf16 tensor-core peaks (half the "with sparsity" figures).
HARDWARE: dict[str, Hardware] = {
    "MI300X": Hardware("MI300X", 1307.4e12, 0.45, 750.0,
                       source="AMD MI300X datasheet: 1307.4 TFLOP/s dense bf16, 750 W; "
                              "MFU 45% as in Li et al. 2024"),
    "H100": Hardware("H100", 989.4e12, 0.40, 700.0,
                     source="NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 700 W; "
                            "MFU 40%, typical of large training runs"),
    "A100": Hardware("A100", 312e12, 0.40, 400.0,
                     source="NVIDIA A100 SXM datasheet: 312 TFLOP/s dense bf16, 400 W; "
                            "MFU 40%"),
}


def get_hardware(name: str | Hardware, extra: Mapping[str, Hardware] | None = None) -> Hardware:
    """The :class:`Hardware` called ``name`` (case-insensitive) in :data:`HARDWARE` or ``extra``.

    A :class:`Hardware` passes through unchanged.

    Raises:
        ValueError: if no preset has that name.
    """
    if isinstance(name, Hardware):
        return name
    table = {**HARDWARE, **(extra or {})}
    if isinstance(name, str):
        for key, hw in table.items():
            if key.lower() == name.strip().lower():
                return hw
    raise ValueError(f"hardware must be a Hardware or one of {sorted(table)}, got {name!r}")


def cpu_hardware(peak_flops_per_s: float, mfu: float, *, power_w: float = 65.0,
                 name: str = "this CPU") -> Hardware:
    """A :class:`Hardware` for this machine's CPU from calibrated numbers.

    ``peak_flops_per_s`` should come from :func:`measure_matmul_flops` and
    ``mfu`` from a measured training run (achieved / peak). ``power_w`` is an
    assumption (a typical desktop/server package power), not a measurement.
    """
    return Hardware(name, peak_flops_per_s, min(mfu, 1.0), power_w, precision="fp32",
                    source="calibrated on this machine: peak from a large fp32 matmul, MFU "
                           f"from timed training steps; {power_w:g} W assumed")


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------

def training_flops(params_total: float, tokens: float, *, params_trained: float | None = None,
                   backward_fraction: float = 1.0) -> float:
    """FLOPs of one pass of training over ``tokens`` tokens (matmul FLOPs only).

    Forward ``2 * params_total`` per token; backward ``2 * backward_fraction *
    params_total`` for the activation gradients of the layers it crosses plus
    ``2 * params_trained`` for the weight gradients. With every weight
    trained (the default) this is the familiar ``6 * N * tokens``. Attention
    scores (``~ seq_len * d_model`` per token and layer) and optimizer updates
    are left out: both are small next to ``N`` at the sequence lengths of facts.
    """
    n = _positive("params_total", params_total)
    d = _positive("tokens", tokens)
    trained = n if params_trained is None else _non_negative("params_trained", params_trained)
    f = _fraction("backward_fraction", backward_fraction, allow_zero=True)
    return (2.0 * n + 2.0 * f * n + 2.0 * trained) * d


def dense_memorization_flops(n_params: float, tokens: float, epochs: float = 100) -> float:
    """``6 * n_params * tokens * epochs``: continued training of every weight."""
    _positive("epochs", epochs)
    return training_flops(n_params, tokens) * float(epochs)


@dataclass(frozen=True)
class MemoryTuning:
    """Memory tuning on a frozen backbone; only the selected expert rows learn."""

    above_fraction: float = 0.5      # share of backbone params above the memory (backward crosses)
    rows_per_token: int = 32         # expert rows each token reads (Lamini: 32 of ~1M experts)
    row_width: int = 4096            # floats per row (assumed: d_model of an 8B model)
    epochs: float = 100              # epochs until recall (Lamini: converges as fast as dense)
    cache_below: bool = False        # hidden states under the memory computed once, reused
    selector_flops_per_token: float = 0.0  # frozen key scoring, ~2*heads*sqrt(experts)*key_dim

    def __post_init__(self):
        _fraction("above_fraction", self.above_fraction, allow_zero=True)
        _positive_int("rows_per_token", self.rows_per_token)
        _positive_int("row_width", self.row_width)
        _positive("epochs", self.epochs)
        _non_negative("selector_flops_per_token", self.selector_flops_per_token)

    def flops_per_token_epoch(self, n_params: float) -> float:
        """FLOPs per fact token and epoch (after any one-off forward pass)."""
        n = _positive("n_params", n_params)
        forward = 2.0 * n * (self.above_fraction if self.cache_below else 1.0)
        backward = 2.0 * n * self.above_fraction          # activation grads, no weight grads
        rows = 6.0 * self.rows_per_token * self.row_width  # 2 forward + 4 backward per weight
        return forward + backward + rows + self.selector_flops_per_token


def memory_tuning_flops(n_params: float, tokens: float, cfg: MemoryTuning | None = None) -> float:
    """FLOPs to memorize ``tokens`` fact tokens by memory tuning (see :class:`MemoryTuning`).

    With ``cfg.cache_below`` the layers under the memory run once
    (``2 * N * (1 - above_fraction) * tokens``) instead of every epoch.
    """
    cfg = cfg or MemoryTuning()
    d = _positive("tokens", tokens)
    per_epoch = cfg.flops_per_token_epoch(n_params) * d * cfg.epochs
    once = 2.0 * n_params * (1.0 - cfg.above_fraction) * d if cfg.cache_below else 0.0
    return per_epoch + once


# ---------------------------------------------------------------------------
# time, energy, money
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """What a job of ``flops`` FLOPs costs on ``n_devices`` devices of ``hardware``."""

    flops: float            # floating-point operations of the job
    hardware: str           # name of the Hardware used
    n_devices: int          # devices running in parallel (perfect scaling; MFU absorbs losses)
    device_s: float         # device-seconds: flops / (peak x MFU)
    wall_s: float           # wall-clock seconds on n_devices
    power_w: float          # total draw of the fleet, watts (all-in)
    energy_kwh: float       # energy, kilowatt-hours
    usd_per_kwh: float      # price of energy used
    cost_usd: float         # energy cost, US dollars (hardware and staff not included)

    @property
    def wall_days(self) -> float:
        """Wall-clock time in days."""
        return self.wall_s / SECONDS_PER_DAY

    @property
    def power_mw(self) -> float:
        """Fleet power in megawatts."""
        return self.power_w / 1e6

    def row(self) -> dict[str, object]:
        """Formatted fields for a table."""
        return {"FLOPs": format_flops(self.flops), "hardware": self.hardware,
                "devices": f"{self.n_devices:,}", "wall time": format_duration(self.wall_s),
                "power": format_power(self.power_w), "energy": format_energy(self.energy_kwh),
                "energy cost": format_usd(self.cost_usd)}


def estimate_cost(flops: float, hardware: str | Hardware = "H100", n_devices: int = 1, *,
                  usd_per_kwh: float = 0.09, mfu: float | None = None,
                  extra_hardware: Mapping[str, Hardware] | None = None) -> Cost:
    """Time, energy and energy cost of ``flops`` FLOPs on ``n_devices`` devices.

    ``mfu`` overrides the hardware's default MFU. Energy = devices x all-in
    watts x wall time; cost = energy x ``usd_per_kwh``.
    """
    _positive("flops", flops)
    _positive_int("n_devices", n_devices)
    _non_negative("usd_per_kwh", usd_per_kwh)
    hw = get_hardware(hardware, extra_hardware)
    if mfu is not None:
        hw = replace(hw, mfu=_fraction("mfu", mfu))
    device_s = flops / hw.achieved_flops_per_s
    wall_s = device_s / n_devices
    power_w = n_devices * hw.all_in_power_w
    energy_kwh = power_w * wall_s / JOULES_PER_KWH
    return Cost(flops=float(flops), hardware=hw.name, n_devices=n_devices, device_s=device_s,
                wall_s=wall_s, power_w=power_w, energy_kwh=energy_kwh,
                usd_per_kwh=float(usd_per_kwh), cost_usd=energy_kwh * usd_per_kwh)


def memory_variants(epochs: float = 100) -> dict[str, MemoryTuning]:
    """The two memory-tuning settings the book compares with dense training.

    * ``"memory tuning"``: memory halfway up the backbone (backward crosses
      half of it), every epoch runs the whole forward pass;
    * ``"memory tuning, cached"``: memory near the top (5% of the backbone
      above it) and the hidden states under it computed once and reused.

    Both read 32 rows of width 4096 per token and take ``epochs`` epochs.
    """
    return {"memory tuning": MemoryTuning(above_fraction=0.5, epochs=epochs),
            "memory tuning, cached": MemoryTuning(above_fraction=0.05, epochs=epochs,
                                                  cache_below=True)}


def memorization_costs(n_params: float, n_facts: float, tokens_per_fact: float = 32, *,
                       epochs: float = 100, hardware: str | Hardware = "H100",
                       n_devices: int = 1, usd_per_kwh: float = 0.09,
                       memory: MemoryTuning | Mapping[str, MemoryTuning] | None = None,
                       extra_hardware: Mapping[str, Hardware] | None = None
                       ) -> dict[str, Cost]:
    """Dense memorization vs memory tuning of ``n_facts`` facts of ``tokens_per_fact`` tokens.

    Returns ``{"dense": Cost, <memory name>: Cost, ...}``. ``epochs`` is the
    dense job's; each :class:`MemoryTuning` brings its own. ``memory`` is one
    setting (named ``"memory tuning"``), a mapping of named settings, or None
    for :func:`memory_variants` with the same ``epochs`` as the dense job.
    """
    tokens = _positive("n_facts", n_facts) * _positive("tokens_per_fact", tokens_per_fact)
    if memory is None:
        memory = memory_variants(epochs)
    elif isinstance(memory, MemoryTuning):
        memory = {"memory tuning": memory}
    kw = dict(hardware=hardware, n_devices=n_devices, usd_per_kwh=usd_per_kwh,
              extra_hardware=extra_hardware)
    out = {"dense": estimate_cost(dense_memorization_flops(n_params, tokens, epochs), **kw)}
    for name, cfg in memory.items():
        if not isinstance(cfg, MemoryTuning):
            raise ValueError(f"memory[{name!r}] must be a MemoryTuning, got {cfg!r}")
        out[name] = estimate_cost(memory_tuning_flops(n_params, tokens, cfg), **kw)
    return out


# ---------------------------------------------------------------------------
# the paper's worked example
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperExample:
    """Li et al. (2024)'s Llama-3-400B memorization estimate, stated and recomputed."""

    n_params: float               # model parameters (4e11)
    tokens: float                 # training tokens, ~Chinchilla scale (1.5e13)
    epochs: float                 # epochs to memorize (100)
    n_devices: int                # MI300X GPUs (350,000)
    days: float                   # wall time the paper states (~3 months = 90 days)
    mfu: float                    # model FLOPs utilization the paper states (0.45)
    peak_flops_per_s: float       # MI300X dense bf16 peak used here (1.3074e15)
    stated_flops: float           # FLOPs printed in the paper (3.43e24)
    needed_flops: float           # 6 * N * D * epochs
    deliverable_flops: float      # devices x peak x MFU x days
    days_needed: float            # days the fleet needs for needed_flops
    stated_power_w: float         # fleet power the paper states (350 MW)
    board_power_w: float          # devices x MI300X board power (750 W)
    usd_per_kwh: float            # energy price the paper uses ($0.09)
    stated_energy_kwh: float      # stated power x stated days
    stated_cost_usd: float        # paper's electricity bill ($68M)
    recomputed_cost_usd: float    # stated power x stated days x price
    board_only_cost_usd: float    # the same with board power only

    @property
    def stated_vs_needed(self) -> float:
        """needed_flops / stated_flops: how far the printed figure is off."""
        return self.needed_flops / self.stated_flops

    @property
    def deliverable_vs_stated(self) -> float:
        """deliverable_flops / stated_flops."""
        return self.deliverable_flops / self.stated_flops


def paper_llama3_400b_example(*, n_params: float = 4e11, tokens: float = 1.5e13,
                              epochs: float = 100, n_devices: int = 350_000,
                              days: float = 90.0, stated_power_w: float = 350e6,
                              usd_per_kwh: float = 0.09) -> PaperExample:
    """Recompute Li et al. (2024)'s compute claim with the arithmetic in the open.

    Needed: ``6 * N * D * epochs``. Deliverable in ``days`` on the paper's
    fleet: ``devices x 1307.4 TFLOP/s (MI300X dense bf16) x 0.45 x days``.
    Electricity: ``350 MW x days x 24 h x $0.09/kWh``.
    """
    hw = HARDWARE["MI300X"]
    needed = dense_memorization_flops(n_params, tokens, epochs)
    fleet = _positive_int("n_devices", n_devices) * hw.achieved_flops_per_s
    deliverable = fleet * _positive("days", days) * SECONDS_PER_DAY
    hours = days * 24.0
    energy_kwh = _positive("stated_power_w", stated_power_w) / 1e3 * hours
    return PaperExample(
        n_params=n_params, tokens=tokens, epochs=epochs, n_devices=n_devices, days=days,
        mfu=hw.mfu, peak_flops_per_s=hw.peak_flops_per_s, stated_flops=3.43e24,
        needed_flops=needed, deliverable_flops=deliverable,
        days_needed=needed / fleet / SECONDS_PER_DAY, stated_power_w=stated_power_w,
        board_power_w=n_devices * hw.power_w, usd_per_kwh=usd_per_kwh,
        stated_energy_kwh=energy_kwh, stated_cost_usd=68e6,
        recomputed_cost_usd=energy_kwh * usd_per_kwh,
        board_only_cost_usd=n_devices * hw.power_w / 1e3 * hours * usd_per_kwh)


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------

def format_flops(flops: float) -> str:
    """``3.6e27 FLOPs`` (two significant digits, scientific)."""
    _non_negative("flops", flops)
    if flops == 0:
        return "0 FLOPs"
    mantissa, exponent = f"{flops:.1e}".split("e")
    return f"{mantissa}e{int(exponent)} FLOPs"


def format_duration(seconds: float) -> str:
    """Seconds in a readable unit: ``45 s``, ``3.2 min``, ``5.1 h``, ``202 days``, ``3.1 years``."""
    s = _non_negative("seconds", seconds)
    if s < 60:
        return f"{s:.3g} s"
    if s < SECONDS_PER_HOUR:
        return f"{s / 60:.3g} min"
    if s < 2 * SECONDS_PER_DAY:
        return f"{s / SECONDS_PER_HOUR:.3g} h"
    if s < 365.25 * SECONDS_PER_DAY:
        return f"{s / SECONDS_PER_DAY:.3g} days"
    return f"{s / (365.25 * SECONDS_PER_DAY):.3g} years"


def _si(value: float, unit: str, prefixes: Sequence[tuple[float, str]]) -> str:
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_power(watts: float) -> str:
    """Watts with an SI prefix: ``350 MW``, ``700 W``."""
    _non_negative("watts", watts)
    return _si(watts, "W", [(1e9, "G"), (1e6, "M"), (1e3, "k")])


def format_energy(kwh: float) -> str:
    """Energy: ``7.56e+08 kWh`` shown as ``756 GWh``; small values in Wh."""
    _non_negative("kwh", kwh)
    if kwh < 1:
        return f"{kwh * 1e3:.3g} Wh"
    return _si(kwh * 1e3, "Wh", [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")])


def format_usd(usd: float) -> str:
    """Dollars: ``$68.0M``, ``$1.2B``, ``$350``, ``$0.0042``."""
    _non_negative("usd", usd)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if usd >= scale:
            return f"${usd / scale:.3g}{suffix}"
    return f"${usd:.3g}" if usd < 1 else f"${usd:.2f}"


# ---------------------------------------------------------------------------
# calibration against measured runs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasuredRun:
    """A timed training run, to compare with the cost model's prediction."""

    name: str                      # what was run (model, method, shapes)
    params_trained: int            # parameters receiving weight gradients
    params_total: int              # parameters of the whole model (forward pass)
    tokens: int                    # tokens processed over all timed steps (batch x seq x steps)
    steps: int                     # optimizer steps timed
    seconds: float                 # measured wall-clock seconds of those steps
    backward_fraction: float = 1.0  # share of params_total the backward pass crosses
    meta: dict = field(default_factory=dict, compare=False)  # anything else (loss, batch, ...)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        _positive_int("params_total", self.params_total)
        if isinstance(self.params_trained, bool) or not isinstance(self.params_trained, int) \
                or not 0 <= self.params_trained <= self.params_total:
            raise ValueError(f"params_trained must be an int in [0, params_total="
                             f"{self.params_total}], got {self.params_trained!r}")
        _positive_int("tokens", self.tokens)
        _positive_int("steps", self.steps)
        _positive("seconds", self.seconds)
        _fraction("backward_fraction", self.backward_fraction, allow_zero=True)

    @property
    def flops(self) -> float:
        """Model FLOPs of the run (see :func:`run_flops`)."""
        return run_flops(self)

    @property
    def achieved_flops_per_s(self) -> float:
        """Model FLOPs per measured second."""
        return self.flops / self.seconds


def run_flops(run: MeasuredRun) -> float:
    """Training FLOPs of a measured run: :func:`training_flops` of its parameters and tokens."""
    return training_flops(run.params_total, run.tokens, params_trained=run.params_trained,
                          backward_fraction=run.backward_fraction)


@dataclass(frozen=True)
class RunComparison:
    """Predicted vs measured time of one run."""

    name: str              # the run's name
    flops: float           # model FLOPs of the run
    predicted_s: float     # flops / achieved FLOP/s of the calibration
    measured_s: float      # measured wall-clock seconds
    ratio: float           # measured / predicted (1 = perfect; > 1: slower than predicted)


def compare_runs(runs: Iterable[MeasuredRun], flops_per_s: float | Callable[[MeasuredRun], float]
                 ) -> list[RunComparison]:
    """Predict each run's time from a calibrated FLOP/s and compare with its measurement.

    ``flops_per_s`` is one achieved FLOP/s for all runs, or a function giving
    the rate to use for a run (e.g. the calibration of the same model).
    """
    out = []
    for run in runs:
        if not isinstance(run, MeasuredRun):
            raise ValueError(f"runs must contain MeasuredRun records, got {type(run).__name__}")
        rate = flops_per_s(run) if callable(flops_per_s) else flops_per_s
        rate = _positive("flops_per_s", rate)
        predicted = run.flops / rate
        out.append(RunComparison(run.name, run.flops, predicted, run.seconds,
                                 run.seconds / predicted))
    return out


def measure_matmul_flops(n: int = 2048, *, repeats: int = 5, dtype: torch.dtype = torch.float32,
                         seed: int = 0) -> float:
    """Best FLOP/s of an ``n x n`` by ``n x n`` matmul (``2 n^3`` FLOPs) over ``repeats``.

    A large matmul is the fastest thing a CPU does in PyTorch, so this is an
    honest, measured stand-in for its peak at the current thread count.
    """
    _positive_int("n", n)
    _positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=dtype)
    b = torch.randn(n, n, generator=g, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def random_fact_batches(vocab_size: int, n_facts: int, tokens_per_fact: int, batch_size: int,
                        *, seed: int = 0) -> list[torch.Tensor]:
    """``n_facts`` random token sequences (random "facts") split into batches of ``batch_size``.

    Random tokens are the hardest facts there are: nothing can be inferred,
    everything must be memorized (the random-answer test of Li et al. 2024).
    """
    for name, v in (("vocab_size", vocab_size), ("n_facts", n_facts),
                    ("tokens_per_fact", tokens_per_fact), ("batch_size", batch_size)):
        _positive_int(name, v)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n_facts, tokens_per_fact), generator=g)  # (F, T)
    return list(ids.split(batch_size))


def train_top_layers_only(model: torch.nn.Module, n_layers: int = 1) -> float:
    """Freeze a Llama-style causal LM except its top ``n_layers`` decoder layers.

    This mimics memory tuning's cost structure on a real model: the forward
    pass crosses everything, the backward pass only the top layers, the final
    norm and the LM head. Returns that ``backward_fraction``: the share of the
    model's parameters the backward pass crosses (the top layers, the final
    norm and the output matrix, counted once when tied to the embedding).
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("model must be a Llama-style causal LM with model.model.layers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) \
            or not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be an int in [1, {len(layers)}], got {n_layers!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    top = list(layers)[-n_layers:]
    for layer in top:
        for p in layer.parameters():
            p.requires_grad_(True)
    crossed = {id(p): p.numel() for m in top + [model.model.norm, model.get_output_embeddings()]
               for p in m.parameters()}
    return sum(crossed.values()) / count_parameters(model)


def measure_training_run(model: torch.nn.Module, batches: Sequence[torch.Tensor], *,
                         name: str, epochs: int = 1, warmup: int = 1, lr: float = 1e-3,
                         timing: str = "total", seed: int = 0, progress: bool = True
                         ) -> MeasuredRun:
    """Time full training steps (forward + backward + AdamW) of a causal LM.

    Each batch is a ``(B, T)`` tensor of token ids, used as inputs and labels.
    ``warmup`` untimed steps on the first batch come first (allocation, kernel
    selection); then every batch is trained for ``epochs`` epochs and timed.
    Only parameters with ``requires_grad`` are trained; the returned record
    counts them as ``params_trained`` (``backward_fraction`` is 1: pass a
    ``dataclasses.replace``-d record for models frozen at the bottom).
    The model is trained in place; pass a copy you can spare.

    ``timing="total"`` records the wall-clock time of all timed steps;
    ``timing="median"`` records the median step time x the number of steps,
    which is robust to other processes stealing the CPU now and then (use it
    on a shared machine). Both are in ``meta`` (``total_s``, ``median_step_s``).
    """
    if timing not in ("total", "median"):
        raise ValueError(f"timing must be 'total' or 'median', got {timing!r}")
    if not batches:
        raise ValueError("batches must hold at least one (B, T) tensor")
    for b in batches:
        if not isinstance(b, torch.Tensor) or b.dim() != 2:
            raise ValueError(f"each batch must be a (B, T) tensor of token ids, got {b!r:.60}")
    _positive_int("epochs", epochs)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad)")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()

    def step(ids: torch.Tensor) -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    first = step(batches[0]) if warmup else None
    for _ in range(warmup - 1):
        step(batches[0])
    losses, step_s = [], []
    n_steps = epochs * len(batches)
    bar = tqdm(total=n_steps, desc=f"timing {name}", disable=not progress, leave=False)
    for _ in range(epochs):
        for ids in batches:
            t0 = time.perf_counter()
            losses.append(step(ids))
            step_s.append(time.perf_counter() - t0)
            bar.update()
    bar.close()
    median = statistics.median(step_s)
    seconds = sum(step_s) if timing == "total" else median * n_steps
    model.eval()
    total = count_parameters(model)
    trained = count_parameters(model, trainable_only=True)
    tokens = epochs * sum(int(b.numel()) for b in batches)
    return MeasuredRun(name=name, params_trained=trained, params_total=total, tokens=tokens,
                       steps=n_steps, seconds=seconds,
                       meta={"first_loss": first if first is not None else losses[0],
                             "last_loss": losses[-1], "losses": losses, "timing": timing,
                             "total_s": sum(step_s), "median_step_s": median,
                             "batch": tuple(batches[0].shape), "threads": torch.get_num_threads()})
