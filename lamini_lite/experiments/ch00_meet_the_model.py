"""Chapter 0, *A model that makes things up*: its claims and what they measure.

SmolLM2-135M-Instruct answers closed-book capital questions (4-shot, greedy).
The chapter looks at a hand-picked table of 14 countries, then at a random,
popularity-stratified draw of capitals from the real fact world
(:func:`capital_draw`), and asks how well the probability the model gives its
own answer (:func:`answer_confidence`) separates right answers from wrong
ones: the area under the ROC curve with a stratified bootstrap interval
(:func:`auc_interval`), and the share of confident answers that are wrong
(:func:`confident_wrong_share`). The data chapter reuses the same draw to
check that population predicts what the model knows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..cache import cached, fingerprint
from ..claims import Claim
from ..facts import Fact, qa_prompt
from ..facts.real import load_real_facts
from ..lm import answer_token_losses, greedy_answers
from ..stats import Interval, wilson_interval

__all__ = ["CAPITAL_EXEMPLARS", "DRAW_SIZE", "CONFIDENT", "capital_draw", "answer_confidence",
           "auc", "auc_interval", "confident_wrong_share", "first_token_probability",
           "REAL_MIX", "CONFIDENCE_SEPARATES", "CONFIDENT_ANSWERS_WRONG",
           "KNOWN_FIRST_TOKEN", "UNKNOWN_FLATTER", "KNOWN_SURVIVES_SAMPLING",
           "UNKNOWN_NEVER_SAMPLED"]

# The 4-shot exemplars of every capital question in the chapter (and the data chapter).
CAPITAL_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Kenya?", "Nairobi"),
)
# Capitals drawn for the random sample: a third from each popularity tier (the
# exemplars' countries are then left out, so a draw holds up to this many), about
# two thirds of the real world's capitals. With 90 the share of confident answers
# that are wrong rests on some 15 answers and its interval is too wide to show
# anything on every seed.
DRAW_SIZE = 150
# "Confident": the model gives its whole answer more than even odds.
CONFIDENT = 0.5

REAL_MIX = Claim(
    "ch00.real_mix",
    "the hand-picked capitals hold a real mix: at least 3 right and at least 3 wrong answers",
    ">=", 3, unit="answers")
CONFIDENCE_SEPARATES = Claim(
    "ch00.confidence_separates",
    "the probability of its own answer ranks right answers above wrong ones more often "
    "than chance (AUC, 95% CI above 0.5)",
    ">", 0.5, on="low")
CONFIDENT_ANSWERS_WRONG = Claim(
    "ch00.confident_answers_wrong",
    "answers given more than even odds are still wrong a real share of the time "
    "(95% CI above 5%)",
    ">", 0.05, on="low")
KNOWN_FIRST_TOKEN = Claim(
    "ch00.known_first_token",
    "for France the first token of Paris holds most of the next-token probability",
    ">", 0.5)
UNKNOWN_FLATTER = Claim(
    "ch00.unknown_flatter",
    "the most likely first token for Burkina Faso gets less probability than Paris does "
    "for France",
    ">", 0.0)
KNOWN_SURVIVES_SAMPLING = Claim(
    "ch00.known_survives_sampling",
    "a well-known fact survives sampling: most samples for France say Paris "
    "(95% CI above one half)",
    ">", 0.5, on="low")
UNKNOWN_NEVER_SAMPLED = Claim(
    "ch00.unknown_never_sampled",
    "sampling does not find the capital the model does not know: no sample for "
    "Burkina Faso says Ouagadougou (fewer than 1)",
    "<", 1, unit="samples")


def capital_draw(seed: int, n: int = DRAW_SIZE) -> list[Fact]:
    """``n`` capital facts of the real world, a third from each popularity tier.

    Drawn with :func:`~lamini_lite.facts.real.load_real_facts` (``seed``); the
    countries of :data:`CAPITAL_EXEMPLARS` are left out, since the prompt
    gives their answers away.
    """
    shown = {q.removeprefix("What is the capital of ").rstrip("?") for q, _ in CAPITAL_EXEMPLARS}
    return [f for f in load_real_facts("capital", per_relation=n, seed=seed)
            if f.subject not in shown]


def answer_confidence(model, tokenizer, facts: Sequence[Fact],
                      exemplars: Sequence[tuple[str, str]] = CAPITAL_EXEMPLARS, *,
                      cache: bool = True):
    """Greedy closed-book answers and the probability the model gives each, as a DataFrame.

    Columns: ``question``, ``true answer``, ``model says`` (greedy, few-shot
    with ``exemplars``), ``correct`` (:meth:`Fact.is_correct`, aliases
    accepted), ``p(own answer)`` (the product of the answer's token
    probabilities, closing newline included, as chapter 0 defines it),
    ``popularity`` and ``tier`` (``meta["popularity_tier"]``). Cached by the
    model's weights and the prompts, so a second chapter asking the same
    questions does not decode them again.
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    facts = list(facts)
    if not facts:
        raise ValueError("answer_confidence needs at least one fact")
    prompts = [qa_prompt(f.question, exemplars) for f in facts]

    def compute():
        answers = greedy_answers(model, tokenizer, prompts)
        losses = answer_token_losses(model, tokenizer, prompts, answers)
        return {"answers": answers, "p_own": [math.exp(-float(l.sum())) for l in losses]}

    if cache:
        inputs = {"model": fingerprint(model), "prompts": fingerprint(prompts), "version": 1}
        res = cached("ch00_answer_confidence", inputs, compute)
    else:
        res = compute()
    return pd.DataFrame({
        "question": [f.question for f in facts], "true answer": [f.object for f in facts],
        "model says": res["answers"],
        "correct": [f.is_correct(a) for f, a in zip(facts, res["answers"])],
        "p(own answer)": [float(p) for p in res["p_own"]],
        "popularity": [f.popularity for f in facts],
        "tier": [f.meta.get("popularity_tier") for f in facts]})


def _split(scores, correct) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape or s.ndim != 1:
        raise ValueError(f"scores and correct must be 1-D and of one length, got "
                         f"{s.shape} and {c.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    pos, neg = s[c], s[~c]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUC needs right and wrong answers; got {len(pos)} right, "
                         f"{len(neg)} wrong")
    return pos, neg


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def auc(scores: Sequence[float], correct: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for telling right from wrong answers.

    The share of (right, wrong) pairs in which the right answer scores higher
    (ties count one half): 1 separates perfectly, 0.5 is no better than chance.
    """
    return _auc(*_split(scores, correct))


def auc_interval(scores: Sequence[float], correct: Sequence[bool], *, n_boot: int = 2000,
                 seed: int = 0, confidence: float = 0.95) -> Interval:
    """:func:`auc` with a percentile-bootstrap interval.

    Right and wrong answers are resampled separately (a stratified bootstrap),
    so that every resample holds both and the split between them stays as
    observed.
    """
    pos, neg = _split(scores, correct)
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    stats = np.array([_auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
                      for _ in range(n_boot)])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return Interval(_auc(pos, neg), float(lo), float(hi), confidence)


def confident_wrong_share(scores: Sequence[float], correct: Sequence[bool], *,
                          confident: float = CONFIDENT) -> tuple[int, int, Interval]:
    """Of the answers scored above ``confident``, how many are wrong.

    Returns ``(wrong, confident_answers, wilson_interval)``.

    Raises:
        ValueError: no answer is scored above ``confident``.
    """
    s = np.asarray(scores, dtype=float)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape:
        raise ValueError(f"scores and correct must have one length, got {s.shape} and {c.shape}")
    sure = s > confident
    n = int(sure.sum())
    if n == 0:
        raise ValueError(f"no answer is scored above {confident}")
    k = int((sure & ~c).sum())
    return k, n, wilson_interval(k, n)


def first_token_probability(top: Sequence[tuple[str, float]], word: str) -> float:
    """Probability of the token that starts ``word`` in a ``top_next_tokens`` list (0 if absent).

    A token matches when, stripped, it is a non-empty prefix of ``word``.
    """
    hits = [p for t, p in top if t.strip() and word.startswith(t.strip())]
    return float(max(hits)) if hits else 0.0
