"""Tests for lamini_lite.cost: hand-computed cases, units, bad input, calibration records."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lamini_lite import cost
from lamini_lite.cost import (HARDWARE, Hardware, MeasuredRun, MemoryTuning, compare_runs,
                              dense_memorization_flops, estimate_cost, format_duration,
                              format_energy, format_flops, format_power, format_usd,
                              get_hardware, memorization_costs, memory_tuning_flops,
                              paper_llama3_400b_example, training_flops)


# --------------------------------------------------------------------- FLOPs

def test_dense_is_six_n_d_epochs_exactly():
    assert dense_memorization_flops(1e9, 2e6, 100) == 6 * 1e9 * 2e6 * 100
    assert dense_memorization_flops(7, 11, 3) == 6 * 7 * 11 * 3
    assert training_flops(10, 5) == 300


def test_training_flops_frozen_backbone():
    # forward 2N, backward crosses a quarter of N, trains 100 params
    assert training_flops(1000, 10, params_trained=100, backward_fraction=0.25) == \
        (2 * 1000 + 2 * 250 + 2 * 100) * 10


def test_memory_tuning_hand_computed():
    cfg = MemoryTuning(above_fraction=0.5, rows_per_token=2, row_width=3, epochs=10)
    per_token = 2 * 100 + 2 * 50 + 6 * 2 * 3
    assert memory_tuning_flops(100, 7, cfg) == per_token * 7 * 10
    cached = dataclasses.replace(cfg, cache_below=True)
    per_token_cached = 2 * 50 + 2 * 50 + 6 * 2 * 3
    assert memory_tuning_flops(100, 7, cached) == per_token_cached * 7 * 10 + 2 * 50 * 7


def test_memory_tuning_cheaper_than_dense_and_caching_helps():
    n, d = 8e9, 1e7
    dense = dense_memorization_flops(n, d, 100)
    plain = memory_tuning_flops(n, d, MemoryTuning(above_fraction=0.5, epochs=100))
    cached = memory_tuning_flops(n, d, MemoryTuning(above_fraction=0.1, epochs=100,
                                                    cache_below=True))
    assert plain == pytest.approx(dense / 2, rel=1e-3)  # (2 + 1) N vs 6 N
    assert cached < plain / 5
    # a memory at the very bottom with every layer above: no cheaper than 4N
    full = memory_tuning_flops(n, d, MemoryTuning(above_fraction=1.0, epochs=100))
    assert full > dense * 4 / 6


# ------------------------------------------------------- time, energy, money

def test_estimate_cost_simple_inputs():
    hw = Hardware("toy", peak_flops_per_s=1e12, mfu=0.5, power_w=1000.0)
    c = estimate_cost(1.8e16, hw, n_devices=2, usd_per_kwh=0.10)
    assert c.device_s == pytest.approx(36_000)      # 1.8e16 / 5e11
    assert c.wall_s == pytest.approx(18_000)        # five hours on two devices
    assert c.power_w == 2000
    assert c.energy_kwh == pytest.approx(10.0)      # 2 kW x 5 h
    assert c.cost_usd == pytest.approx(1.0)
    assert c.wall_days == pytest.approx(18_000 / 86_400)
    assert c.power_mw == pytest.approx(0.002)


def test_overhead_and_mfu_override():
    hw = Hardware("toy", 1e12, 0.5, 1000.0, overhead=1.5)
    c = estimate_cost(1e15, hw, mfu=1.0)
    assert c.device_s == pytest.approx(1000)
    assert c.energy_kwh == pytest.approx(1.5 * 1000 / 3600)


def test_more_devices_same_energy_less_time():
    a = estimate_cost(1e20, "H100", n_devices=1)
    b = estimate_cost(1e20, "H100", n_devices=8)
    assert b.wall_s == pytest.approx(a.wall_s / 8)
    assert b.energy_kwh == pytest.approx(a.energy_kwh)


def test_memorization_costs_keys_and_ratio():
    c = memorization_costs(1e9, 1000, 10, epochs=50, hardware="A100")
    assert set(c) == {"dense", "memory tuning", "memory tuning, cached"}
    assert c["dense"].flops == 6 * 1e9 * 1e4 * 50
    assert c["memory tuning, cached"].flops < c["memory tuning"].flops < c["dense"].flops
    one = memorization_costs(1e9, 1000, 10, memory=MemoryTuning(epochs=10))
    assert set(one) == {"dense", "memory tuning"}
    assert one["memory tuning"].flops == pytest.approx(memory_tuning_flops(1e9, 1e4,
                                                                           MemoryTuning(epochs=10)))
    with pytest.raises(ValueError, match="memory"):
        memorization_costs(1e9, 1000, 10, memory={"x": 3})


def test_paper_example_within_5_percent():
    p = paper_llama3_400b_example()
    assert p.needed_flops == pytest.approx(3.6e27, rel=0.05)
    assert p.deliverable_flops == pytest.approx(1.6e27, rel=0.05)
    assert 900 < p.stated_vs_needed < 1200          # the printed 3.43e24 is ~1000x too small
    assert p.recomputed_cost_usd == pytest.approx(68e6, rel=0.05)
    assert p.days_needed == pytest.approx(202, rel=0.05)
    assert p.board_only_cost_usd < p.recomputed_cost_usd


# ------------------------------------------------------------------- units

@pytest.mark.parametrize("value,text", [(3.6e27, "3.6e27 FLOPs"), (1.601e27, "1.6e27 FLOPs"),
                                        (0, "0 FLOPs"), (5e3, "5.0e3 FLOPs")])
def test_format_flops(value, text):
    assert format_flops(value) == text


@pytest.mark.parametrize("seconds,text", [(45, "45 s"), (192, "3.2 min"), (7200, "2 h"),
                                          (90 * 86400, "90 days"), (2 * 365.25 * 86400, "2 years")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_power_energy_usd():
    assert format_power(350e6) == "350 MW"
    assert format_power(700) == "700 W"
    assert format_energy(756e6) == "756 GWh"
    assert format_energy(0.5) == "500 Wh"
    assert format_usd(68.04e6) == "$68M"
    assert format_usd(1.5e9) == "$1.5B"
    assert format_usd(12.5) == "$12.50"


def test_hardware_presets_and_lookup():
    assert get_hardware("mi300x") is HARDWARE["MI300X"]
    assert HARDWARE["MI300X"].peak_flops_per_s == pytest.approx(1.3074e15)
    assert HARDWARE["H100"].achieved_flops_per_s == pytest.approx(989.4e12 * 0.40)
    cpu = cost.cpu_hardware(5e10, 0.2)
    assert get_hardware("this cpu", {"this CPU": cpu}) is cpu


# --------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,arg", [
    (lambda: dense_memorization_flops(-1, 10, 100), "params_total"),
    (lambda: dense_memorization_flops(1e9, 0, 100), "tokens"),
    (lambda: dense_memorization_flops(1e9, 10, 0), "epochs"),
    (lambda: memorization_costs(1e9, -5, 10), "n_facts"),
    (lambda: memorization_costs(1e9, 5, 0), "tokens_per_fact"),
    (lambda: MemoryTuning(epochs=0), "epochs"),
    (lambda: MemoryTuning(above_fraction=1.5), "above_fraction"),
    (lambda: MemoryTuning(rows_per_token=0), "rows_per_token"),
    (lambda: Hardware("x", 1e12, 1.2, 100), "mfu"),
    (lambda: Hardware("x", 1e12, 0.0, 100), "mfu"),
    (lambda: Hardware("x", -1e12, 0.5, 100), "peak_flops_per_s"),
    (lambda: estimate_cost(1e20, "H100", mfu=1.01), "mfu"),
    (lambda: estimate_cost(1e20, "H100", n_devices=0), "n_devices"),
    (lambda: estimate_cost(1e20, "TPU-v9"), "hardware"),
    (lambda: estimate_cost(float("nan"), "H100"), "flops"),
    (lambda: format_usd(-1), "usd"),
])
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_unknown_hardware_lists_presets():
    with pytest.raises(ValueError, match="MI300X"):
        get_hardware("B200")


# ---------------------------------------------------- measured runs

def test_measured_run_flops_and_comparison():
    full = MeasuredRun("full", params_trained=100, params_total=100, tokens=1000, steps=10,
                       seconds=6.0)
    frozen = MeasuredRun("frozen", params_trained=10, params_total=100, tokens=1000, steps=10,
                         seconds=4.0, backward_fraction=0.5)
    assert full.flops == 6 * 100 * 1000
    assert frozen.flops == (200 + 100 + 20) * 1000
    rows = compare_runs([full, frozen], flops_per_s=1e5)
    assert [r.name for r in rows] == ["full", "frozen"]
    assert rows[0].predicted_s == pytest.approx(6.0)
    assert rows[0].ratio == pytest.approx(1.0)
    assert rows[1].predicted_s == pytest.approx(3.2)
    assert rows[1].ratio == pytest.approx(4.0 / 3.2)
    # a per-run rate
    rows = compare_runs([full], lambda r: 2e5)
    assert rows[0].ratio == pytest.approx(2.0)


def test_measured_run_bad_input():
    with pytest.raises(ValueError, match="params_trained"):
        MeasuredRun("x", params_trained=200, params_total=100, tokens=1, steps=1, seconds=1.0)
    with pytest.raises(ValueError, match="seconds"):
        MeasuredRun("x", params_trained=1, params_total=100, tokens=1, steps=1, seconds=0.0)
    with pytest.raises(ValueError, match="flops_per_s"):
        compare_runs([MeasuredRun("x", 1, 100, 1, 1, 1.0)], 0.0)
    with pytest.raises(ValueError, match="MeasuredRun"):
        compare_runs([{"name": "x"}], 1.0)


def test_measure_matmul_flops_positive():
    flops = cost.measure_matmul_flops(64, repeats=2)
    assert math.isfinite(flops) and flops > 1e6


def test_random_fact_batches_shapes_and_seed():
    a = cost.random_fact_batches(50, n_facts=10, tokens_per_fact=6, batch_size=4, seed=1)
    b = cost.random_fact_batches(50, n_facts=10, tokens_per_fact=6, batch_size=4, seed=1)
    assert [x.shape for x in a] == [(4, 6), (4, 6), (2, 6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert int(torch.cat(a).max()) < 50


def test_measure_training_run_tiny_llama():
    from lamini_lite.models import tiny_llama

    model = tiny_llama(64, hidden_size=32, num_layers=2, num_heads=2)
    batches = cost.random_fact_batches(64, n_facts=8, tokens_per_fact=8, batch_size=4)
    run = cost.measure_training_run(model, batches, name="tiny", epochs=3, progress=False)
    assert run.steps == 6 and run.tokens == 3 * 8 * 8
    assert run.params_trained == run.params_total
    assert run.meta["last_loss"] < run.meta["first_loss"]   # it is learning the facts
    assert run.flops == 6 * run.params_total * run.tokens
    assert run.seconds == pytest.approx(run.meta["total_s"])
    med = cost.measure_training_run(model, batches, name="tiny", timing="median", progress=False)
    assert med.seconds == pytest.approx(med.meta["median_step_s"] * med.steps)
    with pytest.raises(ValueError, match="timing"):
        cost.measure_training_run(model, batches, name="tiny", timing="mean")


def test_train_top_layers_only():
    from lamini_lite.models import count_parameters, tiny_llama

    model = tiny_llama(64, hidden_size=32, num_layers=4, num_heads=2)
    f = cost.train_top_layers_only(model, 1)
    trained = count_parameters(model, trainable_only=True)
    top = sum(p.numel() for p in model.model.layers[-1].parameters())
    assert trained == top
    head = model.get_output_embeddings().weight.numel() + model.model.norm.weight.numel()
    assert f == pytest.approx((top + head) / count_parameters(model))
    with pytest.raises(ValueError, match="n_layers"):
        cost.train_top_layers_only(model, 5)


