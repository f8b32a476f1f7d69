"""Chapter 3's claims: fine-tuning on new knowledge (Gekhman et al. 2024), and their quantities.

``book/03_finetuning_new_knowledge.ipynb`` checks each claim below with
:func:`lamini_lite.claims.check`, on quantities computed here, so that the
chapter and ``python -m lamini_lite.bench robustness`` measure the same things.

One run of the chapter fine-tunes every variant of the study once per *study
seed* (another draw of every D and another data order) on one split of the
facts. A claim is about that run as a whole: its quantities are pooled over the
study seeds, and their 95% intervals come from a bootstrap over the test facts
(resampled within each SliCK category, as the test set was drawn) or, for
training examples, from the Wilson/Newcombe intervals and a bootstrap over the
examples. A claim about a difference is tested on the end of its interval.

Most quantities are linear contrasts of test accuracies: a weighted sum of the
accuracies of (variant, EARLY_STOP or CONVERGENCE) pairs, e.g. the slope of
CONVERGENCE accuracy against the share of Unknown examples, or ``acc(D_50) -
acc(D_Known_50)`` (:func:`contrast`). The accuracy of a group of test facts is
the one of :meth:`VariantRun.test_accuracy`:
each SliCK category weighted by its natural share (:func:`fact_weights`).

Its studies, and the sizes they run at (``sizes("finetune_knowledge")``):

Does fine-tuning on new knowledge encourage hallucination? (Gekhman et al. 2024)

The controlled study of chapter 3, and the library helpers it motivates.

The study. Every fact of a closed-book QA set has a SliCK category
(:mod:`lamini_lite.slick`) for the model about to be fine-tuned. We build
fine-tuning sets D of a fixed size with a share X of *Unknown* facts (the rest
*Known*: HighlyKnown, MaybeKnown or WeaklyKnown), fine-tune a fresh copy of the
model on each with :func:`lamini_lite.training.qa.finetune_qa` (the book's one
training loop) and track, after every epoch,

* the accuracy on a dev set (EARLY_STOP = the epoch with the best dev accuracy),
* which training examples are *fitted* (greedy answer = the training target),
  per category (CONVERGENCE = the first epoch at which nearly all are fitted),
* the test accuracy per SliCK category.

Variants (:func:`mixture_variants`, :func:`known_only_variants`,
:func:`idk_variant`, :func:`single_category_variants`): the X% sweep; D_Known (D
with its Unknowns removed, so |D| shrinks); D_IDK (the Unknowns relabelled
"I don't know"); and single-category sets D_HighlyKnown, ..., D_Natural.
:func:`fit_linear` fits the paper's model
``Acc = b0 + b_kn * N_kn / |D| + b_unk * N_unk / |D|`` over (variant, epoch)
points, N being the *fitted* examples of each kind.

Prompts are zero-shot, ``"Q: <question>\nA:"``, as in the paper (which
fine-tunes and tests on a plain instruction prompt); the SliCK categories
come from few-shot prompts, also as in the paper.

Accuracy is greedy exact match, computed without a decoding loop by
:func:`greedy_match`: one forward pass over prompt + candidate answer tells
whether greedy decoding would write exactly that candidate and then end the
line (every answer token is the argmax, and the argmax after it is a newline).
That is the same verdict as decoding and comparing strings, except that an
answer written with a different tokenization, or differing only in case or
punctuation, counts as wrong.

Library helpers for a reader's own data: :func:`filter_unknowns` and
:func:`relabel_unknowns` (drop or relabel the facts a model does not know, per
SliCK), and :class:`EarlyStopping`, a callback for ``finetune_qa(on_epoch_end=...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cached, fingerprint
from ..claims import Claim
from ..facts import Fact, FactError, qa_prompt
from ..lm import greedy_match
from ..profiles import register_sizes
from ..seeding import stable_int
from ..slick import CATEGORIES
from ..stats import Interval, newcombe_difference, wilson_interval
from ..training import IDK, KNOWN, category_list, finetune_qa
from ..training.mitigations import fact_list
from .common import load_backbone

__all__ = ["load_backbone", "CONV_FALLS", "DROP_GROWS", "UNKNOWN_FITTED_SLOWER_AT_ES",
           "UNKNOWN_FITTED_SLOWER_OVER_EPOCHS", "UNKNOWNS_HURT_AT_CONV",
           "UNKNOWNS_HURT_LESS_AT_ES", "B_UNK_NEGATIVE", "B_UNK_BELOW_B_KN",
           "B_UNK_BEYOND_PAPER", "LINEAR_R2", "D_UNKNOWN_BELOW_HIGHLY_KNOWN",
           "D_UNKNOWN_CONV_COSTS", "IDK_ABSTAINS", "IDK_ANSWERS", "SHARES", "epoch_of",
           "fact_weights", "fact_columns", "weighted_interval", "contrast",
           "slope_terms", "filter_terms", "accuracy", "accuracy_table", "idk_gain",
           "answered_share", "declined_share", "answered_gap", "linear_fit",
           "fitted_gap_at", "fitted_gap_over_epochs", "NATURAL", "study_prompt",
           "evaluate_facts", "KnowledgeSplit", "split_for_study", "Variant", "mixture",
           "mixture_variants", "known_only_variants", "idk_variant",
           "single_category_variants", "mixture_size", "StudyConfig", "VariantRun",
           "run_variant", "run_study", "summary_table", "LinearFit", "fit_linear",
           "linear_points", "summary_row"]

# Sizes of chapter 3 (book/03_finetuning_new_knowledge.ipynb). syn_* = synthetic track,
# real_* = SmolLM2 on real facts; real_exemplar_sets = SliCK exemplar sets there, equal to
# the slick section's exemplar_sets in every profile so that chapter 2's cached categories
# are reused (an uncached run costs about the same with 10 or 20: each set's text runs
# once per relation). syn_size and real_size are the most examples per mixture and
# syn_single_size the size of a single-category set: the notebook caps the first by what
# the train pool holds (fk.mixture_size) and builds a single-category set only where the
# pool holds syn_single_size facts (MaybeKnown holds a handful in the ci split, and how
# many depends on the seed and the machine). ci: 24 test facts per category and four
# study seeds, so that the EARLY_STOP-vs-CONVERGENCE claims' 95% intervals (pooled over
# seeds and facts) exclude 0 on every run seed 0-4 (with two study seeds,
# run seed 3 missed two of them by about one point).
register_sizes(
    "finetune_knowledge",
    ci=dict(syn_facts=472, syn_test_per_category=24, syn_dev=40, syn_size=64,
            syn_single_size=12, syn_epochs=30, syn_lr=1e-4, syn_seeds=[0, 1, 2, 3],
            real_exemplar_sets=20, real_test_per_category=3, real_dev=4, real_size=6,
            real_epochs=8, real_lr=3e-4, real_trainable="top:2"),
    book=dict(syn_facts=1600, syn_test_per_category=32, syn_dev=100, syn_size=128,
              syn_single_size=24, syn_epochs=30, syn_lr=1e-4, syn_seeds=[0, 1],
              real_exemplar_sets=50, real_test_per_category=16, real_dev=24, real_size=32,
              real_epochs=10,
              real_lr=3e-4, real_trainable="top:2"),
    full=dict(syn_facts=3117, syn_test_per_category=60, syn_dev=200, syn_size=400,
              syn_single_size=50, syn_epochs=50, syn_lr=1e-4, syn_seeds=[0, 1, 2, 3, 4],
              real_exemplar_sets=200, real_test_per_category=30, real_dev=60, real_size=96,
              real_epochs=20,
              real_lr=3e-4, real_trainable="top:2"),
)


SHARES = (0, 25, 50, 75, 100)  # the % Unknown of the sweep D_0 ... D_100

# --------------------------------------------------------------------------- claims

CONV_FALLS = Claim(
    "ch03.conv_known_falls",
    "At CONVERGENCE, accuracy on the Known test facts falls as the share of Unknown examples "
    "in D grows: least-squares slope over D_0 ... D_100 (points per 100% Unknown), upper end "
    "of its 95% interval below 0",
    "<", 0.0, unit="points", on="high")
DROP_GROWS = Claim(
    "ch03.es_conv_drop_grows",
    "The price of training to CONVERGENCE instead of stopping early grows with the share of "
    "Unknown examples: slope of the EARLY_STOP minus CONVERGENCE accuracy (Known test facts) "
    "over D_0 ... D_100, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
UNKNOWN_FITTED_SLOWER_AT_ES = Claim(
    "ch03.unknown_fitted_slower_at_es",
    "At EARLY_STOP the model has fitted more of D_50's Known examples than of its Unknown "
    "ones: share fitted, Known minus Unknown, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
UNKNOWN_FITTED_SLOWER_OVER_EPOCHS = Claim(
    "ch03.unknown_fitted_slower_over_epochs",
    "Unknown examples are fitted more slowly: share of the epochs at which an example of "
    "D_50 is fitted, Known minus Unknown, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
UNKNOWNS_HURT_AT_CONV = Claim(
    "ch03.unknowns_hurt_at_conv",
    "At CONVERGENCE the Unknown examples hurt: acc(D) - acc(D_Known) on the Known test facts, "
    "mean over 25/50/75% Unknown, upper end of its 95% interval below 0",
    "<", 0.0, unit="points", on="high")
UNKNOWNS_HURT_LESS_AT_ES = Claim(
    "ch03.unknowns_hurt_less_at_es",
    "At EARLY_STOP the Unknown examples hurt less than at CONVERGENCE: acc(D) - acc(D_Known) "
    "at EARLY_STOP minus the same at CONVERGENCE (Known test facts, mean over 25/50/75%), "
    "lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
B_UNK_NEGATIVE = Claim(
    "ch03.b_unk_negative",
    "In the linear model of Known test accuracy, fitted Unknown examples lower accuracy: "
    "b_unk, upper end of its 95% interval below 0",
    "<", 0.0, unit="points", on="high")
B_UNK_BELOW_B_KN = Claim(
    "ch03.b_unk_below_b_kn",
    "A fitted Unknown example costs more accuracy than a fitted Known one: b_unk - b_kn, "
    "upper end of its 95% interval below 0",
    "<", 0.0, unit="points", on="high")
B_UNK_BEYOND_PAPER = Claim(
    "ch03.b_unk_beyond_paper",
    "On the Known test facts a fitted Unknown example costs our small backbone more than "
    "it costs PaLM 2-M: b_unk, upper end of its 95% interval below the paper's -8.3",
    "<", -8.3, unit="points", on="high")
LINEAR_R2 = Claim(
    "ch03.linear_r2",
    "The fitted Known and Unknown shares explain most of the variation of Known test "
    "accuracy over this run's (variant, epoch) points: R^2 of the fit above 0.5 (a "
    "property of these points; its bootstrap interval is printed beside it)",
    ">", 0.5)
D_UNKNOWN_BELOW_HIGHLY_KNOWN = Claim(
    "ch03.d_unknown_below_highly_known",
    "Trained to CONVERGENCE, D_Unknown ends below D_HighlyKnown on the Known test facts: "
    "D_HighlyKnown minus D_Unknown, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
D_UNKNOWN_CONV_COSTS = Claim(
    "ch03.d_unknown_conv_costs",
    "Training D_Unknown to CONVERGENCE costs accuracy on the Known test facts: EARLY_STOP "
    "minus CONVERGENCE, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
IDK_ABSTAINS = Claim(
    "ch03.idk_abstains",
    "The model fine-tuned on D_IDK_50 declines some test questions at CONVERGENCE: share "
    "answered \"I don't know\" (every test fact and study seed), lower end of its 95% "
    "interval above 0",
    ">", 0.0, unit="%", on="low")
IDK_ANSWERS = Claim(
    "ch03.idk_answers",
    "... and still answers others: share of the test questions answered (every test fact "
    "and study seed), lower end of its 95% interval above 0",
    ">", 0.0, unit="%", on="low")

# --------------------------------------------------------------------------- test facts

Runs = Mapping[int, Mapping[str, "VariantRun"]]  # study seed -> variant name -> run
Item = tuple[str, str]  # (variant name, "ES" or "CONV")


def epoch_of(run: VariantRun, tag: str) -> int:
    """The EARLY_STOP (``tag="ES"``) or CONVERGENCE (``"CONV"``) epoch of ``run``."""
    if tag == "ES":
        return run.early_stop
    if tag == "CONV":
        return run.convergence
    raise ValueError(f"tag must be 'ES' or 'CONV', got {tag!r}")


def fact_weights(split: KnowledgeSplit, group: str = "Known") -> np.ndarray:
    """Per test fact, its weight in the accuracy of ``group`` ("Known", "all" or a category).

    A fact of category c weighs ``shares[c] / (test facts of c)`` (0 outside the
    group), so the weighted mean of correctness over the test facts is
    :meth:`VariantRun.test_accuracy`'s accuracy.
    """
    members = {"Known": KNOWN, "all": CATEGORIES}.get(group, (group,))
    if not set(members) <= set(CATEGORIES):
        raise ValueError(f"group must be 'Known', 'all' or one of {list(CATEGORIES)}, "
                         f"got {group!r}")
    cats = list(split.test_cats)
    n = {c: cats.count(c) for c in CATEGORIES}
    return np.array([split.shares.get(c, 0.0) / n[c] if c in members else 0.0 for c in cats])


def _runs_of(runs: Runs, name: str) -> list[VariantRun]:
    out = []
    for s, by_name in runs.items():
        if name not in by_name:
            raise KeyError(f"study seed {s} has no run of {name!r}; runs: {sorted(by_name)}")
        out.append(by_name[name])
    if not out:
        raise ValueError("runs is empty: expected {study seed: {variant name: VariantRun}}")
    return out


def fact_columns(runs: Runs, items: Sequence[Item], what: str = "correct") -> np.ndarray:
    """(test facts, items): per test fact, the mean over study seeds of whether it was
    answered right (``what="correct"``) or answered at all (``"answered"``: not IDK) by
    each (variant, tag) of ``items``."""
    if what not in ("correct", "answered"):
        raise ValueError(f"what must be 'correct' or 'answered', got {what!r}")
    cols = []
    for name, tag in items:
        per_seed = []
        for r in _runs_of(runs, name):
            k = r.test_epochs.index(epoch_of(r, tag))
            x = np.asarray(r.test_correct[k] if what == "correct" else
                           ~np.asarray(r.test_abstained[k], dtype=bool), dtype=float)
            per_seed.append(x)
        cols.append(np.mean(per_seed, axis=0))
    return np.stack(cols, axis=1)


def weighted_interval(X: np.ndarray, weights: np.ndarray, strata: Sequence[str],
                      statistic: Callable[[np.ndarray], np.ndarray], *, n_boot: int = 2000,
                      seed: int = 0, confidence: float = 0.95) -> Interval:
    """A statistic of weighted means over facts, with a stratified bootstrap interval.

    ``X`` (facts, k) holds per-fact values, ``weights`` each fact's weight (facts of
    weight 0 are left out) and ``strata`` each fact's stratum (its SliCK category:
    facts are resampled within it, as the test set was drawn). ``statistic`` maps
    the (draws, k) array of weighted means, in %, to one number per draw.
    """
    X, w = np.asarray(X, dtype=float), np.asarray(weights, dtype=float)
    if X.ndim != 2 or len(X) != len(w) or len(w) != len(strata):
        raise ValueError(f"X must be (facts, k) with one weight and stratum per fact; got "
                         f"{X.shape}, {len(w)} weights, {len(strata)} strata")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot!r}")
    keep = w > 0
    if not keep.any():
        raise ValueError("no fact has a positive weight")
    X, w, strata = X[keep], w[keep], np.asarray(list(strata), dtype=object)[keep]
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(w)))  # (draws, facts): times each fact is drawn
    rows = np.arange(n_boot)[:, None]
    for s in dict.fromkeys(strata):
        idx = np.flatnonzero(strata == s)
        np.add.at(counts, (rows, idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]), 1)
    cw = counts * w  # (draws, facts)
    means = 100 * (cw @ X) / cw.sum(axis=1, keepdims=True)  # (draws, k)
    est = float(np.asarray(statistic(100 * (w @ X)[None] / w.sum())).reshape(-1)[0])
    stats = np.asarray(statistic(means), dtype=float).reshape(-1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return Interval(est, float(lo), float(hi), confidence)


def contrast(runs: Runs, split: KnowledgeSplit, terms: Sequence[tuple[float, str, str]],
             group: str = "Known", *, n_boot: int = 2000, seed: int = 0) -> Interval:
    """``sum(coef * accuracy(variant, tag))`` for ``terms = [(coef, variant, tag), ...]``,
    accuracies (%) on the test facts of ``group``, pooled over the study seeds, with a
    95% bootstrap interval over the test facts."""
    if not terms:
        raise ValueError("terms must hold at least one (coef, variant, tag)")
    coef = np.array([float(c) for c, _, _ in terms])
    X = fact_columns(runs, [(n, t) for _, n, t in terms])
    return weighted_interval(X, fact_weights(split, group), split.test_cats,
                             lambda m: m @ coef, n_boot=n_boot, seed=seed)


def slope_terms(names: Sequence[str], xs: Sequence[float], tag: str | Sequence[tuple[float, str]]
                ) -> list[tuple[float, str, str]]:
    """Terms of :func:`contrast` whose value is the least-squares slope of accuracy
    against ``xs`` (one x per variant in ``names``). ``tag``: "ES", "CONV", or a list of
    (coef, tag) combined per variant, e.g. ``[(1, "ES"), (-1, "CONV")]`` for the slope
    of the EARLY_STOP minus CONVERGENCE drop."""
    x = np.asarray(xs, dtype=float)
    if len(x) != len(names) or len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("slope_terms needs one x per variant and at least two distinct xs")
    c = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    tags = [(1.0, tag)] if isinstance(tag, str) else list(tag)
    return [(ci * k, n, t) for ci, n in zip(c, names) for k, t in tags]


def filter_terms(tag: str, shares: Sequence[int] = (25, 50, 75), sign: float = 1.0
                 ) -> list[tuple[float, str, str]]:
    """Terms of :func:`contrast` for ``acc(D_x) - acc(D_Known_x)`` at ``tag``, averaged over
    ``shares`` (times ``sign``): what keeping the Unknown examples changes."""
    if not shares:
        raise ValueError("shares must name at least one % Unknown")
    w = sign / len(shares)
    return ([(w, f"D_{x}", tag) for x in shares]
            + [(-w, f"D_Known_{x}", tag) for x in shares])


def accuracy(runs: Runs, split: KnowledgeSplit, name: str, tag: str, group: str = "Known",
             **kw) -> Interval:
    """The accuracy (%) of one (variant, tag) on ``group``, pooled over the study seeds."""
    return contrast(runs, split, [(1.0, name, tag)], group, **kw)


def accuracy_table(runs: Runs, split: KnowledgeSplit, names: Sequence[str],
                   group: str = "Known"):
    """A DataFrame: accuracy (%) at EARLY_STOP and CONVERGENCE per variant, pooled over the
    study seeds, with the ends of its 95% interval."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = {}
    for n in names:
        row = {}
        for tag in ("ES", "CONV"):
            iv = accuracy(runs, split, n, tag, group)
            row.update({f"{tag}": iv.estimate, f"{tag} low": iv.low, f"{tag} high": iv.high})
        rows[n] = row
    return pd.DataFrame(rows).T


def idk_gain(runs: Runs, split: KnowledgeSplit, idk: str = "D_IDK_50", base: str = "D_50",
             tag: str = "CONV", group: str = "Known", **kw) -> Interval:
    """Accuracy (%) of ``idk`` on the ``group`` test questions it answers minus the accuracy
    of ``base`` (which answers all), pooled over the study seeds, with its interval."""
    X = np.concatenate([fact_columns(runs, [(idk, tag)]),
                        fact_columns(runs, [(idk, tag)], what="answered"),
                        fact_columns(runs, [(base, tag)])], axis=1)

    def stat(m):
        return 100 * m[:, 0] / np.maximum(m[:, 1], 1e-12) - m[:, 2]

    return weighted_interval(X, fact_weights(split, group), split.test_cats, stat, **kw)


def answered_share(runs: Runs, name: str = "D_IDK_50", tag: str = "CONV") -> Interval:
    """Share (%) of the test questions ``name`` answers (not IDK) at ``tag``, over every
    test fact and study seed, with its Wilson interval."""
    k = n = 0
    for r in _runs_of(runs, name):
        ab = np.asarray(r.test_abstained[r.test_epochs.index(epoch_of(r, tag))], dtype=bool)
        k, n = k + int((~ab).sum()), n + len(ab)
    return wilson_interval(k, n).scaled(100)


def declined_share(runs: Runs, name: str = "D_IDK_50", tag: str = "CONV") -> Interval:
    """Share (%) of the test questions ``name`` answers "I don't know": 100 minus
    :func:`answered_share`, with the same interval."""
    a = answered_share(runs, name, tag)
    return Interval(100 - a.estimate, 100 - a.high, 100 - a.low, a.confidence)


def answered_gap(runs: Runs, split: KnowledgeSplit, name: str = "D_IDK_50",
                 tag: str = "CONV") -> Interval:
    """Share (%) of the Known test questions ``name`` answers minus the share of the
    Unknown ones (every study seed), with Newcombe's interval. Above 0: it declines the
    questions it does not know more often than the ones it knows."""
    unk = np.array([c == "Unknown" for c in split.test_cats])
    k = {True: 0, False: 0}
    n = {True: 0, False: 0}
    for r in _runs_of(runs, name):
        ans = ~np.asarray(r.test_abstained[r.test_epochs.index(epoch_of(r, tag))], dtype=bool)
        for u in (True, False):
            k[u] += int(ans[unk == u].sum())
            n[u] += int((unk == u).sum())
    if not n[True] or not n[False]:
        raise ValueError("the test set must hold both Known and Unknown facts")
    return newcombe_difference(k[False], n[False], k[True], n[True]).scaled(100)


# --------------------------------------------------------------------------- linear model

def linear_fit(runs: Runs, variants: Mapping[int, Mapping[str, Variant]], split: KnowledgeSplit,
               group: str = "Known", *, n_boot: int = 2000, seed: int = 0
               ) -> tuple[LinearFit, dict[str, Interval]]:
    """The paper's linear model over every (study seed, variant, tested epoch) point.

    Same points as :func:`linear_points` (IDK variants
    left out), pooled over the study seeds. Returns the fit and 95% bootstrap
    intervals over the test facts of ``"b0"``, ``"b_kn"``, ``"b_unk"``,
    ``"b_unk - b_kn"`` and ``"r2"``.
    """
    cols, kn, un = [], [], []
    for s, by_name in runs.items():
        for name, run in by_name.items():
            v = variants[s][name]
            if v.family == "idk":
                continue
            unk = np.array([c == "Unknown" for c in v.categories])
            for k, e in enumerate(run.test_epochs):
                fit = np.array(run.train_fitted[run.epochs.index(e)], dtype=bool)
                cols.append(np.asarray(run.test_correct[k], dtype=float))
                kn.append(float((fit & ~unk).sum()) / len(fit))
                un.append(float((fit & unk).sum()) / len(fit))
    if len(cols) < 4:
        raise ValueError(f"linear_fit needs at least 4 (variant, epoch) points, got {len(cols)}")
    X = np.stack(cols, axis=1)  # (test facts, points)
    w = fact_weights(split, group)
    D = np.stack([np.ones(len(kn)), kn, un], axis=1)  # (points, 3)
    pinv = np.linalg.pinv(D)  # (3, points)

    def coefs(m):  # (draws, points) accuracies -> (draws, 3)
        return m @ pinv.T

    def r2(m):
        resid = m - coefs(m) @ D.T
        tot = ((m - m.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        return 1 - (resid ** 2).sum(axis=1) / np.maximum(tot, 1e-12)

    stats = {"b0": lambda m: coefs(m)[:, 0], "b_kn": lambda m: coefs(m)[:, 1],
             "b_unk": lambda m: coefs(m)[:, 2],
             "b_unk - b_kn": lambda m: coefs(m)[:, 2] - coefs(m)[:, 1], "r2": r2}
    ivs = {k: weighted_interval(X, w, split.test_cats, f, n_boot=n_boot, seed=seed)
           for k, f in stats.items()}
    acc = 100 * (w @ X) / w.sum()
    return fit_linear(acc, kn, un), ivs


# --------------------------------------------------------------------------- training examples

def _fitted(runs: Runs, variants: Mapping[int, Mapping[str, Variant]], name: str,
            at: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per training example of ``name`` (every study seed): fitted at ``at`` ("ES"/"CONV"),
    or with ``at=None`` the share of the run's epochs at which it is fitted; and whether
    it is Unknown."""
    vals, unk = [], []
    for s, r in zip(runs, _runs_of(runs, name)):
        v = variants[s][name]
        F = np.array(r.train_fitted, dtype=float)  # (epochs, examples)
        vals.append(F.mean(axis=0) if at is None else F[r.epochs.index(epoch_of(r, at))])
        unk.append(np.array([c == "Unknown" for c in v.categories]))
    return np.concatenate(vals), np.concatenate(unk)


def fitted_gap_at(runs: Runs, variants: Mapping[int, Mapping[str, Variant]],
                  name: str = "D_50", at: str = "ES") -> Interval:
    """Share (%) of ``name``'s Known examples fitted at ``at`` minus the share of its
    Unknown ones, over the examples of every study seed, with Newcombe's interval."""
    fit, unk = _fitted(runs, variants, name, at)
    fit = fit.astype(bool)
    if unk.all() or not unk.any():
        raise ValueError(f"{name} must hold both Known and Unknown examples")
    return newcombe_difference(int(fit[~unk].sum()), int((~unk).sum()),
                               int(fit[unk].sum()), int(unk.sum())).scaled(100)


def fitted_gap_over_epochs(runs: Runs, variants: Mapping[int, Mapping[str, Variant]],
                           name: str = "D_50", *, n_boot: int = 2000, seed: int = 0
                           ) -> Interval:
    """Mean share (%) of the epochs at which a Known example of ``name`` is fitted minus
    the same for its Unknown examples (epochs 0 to CONVERGENCE of its run), with a
    bootstrap interval over the examples (resampled within Known and Unknown)."""
    vals, unk = _fitted(runs, variants, name, None)
    if unk.all() or not unk.any():
        raise ValueError(f"{name} must hold both Known and Unknown examples")
    X = np.stack([vals * ~unk, ~unk, vals * unk, unk], axis=1).astype(float)
    strata = np.where(unk, "Unknown", "Known")

    def stat(m):
        return 100 * (m[:, 0] / m[:, 1] - m[:, 2] / m[:, 3])

    return weighted_interval(X, np.ones(len(vals)), strata, stat, n_boot=n_boot, seed=seed)


# =============================================================================
# The chapter's studies
# =============================================================================


NATURAL = "Natural"  # name of the single-category set drawn with the natural category mix


STUDY_VERSION = 1  # bump when run_variant changes what a config produces (cache keys)


# --------------------------------------------------------------------------- categories


# --------------------------------------------------------------------------- early stopping


# --------------------------------------------------------------------------- evaluation

def study_prompt(fact: Fact) -> str:
    """The zero-shot prompt of the study: ``"Q: <question>\\nA:"``."""
    return qa_prompt(fact.question)


def evaluate_facts(model, tokenizer, facts: Sequence[Fact], *, targets: Sequence[str] | None
                   = None, idk: str | None = None, batch_size: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exact match on ``facts`` with :func:`study_prompt` prompts.

    Returns ``(correct, abstained)``, boolean arrays: ``correct[i]`` when the
    greedy answer is an accepted answer of fact i (or ``targets[i]``, if given:
    used to check that *training* examples are fitted, e.g. to an "I don't
    know" label); ``abstained[i]`` when it is ``idk`` (all False if idk is None).
    """
    facts = fact_list(facts)
    if targets is not None and len(targets) != len(facts):
        raise ValueError(f"targets must have one entry per fact: {len(targets)} != {len(facts)}")
    cands = []
    for n, f in enumerate(facts):
        c = [targets[n]] if targets is not None else list(f.aliases)
        cands.append(c + ([idk] if idk is not None and idk not in c else []))
    match = greedy_match(model, tokenizer, [study_prompt(f) for f in facts], cands,
                         batch_size=batch_size)
    correct = np.zeros(len(facts), dtype=bool)
    abstained = np.zeros(len(facts), dtype=bool)
    for n, (m, c) in enumerate(zip(match, cands)):
        if m < 0:
            continue
        said = c[m]
        abstained[n] = idk is not None and said == idk
        ok = [targets[n]] if targets is not None else list(facts[n].aliases)
        correct[n] = said in ok
    return correct, abstained


# --------------------------------------------------------------------------- data

@dataclass
class KnowledgeSplit:
    """Facts of one track split for the study, each with its SliCK category."""

    train: list[Fact]  # the pool fine-tuning sets are drawn from
    train_cats: list[str]  # category of each train fact
    dev: list[Fact]  # natural mix, for EARLY_STOP
    dev_cats: list[str]  # category of each dev fact
    test: list[Fact]  # the same number of facts per category
    test_cats: list[str]  # category of each test fact
    shares: dict[str, float]  # natural share of each category (weights of "all" accuracy)

    def pool(self, category: str) -> list[int]:
        """Indices of the train facts of ``category`` ("Known" = not Unknown)."""
        if category == "Known":
            return [i for i, c in enumerate(self.train_cats) if c != "Unknown"]
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {list(CATEGORIES)} or 'Known', "
                             f"got {category!r}")
        return [i for i, c in enumerate(self.train_cats) if c == category]

    def counts(self):
        """A table: facts per category in train, dev and test."""
        import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

        return pd.DataFrame({name: pd.Series(cats).value_counts().reindex(list(CATEGORIES))
                             .fillna(0).astype(int)
                             for name, cats in (("train pool", self.train_cats),
                                                ("dev", self.dev_cats),
                                                ("test", self.test_cats))})


def split_for_study(facts: Sequence[Fact], categories, *, n_test_per_category: int,
                    n_dev: int, seed: int = 0) -> KnowledgeSplit:
    """Split categorized facts into a stratified test set, a natural dev set and a train pool.

    The test set has ``n_test_per_category`` facts of each category (at most
    half of a category's facts, so training keeps the rest); the dev set is
    ``n_dev`` random facts of what is left; the train pool is the remainder.
    """
    facts = fact_list(facts)
    cats = category_list(facts, categories)
    for name, v in (("n_test_per_category", n_test_per_category), ("n_dev", n_dev)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for c in CATEGORIES:
        idx = [i for i, x in enumerate(cats) if x == c]
        k = min(n_test_per_category, len(idx) // 2)
        test_idx += sorted(rng.choice(idx, size=k, replace=False).tolist()) if k else []
    taken = set(test_idx)
    rest = [i for i in range(len(facts)) if i not in taken]
    if n_dev >= len(rest):
        raise FactError(f"n_dev={n_dev} leaves no training facts ({len(rest)} after the test set)")
    dev_idx = sorted(rng.choice(rest, size=n_dev, replace=False).tolist())
    taken |= set(dev_idx)
    train_idx = [i for i in rest if i not in taken]
    shares = {c: cats.count(c) / len(cats) for c in CATEGORIES}
    pick = lambda idx: ([facts[i] for i in idx], [cats[i] for i in idx])  # noqa: E731
    (tr, trc), (dv, dvc), (te, tec) = pick(train_idx), pick(dev_idx), pick(test_idx)
    return KnowledgeSplit(tr, trc, dv, dvc, te, tec, shares)


@dataclass
class Variant:
    """One fine-tuning set of the study."""

    name: str  # e.g. "D_50", "D_Known_50", "D_IDK_50", "D_MaybeKnown"
    facts: list[Fact]  # the training facts
    targets: list[str]  # the answer each is trained on (its object, or IDK)
    categories: list[str]  # SliCK category of each
    family: str  # "mixture", "known_only", "idk" or "single"
    unknown_share: float | None = None  # X of D_X (None for single-category sets)

    @property
    def n_unknown(self) -> int:
        """Number of Unknown examples."""
        return sum(c == "Unknown" for c in self.categories)


def _order(n: int, seed: int, salt: str) -> list[int]:
    return np.random.default_rng(stable_int("finetune_knowledge", seed, salt)).permutation(n) \
        .tolist()


def mixture(split: KnowledgeSplit, size: int, unknown_share: float, *, seed: int = 0,
            name: str | None = None) -> Variant:
    """D with ``round(size * unknown_share)`` Unknown facts, the rest Known.

    Draws are nested: for one seed, D at a larger share keeps the Unknowns of
    D at a smaller one and the first Known facts of every D are the same, so
    the sets differ only in the share.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not 0.0 <= unknown_share <= 1.0:
        raise ValueError(f"unknown_share must be in [0, 1], got {unknown_share!r}")
    n_unk = int(round(size * unknown_share))
    unk, kn = split.pool("Unknown"), split.pool("Known")
    if n_unk > len(unk) or size - n_unk > len(kn):
        raise FactError(f"size={size} at {unknown_share:.0%} Unknown needs {n_unk} Unknown and "
                        f"{size - n_unk} Known train facts; the pool has {len(unk)} and {len(kn)}")
    idx = ([kn[i] for i in _order(len(kn), seed, "known")[:size - n_unk]]
           + [unk[i] for i in _order(len(unk), seed, "unknown")[:n_unk]])
    facts = [split.train[i] for i in idx]
    return Variant(name or f"D_{round(100 * unknown_share)}", facts, [f.object for f in facts],
                   [split.train_cats[i] for i in idx], "mixture", unknown_share)


def mixture_size(split: KnowledgeSplit, most: int) -> int:
    """The largest |D| up to ``most`` for which every share of the sweep fits the train pool.

    D_0 needs ``size`` Known train facts and D_100 ``size`` Unknown ones; how many
    the split holds depends on the model and the seed, so a study that must run on
    any seed sizes its sets with this (and prints the size it got).
    """
    if not isinstance(most, int) or isinstance(most, bool) or most < 1:
        raise ValueError(f"most must be an int >= 1, got {most!r}")
    size = min(most, len(split.pool("Known")), len(split.pool("Unknown")))
    if size < 1:
        raise FactError("the train pool has no Known or no Unknown fact: no mixture to build")
    return size


def mixture_variants(split: KnowledgeSplit, size: int, shares: Sequence[float] = (0, .25, .5, .75, 1),
                     *, seed: int = 0) -> list[Variant]:
    """The X% Unknown sweep: one :func:`mixture` per share."""
    return [mixture(split, size, s, seed=seed) for s in shares]


def known_only_variants(mixtures: Sequence[Variant]) -> list[Variant]:
    """D_Known for each mixture with both kinds: the same set with its Unknowns removed."""
    out = []
    for v in mixtures:
        keep = [i for i, c in enumerate(v.categories) if c != "Unknown"]
        if 0 < len(keep) < len(v.facts):
            out.append(Variant(v.name.replace("D_", "D_Known_"), [v.facts[i] for i in keep],
                               [v.targets[i] for i in keep], [v.categories[i] for i in keep],
                               "known_only", v.unknown_share))
    return out


def idk_variant(v: Variant, idk: str = IDK) -> Variant:
    """D_IDK: ``v`` with every Unknown example's answer replaced by ``idk``."""
    targets = [idk if c == "Unknown" else t for t, c in zip(v.targets, v.categories)]
    return Variant(v.name.replace("D_", "D_IDK_"), list(v.facts), targets, list(v.categories),
                   "idk", v.unknown_share)


def single_category_variants(split: KnowledgeSplit, size: int, *, seed: int = 0,
                             skip_short: bool = False) -> list[Variant]:
    """D_HighlyKnown, D_MaybeKnown, D_WeaklyKnown, D_Unknown and D_Natural, each of ``size``.

    A category whose train pool holds fewer than ``size`` facts raises
    :class:`~lamini_lite.facts.FactError`, or with ``skip_short`` is left out (its
    set would be smaller than the others, so not comparable): a small split can
    hold only a handful of MaybeKnown facts, and how many depends on the seed.
    D_Natural (drawn from the whole pool) is never left out.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    out = []
    for c in (*CATEGORIES, NATURAL):
        pool = list(range(len(split.train))) if c == NATURAL else split.pool(c)
        if len(pool) < size:
            if skip_short and c != NATURAL:
                continue
            raise FactError(f"D_{c} needs {size} train facts; the pool has {len(pool)} "
                            "(lower the single-category size, or pass skip_short=True)")
        idx = [pool[i] for i in _order(len(pool), seed, f"single-{c}")[:size]]
        facts = [split.train[i] for i in idx]
        out.append(Variant(f"D_{c}", facts, [f.object for f in facts],
                           [split.train_cats[i] for i in idx], "single"))
    return out


# --------------------------------------------------------------------------- one run

@dataclass(frozen=True)
class StudyConfig:
    """How each variant is fine-tuned and tracked."""

    epochs: int = 40  # most epochs; a run stops earlier once converged
    lr: float = 1e-3  # learning rate (AdamW, constant)
    batch_size: int = 16  # examples per step
    trainable: str = "all"  # what learns (see lamini_lite.training.qa.select_trainable)
    converged_at: float = 1.0  # CONVERGENCE: share of training examples fitted
    test_every_epoch: bool = True  # False: test only at EARLY_STOP and CONVERGENCE
    #   (the trainable weights of every epoch are kept in memory meanwhile)
    eval_batch_size: int = 64  # rows per forward pass when evaluating


@dataclass
class VariantRun:
    """What fine-tuning one variant did, epoch by epoch (epoch 0 = before)."""

    name: str  # the variant's name
    epochs: list[int]  # evaluated epochs, 0..E
    dev_acc: list[float]  # dev accuracy per epoch (share)
    train_fitted: list[list[bool]]  # per epoch, whether each training example is fitted
    test_epochs: list[int]  # epochs at which the test set was evaluated
    test_correct: list[list[bool]]  # per test epoch, whether each test fact is answered right
    test_abstained: list[list[bool]]  # per test epoch, whether the model said IDK
    early_stop: int  # EARLY_STOP: the epoch >= 1 with the best dev accuracy (first if tied)
    convergence: int  # CONVERGENCE: the first epoch with >= converged_at fitted (or the last)
    seconds: float  # wall time of the run when it was computed

    def fitted_share(self, categories: Sequence[str], category: str, epoch: int) -> float:
        """Share of the training examples of ``category`` fitted at ``epoch`` (nan if none)."""
        row = self.train_fitted[self.epochs.index(epoch)]
        sel = [f for f, c in zip(row, categories)
               if (c != "Unknown" if category == "Known" else c == category)]
        return float(np.mean(sel)) if sel else float("nan")

    def test_accuracy(self, test_cats: Sequence[str], shares: Mapping[str, float], epoch: int,
                      *, answered_only: bool = False) -> dict[str, float]:
        """Test accuracy (%) at ``epoch``: per category and "all" (weighted by ``shares``).

        Also ``"Known"``: the same weighted accuracy over the Known categories
        only (HighlyKnown, MaybeKnown, WeaklyKnown), i.e. on the test facts the
        model knew before fine-tuning.

        With ``answered_only`` the accuracy counts only questions not answered
        IDK; the result then also has ``"answered"``, the weighted share (%)
        of questions answered, and ``"answered Known"`` / ``"answered Unknown"``,
        the share (%) answered among the Known / the Unknown test facts.
        """
        if epoch not in self.test_epochs:
            raise ValueError(f"the test set was evaluated at epochs {self.test_epochs}, not {epoch}")
        k = self.test_epochs.index(epoch)
        ok = np.array(self.test_correct[k])
        ans = ~np.array(self.test_abstained[k])
        cats = np.array(test_cats)
        out: dict[str, float] = {}
        # weighted sums (share, share * accuracy, share * answered) over all / Known categories
        tot = {"all": np.zeros(3), "Known": np.zeros(3)}
        for c in CATEGORIES:
            m = cats == c
            if not m.any():
                continue
            acc_c, ans_c = ok[m].mean(), ans[m].mean()
            out[c] = 100 * (ok[m].sum() / max(ans[m].sum(), 1) if answered_only else acc_c)
            w = shares.get(c, 0.0)
            for key in ("all", "Known") if c in KNOWN else ("all",):
                tot[key] += (w, w * acc_c, w * ans_c)
        for key, (wsum, w_ok, w_ans) in tot.items():
            out[key] = 100 * w_ok / max(w_ans if answered_only else wsum, 1e-12)
        if answered_only:
            out["answered"] = 100 * tot["all"][2] / max(tot["all"][0], 1e-12)
            out["answered Known"] = 100 * tot["Known"][2] / max(tot["Known"][0], 1e-12)
            unk = cats == "Unknown"
            out["answered Unknown"] = 100 * float(ans[unk].mean()) if unk.any() else float("nan")
        return out


def _test_record(m, tokenizer, split: KnowledgeSplit, config: StudyConfig,
                 idk: str | None) -> tuple[list[bool], list[bool]]:
    """Per test fact: whether ``m`` answers it right, and whether it says ``idk``."""
    ok, ab = evaluate_facts(m, tokenizer, split.test, idk=idk, batch_size=config.eval_batch_size)
    return ok.tolist(), ab.tolist()


def _trainable_snapshot(m) -> dict[str, torch.Tensor]:
    """A detached copy of ``m``'s trainable parameters, by name."""
    return {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def _restore(m, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Copy a :func:`_trainable_snapshot` back into ``m``'s parameters."""
    params = dict(m.named_parameters())
    with torch.no_grad():
        for n, t in snapshot.items():
            params[n].copy_(t)


def _variant_eval_fn(tokenizer, variant: Variant, split: KnowledgeSplit, config: StudyConfig,
                     idk: str | None, rec: dict[str, list], snaps: dict, tests: dict):
    """The ``eval_fn`` of one run: fills ``rec`` and ``tests`` (or ``snaps``) per epoch."""

    def eval_fn(mm, epoch):
        """Measure ``mm`` at ``epoch``; returns the share of training examples fitted."""
        dev_ok, _ = evaluate_facts(mm, tokenizer, split.dev, batch_size=config.eval_batch_size)
        fit, _ = evaluate_facts(mm, tokenizer, variant.facts, targets=variant.targets,
                                batch_size=config.eval_batch_size)
        rec["epochs"].append(epoch)
        rec["dev_acc"].append(float(dev_ok.mean()))
        rec["train_fitted"].append(fit.tolist())
        if config.test_every_epoch:
            tests[epoch] = _test_record(mm, tokenizer, split, config, idk)
        else:
            snaps[epoch] = _trainable_snapshot(mm)
        return float(fit.mean())
    return eval_fn


def _stop_epochs(rec: Mapping[str, list], converged_at: float) -> tuple[int, Any]:
    """EARLY_STOP and CONVERGENCE of a run's per-epoch record."""
    # EARLY_STOP: best dev accuracy among the fine-tuned epochs (not epoch 0)
    es = int(rec["epochs"][1 + int(np.argmax(rec["dev_acc"][1:]))])
    fitted = [float(np.mean(r)) for r in rec["train_fitted"]]
    conv = next((e for e, s in zip(rec["epochs"], fitted) if s >= converged_at),
                rec["epochs"][-1])
    return es, conv


def _track_variant(model, tokenizer, variant: Variant, split: KnowledgeSplit,
                   config: StudyConfig, *, seed: int, idk: str | None,
                   progress: bool) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` on ``variant``: the record :func:`run_variant` caches."""
    t0 = time.perf_counter()
    m = copy.deepcopy(model)
    rec: dict[str, Any] = {"epochs": [], "dev_acc": [], "train_fitted": []}
    snaps: dict[int, dict[str, torch.Tensor]] = {}
    tests: dict[int, tuple[list[bool], list[bool]]] = {}
    eval_fn = _variant_eval_fn(tokenizer, variant, split, config, idk, rec, snaps, tests)

    def converged(epoch, history):
        """``on_epoch_end``: stop once the share fitted reaches ``config.converged_at``."""
        return history.evals[-1] >= config.converged_at

    finetune_qa(m, tokenizer, [study_prompt(f) for f in variant.facts], variant.targets,
                epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                trainable=config.trainable, seed=seed, eval_fn=eval_fn, eval_at_start=True,
                on_epoch_end=converged, progress=progress, desc=variant.name)
    es, conv = _stop_epochs(rec, config.converged_at)
    if not config.test_every_epoch:
        for e in sorted({es, conv}):
            _restore(m, snaps[e])
            tests[e] = _test_record(m, tokenizer, split, config, idk)
    te = sorted(tests)
    return {**rec, "test_epochs": te, "test_correct": [tests[e][0] for e in te],
            "test_abstained": [tests[e][1] for e in te], "early_stop": es,
            "convergence": int(conv), "seconds": time.perf_counter() - t0}


def run_variant(model, tokenizer, variant: Variant, split: KnowledgeSplit,
                config: StudyConfig = StudyConfig(), *, seed: int = 0, cache: bool = True,
                model_fingerprint: str | None = None, progress: bool = True) -> VariantRun:
    """Fine-tune a copy of ``model`` on ``variant`` and track it every epoch (cached).

    ``model`` itself is not changed. Each epoch measures dev accuracy, which
    training examples are fitted (greedy answer = target) and, if
    ``config.test_every_epoch``, the test set (with abstentions when the
    variant has IDK targets). Training stops at CONVERGENCE (share fitted >=
    ``config.converged_at``) or after ``config.epochs``.
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"variant must be a Variant, got {type(variant).__name__}")
    if not variant.facts:
        raise ValueError(f"variant {variant.name!r} has no training facts")
    idk = IDK if any(t == IDK for t in variant.targets) else None

    def compute() -> dict[str, Any]:
        """The run's record (:func:`_track_variant`)."""
        return _track_variant(model, tokenizer, variant, split, config, seed=seed, idk=idk,
                              progress=progress)

    if cache:
        inputs = {"model": model_fingerprint or fingerprint(model),
                  "tokenizer": fingerprint(tokenizer.get_vocab()) if hasattr(
                      tokenizer, "get_vocab") else type(tokenizer).__name__,
                  "train": fingerprint([f.to_dict() for f in variant.facts]),
                  "targets": list(variant.targets),
                  "dev": fingerprint([f.to_dict() for f in split.dev]),
                  "test": fingerprint([f.to_dict() for f in split.test]),
                  "config": dataclasses.asdict(config), "seed": seed, "version": STUDY_VERSION}
        res = cached("finetune_knowledge", inputs, compute)
    else:
        res = compute()
    return VariantRun(name=variant.name, **{k: res[k] for k in (
        "epochs", "dev_acc", "train_fitted", "test_epochs", "test_correct", "test_abstained",
        "early_stop", "convergence", "seconds")})


def run_study(model, tokenizer, split: KnowledgeSplit, variants: Sequence[Variant],
              config: StudyConfig = StudyConfig(), *, seed: int = 0, cache: bool = True,
              model_fingerprint: str | None = None, progress: bool = True) -> list[VariantRun]:
    """:func:`run_variant` for every variant (one progress bar over variants)."""

    fp = model_fingerprint or (fingerprint(model) if cache else None)
    return [run_variant(model, tokenizer, v, split, config, seed=seed, cache=cache,
                        model_fingerprint=fp, progress=False)
            for v in tqdm(list(variants), desc="variants", disable=not progress)]


def summary_table(runs: Sequence[VariantRun], variants: Sequence[Variant],
                  split: KnowledgeSplit):
    """A DataFrame of :func:`summary_row` per variant, indexed by variant name."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    return pd.DataFrame([summary_row(r, v, split) for r, v in zip(runs, variants)]) \
        .set_index("variant")


# --------------------------------------------------------------------------- analysis

def summary_row(run: VariantRun, variant: Variant, split: KnowledgeSplit) -> dict[str, Any]:
    """One table row: |D|, Unknown share, EARLY_STOP/CONVERGENCE epochs and test accuracies (%)."""
    row: dict[str, Any] = {"variant": variant.name, "|D|": len(variant.facts),
                           "% Unknown": 100 * variant.n_unknown / len(variant.facts),
                           "ES epoch": run.early_stop, "CONV epoch": run.convergence}
    answered = variant.family == "idk"
    for tag, e in (("ES", run.early_stop), ("CONV", run.convergence)):
        acc = run.test_accuracy(split.test_cats, split.shares, e, answered_only=answered)
        for k, v in acc.items():
            row[f"{tag} {k}"] = v
    return row


@dataclass
class LinearFit:
    """Acc = b0 + b_kn * N_kn / |D| + b_unk * N_unk / |D| (accuracy in %)."""

    b0: float  # accuracy with nothing fitted (%)
    b_kn: float  # change in accuracy when all of D is fitted Known examples (points)
    b_unk: float  # change in accuracy when all of D is fitted Unknown examples (points)
    r2: float  # coefficient of determination of the fit
    n_points: int  # number of (variant, epoch) points


def fit_linear(acc: Sequence[float], known_fitted: Sequence[float],
               unknown_fitted: Sequence[float]) -> LinearFit:
    """Least-squares fit of test accuracy on the fitted Known and Unknown shares of |D|.

    ``known_fitted[i]`` = N_kn / |D| and ``unknown_fitted[i]`` = N_unk / |D| of
    point i (fractions), ``acc[i]`` its test accuracy (%).
    """
    y = np.asarray(acc, dtype=float)
    xk, xu = np.asarray(known_fitted, dtype=float), np.asarray(unknown_fitted, dtype=float)
    if not len(y) == len(xk) == len(xu):
        raise ValueError(f"acc, known_fitted and unknown_fitted must have the same length, got "
                         f"{len(y)}, {len(xk)}, {len(xu)}")
    if len(y) < 4:
        raise ValueError(f"fit_linear needs at least 4 points, got {len(y)}")
    X = np.stack([np.ones_like(y), xk, xu], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / tot if tot > 0 else float("nan")
    return LinearFit(float(coef[0]), float(coef[1]), float(coef[2]), r2, len(y))


def linear_points(runs: Sequence[VariantRun], variants: Sequence[Variant],
                  split: KnowledgeSplit, *, accuracy: str = "all"):
    """A DataFrame of (variant, epoch) points for :func:`fit_linear`: test accuracy (%),
    and the fitted Known and Unknown examples as shares of |D|. Runs tested every epoch
    contribute every epoch; IDK variants are left out (their Unknowns are not fitted to
    an answer). ``accuracy``: which entry of :meth:`VariantRun.test_accuracy` is the
    ``acc`` column ("all", "Known" or a category)."""
    if accuracy not in ("all", "Known", *CATEGORIES):
        raise ValueError(f"accuracy must be 'all', 'Known' or one of {list(CATEGORIES)}, "
                         f"got {accuracy!r}")
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for run, v in zip(runs, variants):
        if v.family == "idk":
            continue
        unk = np.array([c == "Unknown" for c in v.categories])
        for e in run.test_epochs:
            fit = np.array(run.train_fitted[run.epochs.index(e)])
            rows.append({"variant": v.name, "epoch": e,
                         "acc": run.test_accuracy(split.test_cats, split.shares, e)[accuracy],
                         "known_fitted": float((fit & ~unk).sum()) / len(fit),
                         "unknown_fitted": float((fit & unk).sum()) / len(fit)})
    return pd.DataFrame(rows)
