"""Chapter 3's claim quantities (lamini_lite.experiments.ch03_finetuning) on hand-made runs."""

import numpy as np
import pandas as pd
import pytest
import torch

from lamini_lite.claims import Claim, registered_claims
from lamini_lite.experiments import ch03_finetuning as X
from lamini_lite.facts import Fact, FactError
from lamini_lite.lm import greedy_answers, greedy_match
from lamini_lite.models import tiny_llama
from lamini_lite.profiles import sizes
from lamini_lite.training import finetune_qa

from conftest import toy_tokenizer as word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


CATS = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def toy_split():
    facts = [Fact(f"p{i}", "loc", f"c{i % 6}", f"where is p{i} ?") for i in range(80)]
    cats = [CATS[i % 4] if i % 5 else "Unknown" for i in range(80)]  # Unknown is common
    return X.split_for_study(facts, cats, n_test_per_category=5, n_dev=4, seed=0)


def fake_run(name, rng, n_test, n_train, *, epochs=4, p=0.5, idk=False, shift=0.0):
    """A VariantRun tested every epoch with random answers (accuracy ``p + shift``)."""
    ep = list(range(epochs + 1))
    correct = [(rng.random(n_test) < min(1.0, p + shift)).tolist() for _ in ep]
    abstained = [((rng.random(n_test) < 0.4) if idk else np.zeros(n_test, bool)).tolist()
                 for _ in ep]
    if idk:  # an abstention is never a correct answer
        correct = [(np.array(c) & ~np.array(a)).tolist() for c, a in zip(correct, abstained)]
    fitted = [(rng.random(n_train) < (e + 1) / (epochs + 1)).tolist() for e in ep]
    return X.VariantRun(name=name, epochs=ep, dev_acc=[0.1] * len(ep), train_fitted=fitted,
                         test_epochs=ep, test_correct=correct, test_abstained=abstained,
                         early_stop=1, convergence=epochs, seconds=0.0)


@pytest.fixture
def study():
    """Runs of every variant of the study on a toy split, for two study seeds."""
    split = toy_split()
    rng = np.random.default_rng(0)
    runs, variants = {}, {}
    for s in (0, 1):
        mixes = X.mixture_variants(split, 8, seed=s)
        vs = (mixes + X.known_only_variants(mixes) + [X.idk_variant(mixes[2])]
              + X.single_category_variants(split, 2, seed=s, skip_short=True))
        variants[s] = {v.name: v for v in vs}
        runs[s] = {v.name: fake_run(v.name, rng, len(split.test), len(v.facts),
                                    idk=v.family == "idk",
                                    shift=-0.3 * (v.unknown_share or 0))
                   for v in vs}
    return split, runs, variants


def test_claims_are_registered_and_statistical_ones_test_an_interval_end():
    claims = {k: c for k, c in registered_claims().items() if k.startswith("ch03.")}
    mine = [getattr(X, n) for n in X.__all__ if isinstance(getattr(X, n), Claim)]
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
    tables = {s: X.summary_table(list(runs[s].values()), list(variants[s].values()), split)
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
    tables = {s: X.summary_table(list(runs[s].values()), list(variants[s].values()), split)
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
    pts = pd.concat([X.linear_points(list(runs[s].values()), list(variants[s].values()),
                                      split, accuracy="Known") for s in runs])
    want = X.fit_linear(pts["acc"], pts["known_fitted"], pts["unknown_fitted"])
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


WORDS = ["Q:", "A:", "where", "is", "?", "I", "don't", "know"] + \
    [f"p{i}" for i in range(40)] + [f"c{i}" for i in range(6)]


def toy_tokenizer():
    return word_tokenizer(WORDS)


def toy_facts(n=40):
    return [Fact(f"p{i}", "loc", f"c{(i * 7) % 6}", f"where is p{i} ?") for i in range(n)]


def toy_cats(n=40):
    return [CATS[i % 4] for i in range(n)]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def toy():
    tok = toy_tokenizer()
    model = tiny_llama(len(tok), hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return model, tok


def test_sizes_registered_for_every_profile():
    for p in ("ci", "book", "full"):
        s = sizes("finetune_knowledge", p)
        assert s.syn_size >= 8 and s.real_size >= 2 and s.syn_seeds


def test_split_mixtures_and_variants():
    split = X.split_for_study(toy_facts(), toy_cats(), n_test_per_category=2, n_dev=4, seed=0)
    assert sorted(split.test_cats) == sorted(CATS * 2)
    keys = [f.key for f in split.train + split.dev + split.test]
    assert len(keys) == len(set(keys)) == 40
    assert abs(sum(split.shares.values()) - 1) < 1e-9
    n_unk = len(split.pool("Unknown"))
    mixes = X.mixture_variants(split, 12, shares=(0, 0.5))
    assert [m.n_unknown for m in mixes] == [0, 6]
    assert X.mixture(split, n_unk, 1.0).n_unknown == n_unk
    with pytest.raises(FactError, match="Unknown"):
        X.mixture(split, n_unk + 1, 1.0)  # not enough Unknown facts in the train pool
    m50 = mixes[1]
    assert len(m50.facts) == 12 and m50.n_unknown == 6
    # nesting: D_0's Known facts start with D_50's Known facts
    assert [f.key for f in mixes[0].facts[:6]] == [f.key for f in m50.facts[:6]]
    known = X.known_only_variants(mixes)
    assert [k.name for k in known] == ["D_Known_50"] and known[0].n_unknown == 0
    assert len(known[0].facts) == 6
    idk = X.idk_variant(m50)
    assert sum(t == X.IDK for t in idk.targets) == 6 and idk.facts == m50.facts
    singles = X.single_category_variants(split, 3)
    assert [s.name for s in singles][-1] == "D_Natural"
    for s, c in zip(singles, CATS):
        assert set(s.categories) == {c}
    with pytest.raises(FactError, match="single-category"):
        X.single_category_variants(split, 50)


def test_sizes_adapt_to_what_the_split_holds():
    # a split with few MaybeKnown facts: the MaybeKnown set is left out when asked,
    # and the sweep's size is capped by the smaller of the Known and Unknown pools
    cats = ["MaybeKnown" if i % 20 == 1 else CATS[(i % 2) * 3] for i in range(40)]
    split = X.split_for_study(toy_facts(), cats, n_test_per_category=2, n_dev=4, seed=0)
    n_mk = len(split.pool("MaybeKnown"))
    assert 0 < n_mk < 4
    with pytest.raises(FactError, match="skip_short"):
        X.single_category_variants(split, 4)
    singles = X.single_category_variants(split, 4, skip_short=True)
    assert [s.name for s in singles] == ["D_HighlyKnown", "D_Unknown", "D_Natural"]
    assert all(len(s.facts) == 4 for s in singles)
    assert [s.name for s in X.single_category_variants(split, n_mk, skip_short=True)] == \
        ["D_HighlyKnown", "D_MaybeKnown", "D_Unknown", "D_Natural"]
    with pytest.raises(FactError, match="D_Natural"):
        X.single_category_variants(split, 1000, skip_short=True)
    n_kn, n_unk = len(split.pool("Known")), len(split.pool("Unknown"))
    assert X.mixture_size(split, 1000) == min(n_kn, n_unk)
    assert X.mixture_size(split, 3) == 3
    for s in X.mixture_variants(split, X.mixture_size(split, 1000)):
        assert len(s.facts) == min(n_kn, n_unk)  # every share of the sweep fits
    with pytest.raises(ValueError, match="most"):
        X.mixture_size(split, 0)


def test_greedy_match_agrees_with_decoding(toy):
    model, tok = toy
    facts = toy_facts(12)
    prompts = [X.study_prompt(f) for f in facts]
    finetune_qa(model, tok, prompts[:6], [f.object for f in facts[:6]], epochs=60, lr=1e-2,
                batch_size=6, progress=False)
    said = greedy_answers(model, tok, prompts, max_new_tokens=4)
    cands = [[f"c{k}" for k in range(6)] for _ in prompts]
    match = greedy_match(model, tok, prompts, cands, batch_size=5)
    for s, m in zip(said, match):
        assert (cands[0][m] if m >= 0 else None) == (s if s in cands[0] else None)
    correct, abst = X.evaluate_facts(model, tok, facts[:6])
    assert correct.all() and not abst.any()  # memorized
    with pytest.raises(ValueError, match="same length"):
        greedy_match(model, tok, prompts, cands[:3])


def test_fit_linear_recovers_coefficients():
    rng = np.random.default_rng(0)
    kn, un = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    fit = X.fit_linear(30 + 7 * kn - 8 * un, kn, un)
    assert fit.b0 == pytest.approx(30) and fit.b_kn == pytest.approx(7)
    assert fit.b_unk == pytest.approx(-8) and fit.r2 == pytest.approx(1)
    noisy = X.fit_linear(30 + 7 * kn - 8 * un + rng.normal(0, 3, 30), kn, un)
    assert noisy.r2 < 1
    with pytest.raises(ValueError, match="at least 4"):
        X.fit_linear([1, 2], [0, 1], [1, 0])


def test_run_variant_tracks_epochs_and_stops_at_convergence(toy, tmp_cache):
    model, tok = toy
    split = X.split_for_study(toy_facts(), toy_cats(), n_test_per_category=2, n_dev=4)
    v = X.idk_variant(X.mixture(split, 8, 0.5))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = X.StudyConfig(epochs=80, lr=1e-2, batch_size=8)
    run = X.run_variant(model, tok, v, split, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy trained
    assert run.epochs[0] == 0 and run.test_epochs == run.epochs
    assert run.convergence == run.epochs[-1] < 80 and np.mean(run.train_fitted[-1]) == 1.0
    assert 1 <= run.early_stop <= run.convergence
    row = X.summary_row(run, v, split)
    assert 0 <= row["CONV answered"] <= 100 and "CONV HighlyKnown" in row
    again = X.run_variant(model, tok, v, split, cfg, progress=False)  # from the cache
    assert again.train_fitted == run.train_fitted and again.seconds == run.seconds
    snap = X.run_variant(model, tok, v, split,
                          X.StudyConfig(epochs=80, lr=1e-2, batch_size=8,
                                         test_every_epoch=False), cache=False, progress=False)
    assert snap.test_epochs == sorted({snap.early_stop, snap.convergence})
    k = run.test_epochs.index(run.convergence)
    assert snap.test_correct[-1] == run.test_correct[k]


def test_stop_epochs_pick_the_first_best_dev_epoch_and_fall_back_to_the_last():
    rec = {"epochs": [0, 1, 2, 3], "dev_acc": [0.9, 0.5, 0.7, 0.7],
           "train_fitted": [[False, False], [True, False], [True, True], [True, True]]}
    assert X._stop_epochs(rec, 1.0) == (2, 2)  # epoch 0 never EARLY_STOP; ties: the first
    assert X._stop_epochs(rec, 0.5) == (2, 1)
    rec["train_fitted"] = [[False, False]] * 4
    assert X._stop_epochs(rec, 1.0) == (2, 3)  # never converged: the last epoch


def _fake_run(correct, abstained):
    return X.VariantRun(name="D_x", epochs=[0], dev_acc=[0.0], train_fitted=[[True]],
                         test_epochs=[0], test_correct=[correct], test_abstained=[abstained],
                         early_stop=0, convergence=0, seconds=0.0)


def test_test_accuracy_known_and_answered_aggregates():
    cats = ["HighlyKnown", "HighlyKnown", "MaybeKnown", "MaybeKnown", "Unknown", "Unknown"]
    shares = {"HighlyKnown": 0.2, "MaybeKnown": 0.2, "WeaklyKnown": 0.0, "Unknown": 0.6}
    run = _fake_run([True, True, True, False, True, False], [False] * 6)
    acc = run.test_accuracy(cats, shares, 0)
    # Known: (0.2 * 100 + 0.2 * 50) / 0.4; all adds Unknown (50%) at weight 0.6
    assert acc["Known"] == pytest.approx(75.0)
    assert acc["all"] == pytest.approx(100 * (0.2 + 0.1 + 0.3))
    # abstaining on both Unknowns and one MaybeKnown (the wrong one)
    run = _fake_run([True, True, True, False, False, False],
                    [False, False, False, True, True, True])
    acc = run.test_accuracy(cats, shares, 0, answered_only=True)
    assert acc["Known"] == pytest.approx(100.0) and acc["all"] == pytest.approx(100.0)
    assert acc["answered Unknown"] == 0.0
    assert acc["answered Known"] == pytest.approx(100 * (0.2 + 0.1) / 0.4)
    assert acc["answered"] == pytest.approx(100 * (0.2 + 0.1))
    with pytest.raises(ValueError, match="accuracy"):
        X.linear_points([run], [], None, accuracy="Unkown")
