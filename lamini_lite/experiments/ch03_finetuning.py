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
the one of :meth:`lamini_lite.finetune_knowledge.VariantRun.test_accuracy`:
each SliCK category weighted by its natural share (:func:`fact_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..claims import Claim
from ..finetune_knowledge import KNOWN, KnowledgeSplit, LinearFit, Variant, VariantRun, fit_linear
from ..slick import CATEGORIES
from ..stats import Interval, newcombe_difference, wilson_interval

__all__ = ["CONV_FALLS", "DROP_GROWS", "UNKNOWN_FITTED_SLOWER_AT_ES",
           "UNKNOWN_FITTED_SLOWER_OVER_EPOCHS", "UNKNOWNS_HURT_AT_CONV",
           "UNKNOWNS_HURT_LESS_AT_ES", "B_UNK_NEGATIVE", "B_UNK_BELOW_B_KN",
           "B_UNK_BEYOND_PAPER", "LINEAR_R2", "D_UNKNOWN_BELOW_HIGHLY_KNOWN",
           "D_UNKNOWN_CONV_COSTS", "IDK_ABSTAINS", "IDK_ANSWERS", "SHARES", "epoch_of",
           "fact_weights", "fact_columns", "weighted_interval", "contrast", "slope_terms",
           "filter_terms", "accuracy", "accuracy_table", "idk_gain", "answered_share",
           "declined_share", "answered_gap", "linear_fit", "fitted_gap_at",
           "fitted_gap_over_epochs"]

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

Runs = Mapping[int, Mapping[str, VariantRun]]  # study seed -> variant name -> run
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
    :meth:`~lamini_lite.finetune_knowledge.VariantRun.test_accuracy`'s accuracy.
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
    import pandas as pd

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

    Same points as :func:`lamini_lite.finetune_knowledge.linear_points` (IDK variants
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
