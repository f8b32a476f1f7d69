"""Tests of lamini_lite.editing: reliability, generality and locality as a user sees them."""

from __future__ import annotations

import pytest

from lamini_lite import editing as E
from lamini_lite.facts import Fact
from lamini_lite.facts.real import RELATIONS
from lamini_lite.facts.synthetic import random_code_facts
from lamini_lite.models import tiny_llama


def test_wordings_are_checked():
    with pytest.raises(ValueError, match="subject"):
        E.Wordings("What is {x}?", (), ("a {subject}", "b {subject}", "c {subject}"))
    with pytest.raises(ValueError, match="trainable"):
        E.Wordings("Q {subject}", ("P {subject}",), ("P {subject}", "b {subject}", "c {subject}"))
    with pytest.raises(ValueError, match="at least 3"):
        E.Wordings("Q {subject}", (), ("a {subject}", "b {subject}"))


def test_stored_wordings_are_the_questions_of_the_fact_worlds():
    for name, rel in RELATIONS.items():
        assert E.WORDINGS[name].stored == rel.template
    prompts, answers, names = random_code_facts(3, answer_chars=6, seed=1)
    edits = E.invented_edits(3, answer_chars=6, seed=1)
    assert [e.prompt(exemplars=()) for e in edits] == prompts
    assert [e.answer for e in edits] == answers and [e.subject for e in edits] == names


def test_edits_from_facts_keep_aliases_and_reject_unknown_relations():
    f = Fact("Burkina Faso", "capital", "Ouagadougou", "What is the capital of Burkina Faso?",
             aliases=("Ouagadougou", "Wagadugu"))
    (e,) = E.edits_from_facts([f])
    assert e.accepted == ["Ouagadougou", "Wagadugu"]
    assert e.prompt(exemplars=()) == "Q: What is the capital of Burkina Faso?\nA:"
    assert len(e.heldout_prompts()) == 3 and all("Burkina Faso" in p for p in e.heldout_prompts())
    with pytest.raises(ValueError, match="relation"):
        E.Edit("x", "birth_city", "y")
    with pytest.raises(ValueError, match="answer"):
        E.Edit("x", "capital", " ")


def test_clustered_share_resamples_units_and_never_collapses():
    all_right = E.clustered_share([[True, True, True]] * 10)
    assert all_right.estimate == 1.0 and all_right.low < 0.8  # 10 units, not 30 trials
    mixed = E.clustered_share([[True, False, True]] * 5 + [[True] * 3] * 5, seed=1)
    assert mixed.estimate == pytest.approx((5 * 2 / 3 + 5) / 10)
    assert mixed.low < mixed.estimate < mixed.high
    with pytest.raises(ValueError, match="non-empty"):
        E.clustered_share([])


class FakeModel:
    """Answers from a table (prompt -> answer line); what a model says after an edit."""

    def __init__(self, table):
        self.table = table


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(E, "_answers", lambda model, tok, prompts, n: [model.table.get(p, "?")
                                                                         for p in prompts])
    monkeypatch.setattr(E, "text_loss", lambda model, tok, texts: model.table.get("loss", 2.0))


def test_triangle_scores_what_a_user_would_see(fake):
    edits = E.invented_edits(4, seed=0)
    probes = E.Probes(neighbours=["n1", "n2"], unrelated=["u1", "u2", "u3"], known=["k1"],
                      known_answers=[["Tokyo"]], texts=["some text here"])
    base = E.measure_baseline(FakeModel({"n1": "a", "n2": "b", "u1": "x", "u2": "y",
                                         "u3": "z", "k1": "Tokyo"}), None, probes)
    assert base.neighbours == ["a", "b"] and base.text_loss == 2.0
    table = {"n1": "a", "n2": "changed", "u1": "x", "u2": "y", "u3": "z", "k1": "Tokyo",
             "loss": 2.25}
    for i, e in enumerate(edits):
        table[e.prompt()] = e.answer if i < 3 else e.answer + " and more"  # not the answer
        for j, p in enumerate(e.heldout_prompts()):
            table[p] = e.answer if j < 2 else "no idea"
    s = E.triangle(FakeModel(table), None, edits, probes, base)
    assert s.n_edits == 4 and s.reliability.estimate == 0.75
    assert s.generality.estimate == pytest.approx(2 / 3)
    assert s.neighbours_unchanged.estimate == 0.5 and s.unrelated_unchanged.estimate == 1.0
    assert s.known_unchanged.estimate == 1.0 and s.text_loss_delta == pytest.approx(0.25)
    assert s.details["reliable"] == [True, True, True, False]
    back = E.TriangleScores.from_dict(s.to_dict())
    assert back.row() == s.row() and back.generality.low == s.generality.low
    with pytest.raises(ValueError, match="non-empty"):
        E.triangle(FakeModel(table), None, [], probes, base)


def test_sequential_edits_rescore_every_earlier_edit(fake):
    edits = E.invented_edits(5, seed=2)
    table = {}
    batches = []

    def apply(model, tok, batch):  # "stores" a batch; the first one is later forgotten
        batches.append([e.subject for e in batch])
        for e in batch:
            table[e.prompt()] = e.answer
        if len(batches) == 2:
            table[edits[0].prompt()] = "forgotten"

    probes = E.Probes([], ["u"], [], [])
    out = E.sequential_edits(FakeModel(table), None, edits, apply, probes, n_batches=2)
    assert [len(b) for b in batches] == [2, 3] and [s.n_edits for s in out] == [2, 5]
    assert out[0].reliability.estimate == 1.0 and out[1].reliability.estimate == 0.8
    with pytest.raises(ValueError, match="n_batches"):
        E.sequential_edits(FakeModel(table), None, edits, apply, probes, n_batches=6)


def test_triangle_runs_on_a_real_model(char_tok):
    model = tiny_llama(len(char_tok), hidden_size=32, num_layers=2, num_heads=2, seed=0).eval()
    edits = E.invented_edits(3, answer_chars=4, seed=0)
    others = E.invented_edits(5, answer_chars=4, seed=9)[3:]
    probes = E.Probes([e.prompt() for e in others], ["Q: Why?\nA:"], [], [],
                      ["A short text, to score."])
    base = E.measure_baseline(model, char_tok, probes, max_new_tokens=6)
    s = E.triangle(model, char_tok, edits, probes, base, max_new_tokens=6)
    # nothing was edited: the unedited model knows no code, and every probe is unchanged
    assert s.reliability.estimate == 0.0 and s.generality.estimate == 0.0
    assert s.neighbours_unchanged.estimate == 1.0 and s.unrelated_unchanged.estimate == 1.0
    assert s.text_loss_delta == 0.0
    assert len(s.details["heldout_answers"]) == 9
