"""Chapter 0.1, *The two fact worlds*: its claims and what they measure.

The synthetic world: a tiny Llama pretrained on a corpus that states every
fact ``exposure`` times must recall often-stated facts and not never-stated
ones, and must answer a question it cannot know with a plausible wrong value
(:func:`answer_counts` counts each kind of answer in an exposure range). The
real world: population, the stand-in for exposure, must predict which
capitals SmolLM2 knows (:func:`accuracy_by_tier`, :func:`tier_gap`, on the
capital draw of chapter 0). That the generator draws exposures from its law,
or that the real facts have a population, is how the data is built (and unit
tested), not a finding, so it is no claim here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..claims import Claim
from ..facts import Fact
from ..stats import Interval, newcombe_difference, wilson_interval
from ..training.pretrain import answer_kind
from .ch00_meet_the_model import answer_confidence, capital_draw
from .common import load_backbone, world_from_sizes

__all__ = ["answer_counts", "chance_recall", "accuracy_by_tier", "tier_gap",
           "answer_confidence", "capital_draw", "TIERS",
           "PRETRAINING_LOSS_FALLS", "UNSEEN_UNKNOWN", "EXPOSURE_RAISES_RECALL",
           "UNSEEN_HALLUCINATED", "CITY_POPULATION_HEAVY_TAILED",
           "POPULATION_PREDICTS_KNOWLEDGE", "load_backbone", "world_from_sizes"]

TIERS = ("large", "mid", "small")  # popularity tiers of load_real_facts, most popular first
KINDS = ("correct", "wrong_same_type", "wrong_other_type", "other")

PRETRAINING_LOSS_FALLS = Claim(
    "worlds.pretraining_loss_falls",
    "pretraining lowers the training loss: the mean of the last 20 steps is more than "
    "2 nats below the mean of the first 20",
    ">", 2.0, unit="nats")
UNSEEN_UNKNOWN = Claim(
    "worlds.unseen_unknown",
    "facts never stated in pretraining are (nearly) unknown: closed-book recall of "
    "held-out never-stated facts is below 15% (95% CI)",
    "<", 0.15, on="high")
EXPOSURE_RAISES_RECALL = Claim(
    "worlds.exposure_raises_recall",
    "facts stated 16 times or more are recalled far more often than facts stated at most "
    "once: recall difference above 15 points (95% CI)",
    ">", 0.15, on="low")
UNSEEN_HALLUCINATED = Claim(
    "worlds.unseen_hallucinated",
    "asked a never-stated fact, the backbone names a wrong value of the right type "
    "(a plausible entity) in most cases: above 70% (95% CI)",
    ">", 0.70, on="low")
CITY_POPULATION_HEAVY_TAILED = Claim(
    "worlds.city_population_heavy_tailed",
    "city populations are heavy tailed: the 99th percentile is more than 10 times the median",
    ">", 10.0, unit="x")
POPULATION_PREDICTS_KNOWLEDGE = Claim(
    "worlds.population_predicts_knowledge",
    "SmolLM2 knows the capitals of the most populous third of countries far more often "
    "than those of the least populous third: accuracy difference above 20 points (95% CI)",
    ">", 0.20, on="low")


def answer_counts(facts: Sequence[Fact], predictions: Sequence[str], *, kind: str = "correct",
                  low: int = 0, high: int | None = None) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` facts with exposure in ``[low, high]``, ``k`` answered ``kind``.

    ``kind`` is one of :func:`~lamini_lite.training.pretrain.answer_kind`'s labels
    (``"correct"``, ``"wrong_same_type"``, ``"wrong_other_type"``, ``"other"``);
    ``high=None`` has no upper end. Exposure is ``Fact.meta["exposure"]``.

    Raises:
        ValueError: facts and predictions differ in length, an unknown kind, or
        no fact in the range.
    """
    facts, predictions = list(facts), list(predictions)
    if len(facts) != len(predictions):
        raise ValueError(f"predictions must match facts: {len(predictions)} != {len(facts)}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    idx = [i for i, f in enumerate(facts)
           if f.meta["exposure"] >= low and (high is None or f.meta["exposure"] <= high)]
    if not idx:
        raise ValueError(f"no fact has exposure in [{low}, {high}]")
    k = sum(answer_kind(facts[i], predictions[i]) == kind for i in idx)
    return int(k), len(idx)


def chance_recall(facts: Sequence[Fact], values: dict[str, Sequence[str]]) -> float:
    """Expected recall of a uniform guess among each relation's ``values`` (``world.values``)."""
    facts = list(facts)
    if not facts:
        raise ValueError("chance_recall needs at least one fact")
    return sum(1 / len(values[f.relation]) for f in facts) / len(facts)


def accuracy_by_tier(answers):
    """Accuracy per popularity tier of an :func:`answer_confidence` table, with Wilson intervals.

    Columns: ``tier``, ``facts``, ``right``, ``accuracy``, ``95% CI low``, ``95% CI high``
    (tiers in the order large, mid, small; absent tiers are left out).
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for tier in TIERS:
        sel = answers[answers["tier"] == tier]
        if len(sel) == 0:
            continue
        k, n = int(sel["correct"].sum()), len(sel)
        ci = wilson_interval(k, n)
        rows.append({"tier": tier, "facts": n, "right": k, "accuracy": ci.estimate,
                     "95% CI low": ci.low, "95% CI high": ci.high})
    return pd.DataFrame(rows)


def tier_gap(answers, high: str = "large", low: str = "small") -> Interval:
    """Accuracy of tier ``high`` minus tier ``low``, with Newcombe's 95% interval."""
    counts = {}
    for tier in (high, low):
        sel = answers[answers["tier"] == tier]
        if len(sel) == 0:
            raise ValueError(f"no answer in tier {tier!r}")
        counts[tier] = (int(sel["correct"].sum()), len(sel))
    return newcombe_difference(*counts[high], *counts[low])
