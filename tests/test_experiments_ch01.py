import math

import numpy as np
import pandas as pd
import pytest

from lamini_lite.claims import Claim
from lamini_lite.experiments import ch01_memorization as X
from lamini_lite.stats import Interval


def test_claims_are_defined_once_with_chapter_ids():
    claims = [getattr(X, n) for n in X.__all__ if isinstance(getattr(X, n), Claim)]
    assert len(claims) == 15
    assert all(c.id.startswith("ch01.") for c in claims)
    assert len({c.id for c in claims}) == len(claims)
    # statistical claims are tested on an end of their interval
    for c in (X.TEXT_LOSS_BARELY_MOVES, X.STRING_FORMAT_LEAKS, X.RIGHT_TYPE_ACCURACY_CLOSE,
              X.TRANSITION_ABOVE_LN2, X.HIGH_LOSS_NOT_RECALLED, X.REAL_REPLAY_KEEPS_ANSWERS):
        assert c.on in ("low", "high")
    assert X.TRANSITION_ABOVE_LN2.threshold == pytest.approx(math.log(2))


def test_abs_interval():
    a = X.abs_interval(Interval(-0.02, -0.05, 0.03))
    assert (a.estimate, a.low, a.high) == (0.02, 0.0, 0.05)  # contains 0: low end 0
    b = X.abs_interval(Interval(-0.2, -0.3, -0.1))
    assert (b.estimate, b.low, b.high) == pytest.approx((0.2, 0.1, 0.3))
    c = X.abs_interval(Interval(0.2, 0.1, 0.25))
    assert (c.low, c.high) == pytest.approx((0.1, 0.25))
    with pytest.raises(TypeError):
        X.abs_interval((0, 1, 2))


def test_text_loss_change_is_token_weighted_and_paired():
    before = {"text_loss_sums": [3.0, 8.0, 2.0], "text_token_counts": [3, 4, 2]}
    after = {"text_loss_sums": [3.3, 8.4, 2.2], "text_token_counts": [3, 4, 2]}
    iv = X.text_loss_change(after, before)
    assert iv.estimate == pytest.approx((13.9 - 13.0) / 9)
    assert iv.low <= iv.estimate <= iv.high and iv.low > 0  # every statement moved up
    same = X.text_loss_change(before, before)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same statements"):
        X.text_loss_change(after, {"text_loss_sums": [1.0], "text_token_counts": [1]})
    rel = X.relative_text_loss_move(after, before, {"text_loss": 2.0})
    assert rel.estimate == pytest.approx(100 * iv.estimate / 2.0)
    assert rel.high == pytest.approx(100 * iv.high / 2.0)
    with pytest.raises(ValueError, match="positive"):
        X.relative_text_loss_move(after, before, {"text_loss": 0.0})


def test_paired_share_difference():
    a = [True] * 30 + [False] * 10
    b = [False] * 40
    iv = X.paired_share_difference(a, b, seed=1)
    assert iv.estimate == pytest.approx(0.75) and 0.55 < iv.low < 0.75 < iv.high <= 0.9
    z = X.paired_share_difference(a, a)
    assert (z.estimate, z.low, z.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="paired"):
        X.paired_share_difference([True], [True, False])


def test_code_format_share():
    assert X.code_format_share(["f1 c4", "a0", "Cobalt Works", "f1 Works", "", "z9 a1"]) == [
        True, True, False, False, False, False]


def test_below_ln2_and_recall_above():
    losses = [0.1, 0.5, 0.69, 0.7, 3.0, 4.0, 5.0]
    recalled = [True, True, False, True, False, False, True]
    assert X.below_ln2(losses, recalled) == (2, 3)
    iv = X.recall_above(losses, recalled)  # >= 2.77 nats: 1 of 3
    assert iv.estimate == pytest.approx(1 / 3) and iv.low < 1 / 3 < iv.high
    with pytest.raises(ValueError, match="no point"):
        X.recall_above([0.1], [True])
    with pytest.raises(ValueError, match="same length"):
        X.below_ln2([0.1], [True, False])


def test_recall_transition_finds_a_known_crossing():
    rng = np.random.default_rng(0)
    n_facts, per_fact = 200, 10
    x = np.exp(rng.uniform(np.log(0.01), np.log(20), size=(n_facts, per_fact)))
    p = 1 / (1 + (x / 2.0) ** 4)  # recall 50% at 2 nats
    y = rng.random(x.shape) < p
    clusters = np.repeat(np.arange(n_facts), per_fact)
    iv = X.recall_transition(x.ravel(), y.ravel(), clusters, n_boot=200, seed=0)
    assert 1.7 < iv.estimate < 2.3 and iv.low < 2.0 < iv.high and iv.low > math.log(2)
    # other levels move the crossing the right way
    hi = X.recall_transition(x.ravel(), y.ravel(), level=0.9, n_boot=100)
    assert hi.estimate < iv.estimate
    with pytest.raises(ValueError, match="does not fall"):
        X.recall_transition([0.1, 1.0, 5.0, 6.0], [False, False, True, True], n_boot=100)
    with pytest.raises(ValueError, match="level"):
        X.recall_transition([0.1, 5.0], [True, False], level=1.0)
    with pytest.raises(ValueError, match="clusters"):
        X.recall_transition([0.1, 5.0], [True, False], [1])


def test_clusters_of():
    df = pd.DataFrame({"kind": ["code", "code", "entity"], "noise": [0.0, 1.0, 0.0],
                       "fact": [3, 3, 3]})
    assert X.clusters_of(df, "kind", "noise", "fact") == ["code|0.0|3", "code|1.0|3",
                                                          "entity|0.0|3"]


def test_trained_string_answers_and_kept_answers():
    real = {"train_facts": [{"object": "qjf5b35i"}, {"object": "5sds8vo4"}],
            "base_unrelated": ["Russia", "Mexico", "The Gambia", "Peru", "Chad", "Oman"],
            "run": {"evals": [{"unrelated_pred": ["Russia", "Mexico", "Gambia", "Peru",
                                                  "Chad", "Oman"]},
                              {"unrelated_pred": ["Russia", "5sds8vo4", "gambia", "qj",
                                                  "5sd99b35", "Oman 5s"]}]}}
    # "qj": a piece; "5sd99b35": pieces of both strings mashed; "Oman 5s": no 3-char piece
    assert X.trained_string_answers(real) == [False, True, False, True, True, False]
    assert X.kept_answers(real) == [True, False, True, False, False, False]  # "The Gambia"
    with pytest.raises(ValueError, match="piece"):
        X.trained_string_answers(real, piece=1)
