"""Tests of lamini_lite.training.mitigations: filtering or relabelling unknown facts,
the SliCK category of each fact, and early stopping."""

import pytest
import torch

from lamini_lite.facts import Fact
from lamini_lite.models import tiny_llama
from lamini_lite.training import (EarlyStopping, FinetuneHistory, category_list, filter_unknowns,
                                  relabel_unknowns)

CATS = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def toy_facts(n=40):
    return [Fact(f"p{i}", "loc", f"c{(i * 7) % 6}", f"where is p{i} ?") for i in range(n)]


def toy_cats(n=40):
    return [CATS[i % 4] for i in range(n)]


@pytest.fixture
def toy():
    model = tiny_llama(64, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return model, None


def test_filter_and_relabel_unknowns():
    facts, cats = toy_facts(8), toy_cats(8)
    kept = filter_unknowns(facts, cats)
    assert [f.subject for f in kept] == [f.subject for f, c in zip(facts, cats) if c != "Unknown"]
    rel = relabel_unknowns(facts, {f.key: c for f, c in zip(facts, cats)}, idk="I don't know")
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
        category_list(facts, ["Unknown"])
    with pytest.raises(ValueError, match="unknown categories"):
        category_list(facts, ["Known"] * 4)
    with pytest.raises(KeyError, match="no entry"):
        category_list(facts, {})
    with pytest.raises(ValueError, match="idk"):
        relabel_unknowns(facts, ["Unknown"] * 4, idk=" ")


def test_early_stopping_callback(toy):
    model, tok = toy
    h = FinetuneHistory()
    stop = EarlyStopping(patience=2, model=model)
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
        EarlyStopping(patience=0)
