"""The quantities chapter 7's claims test (lamini_lite.experiments.ch07_cost)."""

from __future__ import annotations

import math

import pytest

from lamini_lite.claims import check, registered_claims
from lamini_lite.cost import paper_llama3_400b_example
from lamini_lite.experiments import ch07_cost as X


def test_claims_are_registered_with_chapter_ids():
    claims = {k: v for k, v in registered_claims().items() if k.startswith("ch07.")}
    assert len(claims) == 7
    assert all(c.chapter == "ch07" and c.text for c in claims.values())


def test_percent_off():
    assert X.percent_off(68.04e6, 68e6) == pytest.approx(0.0588, abs=1e-4)
    assert X.percent_off(50, 100) == pytest.approx(50.0)
    assert X.percent_off(150, 100) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        X.percent_off(1.0, 0.0)
    with pytest.raises(ValueError):
        X.percent_off(math.nan, 1.0)


def test_timing_factor_is_symmetric():
    assert X.timing_factor(1.0) == 1.0
    assert X.timing_factor(2.0) == X.timing_factor(0.5) == 2.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            X.timing_factor(bad)


def test_paper_recomputation_claims_hold():
    """The recomputations of the paper's example: the chapter's verdict on its numbers."""
    p = paper_llama3_400b_example()
    check(X.PRINTED_FLOPS_TOO_SMALL, p.stated_vs_needed, quiet=True)
    check(X.FLEET_NEEDS_OVER_180_DAYS, p.days_needed, quiet=True)
    check(X.ELECTRICITY_CHECKS_OUT, X.percent_off(p.recomputed_cost_usd, p.stated_cost_usd),
          quiet=True)


def test_sizes_registered():
    from lamini_lite.profiles import sizes

    for profile in ("ci", "book", "full"):
        s = sizes("cost", profile)
        assert s.smol_steps >= 1 and s.job_epochs >= 1
