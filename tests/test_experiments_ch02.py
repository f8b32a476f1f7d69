"""Tests for lamini_lite.experiments.ch02_slick: chapter 2's claims and their quantities."""

from __future__ import annotations

import numpy as np
import pytest

from lamini_lite import Fact
from lamini_lite.claims import Claim, ClaimFailed, check, registered_claims
from lamini_lite.experiments import ch02_slick as X
from lamini_lite.slick import SliCKProtocol, SliCKResult, chance_rates


def _result(greedy, samples, relations=None, objects=None):
    """A SliCKResult from answer strings; the right answer of fact i is objects[i]."""
    n = len(greedy)
    relations = relations or ["capital"] * n
    objects = objects or ["Right"] * n
    facts = [Fact(f"S{i}", r, o, f"Q{i}?") for i, (r, o) in enumerate(zip(relations, objects))]
    proto = SliCKProtocol(n_prompts=len(greedy[0]), n_shots=0, n_samples=len(samples[0][0]))
    prompts = [["p"] * len(g) for g in greedy]
    return SliCKResult(facts, proto, 0, prompts, greedy, samples)


def test_claims_are_registered_with_chapter_ids_and_tested_on_an_interval_end():
    claims = [v for v in vars(X).values() if isinstance(v, Claim)]
    assert len(claims) >= 10
    ids = [c.id for c in claims]
    assert len(set(ids)) == len(ids)
    for c in claims:
        assert c.chapter == "ch02" and registered_claims()[c.id] is c
        assert c.text and c.text[0].isupper()
    # every statistical claim is tested on its interval's end
    assert X.EVERY_CATEGORY.on == "estimate"
    assert all(c.on == "low" for c in claims if c is not X.EVERY_CATEGORY)


def test_two_sample_difference_brackets_the_truth_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 300)
    iv = X.two_sample_difference(a, b, seed=3)
    assert iv.low < iv.estimate < iv.high
    assert iv.low < 1.0 < iv.high and iv.low > 0.5
    assert iv == X.two_sample_difference(a, b, seed=3)
    med = X.two_sample_difference(a, b, np.median, seed=3, n_boot=200)
    assert med.low < 1.0 < med.high
    # no difference: the interval holds 0
    same = X.two_sample_difference(b[:150], b[150:], seed=1)
    assert same.low < 0 < same.high


def test_two_sample_difference_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        X.two_sample_difference([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        X.two_sample_difference([np.nan, 1.0], [1.0])
    with pytest.raises(ValueError, match="n_boot"):
        X.two_sample_difference([1.0], [1.0], n_boot=10)


def test_mean_difference_by_group_and_scale():
    v = [1, 1, 1, 0, 0, 0, 5]
    g = ["large", "large", "large", "small", "small", "small", "mid"]
    iv = X.mean_difference(v, g, "large", "small", scale=100)
    assert iv.estimate == pytest.approx(100) and iv.low == pytest.approx(100)
    with pytest.raises(ValueError, match="no member"):
        X.mean_difference(v, g, "large", "huge")
    with pytest.raises(ValueError, match="same length"):
        X.mean_difference(v, g[:-1], "large", "small")


def test_ranks_and_spearman_match_pandas():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(1)
    cats = rng.choice(list(X.ORDER), size=60)
    expo = rng.integers(0, 8, size=60).astype(float)  # many ties
    x = np.array([X.ORDER[c] for c in cats], dtype=float)
    assert np.allclose(X._avg_ranks(expo), pd.Series(expo).rank().to_numpy())
    rho, _ = X.exposure_agreement(cats, expo)
    assert rho == pytest.approx(pd.Series(x).corr(pd.Series(expo), method="spearman"))
    # row-wise ranks of a 2-D array
    two = np.stack([expo, expo[::-1]])
    assert np.allclose(X._avg_ranks(two)[1], pd.Series(expo[::-1]).rank().to_numpy())


def test_exposure_agreement_perfect_random_and_errors():
    cats = ["Unknown"] * 5 + ["WeaklyKnown"] * 5 + ["MaybeKnown"] * 5 + ["HighlyKnown"] * 5
    expo = np.arange(20.0)
    rho, auc = X.exposure_agreement(cats, expo)
    assert rho == pytest.approx(0.9, abs=0.1) and auc == 1.0
    rho_iv, auc_iv = X.agreement_intervals(cats, expo, n_boot=300)
    assert rho_iv.estimate == pytest.approx(rho) and rho_iv.low > 0.7
    assert auc_iv.low == 1.0
    # reversed exposure: everything flips
    rho2, auc2 = X.exposure_agreement(cats, expo[::-1])
    assert rho2 == pytest.approx(-rho) and auc2 == 0.0
    # ties count one half
    assert X.exposure_agreement(["Unknown", "HighlyKnown"], [3.0, 3.0])[1] == 0.5
    # no Unknown fact: no AUC, and an interval that proves nothing
    _, auc3 = X.exposure_agreement(["HighlyKnown", "WeaklyKnown"], [1.0, 0.0])
    assert np.isnan(auc3)
    _, iv = X.agreement_intervals(["HighlyKnown", "WeaklyKnown"] * 3, [1.0, 0.0] * 3,
                                  n_boot=200)
    assert iv.low == -np.inf
    with pytest.raises(ValueError, match="unknown categories"):
        X.exposure_agreement(["Known"], [1.0])
    with pytest.raises(ValueError, match="same length"):
        X.exposure_agreement(["Unknown"], [1.0, 2.0])


def test_chance_terms_average_to_chance_rates_and_interval():
    # continent: every sample says "Asia"; two of four facts are in Asia -> chance 0.5
    # capital: samples say the fact's own answer -> chance 1/3 each (3 distinct answers)
    rels = ["continent"] * 4 + ["capital"] * 3
    objs = ["Asia", "Asia", "Europe", "Africa", "Paris", "Lima", "Rome"]
    samples = [[["Asia", "Asia"]]] * 4 + [[[o, o]] for o in objs[4:]]
    greedy = [["x"]] * 7
    res = _result(greedy, samples, rels, objs)
    terms = X.chance_terms(res)
    rates = chance_rates(res)
    assert set(terms) == set(rates)
    for r in rates:
        assert terms[r].mean() == pytest.approx(rates[r])
    assert rates["continent"] == pytest.approx(0.5)
    iv = X.chance_interval(res, "continent", seed=0)
    assert iv.estimate == pytest.approx(50.0) and iv.low <= 50.0 <= iv.high
    assert X.chance_interval(res, "capital").estimate == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="no fact of relation"):
        X.chance_interval(res, "us_state")


def test_removed_share_is_a_wilson_interval_over_weakly_known():
    paper = ["WeaklyKnown"] * 10 + ["HighlyKnown", "Unknown"]
    corr = ["Unknown"] * 9 + ["WeaklyKnown", "HighlyKnown", "Unknown"]
    iv = X.removed_share(paper, corr)
    assert iv.estimate == pytest.approx(90.0) and 50 < iv.low < 90 < iv.high <= 100
    with pytest.raises(ValueError, match="no fact is WeaklyKnown"):
        X.removed_share(["Unknown"], ["Unknown"])
    with pytest.raises(ValueError, match="one category per fact"):
        X.removed_share(["Unknown"], ["Unknown", "Unknown"])


def test_categories_of_and_split_half_disagreement():
    # fact 0: right under prompts 0-1 only; fact 1: always right; fact 2: right only by
    # sampling under prompt 3
    greedy = [["Right", "Right", "no", "no"], ["Right"] * 4, ["no"] * 4]
    samples = [[["no"]] * 4, [["Right"]] * 4, [["no"], ["no"], ["no"], ["Right"]]]
    res = _result(greedy, samples)
    assert list(X.categories_of(res, [0, 1, 2, 3])) == list(res.categories)
    assert list(X.categories_of(res, [0])) == ["HighlyKnown", "HighlyKnown", "Unknown"]
    assert list(X.categories_of(res, [3])) == ["Unknown", "HighlyKnown", "WeaklyKnown"]
    assert list(X.categories_of(res, [3], n_samples=0)) == ["Unknown", "HighlyKnown",
                                                            "Unknown"]
    # fact 0 (right under prompts 0-1): pairs of single prompts {i}, {j} disagree when
    # exactly one is in {0, 1}: 2 * 2 of the 6 pairs; fact 1 never; fact 2 (a sample hit
    # under prompt 3 only): when exactly one is prompt 3: 3 of 6
    d1 = X.split_disagreement(res, 1)
    assert d1 == pytest.approx([4 / 6, 0.0, 3 / 6])
    # two prompts each: the 3 ways to split {0, 1, 2, 3}; fact 0 is HighlyKnown from
    # {0, 1} and Unknown from {2, 3}, MaybeKnown from both halves otherwise
    d2 = X.split_disagreement(res, 2)
    assert d2 == pytest.approx([1 / 3, 0.0, 1.0])
    half = X.split_half(res, 2)
    assert half.estimate == pytest.approx(100 * (1 / 3 + 1) / 3)
    assert 0 <= half.low <= half.estimate <= half.high <= 100
    with pytest.raises(ValueError, match="disjoint"):
        X.split_disagreement(res, 3)
    with pytest.raises(ValueError, match="prompts must be"):
        X.categories_of(res, [4])
    with pytest.raises(ValueError, match="n_samples"):
        X.categories_of(res, [0], n_samples=2)


def test_a_claim_is_checked_on_its_interval_end():
    iv = X.two_sample_difference([1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], seed=0)
    assert iv.estimate > 0 and iv.low <= 0
    with pytest.raises(ClaimFailed):
        check(X.POPULAR_BETTER_KNOWN, iv.estimate, interval=iv, quiet=True)


def test_share_intervals_and_flip_share():
    cats = ["HighlyKnown"] * 3 + ["Unknown"]
    t = X.share_intervals(cats)
    assert list(t.index) == ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]
    assert t.loc["HighlyKnown", "share (%)"] == pytest.approx(75.0)
    assert t.loc["MaybeKnown", "95% CI low"] == 0.0 and t.loc["MaybeKnown", "95% CI high"] > 0
    assert (t["95% CI low"] <= t["share (%)"]).all()
    assert (t["share (%)"] <= t["95% CI high"]).all()
    with pytest.raises(ValueError, match="empty"):
        X.share_intervals([])
    iv = X.flip_share(["Unknown", "HighlyKnown"], ["Unknown", "MaybeKnown"])
    assert iv.estimate == pytest.approx(50.0) and 0 < iv.low < 50 < iv.high < 100
    with pytest.raises(ValueError, match="one category per fact"):
        X.flip_share(["Unknown"], [])


def test_mean_difference_stratified_is_narrower_when_strata_differ():
    rng = np.random.default_rng(2)
    # two relations with very different levels; large beats small by 0.1 in each
    rel = np.repeat(["easy", "hard"], 40)
    tier = np.tile(np.repeat(["large", "small"], 20), 2)
    v = (np.where(rel == "easy", 0.8, 0.1) + np.where(tier == "large", 0.1, 0.0)
         + rng.normal(0, 0.05, 80))
    plain = X.mean_difference(v, tier, "large", "small", seed=0)
    strat = X.mean_difference(v, tier, "large", "small", strata=rel, seed=0)
    assert strat.estimate == pytest.approx(plain.estimate)
    assert strat.high - strat.low < 0.5 * (plain.high - plain.low)
    assert strat.low < 0.1 < strat.high and strat.low > 0
    with pytest.raises(ValueError, match="strata"):
        X.mean_difference(v, tier, "large", "small", strata=rel[:-1])


def test_vectorized_rule_matches_categories_of():
    rng = np.random.default_rng(4)
    greedy = [["Right" if rng.random() < q else "no" for _ in range(10)]
              for q in rng.choice([0.0, 0.3, 1.0], size=30)]
    samples = [[["Right" if rng.random() < 0.05 else "no" for _ in range(4)]
                for _ in range(10)] for _ in range(30)]
    res = _result(greedy, samples)
    names = {v: k for k, v in X.ORDER.items()}
    for prompts in ([0], [2, 5], list(range(10))):
        codes = X._codes(res.greedy_correct[:, prompts], res.sample_correct[:, prompts])
        assert [names[c] for c in codes] == list(X.categories_of(res, prompts))
    codes0 = X._codes(res.greedy_correct, res.sample_correct[:, :, :0])
    assert [names[c] for c in codes0] == list(X.categories_of(res, range(10), n_samples=0))
    # 126 ways to split 10 prompts into two sets of 5
    assert X.split_disagreement(res, 5).shape == (30,)
