"""The quantities chapter 6's claims test (lamini_lite.experiments.ch06_kernels)."""

from __future__ import annotations

import math

import pytest
import torch

from lamini_lite.claims import ClaimFailed, check, registered_claims
from lamini_lite.experiments import ch06_kernels as X


def test_claims_are_registered_with_chapter_ids():
    claims = {k: v for k, v in registered_claims().items() if k.startswith("ch06.")}
    assert len(claims) == 10
    assert all(c.chapter == "ch06" and c.text for c in claims.values())


def test_bf16_steps_error_truncation_is_below_one_step_rounding_below_half():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 32, generator=g)
    rounded = ref.bfloat16()  # round to nearest
    truncated = (ref.view(torch.int32) & ~0xFFFF).view(torch.float32)  # cut low 16 bits
    assert X.bf16_steps_error(rounded, ref) <= 0.5
    assert 0.5 < X.bf16_steps_error(truncated, ref) < 1.0
    assert X.bf16_steps_error(ref, ref) == 0.0


def test_bf16_steps_error_floors_near_zero_entries_at_the_rms_scale():
    ref = torch.tensor([1.0, -1.0, 1e-9])
    out = ref.clone()
    out[2] = 2e-9  # a 100% error on an entry that cancelled to nearly zero
    assert X.bf16_steps_error(out, ref) < 1e-3  # judged against 1/256 of the RMS
    out[0] = 1.0 + 2 ** -7  # one full bf16 step on a typical entry
    assert X.bf16_steps_error(out, ref) == pytest.approx(1.0)


def test_bf16_steps_error_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        X.bf16_steps_error(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="all zero"):
        X.bf16_steps_error(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        X.bf16_steps_error(torch.zeros(0), torch.zeros(0))


def test_relative_max_error():
    ref = torch.tensor([[2.0, -4.0], [0.0, 1.0]])
    assert X.relative_max_error(ref, ref) == 0.0
    assert X.relative_max_error(ref + torch.tensor([[0.0, 0.4], [0.0, 0.0]]), ref) \
        == pytest.approx(0.1)
    with pytest.raises(ValueError, match="all zero"):
        X.relative_max_error(ref, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same shape"):
        X.relative_max_error(ref, torch.zeros(3))


def test_ptx_count():
    ptx = "mov.u32 %r1;\n@%p1 ld.global.v4.b32 {..};\ncvt.rn.bf16x2.f32 %r2;\nld.global.v4.b32"
    assert X.ptx_count(ptx, "ld.global.v4") == 2
    assert X.ptx_count(ptx, "cvt.rn.bf16") == 1
    assert X.ptx_count(ptx, "atom.global") == 0
    with pytest.raises(ValueError):
        X.ptx_count(ptx, "")


def test_worst_resources_and_unmeasured_values_fail_the_claim():
    rows = [{"registers": 40, "spill_bytes": 0}, {"registers": 64, "spill_bytes": 0}]
    assert X.worst_resources(rows) == {"spill_bytes": 0.0, "registers": 64.0}
    unread = rows + [{"registers": None, "spill_bytes": float("nan")}]
    worst = X.worst_resources(unread)
    assert math.isnan(worst["registers"]) and math.isnan(worst["spill_bytes"])
    with pytest.raises(ClaimFailed):
        check(X.NO_REGISTER_SPILLS, worst["spill_bytes"], quiet=True)
    with pytest.raises(ValueError):
        X.worst_resources([])


def test_interpreted_forward_kernel_is_within_one_bf16_step():
    pytest.importorskip("triton")
    from lamini_lite.kernels import memory_lookup, memory_lookup_reference

    g = torch.Generator().manual_seed(1)
    values = torch.randn(32, 16, generator=g).bfloat16()
    indices = torch.randint(0, 32, (4, 4), generator=g)
    weights = torch.softmax(torch.randn(4, 4, generator=g), dim=-1)
    out = memory_lookup(values, indices, weights, backend="triton")
    ref = memory_lookup_reference(values.float(), indices, weights)
    assert X.bf16_steps_error(out, ref) <= 1.0
