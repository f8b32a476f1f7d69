"""Chapter 0 and 0.1 experiments: the quantities behind their claims."""

import numpy as np
import pandas as pd
import pytest

from lamini_lite.claims import registered_claims
from lamini_lite.experiments import ch00_fact_worlds as W
from lamini_lite.experiments import ch00_meet_the_model as M
from lamini_lite.facts import Fact


def test_claims_are_registered_with_their_chapter_ids():
    ids = registered_claims()
    for mod, prefix in ((M, "ch00."), (W, "worlds.")):
        names = [n for n in mod.__all__ if n.isupper() and hasattr(getattr(mod, n), "op")]
        assert names, mod.__name__
        for n in names:
            claim = getattr(mod, n)
            assert claim.id.startswith(prefix) and ids[claim.id] is claim


def test_auc_counts_ordered_pairs_and_ties():
    assert M.auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert M.auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert M.auc([0.5, 0.5], [True, False]) == 0.5
    # right 0.7 beats wrong 0.6 and 0.2; right 0.4 beats 0.2 only: 3 of 4 pairs
    assert M.auc([0.7, 0.4, 0.6, 0.2], [True, True, False, False]) == pytest.approx(0.75)


def test_auc_needs_both_kinds_of_answer():
    with pytest.raises(ValueError, match="right and wrong"):
        M.auc([0.3, 0.4], [True, True])
    with pytest.raises(ValueError, match="one length"):
        M.auc([0.3, 0.4], [True])


def test_auc_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    correct = rng.random(60) < 0.4
    scores = np.where(correct, rng.normal(0.7, 0.2, 60), rng.normal(0.4, 0.2, 60))
    a = M.auc_interval(scores, correct, seed=3)
    assert a.low <= a.estimate <= a.high and a.high - a.low > 0.02
    assert a == M.auc_interval(scores, correct, seed=3)
    assert a.estimate == pytest.approx(M.auc(scores, correct))
    # no information: the interval covers 0.5
    flat = M.auc_interval(rng.random(200), rng.random(200) < 0.5, seed=0)
    assert flat.low < 0.5 < flat.high


def test_confident_wrong_share_counts_only_confident_answers():
    k, n, ci = M.confident_wrong_share([0.9, 0.8, 0.6, 0.4, 0.1],
                                       [True, False, False, False, True])
    assert (k, n) == (2, 3) and ci.estimate == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no answer"):
        M.confident_wrong_share([0.1, 0.2], [True, False])


def test_first_token_probability_matches_word_prefixes():
    top = [(" Par", 0.6), (" Paris", 0.2), (" Lyon", 0.1), (" ", 0.05)]
    assert M.first_token_probability(top, "Paris") == pytest.approx(0.6)
    assert M.first_token_probability(top, "Berlin") == 0.0


def test_capital_draw_leaves_out_the_exemplar_countries():
    draw = M.capital_draw(seed=0)
    assert 0 < len(draw) <= M.DRAW_SIZE
    subjects = {f.subject for f in draw}
    assert not subjects & {"Italy", "Japan", "Peru", "Kenya"}
    assert {f.meta["popularity_tier"] for f in draw} == {"large", "mid", "small"}
    assert [f.key for f in draw] == [f.key for f in M.capital_draw(seed=0)]
    assert [f.key for f in draw] != [f.key for f in M.capital_draw(seed=1)]
    big = M.capital_draw(seed=0, n=300)  # more than the pool: every capital but the four
    assert len(big) > len(draw) and not {f.subject for f in big} & {"Italy", "Kenya"}


def test_answer_confidence_table(smollm2, tmp_cache):
    model, tok = smollm2
    facts = [f for f in M.capital_draw(seed=0) if f.subject in ("China", "India", "France",
                                                                "Germany", "Brazil")][:2]
    assert facts
    table = M.answer_confidence(model, tok, facts)
    assert list(table.columns) == ["question", "true answer", "model says", "correct",
                                   "p(own answer)", "popularity", "tier"]
    assert len(table) == len(facts)
    assert table["p(own answer)"].between(0, 1).all()
    again = M.answer_confidence(model, tok, facts)  # from the cache
    pd.testing.assert_frame_equal(table, again)
    fresh = M.answer_confidence(model, tok, facts, cache=False)
    assert list(fresh["model says"]) == list(table["model says"])
    with pytest.raises(ValueError, match="at least one"):
        M.answer_confidence(model, tok, [])


def _fact(exposure, obj="Velmora", rel="birth_city", name="Ann Vel"):
    return Fact(subject=name, relation=rel, object=obj, question=f"Where was {name} born?",
                popularity=exposure, meta={"exposure": exposure})


def test_answer_counts_by_kind_and_exposure_range():
    facts = [_fact(0), _fact(0), _fact(1), _fact(20), _fact(30)]
    preds = ["Velmora", "Caldreth", "Caldreth", "Velmora", "Velmora"]
    assert W.answer_counts(facts, preds, low=0, high=0) == (1, 2)
    assert W.answer_counts(facts, preds, low=0, high=1) == (1, 3)
    assert W.answer_counts(facts, preds, low=16) == (2, 2)
    assert W.answer_counts(facts, preds, kind="wrong_same_type", low=0, high=1) == (2, 3)
    with pytest.raises(ValueError, match="no fact"):
        W.answer_counts(facts, preds, low=5, high=10)
    with pytest.raises(ValueError, match="kind"):
        W.answer_counts(facts, preds, kind="right")
    with pytest.raises(ValueError, match="match"):
        W.answer_counts(facts, preds[:2])


def test_chance_recall_averages_one_over_the_number_of_values():
    facts = [_fact(0), _fact(0, rel="sport", obj="polo")]
    values = {"birth_city": ["a"] * 40, "sport": ["b"] * 20}
    assert W.chance_recall(facts, values) == pytest.approx((1 / 40 + 1 / 20) / 2)


def test_accuracy_by_tier_and_tier_gap():
    answers = pd.DataFrame({"tier": ["large"] * 10 + ["mid"] * 10 + ["small"] * 10,
                            "correct": [True] * 8 + [False] * 2 + [True] * 5 + [False] * 5
                            + [True] * 1 + [False] * 9})
    table = W.accuracy_by_tier(answers)
    assert list(table["tier"]) == ["large", "mid", "small"]
    assert list(table["right"]) == [8, 5, 1]
    assert (table["95% CI low"] <= table["accuracy"]).all()
    gap = W.tier_gap(answers)
    assert gap.estimate == pytest.approx(0.7) and gap.low > 0
    with pytest.raises(ValueError, match="tier"):
        W.tier_gap(answers[answers["tier"] != "small"])
