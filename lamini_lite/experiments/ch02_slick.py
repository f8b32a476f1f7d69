"""Chapter 2's claims: SliCK's knowledge categories, on real facts and on the synthetic world.

``book/02_slick_knowledge_categories.ipynb`` checks each claim below with
:func:`lamini_lite.claims.check`, on quantities computed by the functions of
this module, so that the chapter and ``python -m lamini_lite.bench
robustness`` measure the same things. The statistical claims are tested on an
end of a 95% interval: a Wilson interval for a share of facts, otherwise a
percentile bootstrap over facts (resampled within each group for a difference
between groups, and within each popularity tier or relation where the facts
were drawn evenly from them).

The thresholds hold in the ci profile (48 real facts, a 2-layer synthetic
backbone) on run seeds 0-4; ``python -m lamini_lite.bench robustness
--chapters 02`` prints the margins. The rank correlation and the AUC are tested
on their interval's lower end, so their bounds (0.2 and 0.6) sit below the
point values the chapter once asserted (0.3 and 0.7): the ci backbone of seed 0
reaches rho of about 0.37 on 400 facts.
"""

from __future__ import annotations

from itertools import combinations
from collections.abc import Callable, Sequence

import numpy as np

from ..claims import Claim
from ..slick import CATEGORIES, SliCKResult, categories_from_probs, chance_terms
from ..stats import Interval, bootstrap_interval, wilson_interval
from .common import load_backbone

__all__ = ["load_backbone", "EVERY_CATEGORY", "MAYBE_KNOWN_NOT_THIN",
           "CONTINENT_OVER_US_STATE", "POPULAR_BETTER_KNOWN", "UNKNOWN_LESS_EXPOSURE",
           "RANK_CORRELATION", "AUC", "CORRECTION_REMOVES", "CONTINENT_GUESSABLE",
           "HALVES_DISAGREE", "ORDER", "two_sample_difference", "mean_difference",
           "exposure_agreement", "agreement_intervals", "share_intervals", "flip_share",
           "chance_terms", "chance_interval", "removed_share", "categories_of",
           "split_disagreement", "split_half"]

# --------------------------------------------------------------------------- claims

EVERY_CATEGORY = Claim(
    "ch02.every_category_occurs",
    "All four SliCK categories occur among SmolLM2's real facts (the smallest is not empty)",
    ">=", 1, unit="facts")
MAYBE_KNOWN_NOT_THIN = Claim(
    "ch02.maybe_known_not_thin",
    "MaybeKnown is no thin category for SmolLM2's real facts: the lower end of its share's "
    "95% interval is above 10%",
    ">", 10.0, unit="%", on="low")
CONTINENT_OVER_US_STATE = Claim(
    "ch02.continent_over_us_state",
    "SmolLM2 knows the continents of countries better than the US states of US cities: "
    "mean P(T=0) continent minus US state, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
POPULAR_BETTER_KNOWN = Claim(
    "ch02.popular_better_known",
    "Facts about populous places are known more often: mean P(T=0) of the large tier "
    "minus the small tier, lower end of its 95% interval above 0",
    ">", 0.0, unit="points", on="low")
UNKNOWN_LESS_EXPOSURE = Claim(
    "ch02.unknown_less_exposure",
    "On the synthetic world, Unknown facts had less pretraining exposure than HighlyKnown "
    "ones: mean exposure HighlyKnown minus Unknown, lower end of its 95% interval above 0",
    ">", 0.0, unit="statements", on="low")
RANK_CORRELATION = Claim(
    "ch02.rank_correlation",
    "SliCK's ordering agrees with exposure: Spearman rho between category rank and exposure, "
    "lower end of its 95% interval above 0.2",
    ">", 0.2, on="low")
AUC = Claim(
    "ch02.auc",
    "A known (HighlyKnown or MaybeKnown) synthetic fact had more exposure than an Unknown one "
    "with a probability (AUC) whose 95% interval lies above 0.6",
    ">", 0.6, on="low")
CORRECTION_REMOVES = Claim(
    "ch02.correction_removes_many",
    "The binomial test against the chance rate removes many of the paper rule's "
    "WeaklyKnown facts as lucky guesses: the removed share's 95% interval lies above 25%",
    ">", 25.0, unit="%", on="low")
CONTINENT_GUESSABLE = Claim(
    "ch02.continent_easy_to_guess",
    "Continents (a handful of answers) are easy to guess: the chance rate of a sampled "
    "continent is above 5% (lower end of its 95% interval), so 160 guesses hit the right "
    "one with probability above 99.9%",
    ">", 5.0, unit="%", on="low")
HALVES_DISAGREE = Claim(
    "ch02.five_prompt_halves_disagree",
    "Five prompts leave many categories unsettled: two disjoint sets of 5 of a fact's 10 "
    "prompts give it different categories more than 5% of the time (mean over facts, "
    "lower end of its 95% interval)",
    ">", 5.0, unit="%", on="low")

ORDER = {"Unknown": 0, "WeaklyKnown": 1, "MaybeKnown": 2, "HighlyKnown": 3}  # SliCK rank


# --------------------------------------------------------------------------- statistics

def two_sample_difference(a: Sequence[float], b: Sequence[float],
                          statistic: Callable[[np.ndarray], float] = np.mean, *,
                          n_boot: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> Interval:
    """Bootstrap interval of ``statistic(a) - statistic(b)`` for two independent samples.

    Each sample is resampled with replacement within itself (a stratified
    percentile bootstrap), so the group sizes stay as observed.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or len(x) == 0 or len(y) == 0:
        raise ValueError(f"a and b must be non-empty 1-D samples, got shapes {x.shape} "
                         f"and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a and b must be finite numbers")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(x), size=(n_boot, len(x)))
    ib = rng.integers(0, len(y), size=(n_boot, len(y)))
    if statistic is np.mean:  # vectorized fast path
        stats = x[ia].mean(axis=1) - y[ib].mean(axis=1)
    else:
        stats = np.array([statistic(x[i]) - statistic(y[j]) for i, j in zip(ia, ib)])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    est = float(statistic(x) - statistic(y))
    return Interval(est, float(lo), float(hi), confidence)


def mean_difference(values: Sequence[float], groups: Sequence, first, second, *,
                    strata: Sequence | None = None, scale: float = 1.0, n_boot: int = 2000,
                    seed: int = 0) -> Interval:
    """Interval of mean(values of ``first``) - mean(values of ``second``), times ``scale``.

    ``groups[i]`` is the group of ``values[i]``; facts of other groups are
    ignored. With ``strata`` (e.g. each fact's relation, when facts were drawn
    evenly from popularity tiers *within* each relation) the bootstrap
    resamples within every (stratum, group) cell, as the facts were sampled,
    so the mix of strata in each group stays as observed.

    Raises:
        ValueError: if either group has no member, or lengths differ.
    """
    v, g = np.asarray(values, dtype=float), np.asarray(list(groups), dtype=object)
    if len(v) != len(g):
        raise ValueError(f"values and groups must have the same length, got {len(v)} "
                         f"and {len(g)}")
    for name in (first, second):
        if not (g == name).any():
            raise ValueError(f"group {name!r} has no member")
    if strata is None:
        return two_sample_difference(v[g == first], v[g == second], n_boot=n_boot,
                                     seed=seed).scaled(scale)
    st = np.asarray(list(strata), dtype=object)
    if len(st) != len(v):
        raise ValueError(f"strata must have one entry per value, got {len(st)} and {len(v)}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite numbers")
    rng = np.random.default_rng(seed)
    sums = {first: np.zeros(n_boot), second: np.zeros(n_boot)}
    for name in (first, second):
        for s in sorted(set(st[g == name]), key=str):
            cell = v[(g == name) & (st == s)]
            idx = rng.integers(0, len(cell), size=(n_boot, len(cell)))
            sums[name] += cell[idx].sum(axis=1)
    n1, n2 = int((g == first).sum()), int((g == second).sum())
    boots = sums[first] / n1 - sums[second] / n2
    lo, hi = np.quantile(boots, [0.025, 0.975])
    est = float(v[g == first].mean() - v[g == second].mean())
    return Interval(est, float(lo), float(hi)).scaled(scale)


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` along the last axis, ties sharing their average rank."""
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=float), x.shape)
    # average the positions of each run of equal values
    new = np.ones(x.shape, dtype=bool)
    new[..., 1:] = xs[..., 1:] != xs[..., :-1]
    run = np.cumsum(new, axis=-1) - 1  # run index of each sorted element
    out = np.empty(x.shape, dtype=float)
    flat_run = run.reshape(-1, n) + (np.arange(run.reshape(-1, n).shape[0]) * n)[:, None]
    sums = np.bincount(flat_run.ravel(), weights=pos.reshape(-1, n).ravel(),
                       minlength=flat_run.size)
    cnts = np.bincount(flat_run.ravel(), minlength=flat_run.size)
    avg = (sums / np.maximum(cnts, 1))[flat_run].reshape(x.shape)
    np.put_along_axis(out, order, avg, axis=-1)
    return out


def _spearman(rank: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (nan where one side is constant)."""
    ra, rb = _avg_ranks(rank), _avg_ranks(exposure)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _auc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known fact's exposure > an unknown one's), ties counting one half."""
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    gt = (known[:, None] > unknown[None, :]).mean()
    eq = (known[:, None] == unknown[None, :]).mean()
    return float(gt + 0.5 * eq)


def exposure_agreement(categories: Sequence[str], exposure: Sequence[float]
                       ) -> tuple[float, float]:
    """(Spearman rho of SliCK rank vs exposure, AUC of known vs Unknown by exposure).

    The SliCK rank is :data:`ORDER` (Unknown 0 ... HighlyKnown 3); "known" is
    HighlyKnown or MaybeKnown.
    """
    cats = list(categories)
    if len(cats) != len(exposure):
        raise ValueError(f"categories and exposure must have the same length, got "
                         f"{len(cats)} and {len(exposure)}")
    bad = sorted(set(cats) - set(ORDER))
    if bad:
        raise ValueError(f"unknown categories {bad}; expected some of {list(CATEGORIES)}")
    rank = np.array([ORDER[c] for c in cats], dtype=float)
    e = np.asarray(exposure, dtype=float)
    rho = float(_spearman(rank, e))
    return rho, _auc(e[rank >= 2], e[rank == 0])


def agreement_intervals(categories: Sequence[str], exposure: Sequence[float], *,
                        n_boot: int = 2000, seed: int = 0) -> tuple[Interval, Interval]:
    """95% bootstrap intervals (over facts) of :func:`exposure_agreement`'s rho and AUC.

    A resample without a known or without an Unknown fact has no AUC and is
    left out of the AUC's interval (rare unless one group is tiny).
    """
    rho, auc = exposure_agreement(categories, exposure)
    rank = np.array([ORDER[c] for c in categories], dtype=float)
    e = np.asarray(exposure, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(e), size=(n_boot, len(e)))
    rhos = _spearman(rank[idx], e[idx])
    aucs = np.array([_auc(e[i][rank[i] >= 2], e[i][rank[i] == 0]) for i in idx])

    def interval(est: float, boots: np.ndarray) -> Interval:
        boots = boots[np.isfinite(boots)]
        if len(boots) < n_boot // 2 or not np.isfinite(est):
            # too few resamples with both groups: no evidence either way
            return Interval(float(est), float("-inf"), float("inf"))
        lo, hi = np.quantile(boots, [0.025, 0.975])
        return Interval(float(est), float(lo), float(hi))

    return interval(rho, rhos), interval(auc, aucs)


# --------------------------------------------------------------------------- real facts

def share_intervals(categories: Sequence[str]):
    """Share (%) of each SliCK category with its Wilson 95% interval (a DataFrame)."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    cats = np.asarray(list(categories), dtype=object)
    if len(cats) == 0:
        raise ValueError("categories is empty")
    rows = {}
    for c in CATEGORIES:
        iv = wilson_interval(int((cats == c).sum()), len(cats)).scaled(100)
        rows[c] = {"share (%)": iv.estimate, "95% CI low": iv.low, "95% CI high": iv.high}
    return pd.DataFrame(rows).T


def flip_share(a: Sequence[str], b: Sequence[str]) -> Interval:
    """Share (%) of facts whose category differs between two runs, with its Wilson
    95% interval; ``a[i]`` and ``b[i]`` are the same fact's categories."""
    x, y = np.asarray(list(a), dtype=object), np.asarray(list(b), dtype=object)
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"a and b must give one category per fact, got {x.shape} "
                         f"and {y.shape}")
    return wilson_interval(int((x != y).sum()), len(x)).scaled(100)


def chance_interval(result: SliCKResult, relation: str, *, seed: int = 0) -> Interval:
    """The chance rate of ``relation`` (%, :func:`lamini_lite.slick.chance_rates`) with
    its 95% bootstrap interval over the relation's facts."""
    terms = chance_terms(result)
    if relation not in terms:
        raise ValueError(f"no fact of relation {relation!r}; relations: {sorted(terms)}")
    return bootstrap_interval(terms[relation], seed=seed).scaled(100)


def removed_share(paper: Sequence[str], corrected: Sequence[str]) -> Interval:
    """Share (%) of the paper rule's WeaklyKnown facts that the corrected rule removes.

    Wilson 95% interval. Raises ValueError when no fact is WeaklyKnown.
    """
    p, c = np.asarray(paper, dtype=object), np.asarray(corrected, dtype=object)
    if p.shape != c.shape:
        raise ValueError(f"paper and corrected must have one category per fact, got "
                         f"{p.shape} and {c.shape}")
    wk = p == "WeaklyKnown"
    if not wk.any():
        raise ValueError("no fact is WeaklyKnown under the paper rule")
    return wilson_interval(int((c[wk] != "WeaklyKnown").sum()), int(wk.sum())).scaled(100)


def categories_of(result: SliCKResult, prompts: Sequence[int],
                  n_samples: int | None = None) -> np.ndarray:
    """The categories SliCK gives from the prompts ``prompts`` alone (no model runs).

    ``n_samples``: the first that many samples of each prompt (default: all).
    """
    P, S = result.greedy_correct.shape[1], result.sample_correct.shape[2]
    js = [int(j) for j in prompts]
    if not js or any(not 0 <= j < P for j in js):
        raise ValueError(f"prompts must be a non-empty list of indices in [0, {P}), got {js}")
    m = S if n_samples is None else int(n_samples)
    if not 0 <= m <= S:
        raise ValueError(f"n_samples must be in [0, {S}], got {n_samples}")
    g = result.greedy_correct[:, js]
    s = result.sample_correct[:, js, :m]
    p1 = s.mean(axis=(1, 2)) if m else np.zeros(len(g))
    return np.array(categories_from_probs(g.mean(axis=1), p1), dtype=object)


def _codes(greedy_correct: np.ndarray, sample_correct: np.ndarray) -> np.ndarray:
    """SliCK's rule, vectorized: 3 HighlyKnown, 2 MaybeKnown, 1 WeaklyKnown, 0 Unknown
    (the :data:`ORDER` ranks) from ``(..., prompts)`` and ``(..., prompts, samples)``."""
    p0 = greedy_correct.mean(axis=-1)
    hit = sample_correct.any(axis=(-2, -1)) if sample_correct.shape[-1] else \
        np.zeros(p0.shape, dtype=bool)
    return np.where(p0 == 1.0, 3, np.where(p0 > 0.0, 2, np.where(hit, 1, 0)))


def split_disagreement(result: SliCKResult, n_prompts: int) -> np.ndarray:
    """Per fact, the share of the ways to pick two *disjoint* sets of ``n_prompts`` of
    its prompts under which the two sets give it different categories (no model runs).

    Every unordered pair of disjoint sets is counted once (126 pairs of 5 of 10
    prompts, 45 pairs of single prompts). Unlike comparing a subsample with the
    full protocol (which contains it), this measures how reproducible a protocol
    of ``n_prompts`` prompts is.
    """

    P = result.greedy_correct.shape[1]
    if not 1 <= n_prompts <= P // 2:
        raise ValueError(f"n_prompts must be in [1, {P // 2}] (two disjoint sets of the "
                         f"{P} prompts), got {n_prompts}")
    sets = list(combinations(range(P), n_prompts))
    pairs = [(a, b) for a in sets for b in sets if a < b and not set(a) & set(b)]
    first = np.array([a for a, _ in pairs])  # (pairs, n)
    second = np.array([b for _, b in pairs])
    g, s = result.greedy_correct, result.sample_correct  # (F, P), (F, P, S)
    ca = _codes(g[:, first], s[:, first])  # (F, pairs)
    cb = _codes(g[:, second], s[:, second])
    return (ca != cb).mean(axis=1)


def split_half(result: SliCKResult, n_prompts: int, *, seed: int = 0) -> Interval:
    """Mean of :func:`split_disagreement` over facts (%), with its 95% bootstrap
    interval over facts: how often two disjoint sets of ``n_prompts`` prompts put a
    fact in different categories."""
    return bootstrap_interval(split_disagreement(result, n_prompts), seed=seed).scaled(100)
