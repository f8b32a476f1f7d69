"""Chapter 1 (generalization vs memorization): its claims and the quantities they test.

Three kinds of claim, each computed here once and used by the notebook (and,
through it, by ``python -m lamini_lite.bench robustness``):

* **memorization** (Zhang et al.'s randomization test on the synthetic
  backbone, Li et al.'s random strings on SmolLM2): every run ends with every
  trained answer recalled by greedy decoding, random strings take longer;
* **held-out measures** (statistical, 95% intervals over the held-out
  statements or questions, paired because the same ones are measured before
  and after, or under two trainings): the loss of never-read text moves by
  less than 10%, and ends the same whether true or false answers were
  memorized; random *strings* leak their format into other questions and
  lower their accuracy; wrong answers of the right type keep that accuracy
  within a stated margin of the true answers' (a bound, not "no difference":
  on most seeds their point estimate is a few points lower);
* **the ln 2 threshold**, measured with greedy decoding to the end of the
  answer line at every decoded checkpoint: no fact with every answer token
  below ln 2 is missed (the bound is sufficient), and recall only fails at a
  clearly larger loss (the bound is not necessary): the loss at which the
  fitted recall curve crosses 50% lies above ln 2, with its bootstrap interval.

Its studies, and the sizes they run at (``sizes("memorization")``):

Chapter 1: generalization vs memorization, measured.

Zhang et al. (2017) showed that image classifiers fit *random* labels to zero
training loss, only a small constant factor slower than true labels, so
small training loss says nothing about generalization. Li et al. (2024)
transplanted the test to LLMs: fine-tuned on questions whose answers are
random strings, Llama 3 memorizes them while still answering other questions
sensibly. This module turns both claims and the paper's loss-threshold
argument into measurements:

* :func:`randomization_test` -- fine-tune the same backbone on the same
  questions with a share ``noise`` of the answers replaced by random ones
  (0 .. 100 %), and after every epoch measure the training facts (per-token
  answer losses under teacher forcing; the greedy answer line, decoded to its
  newline, and exact recall) and, before and after, held-out quantities that
  do not involve them (QA loss and accuracy on unrelated facts, agreement
  with the base model's answers, the loss of never-read statements);
* :func:`epochs_to_criterion` -- how many epochs until every training fact
  is recalled exactly (or the loss is below a level): the "slowdown factor"
  of random answers;
* :func:`threshold_check`, :func:`threshold_points` and :func:`recall_vs_loss`
  -- the loss threshold: if every answer token of a fact has loss
  ``-log p < ln 2`` then ``p > 1/2``, so the correct token is the unique
  argmax at every step and greedy decoding must reproduce the answer. Recall
  is measured by greedy decoding (never read off the teacher-forced argmax,
  which would make the check an identity) at every decoded checkpoint, and
  shown through the threshold region;
* :func:`real_model_test` and :func:`real_threshold_points` -- the same on
  SmolLM2 with its body frozen and a few top layers (or a LoRA adapter)
  trained, a before/after table in the spirit of the paper's Table 1, and
  the threshold on its random strings and on real facts' true answers;
  :class:`FrozenBottomDecoder` keeps greedy decoding at every checkpoint
  cheap when only the top layers learn.

Sizes come from ``sizes("memorization")``.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..cache import cached
from ..claims import Claim
from ..facts import Fact, exact_match, normalize_answer, qa_prompt, with_random_answers
from ..facts.real import load_real_facts
from ..facts.synthetic import CODE_TOKENS, WORLD_VERSION, random_answer_variants
from ..lm import (
    LN2,
    decode_cap,
    fact_measurements,
    greedy_answers,
    greedy_recall,
    statement_losses,
    teacher_forced_record,
)
from ..models import load_smollm2
from ..profiles import register_sizes, sizes
from ..stats import Interval, bootstrap_interval, wilson_interval
from ..training import FrozenBottomDecoder, finetune_qa, frozen_prefix_for
from .common import load_backbone

__all__ = ["load_backbone", "EVERY_RUN_MEMORIZED", "RANDOM_STRINGS_SLOWER",
           "SLOWDOWN_CONSTANT_FACTOR", "TEXT_LOSS_BARELY_MOVES",
           "TEXT_LOSS_SAME_TRUE_FALSE", "STRING_FORMAT_LEAKS", "STRINGS_LOWER_ACCURACY",
           "RIGHT_TYPE_ACCURACY_CLOSE", "LN2_SUFFICIENT", "LN2_TESTED_ON_MANY",
           "TRANSITION_ABOVE_LN2", "HIGH_LOSS_NOT_RECALLED", "REAL_MEMORIZED",
           "REAL_STRINGS_ALONE_TAKE_OVER", "REAL_REPLAY_KEEPS_ANSWERS", "HIGH_LOSS",
           "abs_interval", "text_loss_change", "relative_text_loss_move",
           "paired_share_difference", "code_format_share", "trained_string_answers",
           "kept_answers", "below_ln2", "recall_above", "recall_transition",
           "clusters_of", "threshold_check", "recall_vs_loss", "epochs_to_criterion",
           "synthetic_setup", "replay_items", "unseen_statements", "memorized",
           "randomization_test", "noise_summary", "threshold_points", "heldout_points",
           "real_model_test", "real_threshold_points", "training_viewer",
           "plot_training_story"]

register_sizes(
    "memorization",
    # Synthetic track: n_train facts memorized, n_unrelated held-out facts (and as many
    # never-read statements) measured, noise = shares of random answers, answer_len =
    # tokens of a random string, epochs = the most epochs (training stops once every
    # fact is memorized), replay = corpus items mixed into every epoch (0: the
    # questions alone), greedy_every = epochs between greedy decodings of the trained
    # answers (1: every checkpoint), seeds = seeds every claim is checked on.
    # real_*: the SmolLM2 run of real_model_test (random strings of real_answer_len
    # characters; real_replay questions answered by the base model mixed in).
    ci={"n_train": 32, "n_unrelated": 96, "noise": [0.0, 0.5, 1.0], "answer_len": 2,
        "epochs": 200, "lr": 1e-4, "batch_size": 16, "trainable": "all", "replay": 0,
        "greedy_every": 1, "seeds": [0],
        "real_n_train": 8, "real_n_unrelated": 24, "real_epochs": 40, "real_lr": 3e-4,
        "real_trainable": "top:2", "real_answer_len": 8, "real_batch_size": 8,
        "real_replay": 48, "real_greedy_every": 2},
    book={"n_train": 48, "n_unrelated": 96, "noise": [0.0, 0.25, 0.5, 0.75, 1.0],
          "answer_len": 2, "epochs": 150, "lr": 1e-4, "batch_size": 16, "trainable": "all",
          "replay": 0, "greedy_every": 1, "seeds": [0, 1, 2],
          "real_n_train": 16, "real_n_unrelated": 24, "real_epochs": 40, "real_lr": 3e-4,
          "real_trainable": "top:2", "real_answer_len": 8, "real_batch_size": 8,
          "real_replay": 64, "real_greedy_every": 1},
    full={"n_train": 256, "n_unrelated": 1000, "noise": [0.0, 0.25, 0.5, 0.75, 1.0],
          "answer_len": 4, "epochs": 400, "lr": 1e-4, "batch_size": 32, "trainable": "all",
          "replay": 0, "greedy_every": 1, "seeds": [0, 1, 2, 3, 4],
          "real_n_train": 100, "real_n_unrelated": 100, "real_epochs": 100, "real_lr": 2e-4,
          "real_trainable": "lora:32", "real_answer_len": 32, "real_batch_size": 16,
          "real_replay": 200, "real_greedy_every": 5},
)


# --- memorization -------------------------------------------------------------------------
EVERY_RUN_MEMORIZED = Claim(
    "ch01.every_run_memorized",
    "every synthetic run (0-100% random strings, true or wrong right-type answers) ends with "
    "every training fact recalled exactly by greedy decoding, within the epoch budget: the "
    "smallest final recall",
    ">=", 1.0, unit="share")
RANDOM_STRINGS_SLOWER = Claim(
    "ch01.random_strings_slower",
    "random strings take more epochs to memorize than the true answers: epochs to memorized "
    "at 100% random strings / at 0%",
    ">", 1.0, unit="x")
SLOWDOWN_CONSTANT_FACTOR = Claim(
    "ch01.slowdown_constant_factor",
    "... by a small constant factor, not an order of magnitude: the same ratio",
    "<", 10.0, unit="x")

# --- held-out measures (95% intervals, paired) ---------------------------------------------
TEXT_LOSS_BARELY_MOVES = Claim(
    "ch01.text_loss_barely_moves",
    "the loss of never-read statements moves by less than 10% of its value while the model "
    "memorizes, at every share of random answers: upper end of the 95% CI of "
    "|after - before| / before (paired bootstrap over the statements)",
    "<", 10.0, unit="%", on="high")
TEXT_LOSS_SAME_TRUE_FALSE = Claim(
    "ch01.text_loss_same_true_false",
    "after training, the loss of never-read statements is the same within 10% whether the "
    "model memorized 100% random strings (or wrong answers of the right type) or the true "
    "answers: upper end of the 95% CI of |difference| / loss before (paired bootstrap over "
    "the statements)",
    "<", 10.0, unit="%", on="high")
STRING_FORMAT_LEAKS = Claim(
    "ch01.string_format_leaks",
    "random strings leak their format into other questions: the share of other questions "
    "answered with a code string after 100% random strings minus after 0%, lower end of the "
    "95% CI (paired bootstrap over the questions)",
    ">", 0.25, unit="share", on="low")
STRINGS_LOWER_ACCURACY = Claim(
    "ch01.strings_lower_accuracy",
    "... and lower the accuracy on other questions: accuracy after 0% minus after 100% "
    "random strings, lower end of the 95% CI (paired bootstrap over the questions)",
    ">", 0.0, unit="share", on="low")
RIGHT_TYPE_ACCURACY_CLOSE = Claim(
    "ch01.right_type_accuracy_close",
    "wrong answers of the right type leave the accuracy on other questions within 0.25 of "
    "the accuracy after the true answers: upper end of the 95% CI of |difference| (paired "
    "bootstrap over the questions)",
    "<", 0.25, unit="share", on="high")

# --- the ln 2 threshold, greedy decoding at every decoded checkpoint -------------------------
LN2_SUFFICIENT = Claim(
    "ch01.ln2_sufficient",
    "every (checkpoint, fact) point whose answer tokens all have loss below ln 2 is recalled "
    "by greedy decoding to the end of the line: the number of such points not recalled",
    "<=", 0.0, unit="points")
LN2_TESTED_ON_MANY = Claim(
    "ch01.ln2_tested_on_many",
    "... on enough points to mean something (not vacuously): lower end of the 95% Wilson "
    "interval of the recall of the points below ln 2 (needs at least 22 points, all "
    "recalled)",
    ">", 0.85, unit="share", on="low")
TRANSITION_ABOVE_LN2 = Claim(
    "ch01.transition_above_ln2",
    "the bound is sufficient, not necessary: the largest-token loss at which the fitted "
    "recall curve crosses 50% lies above ln 2 (lower end of its 95% bootstrap CI over facts)",
    ">", math.log(2.0), unit="nats", on="low")
HIGH_LOSS = 4 * math.log(2.0)  # 2.77 nats: two factor-of-2 bins above ln 2
HIGH_LOSS_NOT_RECALLED = Claim(
    "ch01.high_loss_not_recalled",
    "facts with an answer token above 4 ln 2 (2.77 nats) are mostly not recalled: upper end "
    "of the 95% Wilson interval of their recall",
    "<", 0.5, unit="share", on="high")

# --- the real model ------------------------------------------------------------------------
REAL_MEMORIZED = Claim(
    "ch01.real_memorized",
    "SmolLM2 (top two layers trained) ends with every random-string answer recalled exactly "
    "by greedy decoding, with and without replay: the smaller final recall",
    ">=", 1.0, unit="share")
REAL_STRINGS_ALONE_TAKE_OVER = Claim(
    "ch01.real_strings_alone_take_over",
    "trained on the random strings alone, SmolLM2 answers most other questions with "
    "trained random-string material (a string, a piece of one, or a mash of pieces): lower "
    "end of the 95% Wilson interval of that share",
    ">", 0.5, unit="share", on="low")
REAL_REPLAY_KEEPS_ANSWERS = Claim(
    "ch01.real_replay_keeps_answers",
    "replaying the base model's own answers keeps many more other answers as they were: "
    "share of other questions answered as before, with replay minus alone, lower end of the "
    "95% CI (paired bootstrap over the questions)",
    ">", 0.25, unit="share", on="low")


# --- quantities ----------------------------------------------------------------------------


def abs_interval(iv: Interval) -> Interval:
    """The interval of ``|d|`` implied by the interval of ``d``.

    Its high end is ``max(|low|, |high|)`` (an upper bound of ``|d|`` at the
    interval's confidence); its low end is 0 when the interval of ``d``
    contains 0, else the end nearer 0 in absolute value.
    """
    if not isinstance(iv, Interval):
        raise TypeError(f"iv must be an Interval, got {iv!r}")
    hi = max(abs(iv.low), abs(iv.high))
    lo = 0.0 if iv.low <= 0.0 <= iv.high else min(abs(iv.low), abs(iv.high))
    return Interval(abs(iv.estimate), lo, hi, iv.confidence)


def text_loss_change(after: dict, before: dict, *, seed: int = 0) -> Interval:
    """Change of the held-out text loss (nats/token) from ``before`` to ``after``.

    Both are evaluations that measured the same never-read statements
    (``text_loss_sums``, ``text_token_counts`` per statement). The estimate is
    the difference of the token-weighted mean losses; the 95% interval
    resamples the statements (paired: one statement carries both its losses).
    """
    a = np.asarray(after["text_loss_sums"], dtype=float)
    b = np.asarray(before["text_loss_sums"], dtype=float)
    n_a = np.asarray(after["text_token_counts"], dtype=float)
    n_b = np.asarray(before["text_token_counts"], dtype=float)
    if not (a.shape == b.shape == n_a.shape == n_b.shape) or not np.array_equal(n_a, n_b):
        raise ValueError("after and before must measure the same statements")
    rows = np.stack([a, b, n_a], axis=1)
    return bootstrap_interval(rows, lambda x: (x[:, 0].sum() - x[:, 1].sum()) / x[:, 2].sum(),
                              seed=seed)


def relative_text_loss_move(after: dict, before: dict, reference: dict, *,
                            seed: int = 0) -> Interval:
    """``|text loss(after) - text loss(before)|`` in percent of the text loss of
    ``reference`` (the untrained model), with its 95% interval
    (:func:`text_loss_change`, :func:`abs_interval`)."""
    base = reference["text_loss"]
    if not base > 0:
        raise ValueError(f"the reference text loss must be positive, got {base!r}")
    return abs_interval(text_loss_change(after, before, seed=seed)).scaled(100.0 / base)


def paired_share_difference(a: Sequence[bool], b: Sequence[bool], *, seed: int = 0) -> Interval:
    """``mean(a) - mean(b)`` of two yes/no measurements of the same questions,
    with a 95% paired-bootstrap interval (the questions are resampled)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"a and b must be paired non-empty 1-D sequences, got {x.shape} "
                         f"and {y.shape}")
    return bootstrap_interval(x - y, np.mean, seed=seed)


def code_format_share(predictions: Sequence[str]) -> list[bool]:
    """Per prediction: is it a string of code tokens (``"f1 c4"``), the format of
    the synthetic random answers?"""
    codes = set(CODE_TOKENS)
    return [bool(p and p.split() and all(w in codes for w in p.split())) for p in predictions]


def trained_string_answers(real: dict, *, piece: int = 3) -> list[bool]:
    """Per held-out question of a :func:`real_model_test`
    result: is the answer after training made of trained random-string material?
    That is: it is a piece of a trained string, contains one, or shares a piece of
    at least ``piece`` characters with one (``"vmk53rxq"`` after training on
    ``"vmkcz5eb"`` and ``"awp31rxq"``). The strings are lowercase random
    characters; a real answer shares such a piece with them only by rare chance."""
    if not isinstance(piece, int) or piece < 2:
        raise ValueError(f"piece must be an int >= 2, got {piece!r}")
    strings = [f["object"] for f in real["train_facts"]]
    grams = {s[i:i + piece] for s in strings for i in range(len(s) - piece + 1)}
    preds = real["run"]["evals"][-1]["unrelated_pred"]
    return [bool(p) and (any(p in s or s in p for s in strings)
                         or any(p[i:i + piece] in grams for i in range(len(p) - piece + 1)))
            for p in preds]


def kept_answers(real: dict) -> list[bool]:
    """Per held-out question of a :func:`real_model_test`
    result: is the answer after training the base model's answer (normalized, as
    the run's ``agreement``)?"""
    preds = real["run"]["evals"][-1]["unrelated_pred"]
    return [normalize_answer(p) == normalize_answer(b)
            for p, b in zip(preds, real["base_unrelated"])]


def below_ln2(max_losses: Sequence[float], recalled: Sequence[bool]) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` points whose largest answer-token loss is below
    ln 2, ``k`` are recalled."""
    x = np.asarray(max_losses, dtype=float)
    y = np.asarray(recalled, dtype=bool)
    if x.shape != y.shape:
        raise ValueError("max_losses and recalled must have the same length")
    sel = x < math.log(2.0)
    return int(y[sel].sum()), int(sel.sum())


def recall_above(max_losses: Sequence[float], recalled: Sequence[bool],
                 low: float = HIGH_LOSS) -> Interval:
    """Recall (95% Wilson interval) of the points whose largest answer-token loss
    is at least ``low``."""
    x = np.asarray(max_losses, dtype=float)
    y = np.asarray(recalled, dtype=bool)
    if x.shape != y.shape:
        raise ValueError("max_losses and recalled must have the same length")
    sel = x >= low
    if not sel.any():
        raise ValueError(f"no point has a largest token loss >= {low:.3g} nats")
    return wilson_interval(int(y[sel].sum()), int(sel.sum()))


def _logistic_fits(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-3,
                   iters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    # P(y) = sigmoid(a + b x) for every row of weights w (B, n) at once, by Newton's
    # method, with a tiny ridge on b so that separable samples stay finite
    a = np.zeros(len(w))
    b = np.zeros(len(w))
    wx, wxx = w * x, w * x * x
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a[:, None] + b[:, None] * x, -30, 30)))
        v = p * (1 - p)
        r = y - p
        g0, g1 = (w * r).sum(1), (wx * r).sum(1) - ridge * b
        h00, h01, h11 = (w * v).sum(1) + 1e-9, (wx * v).sum(1), (wxx * v).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        if max(np.abs(da).max(), np.abs(db).max()) < 1e-9:
            break
    return a, b


def recall_transition(max_losses: Sequence[float], recalled: Sequence[bool],
                      clusters: Sequence | None = None, *, level: float = 0.5,
                      n_boot: int = 1000, seed: int = 0) -> Interval:
    """Where recall falls through ``level``: the largest-token loss (nats) at
    which a logistic fit of recall on ``ln(max loss)`` crosses it.

    The 95% interval is a percentile bootstrap that resamples whole
    ``clusters`` (one per fact of one run: its checkpoints are not
    independent); without clusters, single points. Losses are rounded to 1%
    for the fit. Raises when recall does not fall with the loss in the data.
    """
    x = np.log(np.clip(np.asarray(max_losses, dtype=float), 1e-6, None))
    y = np.asarray(recalled, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("max_losses and recalled must have the same length (>= 2)")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot!r}")
    keys = np.arange(len(x)) if clusters is None else np.asarray([str(c) for c in clusters])
    if len(keys) != len(x):
        raise ValueError("clusters must label every point")
    _, inv = np.unique(keys, return_inverse=True)
    n_clusters = int(inv.max()) + 1
    # cells: ln(loss) rounded to 0.01 (1% in the loss) x recalled or not; a bootstrap
    # sample is a multinomial draw of clusters, so its weight on a cell is counts @ N
    xr, cell_x = np.unique(np.round(x, 2), return_inverse=True)
    cell = cell_x * 2 + y.astype(int)
    n_cells = np.zeros((n_clusters, 2 * len(xr)))
    np.add.at(n_cells, (inv, cell), 1.0)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    weights = np.vstack([n_cells.sum(0), counts @ n_cells])  # row 0: the sample itself
    x, y = np.repeat(xr, 2), np.tile([0.0, 1.0], len(xr))
    logit = math.log(level / (1 - level))
    crossings = []
    for start in range(0, len(weights), 250):  # bounded memory
        a, b = _logistic_fits(x, y, weights[start:start + 250])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            crossings.append(np.where(b < 0, np.exp((logit - a) / b), np.nan))
    crossings = np.concatenate(crossings)
    est, boots = float(crossings[0]), crossings[1:]
    if not math.isfinite(est):
        raise ValueError("recall does not fall with the loss in these points")
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        raise ValueError("the transition is undefined in most bootstrap samples")
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Interval(est, float(lo), float(hi))


def clusters_of(points, *columns: str) -> list[str]:
    """One cluster label per row of a points DataFrame: the values of ``columns``
    joined (e.g. ``"kind", "noise", "fact"``: one fact of one run)."""
    return ["|".join(str(v) for v in row) for row in points[list(columns)].itertuples(index=False)]


# =============================================================================
# The chapter's studies
# =============================================================================


def threshold_check(max_losses: Sequence[float], recalled: Sequence[bool],
                    threshold: float = LN2) -> dict[str, Any]:
    """Check "every answer token has loss < ``threshold`` => recalled" on many points.

    Returns counts: ``n`` points, ``n_below`` (max token loss < threshold),
    ``n_below_recalled``, ``violations`` (indices below the threshold but not
    recalled: the implication says there are none for ``threshold = ln 2``),
    ``share_below_recalled`` and ``n_above``/``n_above_recalled`` (above the
    threshold recall is possible but not guaranteed).
    """
    if len(max_losses) != len(recalled):
        raise ValueError(f"max_losses and recalled must have the same length, got "
                         f"{len(max_losses)} and {len(recalled)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    # positions, not labels: a pandas Series may carry a non-unique index
    max_losses = np.asarray(max_losses, dtype=float).tolist()
    recalled = np.asarray(recalled, dtype=bool).tolist()
    below = [i for i, v in enumerate(max_losses) if v < threshold]
    above = [i for i, v in enumerate(max_losses) if v >= threshold]
    violations = [i for i in below if not recalled[i]]
    return {"n": len(max_losses), "n_below": len(below),
            "n_below_recalled": len(below) - len(violations), "violations": violations,
            "share_below_recalled": (1 - len(violations) / len(below)) if below else float("nan"),
            "n_above": len(above), "n_above_recalled": sum(bool(recalled[i]) for i in above)}


def recall_vs_loss(losses: Sequence[float], recalled: Sequence[bool],
                   edges: Sequence[float] | None = None):
    """Recall rate per loss bin, as a pandas DataFrame.

    ``edges`` default to factor-of-2 bins ``ln 2 * 2**k`` for ``k = -8 .. 4``
    (0.0027 to 11 nats), so ``ln 2`` is an edge. Columns: ``low``, ``high``,
    ``center`` (geometric), ``n``, ``recall`` and its 95% Wilson interval
    ``recall_low``, ``recall_high``. Empty bins are dropped.
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency


    if len(losses) != len(recalled):
        raise ValueError(f"losses and recalled must have the same length, got "
                         f"{len(losses)} and {len(recalled)}")
    if edges is None:
        edges = [LN2 * 2.0 ** k for k in range(-8, 5)]
    edges = list(edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be increasing with at least 2 values, got {edges!r}")
    x = np.asarray(losses, dtype=float)
    y = np.asarray(recalled, dtype=float)
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        sel = (x >= lo) & (x < hi)
        if sel.any():
            ci = wilson_interval(int(y[sel].sum()), int(sel.sum()))
            rows.append({"low": lo, "high": hi, "center": math.sqrt(lo * hi),
                         "n": int(sel.sum()), "recall": float(y[sel].mean()),
                         "recall_low": ci.low, "recall_high": ci.high})
    return pd.DataFrame(rows)


def epochs_to_criterion(curve: Sequence[float], target: float, *, above: bool = True,
                        epochs: Sequence[int] | None = None) -> int | None:
    """First epoch at which ``curve`` reaches ``target`` (and stays there to the end).

    ``above=True`` means "value >= target" (e.g. recall 1.0); ``False`` means
    "value <= target" (e.g. a loss level). ``epochs`` labels the entries of
    ``curve`` (default 1, 2, ...). Returns None if it is never reached for good.
    """
    curve = list(curve)
    labels = list(epochs) if epochs is not None else list(range(1, len(curve) + 1))
    if len(labels) != len(curve):
        raise ValueError("epochs must label every entry of curve")
    ok = [(v >= target) if above else (v <= target) for v in curve]
    if not ok or not ok[-1]:
        return None
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    return labels[i]


# --------------------------------------------------------------------------- synthetic track


def synthetic_setup(n_train: int, n_unrelated: int, *, seed: int = 0, profile: str | None = None,
                    backbone_seed: int = 0):
    """Backbone, tokenizer and the fact sets of the synthetic randomization test.

    Returns ``(model, tokenizer, world, train_facts, unrelated_facts)``: the
    pretrained synthetic backbone (:func:`lamini_lite.experiments.common.load_backbone`
    with ``seed=backbone_seed``: the world, its pretraining and the data
    order), ``n_train`` facts whose QA pair was never in pretraining (drawn
    with ``seed``), and ``n_unrelated`` facts about *other* people (the
    held-out measures: their questions share nothing with the training facts
    but the format).
    """

    model, tok, world, _ = load_backbone(seed=backbone_seed, profile=profile, progress=False)
    rng = random.Random(seed)
    train = rng.sample(world.held_out_facts, n_train)
    people = {f.subject for f in train}
    others = [f for f in world.facts if f.subject not in people]
    unrelated = rng.sample(others, n_unrelated)
    return model, tok, world, train, unrelated


def _noisy_facts(train: Sequence[Fact], noise: float, answer_len: int, seed: int,
                 world=None, kind: str = "code") -> list[Fact]:
    return random_answer_variants(world, train, noise, seed=seed, kind=kind, length=answer_len)


def replay_items(world, exclude_subjects, n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pretraining-corpus items to mix into continued training, as (prompt, text) pairs.

    Continued training on the memorized facts *alone* is not what Zhang et al.
    or Li et al. did: their random labels sat inside an ordinary training set.
    Mixing a sample of the backbone's own corpus into every epoch reproduces
    that (continued pretraining with the new QA pairs added). Items that
    mention a subject in ``exclude_subjects`` (the people whose facts are
    memorized) are left out, so the corpus never gives the true answer away.
    Each item is split after its first word, the prompt, as in
    :func:`text_loss`. Drawn with ``seed``; fewer than ``n`` if the corpus is small.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n (replay items) must be an int >= 0, got {n!r}")
    exclude = set(exclude_subjects)
    pool = [c.strip() for c in world.corpus
            if " " in c.strip() and not any(s in c for s in exclude)]
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    return [tuple(c.partition(" ")[::2]) for c in chosen]


def unseen_statements(world, exclude_subjects, n: int, *, seed: int = 0) -> list[str]:
    """``n`` statements the backbone never read: held-out text in the strict sense.

    Facts stated zero times in pretraining (exposure 0) about people not in
    ``exclude_subjects``; one statement each, cycling through the paraphrase
    templates. Their loss is the LM's *generalization error*: grammar and
    templates are predictable, the fact itself is not.
    """
    exclude = set(exclude_subjects)
    facts = [f for f in world.facts if f.meta["exposure"] == 0 and f.subject not in exclude]
    random.Random(seed).shuffle(facts)
    out = []
    for i, f in enumerate(facts[:n]):
        options = world.statements(f)
        out.append(options[i % len(options)])
    return out


def _all_memorized(e: dict[str, Any]) -> bool:
    # one evaluation: every training fact has all its answer tokens below ln 2 (and is
    # the argmax under teacher forcing, which that implies): the stop rule of training.
    # Whether greedy decoding then recalls every fact is measured, not assumed.
    return all(e["train_argmax"]) and max(e["train_max_loss"]) < LN2


def memorized(history) -> bool:
    """``on_epoch_end`` stop rule of the randomization test: every training fact
    has all its answer tokens below ``ln 2`` (the last evaluation)."""
    return bool(history.evals) and _all_memorized(history.evals[-1])


def _recalled(preds: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Exact-match recall of each greedy answer line against its target."""
    return [bool(exact_match(p, a)) for p, a in zip(preds, answers)]


def _unrelated_record(m, tok, prompts, answers, prefix, fast, cap) -> dict[str, Any]:
    """The unrelated questions' losses, greedy answers and recall (frozen prefix if any)."""
    if prefix is None:
        return fact_measurements(m, tok, prompts, answers)
    preds = fast.answers(cap)
    return {**teacher_forced_record(*prefix.token_scores(tok)), "prediction": preds,
            "recalled": _recalled(preds, answers)}


def _text_record(m, tok, texts: Sequence[str] | None) -> dict[str, Any]:
    """The never-read statements' pooled loss and per-statement sums and counts ({} if none)."""
    if not texts:
        return {}
    sums, counts = statement_losses(m, tok, texts)
    return {"text_loss": sum(sums) / sum(counts), "text_loss_sums": sums,
            "text_token_counts": counts}


def _unrelated_summary(u: dict[str, Any], base_preds: Sequence[str]) -> dict[str, Any]:
    """The held-out ``unrelated_*`` keys and the agreement with the base model's answers."""
    return {"unrelated_pred": u["prediction"],
            "unrelated_loss": float(np.mean(u["mean_loss"])),
            "unrelated_max_loss": u["max_loss"],
            "unrelated_recalled": u["recalled"],
            "unrelated_accuracy": float(np.mean(u["recalled"])),
            "agreement": float(np.mean([normalize_answer(p) == normalize_answer(b) for p, b
                                        in zip(u["prediction"], base_preds)]))}


def _held_out_measure(model, tok, unrelated: Sequence[Fact], base_preds: Sequence[str], *,
                      exemplars, texts, trainable: str, cache_prefix: bool):
    """A function measuring the held-out side (unrelated questions, ``texts``) of a model."""
    prompts = [qa_prompt(f.question, exemplars) for f in unrelated]
    answers = [f.object for f in unrelated]
    cap = decode_cap(tok, answers)
    # Only the top layers train: the held-out pairs' frozen states are computed once too.
    prefix = (frozen_prefix_for(model, tok, prompts, answers, trainable)
              if cache_prefix and prompts else None)
    fast = FrozenBottomDecoder(model, tok, prompts, prefix.first) if prefix is not None else None

    def held_out(m):
        """The held-out measurements of ``m``."""
        u = _unrelated_record(m, tok, prompts, answers, prefix, fast, cap)
        return {**_text_record(m, tok, texts), **_unrelated_summary(u, base_preds)}
    return held_out


def _train_losses(m, tok, prompts, answers, prefix, epoch: int) -> dict[str, Any]:
    """The training facts' teacher-forced answer-token losses at ``epoch``."""
    t = (teacher_forced_record(*prefix.token_scores(tok, range(len(prompts))))
         if prefix is not None else fact_measurements(m, tok, prompts, answers, greedy=False))
    return {"epoch": epoch,
            "train_token_losses": t["token_losses"], "train_argmax": t["argmax"],
            "train_max_loss": t["max_loss"], "train_mean_loss": t["mean_loss"]}


def _train_decoded(m, tok, prompts, answers, cap: int, fast) -> dict[str, list]:
    """The training facts' greedy answer lines and exact recall (whole model)."""
    if fast is None:
        return greedy_recall(m, tok, prompts, answers, max_new_tokens=cap)
    preds = fast.answers(cap)
    return {"prediction": preds, "recalled": _recalled(preds, answers)}


def _epoch_evaluator(model, tok, prompts, answers, prefix, held_out, *, epochs: int,
                     until_memorized: bool, held_out_every_epoch: bool, greedy_every: int):
    """The ``eval_fn`` of :func:`_run_one`: losses, greedy answers when due, held-out side."""
    cap = decode_cap(tok, answers)
    # Recall is always greedy decoding of the whole model to the end of the line; when
    # only the top layers train, the frozen layers' keys and values over the prompts are
    # computed once (FrozenBottomDecoder).
    fast = FrozenBottomDecoder(model, tok, prompts, prefix.first) if prefix is not None else None

    def evaluate(m, epoch):
        """One evaluation of ``m`` after ``epoch`` epochs."""
        out = _train_losses(m, tok, prompts, answers, prefix, epoch)
        stops = until_memorized and epoch > 0 and _all_memorized(out)
        decode = epoch == 0 or epoch % greedy_every == 0 or epoch == epochs or stops
        g = (_train_decoded(m, tok, prompts, answers, cap, fast) if decode
             else {"prediction": [None] * len(prompts), "recalled": [None] * len(prompts)})
        out.update(decoded=decode, train_pred=g["prediction"], train_recalled=g["recalled"])
        if held_out_every_epoch or epoch == 0:
            out.update(held_out(m))
        return out
    return evaluate


def _run_one(base, tok, train_facts: Sequence[Fact], unrelated: Sequence[Fact],
             base_unrelated_preds: Sequence[str], *, epochs: int, lr: float, batch_size: int,
             trainable: str, seed: int, progress: bool,
             texts: Sequence[str] | None = None,
             exemplars: Sequence[tuple[str, str]] = (),
             replay: Sequence[tuple[str, str]] = (),
             until_memorized: bool = False,
             held_out_every_epoch: bool = True,
             greedy_every: int = 1,
             cache_prefix: bool = False) -> dict[str, Any]:
    """Fine-tune a copy of ``base`` on ``train_facts`` (+ ``replay``), measured per epoch.

    Every epoch (and at epoch 0) the training facts' answer-token losses are
    scored under teacher forcing (``train_token_losses``, ``train_max_loss``,
    ``train_mean_loss``, ``train_argmax``). Their answers are *greedy-decoded*
    to the end of the line (``train_pred``, ``train_recalled``) at epoch 0,
    every ``greedy_every``-th epoch, the last epoch and the epoch at which the
    stop rule fires; elsewhere those two are ``None`` (``decoded`` says which).
    The held-out side (unrelated questions, ``texts``) is measured at every
    evaluation when ``held_out_every_epoch``, else before and after training.
    """
    if not isinstance(greedy_every, int) or isinstance(greedy_every, bool) or greedy_every < 1:
        raise ValueError(f"greedy_every must be an int >= 1, got {greedy_every!r}")
    model = copy.deepcopy(base)
    prompts = [qa_prompt(f.question, exemplars) for f in train_facts]
    answers = [f.object for f in train_facts]
    held_out = _held_out_measure(model, tok, unrelated, base_unrelated_preds,
                                 exemplars=exemplars, texts=texts, trainable=trainable,
                                 cache_prefix=cache_prefix)
    # Losses every epoch under teacher forcing -- through the frozen layers' cached
    # states when only the top layers train (one prefix over every training pair, facts
    # first, then replay, serves both the training steps and the scoring).
    all_prompts = prompts + [p for p, _ in replay]
    all_answers = answers + [a for _, a in replay]
    prefix = (frozen_prefix_for(model, tok, all_prompts, all_answers, trainable)
              if cache_prefix else None)
    evaluate = _epoch_evaluator(model, tok, prompts, answers, prefix, held_out, epochs=epochs,
                                until_memorized=until_memorized,
                                held_out_every_epoch=held_out_every_epoch,
                                greedy_every=greedy_every)
    stop = (lambda epoch, h: memorized(h)) if until_memorized else None
    hist = finetune_qa(model, tok, all_prompts, all_answers, epochs=epochs, lr=lr,
                       batch_size=batch_size, trainable=trainable, seed=seed,
                       eval_fn=evaluate, eval_at_start=True, on_epoch_end=stop,
                       cache_frozen_prefix=prefix or cache_prefix, progress=progress,
                       desc="memorize")
    if not held_out_every_epoch:  # the held-out side only before and after
        with torch.no_grad():
            hist.evals[-1].update(held_out(model))
    return hist.to_dict()


def randomization_test(noise_levels: Sequence[float], *, n_train: int, n_unrelated: int,
                       answer_len: int, epochs: int, lr: float, batch_size: int,
                       trainable: str = "all", kind: str = "code", replay: int = 0,
                       until_memorized: bool = False, seed: int = 0, backbone_seed: int = 0,
                       greedy_every: int = 1, profile: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Zhang et al.'s randomization test on the synthetic backbone (cached).

    For each share ``noise`` of random answers (see
    :func:`lamini_lite.facts.synthetic.random_answer_variants`: ``kind="code"``
    for random strings of ``answer_len`` code tokens, as Li et al.'s random
    strings; ``kind="entity"`` for a wrong value of the right type, as Zhang et
    al.'s shuffled labels), continue training a fresh copy of the backbone on
    the same ``n_train`` questions, mixed with ``replay`` items of its
    pretraining corpus (:func:`replay_items`; 0 = the questions alone), for
    at most ``epochs`` epochs or, with ``until_memorized``, until every
    training fact is recalled with all answer tokens below ``ln 2``
    (:func:`memorized`). ``seed`` draws the facts, the random answers and the
    data order; ``backbone_seed`` picks the pretrained backbone (its world and
    its pretraining, :func:`synthetic_setup`). Measured after every epoch
    (epoch 0 = before): per training fact its answer-token losses, and every
    ``greedy_every`` epochs (and at the last) its greedy answer line and
    exact recall (:func:`_run_one`); on ``n_unrelated`` other facts the
    per-question answer losses, greedy answers and recall, the accuracy and
    the agreement with the base model's answers, and the loss of
    ``n_unrelated`` statements the backbone never read
    (:func:`unseen_statements`, also per statement); the held-out side is
    measured before and after training only.

    Returns ``{"noise": [...], "runs": [history dict per noise level],
    "train_facts": [...], "unrelated": [...], "base_unrelated": [...]}``
    (facts as dicts; each run's ``evals`` hold the per-epoch measurements).
    """
    for v in noise_levels:
        if not 0 <= v <= 1:
            raise ValueError(f"noise levels must be in [0, 1], got {v!r}")
    if kind not in ("code", "entity"):
        raise ValueError(f"kind must be 'code' or 'entity', got {kind!r}")
    inputs = {"noise": list(noise_levels), "n_train": n_train, "n_unrelated": n_unrelated,
              "answer_len": answer_len, "epochs": epochs, "lr": lr, "batch_size": batch_size,
              "trainable": trainable, "kind": kind, "replay": replay,
              "until_memorized": until_memorized, "seed": seed,
              "backbone_seed": backbone_seed, "greedy_every": greedy_every,
              "profile_sizes": _backbone_key(profile), "version": 6}

    def compute():
        base, tok, world, train, unrelated = synthetic_setup(
            n_train, n_unrelated, seed=seed, profile=profile, backbone_seed=backbone_seed)
        texts = unseen_statements(world, {f.subject for f in train}, n_unrelated, seed=seed)
        base_preds = greedy_answers(base, tok, [qa_prompt(f.question) for f in unrelated],
                                    max_new_tokens=decode_cap(tok, [f.object for f in unrelated]),
                                    batch_size=64)
        mix = replay_items(world, {f.subject for f in train}, replay, seed=seed)
        runs, sets = [], []
        for noise in noise_levels:
            facts = _noisy_facts(train, noise, answer_len, seed, world=world, kind=kind)
            sets.append([f.to_dict() for f in facts])
            runs.append(_run_one(base, tok, facts, unrelated, base_preds, epochs=epochs, lr=lr,
                                 batch_size=batch_size, trainable=trainable, seed=seed,
                                 progress=progress, texts=texts, replay=mix,
                                 until_memorized=until_memorized,
                                 held_out_every_epoch=False, greedy_every=greedy_every))
        return {"noise": list(noise_levels), "runs": runs, "train_facts": sets,
                "unrelated": [f.to_dict() for f in unrelated], "base_unrelated": base_preds}

    return cached("memorization_randomization", inputs, compute)


def _backbone_key(profile: str | None) -> dict[str, Any]:
    return {"pretrain": dict(sizes("pretrain", profile)),
            "world": dict(sizes("facts_synthetic", profile)), "world_version": WORLD_VERSION}


def noise_summary(result: dict[str, Any], *, loss_target: float = 0.05):
    """One row per noise level: epochs to 100 % greedy recall (over the decoded
    evaluations), to "memorized" (every fact with all answer tokens below
    ln 2) and to a train loss of ``loss_target``; the final train loss (replay
    included) and the final mean answer loss of the memorized facts; greedy
    recall before and at the end; and the held-out measures before and after
    (a pandas DataFrame)."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for noise, run, facts in zip(result["noise"], result["runs"], result["train_facts"]):
        evals = run["evals"]
        decoded = [e for e in evals if e.get("decoded", True)]
        recall = [float(np.mean(e["train_recalled"])) for e in decoded]
        e_epochs = [e["epoch"] for e in decoded]
        is_random = [bool(f["meta"].get("random_answer")) for f in facts]
        first, last = evals[0], evals[-1]
        rows.append({
            "noise": noise,
            "epochs_to_full_recall": epochs_to_criterion(recall, 1.0, epochs=e_epochs),
            "epochs_to_loss": epochs_to_criterion(run["train_loss"], loss_target, above=False),
            "epochs_to_memorized": next((e["epoch"] for e in evals if _all_memorized(e)), None),
            "final_train_loss": run["train_loss"][-1],
            "final_fact_loss": float(np.mean(last["train_mean_loss"])),
            "recall_before": recall[0], "final_recall": recall[-1],
            "random_recalled": (float(np.mean([r for r, m in zip(last["train_recalled"],
                                                                 is_random) if m]))
                                if any(is_random) else float("nan")),
            "text_loss_before": first.get("text_loss", float("nan")),
            "text_loss_after": last.get("text_loss", float("nan")),
            "unrelated_loss_before": first["unrelated_loss"],
            "unrelated_loss_after": last["unrelated_loss"],
            "unrelated_acc_before": first["unrelated_accuracy"],
            "unrelated_acc_after": last["unrelated_accuracy"],
            "agreement_after": last["agreement"],
        })
    return pd.DataFrame(rows)


def threshold_points(result: dict[str, Any]):
    """Every (run, decoded checkpoint, training fact) as a row (DataFrame): noise,
    epoch, fact index, max and mean answer-token loss (teacher forcing),
    ``recalled`` (the greedy answer line equals the answer), ``argmax`` (every
    answer token the argmax under teacher forcing) and whether the answer is
    random. Checkpoints at which the answers were not decoded are left out."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for noise, run, facts in zip(result["noise"], result["runs"], result["train_facts"]):
        for e in run["evals"]:
            if not e.get("decoded", True):
                continue
            for i, f in enumerate(facts):
                rows.append({"noise": noise, "epoch": e["epoch"], "fact": i,
                             "max_loss": e["train_max_loss"][i],
                             "mean_loss": e["train_mean_loss"][i],
                             "recalled": bool(e["train_recalled"][i]),
                             "argmax": bool(e.get("train_argmax", e["train_recalled"])[i]),
                             "random_answer": bool(f["meta"].get("random_answer"))})
    return pd.DataFrame(rows)


def heldout_points(run: dict[str, Any], facts: Sequence[dict]):
    """The held-out questions of one run as (checkpoint, question) rows: their
    *true* answers' max and mean token loss and whether greedy decoding gives
    them, before and after training (the evaluations that measured them)."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for e in run["evals"]:
        if "unrelated_max_loss" not in e:
            continue
        for i, (mx, rec) in enumerate(zip(e["unrelated_max_loss"], e["unrelated_recalled"])):
            rows.append({"epoch": e["epoch"], "fact": facts[i]["question"], "max_loss": mx,
                         "recalled": bool(rec)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- real track


def real_model_test(*, n_train: int, n_unrelated: int, answer_len: int, epochs: int, lr: float,
                    batch_size: int, trainable: str = "top:2", shots: int = 2,
                    until_memorized: bool = False, replay: int = 0, seed: int = 0,
                    greedy_every: int = 1, progress: bool = True) -> dict[str, Any]:
    """Li et al.'s random-answer experiment on SmolLM2-135M-Instruct (cached).

    Real facts (:func:`lamini_lite.facts.real.load_real_facts`) are split into
    ``n_train`` questions whose answers are replaced by random
    ``answer_len``-character strings and ``n_unrelated`` other questions.
    SmolLM2 is fine-tuned with only ``trainable`` learning (top layers or a
    LoRA adapter; the rest frozen) and measured before and after every epoch.
    Questions are asked with ``shots`` true exemplars from other facts in
    front (an instruct model asked zero-shot often answers in sentences).
    ``until_memorized`` stops at the first epoch where every random answer is
    recalled with all its tokens below ``ln 2`` (:func:`memorized`).
    ``replay`` more real questions (disjoint from the others) are mixed into
    training with the *base model's own* greedy answers as targets: we have no
    access to SmolLM2's pretraining data, so its own behaviour stands in for
    it, the counterpart of the synthetic track's corpus replay. The trained
    answers are scored every epoch and greedy-decoded every ``greedy_every``
    epochs and at the last (:func:`_run_one`); the held-out questions are
    measured before and after training only.

    Returns the history (``evals`` per epoch as in :func:`randomization_test`)
    plus the questions, the gold and random answers, the base model's answers
    and ``base_gold``: for every question drawn for training or replay, the
    base model's max answer-token loss of the *true* answer and whether its
    greedy answer line is that answer (real facts through the ln 2 lens; the
    held-out questions' are in ``evals[0]``).
    """
    inputs = {"n_train": n_train, "n_unrelated": n_unrelated, "answer_len": answer_len,
              "epochs": epochs, "lr": lr, "batch_size": batch_size, "trainable": trainable,
              "shots": shots, "until_memorized": until_memorized, "replay": replay,
              "seed": seed, "greedy_every": greedy_every, "version": 8}

    def compute():

        model, tok = load_smollm2()
        pool = load_real_facts(seed=seed)
        rng = random.Random(seed)
        chosen = rng.sample(pool, n_train + n_unrelated + shots + replay)
        train_true = chosen[:n_train]
        unrelated = chosen[n_train:n_train + n_unrelated]
        exemplars = [(f.question, f.object) for f in
                     chosen[n_train + n_unrelated:n_train + n_unrelated + shots]]
        replay_facts = chosen[n_train + n_unrelated + shots:]
        train = with_random_answers(train_true, length=answer_len, fraction=1.0, seed=seed)
        base_preds = greedy_answers(model, tok, [qa_prompt(f.question, exemplars)
                                                 for f in unrelated],
                                    max_new_tokens=decode_cap(tok, [f.object for f in unrelated]),
                                    batch_size=32)
        gold_facts = train_true + replay_facts  # the held-out ones are scored by _run_one
        gold_prompts = [qa_prompt(f.question, exemplars) for f in gold_facts]
        gold_preds = greedy_answers(model, tok, gold_prompts, batch_size=32,
                                    max_new_tokens=decode_cap(tok, [f.object for f in gold_facts]))
        base_train_preds = gold_preds[:n_train]
        replay_prompts, replay_answers = gold_prompts[n_train:], gold_preds[n_train:]
        gold = fact_measurements(model, tok, gold_prompts, [f.object for f in gold_facts],
                                 greedy=False, batch_size=32)
        base_gold = {"question": [f.question for f in gold_facts], "answer":
                     [f.object for f in gold_facts], "max_loss": gold["max_loss"],
                     "prediction": gold_preds,
                     "recalled": [bool(exact_match(p, f.object))
                                  for p, f in zip(gold_preds, gold_facts)]}
        mix = [(p, a) for p, a in zip(replay_prompts, replay_answers) if a.strip()]
        run = _run_one(model, tok, train, unrelated, base_preds, epochs=epochs, lr=lr,
                       batch_size=batch_size, trainable=trainable, seed=seed,
                       progress=progress, exemplars=exemplars, replay=mix,
                       until_memorized=until_memorized, held_out_every_epoch=False,
                       greedy_every=greedy_every, cache_prefix=True)
        return {"run": run, "train_facts": [f.to_dict() for f in train],
                "unrelated": [f.to_dict() for f in unrelated], "base_unrelated": base_preds,
                "exemplars": [list(e) for e in exemplars],
                "base_train": base_train_preds, "base_gold": base_gold}

    return cached("memorization_smollm2", inputs, compute)


def real_threshold_points(real: dict[str, Any]):
    """Every (checkpoint, question) point of a :func:`real_model_test` result
    with a greedy answer, as rows (DataFrame): ``what`` is ``"trained random
    answer"`` (the training questions at every decoded checkpoint) or ``"true
    answer"`` (real facts: the base model on every question drawn, and the
    held-out questions after training too); ``max_loss`` is the answer's
    largest token loss, ``recalled`` whether the greedy answer line is it."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    run, facts = real["run"], real["train_facts"]
    rows = []
    for e in run["evals"]:
        if not e.get("decoded", True):
            continue
        for i, f in enumerate(facts):
            rows.append({"what": "trained random answer", "epoch": e["epoch"],
                         "question": f["question"], "max_loss": e["train_max_loss"][i],
                         "recalled": bool(e["train_recalled"][i])})
    g = real["base_gold"]
    for q, mx, rec in zip(g["question"], g["max_loss"], g["recalled"]):
        rows.append({"what": "true answer", "epoch": 0, "question": q, "max_loss": mx,
                     "recalled": bool(rec)})
    held = heldout_points(run, real["unrelated"])
    for r in held.to_dict("records"):
        rows.append({"what": "true answer", "epoch": r["epoch"], "question": r["fact"],
                     "max_loss": r["max_loss"], "recalled": r["recalled"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- views


def training_viewer(run: dict[str, Any], tokenizer, facts: Sequence[dict], fact_index: int = 0):
    """An ipywidgets slider over the stored epochs of ``run`` for one training fact.

    Shows the fact's question, target, the greedy answer at that epoch and a
    bar chart of its per-token losses with the ``ln 2`` line. Returns the
    widget (display it); nothing blocks.
    """
    import ipywidgets as widgets  # lazy: notebook-only
    import matplotlib.pyplot as plt  # lazy: plots are a notebook extra

    evals = run["evals"]
    fact = facts[fact_index]
    target_tokens = [tokenizer.decode([t]) for t in
                     tokenizer(" " + fact["object"] + "\n", add_special_tokens=False)["input_ids"]]
    labels = [repr(t.strip() or t)[1:-1] for t in target_tokens]
    out = widgets.Output()

    def show(i):
        e = evals[i]
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 2.6))
            losses = e["train_token_losses"][fact_index]
            ax.bar(range(len(losses)), losses, color=["tab:green" if v < LN2 else "tab:red"
                                                      for v in losses])
            ax.axhline(LN2, ls="--", c="k", lw=1, label="ln 2")
            ax.set_xticks(range(len(losses)), labels[:len(losses)])
            ax.set_ylabel("token loss (nats)")
            said = e["train_pred"][fact_index]
            said = "(not decoded at this epoch)" if said is None else repr(said)
            ax.set_title(f"epoch {e['epoch']}: greedy answer = {said}"
                         f"  (target {fact['object']!r})", fontsize=9)
            ax.legend(loc="upper right")
            plt.show()

    slider = widgets.IntSlider(value=0, min=0, max=len(evals) - 1, description="checkpoint")
    slider.observe(lambda ch: show(ch["new"]), names="value")
    show(0)
    return widgets.VBox([widgets.HTML(f"<b>Q:</b> {fact['question']}"), slider, out])


def plot_training_story(run: dict[str, Any], facts: Sequence[dict], fact_index: int = 0,
                        ax=None):
    """Static figure: one fact's max and mean answer-token loss per epoch, shaded
    where greedy decoding recalls it, with the ``ln 2`` line. Returns the axes."""
    import matplotlib.pyplot as plt  # lazy: plots are a notebook extra

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    evals = run["evals"]
    ep = [e["epoch"] for e in evals]
    ax.plot(ep, [e["train_max_loss"][fact_index] for e in evals], "o-", label="max token loss")
    ax.plot(ep, [e["train_mean_loss"][fact_index] for e in evals], "s--", ms=3,
            label="mean token loss")
    for e in evals:
        if e["train_recalled"][fact_index]:
            ax.axvspan(e["epoch"] - 0.5, e["epoch"] + 0.5, color="tab:green", alpha=0.15, lw=0)
    ax.axhline(LN2, c="k", ls=":", lw=1, label="ln 2")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_title(f"{facts[fact_index]['question']} -> {facts[fact_index]['object']!r}"
                 " (green: recalled)", fontsize=9)
    ax.legend(fontsize=8)
    return ax
