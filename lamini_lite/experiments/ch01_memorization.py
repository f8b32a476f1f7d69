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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lamini_lite.claims import Claim
from lamini_lite.stats import Interval, bootstrap_interval, wilson_interval

__all__ = ["EVERY_RUN_MEMORIZED", "RANDOM_STRINGS_SLOWER", "SLOWDOWN_CONSTANT_FACTOR",
           "TEXT_LOSS_BARELY_MOVES", "TEXT_LOSS_SAME_TRUE_FALSE", "STRING_FORMAT_LEAKS",
           "STRINGS_LOWER_ACCURACY", "RIGHT_TYPE_ACCURACY_CLOSE", "LN2_SUFFICIENT",
           "LN2_TESTED_ON_MANY", "TRANSITION_ABOVE_LN2", "HIGH_LOSS_NOT_RECALLED",
           "REAL_MEMORIZED", "REAL_STRINGS_ALONE_TAKE_OVER", "REAL_REPLAY_KEEPS_ANSWERS",
           "HIGH_LOSS", "abs_interval", "text_loss_change", "relative_text_loss_move",
           "paired_share_difference",
           "code_format_share", "trained_string_answers", "kept_answers", "below_ln2",
           "recall_above", "recall_transition", "clusters_of"]

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
    from lamini_lite.facts_synthetic import CODE_TOKENS
    codes = set(CODE_TOKENS)
    return [bool(p and p.split() and all(w in codes for w in p.split())) for p in predictions]


def trained_string_answers(real: dict, *, piece: int = 3) -> list[bool]:
    """Per held-out question of a :func:`~lamini_lite.memorization.real_model_test`
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
    """Per held-out question of a :func:`~lamini_lite.memorization.real_model_test`
    result: is the answer after training the base model's answer (normalized, as
    the run's ``agreement``)?"""
    from lamini_lite.facts import normalize_answer
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
