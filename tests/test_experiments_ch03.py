"""Chapter 3's claim quantities (lamini_lite.experiments.ch03_finetuning) on hand-made runs."""

import numpy as np
import pandas as pd
import pytest

import lamini_lite.finetune_knowledge as fk
from lamini_lite.claims import registered_claims
from lamini_lite.experiments import ch03_finetuning as X
from lamini_lite.facts import Fact

CATS = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def toy_split():
    facts = [Fact(f"p{i}", "loc", f"c{i % 6}", f"where is p{i} ?") for i in range(80)]
    cats = [CATS[i % 4] if i % 5 else "Unknown" for i in range(80)]  # Unknown is common
    return fk.split_for_study(facts, cats, n_test_per_category=5, n_dev=4, seed=0)


def fake_run(name, rng, n_test, n_train, *, epochs=4, p=0.5, idk=False, shift=0.0):
    """A VariantRun tested every epoch with random answers (accuracy ``p + shift``)."""
    ep = list(range(epochs + 1))
    correct = [(rng.random(n_test) < min(1.0, p + shift)).tolist() for _ in ep]
    abstained = [((rng.random(n_test) < 0.4) if idk else np.zeros(n_test, bool)).tolist()
                 for _ in ep]
    if idk:  # an abstention is never a correct answer
        correct = [(np.array(c) & ~np.array(a)).tolist() for c, a in zip(correct, abstained)]
    fitted = [(rng.random(n_train) < (e + 1) / (epochs + 1)).tolist() for e in ep]
    return fk.VariantRun(name=name, epochs=ep, dev_acc=[0.1] * len(ep), train_fitted=fitted,
                         test_epochs=ep, test_correct=correct, test_abstained=abstained,
                         early_stop=1, convergence=epochs, seconds=0.0)


@pytest.fixture
def study():
    """Runs of every variant of the study on a toy split, for two study seeds."""
    split = toy_split()
    rng = np.random.default_rng(0)
    runs, variants = {}, {}
    for s in (0, 1):
        mixes = fk.mixture_variants(split, 8, seed=s)
        vs = (mixes + fk.known_only_variants(mixes) + [fk.idk_variant(mixes[2])]
              + fk.single_category_variants(split, 2, seed=s, skip_short=True))
        variants[s] = {v.name: v for v in vs}
        runs[s] = {v.name: fake_run(v.name, rng, len(split.test), len(v.facts),
                                    idk=v.family == "idk",
                                    shift=-0.3 * (v.unknown_share or 0))
                   for v in vs}
    return split, runs, variants


def test_claims_are_registered_and_statistical_ones_test_an_interval_end():
    claims = {k: c for k, c in registered_claims().items() if k.startswith("ch03.")}
    mine = [getattr(X, n) for n in X.__all__ if n.isupper() and n != "SHARES"]
    assert {c.id for c in mine} == set(claims) and len(mine) == 14
    for c in mine:
        assert c.text and c.op in (">", "<")
        assert c.on in ("low", "high") or c.id == "ch03.linear_r2"


def test_fact_weights_reproduce_test_accuracy(study):
    split, runs, _ = study
    r = runs[0]["D_50"]
    for group in ("Known", "all"):
        w = X.fact_weights(split, group)
        for k, e in enumerate(r.test_epochs):
            ok = np.array(r.test_correct[k], dtype=float)
            want = r.test_accuracy(split.test_cats, split.shares, e)[group]
            assert 100 * (w @ ok) / w.sum() == pytest.approx(want)
    assert X.fact_weights(split, "Unknown")[np.array(split.test_cats) != "Unknown"].sum() == 0
    with pytest.raises(ValueError, match="group"):
        X.fact_weights(split, "Known-ish")


def test_contrast_is_the_mean_over_study_seeds_of_table_differences(study):
    split, runs, variants = study
    tables = {s: fk.summary_table(list(runs[s].values()), list(variants[s].values()), split)
              for s in runs}
    want = np.mean([t.loc["D_0", "CONV Known"] - t.loc["D_100", "ES Known"]
                    for t in tables.values()])
    iv = X.contrast(runs, split, [(1, "D_0", "CONV"), (-1, "D_100", "ES")], n_boot=300)
    assert iv.estimate == pytest.approx(want)
    assert iv.low <= iv.estimate <= iv.high
    again = X.contrast(runs, split, [(1, "D_0", "CONV"), (-1, "D_100", "ES")], n_boot=300)
    assert again == iv  # the bootstrap is seeded
    acc = X.accuracy(runs, split, "D_0", "CONV", n_boot=300)
    assert acc.estimate == pytest.approx(np.mean([t.loc["D_0", "CONV Known"]
                                                  for t in tables.values()]))
    tab = X.accuracy_table(runs, split, ["D_0", "D_50"])
    assert list(tab.columns) == ["ES", "ES low", "ES high", "CONV", "CONV low", "CONV high"]
    with pytest.raises(KeyError, match="D_nothing"):
        X.contrast(runs, split, [(1, "D_nothing", "ES")])
    with pytest.raises(ValueError, match="tag"):
        X.contrast(runs, split, [(1, "D_0", "BEST")])


def test_slope_terms_give_the_least_squares_slope(study):
    split, runs, _ = study
    mix = [f"D_{x}" for x in X.SHARES]
    xs = [x / 100 for x in X.SHARES]
    accs = [X.accuracy(runs, split, n, "CONV", n_boot=200).estimate for n in mix]
    slope = X.contrast(runs, split, X.slope_terms(mix, xs, "CONV"), n_boot=200)
    assert slope.estimate == pytest.approx(np.polyfit(xs, accs, 1)[0])
    es = [X.accuracy(runs, split, n, "ES", n_boot=200).estimate for n in mix]
    drop = X.contrast(runs, split, X.slope_terms(mix, xs, [(1, "ES"), (-1, "CONV")]),
                      n_boot=200)
    assert drop.estimate == pytest.approx(np.polyfit(xs, np.subtract(es, accs), 1)[0])
    with pytest.raises(ValueError, match="distinct"):
        X.slope_terms(["D_0", "D_50"], [0.5, 0.5], "ES")


def test_filter_terms_average_d_minus_d_known(study):
    split, runs, _ = study
    terms = X.filter_terms("CONV")
    assert sum(c for c, _, _ in terms) == pytest.approx(0)
    iv = X.contrast(runs, split, terms, n_boot=200)
    want = np.mean([X.accuracy(runs, split, f"D_{x}", "CONV", n_boot=200).estimate
                    - X.accuracy(runs, split, f"D_Known_{x}", "CONV", n_boot=200).estimate
                    for x in (25, 50, 75)])
    assert iv.estimate == pytest.approx(want)
    assert X.filter_terms("ES", (75,), sign=-1) == [(-1.0, "D_75", "ES"),
                                                    (1.0, "D_Known_75", "ES")]


def test_weighted_interval_resamples_within_strata():
    # two strata: values 0 in one and 1 in the other, equal weights: every resample
    # keeps the strata's sizes, so the mean cannot move
    X_ = np.array([[0.0]] * 5 + [[1.0]] * 5)
    iv = X.weighted_interval(X_, np.ones(10), ["a"] * 5 + ["b"] * 5, lambda m: m[:, 0],
                             n_boot=200)
    assert iv.estimate == iv.low == iv.high == pytest.approx(50.0)
    mixed = X.weighted_interval(X_, np.ones(10), ["a"] * 10, lambda m: m[:, 0], n_boot=200)
    assert mixed.low < 50 < mixed.high
    with pytest.raises(ValueError, match="positive weight"):
        X.weighted_interval(X_, np.zeros(10), ["a"] * 10, lambda m: m[:, 0])
    with pytest.raises(ValueError, match="one weight"):
        X.weighted_interval(X_, np.ones(9), ["a"] * 10, lambda m: m[:, 0])


def test_idk_gain_and_answered_shares(study):
    split, runs, variants = study
    tables = {s: fk.summary_table(list(runs[s].values()), list(variants[s].values()), split)
              for s in runs}
    one = {0: runs[0]}
    gain = X.idk_gain(one, split, n_boot=200)
    t = tables[0]
    assert gain.estimate == pytest.approx(t.loc["D_IDK_50", "CONV Known"]
                                          - t.loc["D_50", "CONV Known"])
    ans, dec = X.answered_share(runs), X.declined_share(runs)
    n = 2 * len(split.test)
    k = sum(int((~np.array(runs[s]["D_IDK_50"].test_abstained[-1])).sum()) for s in runs)
    assert ans.estimate == pytest.approx(100 * k / n)
    assert dec.estimate == pytest.approx(100 - ans.estimate)
    assert dec.low == pytest.approx(100 - ans.high)
    gap = X.answered_gap(runs, split)
    assert -100 <= gap.low <= gap.estimate <= gap.high <= 100


def test_linear_fit_pools_the_points_of_every_study_seed(study):
    split, runs, variants = study
    pts = pd.concat([fk.linear_points(list(runs[s].values()), list(variants[s].values()),
                                      split, accuracy="Known") for s in runs])
    want = fk.fit_linear(pts["acc"], pts["known_fitted"], pts["unknown_fitted"])
    fit, ivs = X.linear_fit(runs, variants, split, "Known", n_boot=200)
    assert fit.n_points == want.n_points == len(pts)
    for a in ("b0", "b_kn", "b_unk", "r2"):
        assert getattr(fit, a) == pytest.approx(getattr(want, a))
    for a in ("b0", "b_kn", "b_unk", "r2"):
        assert ivs[a].estimate == pytest.approx(getattr(fit, a))
        assert ivs[a].low <= ivs[a].high
    assert ivs["b_unk - b_kn"].estimate == pytest.approx(fit.b_unk - fit.b_kn)


def test_fitted_gaps(study):
    _, runs, variants = study
    kn = un = nk = nu = 0
    for s in runs:
        r, v = runs[s]["D_50"], variants[s]["D_50"]
        row = np.array(r.train_fitted[r.epochs.index(r.early_stop)])
        unk = np.array([c == "Unknown" for c in v.categories])
        kn, nk = kn + row[~unk].sum(), nk + (~unk).sum()
        un, nu = un + row[unk].sum(), nu + unk.sum()
    gap = X.fitted_gap_at(runs, variants, "D_50", "ES")
    assert gap.estimate == pytest.approx(100 * (kn / nk - un / nu))
    over = X.fitted_gap_over_epochs(runs, variants, "D_50", n_boot=200)
    assert over.low <= over.estimate <= over.high
    with pytest.raises(ValueError, match="both Known and Unknown"):
        X.fitted_gap_at(runs, variants, "D_0", "ES")
