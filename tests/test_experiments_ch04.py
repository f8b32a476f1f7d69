"""Tests of lamini_lite.experiments.ch04_retrieval: the quantities chapter 4's claims check."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lamini_lite.claims import registered_claims
from lamini_lite.experiments import ch04_retrieval as X
from lamini_lite.facts import Fact
from lamini_lite.retrieval import RetrievalError, evaluate, make_retrieval_world


def _rows(approach, condition, correct, predictions=None, gold_rank=None, facts=None):
    n = len(correct)
    facts = facts or [f"f{i}" for i in range(n)]
    return pd.DataFrame({"approach": approach, "condition": condition, "fact": facts,
                         "correct": correct,
                         "prediction": predictions or ["x"] * n,
                         "gold_rank": gold_rank or [-1] * n})


def test_claims_are_registered_with_chapter_ids():
    ids = [c.id for c in registered_claims().values() if c.chapter == "ch04"]
    assert len(ids) == len(set(ids)) >= 11
    assert X.MEMORY_CONVERGES.threshold == X.MEMORY_EPOCHS
    assert all(c.on == "low" for c in (X.BM25_BEATS_CLOSED_BOOK, X.RANDOM_NOT_COPIED,
                                       X.READER_FAILS_MOST, X.RAG_ABSTAINS))


def test_epochs_to_recall():
    assert X.epochs_to_recall({"epochs": 5, "recall": 1.0}) == 5.0
    assert X.epochs_to_recall({"epochs": 40, "recall": 0.9}) == math.inf


def test_paired_gain_pairs_by_fact_and_filters():
    rag = _rows("RAG", "standard", [True, True, True, False], facts=["a", "b", "c", "d"])
    cb = _rows("cb", "standard", [False, True, False, False], facts=["d", "c", "b", "a"])
    df = pd.concat([rag, cb])
    g = X.paired_gain(df, "RAG", "cb")
    assert g.estimate == pytest.approx(50.0)  # a, b gained; c kept; d lost nothing
    assert g.low <= g.estimate <= g.high <= 100
    only = X.paired_gain(df, "RAG", "cb", facts=["c"])
    assert only.estimate == 0.0 and only.low == only.high == 0.0
    with pytest.raises(ValueError, match="share no question"):
        X.paired_gain(df, "RAG", "cb", facts=["zzz"])
    with pytest.raises(ValueError, match="no rows"):
        X.paired_gain(df, "RAG", "nope")


def test_rows_refuse_a_fact_twice():
    df = pd.concat([_rows("RAG", "standard", [True]), _rows("RAG", "paraphrased", [False])])
    with pytest.raises(ValueError, match="appears twice"):
        X.correct_by_fact(df, "RAG", None)
    assert X.correct_by_fact(df, "RAG", "paraphrased") == {"f0": False}


def test_em_difference_is_newcombe_in_points():
    df = pd.concat([_rows("RAG", "standard", [True] * 9 + [False]),
                    _rows("RAG", "random answer", [True] + [False] * 4)])
    d = X.em_difference(df, "RAG", "standard", "random answer")
    assert d.estimate == pytest.approx(70.0)
    assert 0 < d.low < 70 < d.high <= 100
    assert X.em_counts(df, "RAG", "random answer") == (1, 5)
    both = pd.concat([df, _rows("dense", "standard", [False] * 10),
                      _rows("dense", "random answer", [False] * 5)])
    assert X.em_counts(both, ["RAG", "dense"], "standard") == (9, 20)
    pooled = X.em_difference(both, ["RAG", "dense"], "standard", "random answer")
    assert pooled.estimate == pytest.approx(100 * (9 / 20 - 1 / 10))


def test_share_same_answers_and_outcomes():
    s = X.share(10, 10)
    assert s.estimate == 100 and s.high == 100 and 65 < s.low < 75
    a = _rows("MoME", "paraphrased", [False] * 3, predictions=["x", "y", "z"])
    b = _rows("cb", "paraphrased", [False] * 3, predictions=["x", "y", "w"])
    assert X.same_answers(pd.concat([a, b]), "MoME", "cb", "paraphrased") == (2, 3)
    assert X.outcome_share(["abstained", "invented", "abstained"], "abstained") == (2, 3)


def test_gold_found_and_reader_failures():
    df = pd.concat([_rows("RAG (BM25)", "standard", [True, False, False], gold_rank=[1, 0, 2]),
                    _rows("closed-book", "standard", [True], gold_rank=[-1])])
    assert X.gold_found(df, "RAG (BM25)") == (2, 3)
    with pytest.raises(ValueError, match="gold passage"):
        X.gold_found(df, "closed-book")
    counts = pd.DataFrame({"correct": [5, 3], "reader failure": [4, 6],
                           "retriever miss": [1, 0], "reader abstained": [0, 1]},
                          index=["RAG (BM25)", "RAG (dense)"])
    assert X.reader_failures(counts) == (11, 12)


def _cap(country, city):
    return Fact(country, "capital", city, f"What is the capital of {country}?")


@pytest.mark.slow
def test_memory_tuned_mome_answers_what_it_stored(smollm2, tmp_cache):
    """MoME memorizes the corpus's facts; questions it did not store are answered as before."""
    model, tok = smollm2
    facts = [_cap(f"Land{i}", f"City{i}") for i in range(12)]
    w = make_retrieval_world(facts, n_ask=3, n_hard=2, random_length=6, seed=1)
    with pytest.raises(RetrievalError, match="n_hard"):
        X.evaluate_memory_tuned(w, n_hard=0)
    cats = {w.ask[0].key: "Unknown"}
    rows, cost = X.evaluate_memory_tuned(w, n_hard=2, n_shots=2, max_new_tokens=8,
                                       categories=cats, progress=False)
    assert cost["recall"] == 1.0 and cost["rows_written"] > 0 and cost["memory_bytes"] > 0
    assert set(rows["approach"]) == {X.MEMORY_APPROACH}
    by = rows.groupby("condition")
    assert by.size().to_dict() == {"standard": 3, "paraphrased": 2, "random answer": 2,
                                   "not in corpus": 2}
    assert by["correct"].mean()[["standard", "random answer"]].eq(1.0).all()
    assert rows["category"].tolist()[:2] == ["Unknown", None]
    # held-out facts were never stored: the memory stays silent, answers are the base model's
    held = rows[rows.condition == "not in corpus"]
    base = evaluate(model, tok, w.held_out, w.pool, n_shots=2, max_new_tokens=8)
    assert held["prediction"].tolist() == base["prediction"].tolist()
    again, _ = X.evaluate_memory_tuned(w, n_hard=2, n_shots=2, max_new_tokens=8, progress=False)
    assert again["prediction"].tolist() == rows["prediction"].tolist()   # cached
