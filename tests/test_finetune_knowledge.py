import numpy as np
import pytest
import torch

import lamini_lite.finetune_knowledge as fk
from lamini_lite.facts import Fact, FactError
from lamini_lite.finetune import FinetuneHistory, finetune_qa
from lamini_lite.lm import greedy_answers
from lamini_lite.models import tiny_llama
from lamini_lite.profiles import sizes

from test_finetune import toy_tokenizer as word_tokenizer  # noqa: E402

CATS = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
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


def test_filter_and_relabel_unknowns():
    facts, cats = toy_facts(8), toy_cats(8)
    kept = fk.filter_unknowns(facts, cats)
    assert [f.subject for f in kept] == [f.subject for f, c in zip(facts, cats) if c != "Unknown"]
    rel = fk.relabel_unknowns(facts, {f.key: c for f, c in zip(facts, cats)}, idk="I don't know")
    assert len(rel) == 8
    for f, r, c in zip(facts, rel, cats):
        if c == "Unknown":
            assert r.object == "I don't know" and r.is_correct("i don't know")
            assert r.meta["original_object"] == f.object and r.question == f.question
        else:
            assert r == f


def test_category_list_errors():
    facts = toy_facts(4)
    with pytest.raises(ValueError, match="one entry per fact"):
        fk.category_list(facts, ["Unknown"])
    with pytest.raises(ValueError, match="unknown categories"):
        fk.category_list(facts, ["Known"] * 4)
    with pytest.raises(KeyError, match="no entry"):
        fk.category_list(facts, {})
    with pytest.raises(ValueError, match="idk"):
        fk.relabel_unknowns(facts, ["Unknown"] * 4, idk=" ")


def test_split_mixtures_and_variants():
    split = fk.split_for_study(toy_facts(), toy_cats(), n_test_per_category=2, n_dev=4, seed=0)
    assert sorted(split.test_cats) == sorted(CATS * 2)
    keys = [f.key for f in split.train + split.dev + split.test]
    assert len(keys) == len(set(keys)) == 40
    assert abs(sum(split.shares.values()) - 1) < 1e-9
    n_unk = len(split.pool("Unknown"))
    mixes = fk.mixture_variants(split, 12, shares=(0, 0.5))
    assert [m.n_unknown for m in mixes] == [0, 6]
    assert fk.mixture(split, n_unk, 1.0).n_unknown == n_unk
    with pytest.raises(FactError, match="Unknown"):
        fk.mixture(split, n_unk + 1, 1.0)  # not enough Unknown facts in the train pool
    m50 = mixes[1]
    assert len(m50.facts) == 12 and m50.n_unknown == 6
    # nesting: D_0's Known facts start with D_50's Known facts
    assert [f.key for f in mixes[0].facts[:6]] == [f.key for f in m50.facts[:6]]
    known = fk.known_only_variants(mixes)
    assert [k.name for k in known] == ["D_Known_50"] and known[0].n_unknown == 0
    assert len(known[0].facts) == 6
    idk = fk.idk_variant(m50)
    assert sum(t == fk.IDK for t in idk.targets) == 6 and idk.facts == m50.facts
    singles = fk.single_category_variants(split, 3)
    assert [s.name for s in singles][-1] == "D_Natural"
    for s, c in zip(singles, CATS):
        assert set(s.categories) == {c}
    with pytest.raises(FactError, match="single-category"):
        fk.single_category_variants(split, 50)


def test_sizes_adapt_to_what_the_split_holds():
    # a split with few MaybeKnown facts: the MaybeKnown set is left out when asked,
    # and the sweep's size is capped by the smaller of the Known and Unknown pools
    cats = ["MaybeKnown" if i % 20 == 1 else CATS[(i % 2) * 3] for i in range(40)]
    split = fk.split_for_study(toy_facts(), cats, n_test_per_category=2, n_dev=4, seed=0)
    n_mk = len(split.pool("MaybeKnown"))
    assert 0 < n_mk < 4
    with pytest.raises(FactError, match="skip_short"):
        fk.single_category_variants(split, 4)
    singles = fk.single_category_variants(split, 4, skip_short=True)
    assert [s.name for s in singles] == ["D_HighlyKnown", "D_Unknown", "D_Natural"]
    assert all(len(s.facts) == 4 for s in singles)
    assert [s.name for s in fk.single_category_variants(split, n_mk, skip_short=True)] == \
        ["D_HighlyKnown", "D_MaybeKnown", "D_Unknown", "D_Natural"]
    with pytest.raises(FactError, match="D_Natural"):
        fk.single_category_variants(split, 1000, skip_short=True)
    n_kn, n_unk = len(split.pool("Known")), len(split.pool("Unknown"))
    assert fk.mixture_size(split, 1000) == min(n_kn, n_unk)
    assert fk.mixture_size(split, 3) == 3
    for s in fk.mixture_variants(split, fk.mixture_size(split, 1000)):
        assert len(s.facts) == min(n_kn, n_unk)  # every share of the sweep fits
    with pytest.raises(ValueError, match="most"):
        fk.mixture_size(split, 0)


def test_greedy_match_agrees_with_decoding(toy):
    model, tok = toy
    facts = toy_facts(12)
    prompts = [fk.study_prompt(f) for f in facts]
    finetune_qa(model, tok, prompts[:6], [f.object for f in facts[:6]], epochs=60, lr=1e-2,
                batch_size=6, progress=False)
    said = greedy_answers(model, tok, prompts, max_new_tokens=4)
    cands = [[f"c{k}" for k in range(6)] for _ in prompts]
    match = fk.greedy_match(model, tok, prompts, cands, batch_size=5)
    for s, m in zip(said, match):
        assert (cands[0][m] if m >= 0 else None) == (s if s in cands[0] else None)
    correct, abst = fk.evaluate_facts(model, tok, facts[:6])
    assert correct.all() and not abst.any()  # memorized
    with pytest.raises(ValueError, match="same length"):
        fk.greedy_match(model, tok, prompts, cands[:3])


def test_fit_linear_recovers_coefficients():
    rng = np.random.default_rng(0)
    kn, un = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    fit = fk.fit_linear(30 + 7 * kn - 8 * un, kn, un)
    assert fit.b0 == pytest.approx(30) and fit.b_kn == pytest.approx(7)
    assert fit.b_unk == pytest.approx(-8) and fit.r2 == pytest.approx(1)
    noisy = fk.fit_linear(30 + 7 * kn - 8 * un + rng.normal(0, 3, 30), kn, un)
    assert noisy.r2 < 1
    with pytest.raises(ValueError, match="at least 4"):
        fk.fit_linear([1, 2], [0, 1], [1, 0])


def test_early_stopping_callback(toy):
    model, tok = toy
    h = FinetuneHistory()
    stop = fk.EarlyStopping(patience=2, model=model)
    values = [0.1, 0.5, 0.4, 0.45]
    out = []
    for e, v in enumerate(values, 1):
        h.evals.append({"dev_acc": v})
        h.eval_epochs.append(e)
        if e == 2:
            saved = next(model.parameters()).detach().clone()
        out.append(stop(e, h))
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
    assert out == [False, False, False, True] and stop.best_epoch == 2
    stop.restore()
    assert torch.equal(next(model.parameters()), saved)
    with pytest.raises(ValueError, match="patience"):
        fk.EarlyStopping(patience=0)


def test_run_variant_tracks_epochs_and_stops_at_convergence(toy, tmp_cache):
    model, tok = toy
    split = fk.split_for_study(toy_facts(), toy_cats(), n_test_per_category=2, n_dev=4)
    v = fk.idk_variant(fk.mixture(split, 8, 0.5))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = fk.StudyConfig(epochs=80, lr=1e-2, batch_size=8)
    run = fk.run_variant(model, tok, v, split, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a copy trained
    assert run.epochs[0] == 0 and run.test_epochs == run.epochs
    assert run.convergence == run.epochs[-1] < 80 and np.mean(run.train_fitted[-1]) == 1.0
    assert 1 <= run.early_stop <= run.convergence
    row = fk.summary_row(run, v, split)
    assert 0 <= row["CONV answered"] <= 100 and "CONV HighlyKnown" in row
    again = fk.run_variant(model, tok, v, split, cfg, progress=False)  # from the cache
    assert again.train_fitted == run.train_fitted and again.seconds == run.seconds
    snap = fk.run_variant(model, tok, v, split,
                          fk.StudyConfig(epochs=80, lr=1e-2, batch_size=8,
                                         test_every_epoch=False), cache=False, progress=False)
    assert snap.test_epochs == sorted({snap.early_stop, snap.convergence})
    k = run.test_epochs.index(run.convergence)
    assert snap.test_correct[-1] == run.test_correct[k]


def _fake_run(correct, abstained):
    return fk.VariantRun(name="D_x", epochs=[0], dev_acc=[0.0], train_fitted=[[True]],
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
        fk.linear_points([run], [], None, accuracy="Unkown")
