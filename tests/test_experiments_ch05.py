"""Tests of lamini_lite.experiments.ch05_mome: the quantities chapter 5's claims check."""

from __future__ import annotations
import math
import pytest
from lamini_lite.claims import registered_claims
from lamini_lite.experiments import ch05_mome as X



def test_claims_are_registered_with_chapter_ids():
    ids = [c.id for c in registered_claims().values() if c.chapter == "ch05"]
    assert len(ids) == len(set(ids)) >= 13
    assert X.NEAR_KEPT.on == "low" and X.NEAR_TAKEN_OVER.on == "high"
    assert X.KNOWN_KEPT.on == "high" and X.UNRELATED_UNCHANGED.threshold == 85.0


def test_epochs_to_memorize_needs_recall_and_the_loss_bound():
    assert X.epochs_to_memorize(12, {"recall": 1.0, "max_loss": 0.2}) == 12.0
    assert X.epochs_to_memorize(40, {"recall": 0.95, "max_loss": 0.2}) == math.inf
    assert X.epochs_to_memorize(40, {"recall": 1.0, "max_loss": 0.7}) == math.inf


def test_unchanged_share_and_difference():
    before = ["a", "b", "c", "d"] * 6
    assert X.unchanged_counts(before, before) == (24, 24)
    u = X.unchanged_share(before, before)
    assert u.estimate == 100 and u.low > 85  # 24 of 24 clears the chapter's target
    assert X.unchanged_share(before[:16], before[:16]).low < 85  # 16 of 16 does not
    changed = ["z"] * 20 + before[20:]
    d = X.unchanged_difference(before, before, changed)
    assert d.estimate == pytest.approx(100 * 20 / 24) and d.low > 0
    with pytest.raises(ValueError, match="equal length"):
        X.unchanged_counts(["a"], ["a", "b"])


def test_known_drop_is_paired():
    aliases = [["Paris"], ["Lima"], ["Tokyo", "Tokio"], ["Rome"]]
    before = ["Paris", "Lima", "Tokio", "Milan"]
    assert X.known_correct(before, aliases) == [True, True, True, False]
    same = X.known_drop(before, before, aliases)
    assert same.estimate == same.low == same.high == 0.0
    worse = X.known_drop(before, ["Paris", "x", "y", "Milan"], aliases)
    assert worse.estimate == pytest.approx(50.0) and worse.high > 2.0
    with pytest.raises(ValueError, match="alias list"):
        X.known_correct(["a"], [])


def test_growth_exponent():
    n = [2 ** 10, 2 ** 12, 2 ** 14, 2 ** 16]
    assert X.growth_exponent(n, [5.0 * x ** 0.25 for x in n]) == pytest.approx(0.25)
    assert X.growth_exponent(n, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        X.growth_exponent([4], [1.0])


def test_norm_advantage_and_overlap_reduction():
    rows = [{"query_norm": "none", "experts": 65536, "text_weight_on_fact_rows": 0.77,
             "fact_fact_overlap": 0.90},
            {"query_norm": "layernorm", "experts": 65536, "text_weight_on_fact_rows": 0.75,
             "fact_fact_overlap": 0.90},
            {"query_norm": "batchnorm", "experts": 65536, "text_weight_on_fact_rows": 0.55,
             "fact_fact_overlap": 0.93},
            {"query_norm": "batchnorm", "experts": 2 ** 20, "text_weight_on_fact_rows": 0.34,
             "fact_fact_overlap": 0.86}]
    assert X.norm_advantage(rows, 65536) == pytest.approx(20.0)
    assert X.overlap_reduction(rows) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        X.norm_advantage(rows, 2 ** 20)  # batchnorm only at that size
    with pytest.raises(ValueError):
        X.overlap_reduction(rows, norm="none")


def test_lookup_scaling_table_and_bad_sizes():
    rows = X.lookup_scaling([4, 6], tokens=8, hidden=16, heads=2, topk=2, key_dim=8,
                          written_rows=10, repeats=1)
    assert [r["experts"] for r in rows] == [16, 64]
    assert all(r["us_per_token"] > 0 and r["store_mb"] < r["dense_values_mb"] for r in rows)
    with pytest.raises(ValueError, match="even"):
        X.lookup_scaling([5], tokens=4, hidden=8, key_dim=8)
