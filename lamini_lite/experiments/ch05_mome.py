"""Chapter 5's claims: a Mixture of Memory Experts on a frozen SmolLM2.

``book/05_building_mome.ipynb`` checks each claim below with
:func:`lamini_lite.claims.check`, on quantities computed by the functions of
this module from the results of :mod:`lamini_lite.mome_eval`, so that the
chapter and ``python -m lamini_lite.bench robustness`` measure the same things.

The statistical claims are tested on an end of a 95% interval: a share of
probe answers left unchanged is a Wilson interval, a difference of two such
shares (two models on the same probes) Newcombe's interval, and a change of
HighlyKnown accuracy on the same facts a paired bootstrap over the facts.

What the chapter no longer asserts, because the code makes it true: that the
memorized facts are recalled exactly with every answer token below ln 2
(that is the rule memory tuning stops on, so it holds whenever tuning stopped
before its budget: :data:`MEMORIZES` checks that instead), that the gated
memory still recalls every fact (its match keys are the facts' own queries,
so they match with cosine 1), and that the selector's keys are smaller than a
dense value table (arithmetic on the configuration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..claims import Claim
from ..facts import exact_match
from ..stats import Interval, newcombe_difference, paired_bootstrap_difference, wilson_interval

__all__ = ["MEMORIZES", "UNRELATED_UNCHANGED", "KNOWN_KEPT", "TEXT_LOSS_KEPT",
           "FINETUNE_CHANGES_MORE", "GATE_NEEDED", "NEAR_TAKEN_OVER",
           "NEAR_KEPT", "NEAR_BELOW_THRESHOLD", "FEWER_WEIGHTS", "LOOKUP_SUBLINEAR",
           "BATCHNORM_LEAST_TEXT", "LARGER_LESS_OVERLAP", "EPOCH_BUDGET",
           "epochs_to_memorize", "unchanged_counts", "unchanged_share",
           "unchanged_difference", "known_correct", "known_drop", "growth_exponent",
           "norm_advantage", "overlap_reduction"]

LN2 = math.log(2)  # the loss bound of chapter 1: p > 1/2 at every answer token

# Epochs within which every method must have memorized its facts (the ci and
# book profiles' max_epochs; the full profile allows 60 but needs fewer).
EPOCH_BUDGET = 40

# --------------------------------------------------------------------------- claims

MEMORIZES = Claim(
    "ch05.memorizes_within_budget",
    f"Each method memorizes its facts by the common rule (every fact recalled exactly, "
    f"every answer token below ln 2) within {EPOCH_BUDGET} epochs: epochs it needed",
    "<=", EPOCH_BUDGET, unit="epochs")
UNRELATED_UNCHANGED = Claim(
    "ch05.unrelated_unchanged",
    "With its gate the memory leaves unrelated answers alone: share of unrelated "
    "questions whose first greedy tokens are unchanged, lower end of its 95% Wilson "
    "interval at least 85%",
    ">=", 85.0, unit="%", on="low")
KNOWN_KEPT = Claim(
    "ch05.known_kept",
    "With its gate the memory costs no HighlyKnown fact: HighlyKnown accuracy before minus "
    "after, upper end of its 95% paired bootstrap interval at most 2 points",
    "<=", 2.0, unit="points", on="high")
TEXT_LOSS_KEPT = Claim(
    "ch05.text_loss_kept",
    "With its gate the memory leaves the loss on held-out English text where it was: "
    "absolute change at most 0.01 nats",
    "<=", 0.01, unit="nats")
FINETUNE_CHANGES_MORE = Claim(
    "ch05.finetune_changes_more",
    "Fine-tuning to the same recall changes more unrelated answers than the gated memory: "
    "share unchanged (memory) minus share unchanged (fine-tuned), lower end of its 95% "
    "Newcombe interval above 0",
    ">", 0.0, unit="points", on="low")
GATE_NEEDED = Claim(
    "ch05.gate_needed",
    "Without its gate the same trained memory changes more unrelated answers: share "
    "unchanged with the gate minus without it, lower end of its 95% Newcombe interval "
    "above 0",
    ">", 0.0, unit="points", on="low")
NEAR_TAKEN_OVER = Claim(
    "ch05.near_taken_over",
    "Without the gate the memory takes over near questions (the memorized format, other "
    "subjects): share of their answers unchanged, upper end of its 95% Wilson interval "
    "below 80%",
    "<", 80.0, unit="%", on="high")
NEAR_KEPT = Claim(
    "ch05.near_kept",
    "With the match gate near questions keep their answers: share unchanged, lower end of "
    "its 95% Wilson interval at least 80%",
    ">=", 80.0, unit="%", on="low")
NEAR_BELOW_THRESHOLD = Claim(
    "ch05.near_below_threshold",
    "No near question comes close enough to a memorized query to open the gate: the "
    "highest match score (cosine) over all near questions is below the threshold 0.999",
    "<", 0.999, unit="cosine")
FEWER_WEIGHTS = Claim(
    "ch05.fewer_weights_changed",
    "At the same recall the memory changes at least 10x fewer model weights than any "
    "fine-tuning baseline: weights changed by the baseline / by the memory",
    ">=", 10.0, unit="x")
LOOKUP_SUBLINEAR = Claim(
    "ch05.lookup_sublinear",
    "Selection + lookup time per token grows more slowly than sqrt(N) with the number of "
    "experts N: exponent a of time ~ N^a over the measured sizes",
    "<", 0.5)
BATCHNORM_LEAST_TEXT = Claim(
    "ch05.batchnorm_least_text",
    "Per-feature (batch-norm) query normalization puts the least of unrelated text's "
    "selection weight on the facts' rows: the next-lowest normalization's share minus "
    "batch-norm's",
    ">", 0.0, unit="points")
LARGER_LESS_OVERLAP = Claim(
    "ch05.larger_less_overlap",
    "A larger memory separates the facts: share of a fact's rows shared with another fact "
    "at the smaller size minus at the larger size (batch-norm queries)",
    ">", 0.0, unit="points")


# ------------------------------------------------------------------------ quantities


def epochs_to_memorize(epochs: int, summary: Mapping) -> float:
    """``epochs`` if the run memorized every fact by the common rule, else ``inf``.

    ``summary`` is :func:`lamini_lite.mome_eval.compare`'s dict (``recall``: share
    of facts recalled exactly, teacher-forced; ``max_loss``: largest answer-token
    loss over the facts), measured on the trained model after training.
    """
    ok = float(summary["recall"]) == 1.0 and float(summary["max_loss"]) < LN2
    return float(epochs) if ok else math.inf


def unchanged_counts(before: Sequence[str], after: Sequence[str]) -> tuple[int, int]:
    """``(unchanged, total)``: probe answers identical before and after."""
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must be non-empty and of equal length, got "
                         f"{len(before)} and {len(after)}")
    return sum(a == b for a, b in zip(before, after)), len(before)


def unchanged_share(before: Sequence[str], after: Sequence[str]) -> Interval:
    """Share of probe answers unchanged, in %, with its 95% Wilson interval."""
    return wilson_interval(*unchanged_counts(before, after)).scaled(100)


def unchanged_difference(before: Sequence[str], after_a: Sequence[str],
                         after_b: Sequence[str]) -> Interval:
    """Share unchanged after ``a`` minus after ``b`` (points), Newcombe's 95% interval."""
    return newcombe_difference(*unchanged_counts(before, after_a),
                               *unchanged_counts(before, after_b)).scaled(100)


def known_correct(answers: Sequence[str], aliases: Sequence[Sequence[str]]) -> list[bool]:
    """Per HighlyKnown fact: does the greedy answer match one of its accepted answers?"""
    if len(answers) != len(aliases):
        raise ValueError(f"one alias list per answer needed, got {len(answers)} answers and "
                         f"{len(aliases)} alias lists")
    return [any(exact_match(p, a) for a in al) for p, al in zip(answers, aliases)]


def known_drop(before: Sequence[str], after: Sequence[str],
               aliases: Sequence[Sequence[str]], *, seed: int = 0) -> Interval:
    """HighlyKnown accuracy before minus after (points), paired bootstrap 95% interval."""
    b = np.array(known_correct(before, aliases), dtype=float)
    a = np.array(known_correct(after, aliases), dtype=float)
    return paired_bootstrap_difference(b, a, seed=seed).scaled(100)


def growth_exponent(experts: Sequence[float], seconds: Sequence[float]) -> float:
    """Slope of log(time) against log(N) by least squares: time grows like N^slope."""
    x, y = np.log(np.asarray(experts, float)), np.log(np.asarray(seconds, float))
    if len(x) < 2 or not np.all(np.isfinite(y)):
        raise ValueError("need at least two sizes with positive times")
    return float(np.polyfit(x, y, 1)[0])


def norm_advantage(rows: Sequence[Mapping], experts: int) -> float:
    """Points by which batch-norm queries put less text weight on fact rows than the
    better of the other normalizations, at ``experts`` (rows of ``row_overlap``)."""
    at = {r["query_norm"]: r["text_weight_on_fact_rows"] for r in rows
          if r["experts"] == experts}
    if "batchnorm" not in at or len(at) < 2:
        raise ValueError(f"need batchnorm and another normalization at {experts} experts")
    others = min(v for k, v in at.items() if k != "batchnorm")
    return 100 * (others - at["batchnorm"])


def overlap_reduction(rows: Sequence[Mapping], norm: str = "batchnorm") -> float:
    """Points by which the largest memory shares fewer fact rows than the smallest."""
    mine = sorted((r for r in rows if r["query_norm"] == norm), key=lambda r: r["experts"])
    if len(mine) < 2:
        raise ValueError(f"need {norm!r} rows at two memory sizes")
    return 100 * (mine[0]["fact_fact_overlap"] - mine[-1]["fact_fact_overlap"])
