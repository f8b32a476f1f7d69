"""Does fine-tuning on new knowledge encourage hallucination? (Gekhman et al. 2024)

The controlled study of chapter 3, and the library helpers it motivates.

The study. Every fact of a closed-book QA set has a SliCK category
(:mod:`lamini_lite.slick`) for the model about to be fine-tuned. We build
fine-tuning sets D of a fixed size with a share X of *Unknown* facts (the rest
*Known*: HighlyKnown, MaybeKnown or WeaklyKnown), fine-tune a fresh copy of the
model on each with :func:`lamini_lite.finetune.finetune_qa` (the book's one
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

Prompts are zero-shot, ``"Q: <question>\\nA:"``, as in the paper (which
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cache import cached, fingerprint
from .facts import Fact, FactError, qa_prompt
from .finetune import finetune_qa
from .lm import left_pad, newline_token_ids, position_ids
from .profiles import register_sizes
from .slick import CATEGORIES, SliCKResult

__all__ = ["KNOWN", "IDK", "NATURAL", "category_list", "filter_unknowns", "relabel_unknowns",
           "EarlyStopping", "study_prompt", "greedy_match", "evaluate_facts",
           "KnowledgeSplit", "split_for_study", "Variant", "mixture", "mixture_variants",
           "known_only_variants", "idk_variant", "single_category_variants", "mixture_size",
           "StudyConfig", "VariantRun", "run_variant", "run_study", "summary_table",
           "LinearFit", "fit_linear", "linear_points", "summary_row"]

KNOWN: tuple[str, ...] = ("HighlyKnown", "MaybeKnown", "WeaklyKnown")  # "Known" in the paper
IDK = "I don't know"  # the relabelled answer of D_IDK
NATURAL = "Natural"  # name of the single-category set drawn with the natural category mix

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

STUDY_VERSION = 1  # bump when run_variant changes what a config produces (cache keys)


# --------------------------------------------------------------------------- categories

def category_list(facts: Sequence[Fact], categories: SliCKResult | Mapping[str, str]
                  | Sequence[str]) -> list[str]:
    """The SliCK category of each fact in ``facts``.

    ``categories`` is a :class:`~lamini_lite.slick.SliCKResult` (facts are matched
    by :attr:`Fact.key`), a mapping ``fact.key -> category``, or a list of
    categories aligned with ``facts``.
    """
    facts = _fact_list(facts)
    if isinstance(categories, SliCKResult):
        categories = dict(zip((f.key for f in categories.facts), categories.categories))
    if isinstance(categories, Mapping):
        missing = [f.key for f in facts if f.key not in categories]
        if missing:
            raise KeyError(f"categories has no entry for {len(missing)} of the facts, e.g. "
                           f"{missing[:3]}; categorize them with lamini_lite.slick.categorize")
        out = [categories[f.key] for f in facts]
    else:
        if isinstance(categories, str):
            raise TypeError("categories must be a SliCKResult, a mapping or a list, not a string")
        out = list(categories)
        if len(out) != len(facts):
            raise ValueError(f"categories must have one entry per fact: got {len(out)} for "
                             f"{len(facts)} facts")
    bad = sorted({c for c in out if c not in CATEGORIES})
    if bad:
        raise ValueError(f"unknown categories {bad}; expected one of {list(CATEGORIES)}")
    return out


def _fact_list(facts: Any, name: str = "facts") -> list[Fact]:
    if isinstance(facts, (str, Fact)):
        raise TypeError(f"{name} must be a list of Fact, not a single {type(facts).__name__}")
    facts = list(facts)
    for f in facts:
        if not isinstance(f, Fact):
            raise TypeError(f"{name} must hold lamini_lite.facts.Fact objects, got "
                            f"{type(f).__name__}")
    return facts


def filter_unknowns(facts: Sequence[Fact], categories: SliCKResult | Mapping[str, str]
                    | Sequence[str]) -> list[Fact]:
    """``facts`` without the ones SliCK marks Unknown for this model (D_Known).

    Gekhman et al. (2024) found that dropping the Unknown examples of a
    fine-tuning set costs nothing at the best (early-stopped) epoch and avoids
    the harm they do when trained to convergence. ``categories``: as in
    :func:`category_list` (usually ``slick.categorize(model, tok, facts)``).
    """
    cats = category_list(facts, categories)
    return [f for f, c in zip(facts, cats) if c != "Unknown"]


def relabel_unknowns(facts: Sequence[Fact], categories: SliCKResult | Mapping[str, str]
                     | Sequence[str], idk: str = IDK) -> list[Fact]:
    """``facts`` with the answer of every Unknown fact replaced by ``idk`` (D_IDK).

    A model fine-tuned on the result learns to abstain on questions like the
    ones it does not know, instead of learning to guess. The relabelled facts
    keep their question; their ``meta`` gains ``relabelled=True`` and
    ``original_object``.
    """
    if not isinstance(idk, str) or not idk.strip():
        raise ValueError(f"idk must be a non-empty string, got {idk!r}")
    cats = category_list(facts, categories)
    out = []
    for f, c in zip(facts, cats):
        if c == "Unknown":
            f = dataclasses.replace(f, object=idk, aliases=(idk,),
                                    meta={**dict(f.meta), "relabelled": True,
                                          "original_object": f.object})
        out.append(f)
    return out


# --------------------------------------------------------------------------- early stopping

class EarlyStopping:
    """An ``on_epoch_end`` callback for :func:`~lamini_lite.finetune.finetune_qa`.

    Stops training when the monitored value has not improved by more than
    ``min_delta`` for ``patience`` evaluated epochs, and remembers the best
    epoch. With ``model`` given, it keeps a copy of the trainable parameters
    at the best epoch, and :meth:`restore` puts them back.

    ``metric(eval_result) -> float`` reads the value from what ``eval_fn``
    returned (default: the result itself, or its ``"dev_acc"`` entry if it is a
    dict). Higher is better unless ``mode="min"``.

    Example::

        stop = EarlyStopping(patience=2, model=model)
        finetune_qa(model, tok, prompts, answers, epochs=50, lr=1e-4,
                    eval_fn=lambda m, e: dev_accuracy(m), on_epoch_end=stop)
        stop.restore()          # the weights of the best dev epoch
    """

    def __init__(self, patience: int = 2, *, metric: Callable[[Any], float] | None = None,
                 mode: str = "max", min_delta: float = 0.0,
                 model: torch.nn.Module | None = None):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience, self.mode, self.min_delta, self.model = patience, mode, min_delta, model
        self.metric = metric or (lambda r: r["dev_acc"] if isinstance(r, Mapping) else r)
        self.best_epoch: int | None = None  # epoch of the best value so far
        self.best_value: float | None = None  # the best value so far
        self.values: list[tuple[int, float]] = []  # (epoch, value) of each evaluated epoch
        self._state: dict[str, torch.Tensor] | None = None

    def _better(self, v: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "max":
            return v > self.best_value + self.min_delta
        return v < self.best_value - self.min_delta

    def __call__(self, epoch: int, history) -> bool:
        if not history.eval_epochs or history.eval_epochs[-1] != epoch:
            return False  # this epoch was not evaluated
        value = float(self.metric(history.evals[-1]))
        self.values.append((epoch, value))
        if self._better(value):
            self.best_value, self.best_epoch = value, epoch
            if self.model is not None:
                self._state = {n: p.detach().clone() for n, p in self.model.named_parameters()
                               if p.requires_grad}
            return False
        since = sum(1 for e, _ in self.values if e > self.best_epoch)
        return since >= self.patience

    def restore(self) -> None:
        """Load the trainable parameters saved at the best epoch back into the model."""
        if self.model is None or self._state is None:
            raise RuntimeError("nothing to restore: pass model= and train at least one epoch")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in self._state.items():
                params[n].copy_(t)


# --------------------------------------------------------------------------- evaluation

def study_prompt(fact: Fact) -> str:
    """The zero-shot prompt of the study: ``"Q: <question>\\nA:"``."""
    return qa_prompt(fact.question)


@torch.no_grad()
def greedy_match(model, tokenizer, prompts: Sequence[str],
                 candidates: Sequence[Sequence[str]], *, batch_size: int = 64) -> list[int]:
    """For each prompt, which candidate answer greedy decoding would write, or -1.

    Candidate ``j`` of prompt ``i`` matches when, after ``prompts[i]``, every
    token of ``" " + candidates[i][j]`` is the most likely next token and the
    most likely token after it contains a newline (or is end-of-sequence):
    exactly the condition for :func:`lamini_lite.lm.greedy_answers` to return
    that candidate. One forward pass per (prompt, candidate) row, no decoding.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, got "
                         f"{len(prompts)} and {len(candidates)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = set(newline_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        stop.add(int(tokenizer.eos_token_id))
    stop_t = torch.tensor(sorted(stop), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []  # (prompt index, candidate index, prompt ids, answer ids)
    for i, (p, cands) in enumerate(zip(prompts, candidates)):
        if isinstance(cands, str):
            raise TypeError(f"candidates[{i}] must be a list of strings, not a string")
        pid = tokenizer(p, add_special_tokens=False)["input_ids"]
        for j, c in enumerate(cands):
            aid = tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"]
            if not pid or not aid:
                raise ValueError(f"prompt {i} or its candidate {c!r} encodes to no tokens")
            rows.append((i, j, pid, aid))
    result = [-1] * len(prompts)
    was_training = model.training
    model.eval()
    decoder = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            seqs = [p + a for _, _, p, a in chunk]
            ids, mask = left_pad(seqs, pad)
            width = ids.shape[1]
            # positions whose next-token prediction we need: the last prompt token
            # up to the last answer token (the latter must predict a newline)
            rr, pos, want = [], [], []
            for r, (_, _, p, a) in enumerate(chunk):
                off = width - len(p) - len(a)
                for k in range(len(a) + 1):
                    rr.append(r)
                    pos.append(off + len(p) - 1 + k)
                    want.append(a[k] if k < len(a) else -1)
            rr_t, pos_t = torch.tensor(rr), torch.tensor(pos)
            if decoder is not None and head is not None:
                hidden = decoder(input_ids=ids, attention_mask=mask,
                                 position_ids=position_ids(mask)).last_hidden_state
                pred = head(hidden[rr_t, pos_t]).argmax(-1)  # (n_positions,)
            else:
                logits = model(input_ids=ids, attention_mask=mask,
                               position_ids=position_ids(mask)).logits
                pred = logits[rr_t, pos_t].argmax(-1)
            want_t = torch.tensor(want)
            ok = torch.where(want_t >= 0, pred == want_t, torch.isin(pred, stop_t))
            per_row = torch.ones(len(chunk), dtype=torch.bool)
            per_row.scatter_reduce_(0, rr_t, ok, reduce="amin")
            for r, (i, j, _, _) in enumerate(chunk):
                if bool(per_row[r]) and result[i] < 0:
                    result[i] = j
    finally:
        model.train(was_training)
    return result


def evaluate_facts(model, tokenizer, facts: Sequence[Fact], *, targets: Sequence[str] | None
                   = None, idk: str | None = None, batch_size: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exact match on ``facts`` with :func:`study_prompt` prompts.

    Returns ``(correct, abstained)``, boolean arrays: ``correct[i]`` when the
    greedy answer is an accepted answer of fact i (or ``targets[i]``, if given:
    used to check that *training* examples are fitted, e.g. to an "I don't
    know" label); ``abstained[i]`` when it is ``idk`` (all False if idk is None).
    """
    facts = _fact_list(facts)
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
        import pandas as pd

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
    facts = _fact_list(facts)
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
    from .slick import _stable_int
    return np.random.default_rng(_stable_int("finetune_knowledge", seed, salt)).permutation(n) \
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
    trainable: str = "all"  # what learns (see lamini_lite.finetune.select_trainable)
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
        import time
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        rec: dict[str, Any] = {"epochs": [], "dev_acc": [], "train_fitted": []}
        snaps: dict[int, dict[str, torch.Tensor]] = {}
        tests: dict[int, tuple[list[bool], list[bool]]] = {}

        def test_now(mm, epoch):
            ok, ab = evaluate_facts(mm, tokenizer, split.test, idk=idk,
                                    batch_size=config.eval_batch_size)
            tests[epoch] = (ok.tolist(), ab.tolist())

        def eval_fn(mm, epoch):
            dev_ok, _ = evaluate_facts(mm, tokenizer, split.dev, batch_size=config.eval_batch_size)
            fit, _ = evaluate_facts(mm, tokenizer, variant.facts, targets=variant.targets,
                                    batch_size=config.eval_batch_size)
            rec["epochs"].append(epoch)
            rec["dev_acc"].append(float(dev_ok.mean()))
            rec["train_fitted"].append(fit.tolist())
            if config.test_every_epoch:
                test_now(mm, epoch)
            else:
                snaps[epoch] = {n: p.detach().clone() for n, p in mm.named_parameters()
                                if p.requires_grad}
            return float(fit.mean())

        def converged(epoch, history):
            return history.evals[-1] >= config.converged_at

        finetune_qa(m, tokenizer, [study_prompt(f) for f in variant.facts], variant.targets,
                    epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    trainable=config.trainable, seed=seed, eval_fn=eval_fn, eval_at_start=True,
                    on_epoch_end=converged, progress=progress, desc=variant.name)
        # EARLY_STOP: best dev accuracy among the fine-tuned epochs (not epoch 0)
        es = int(rec["epochs"][1 + int(np.argmax(rec["dev_acc"][1:]))])
        fitted = [float(np.mean(r)) for r in rec["train_fitted"]]
        conv = next((e for e, s in zip(rec["epochs"], fitted) if s >= config.converged_at),
                    rec["epochs"][-1])
        if not config.test_every_epoch:
            params = dict(m.named_parameters())
            for e in sorted({es, conv}):
                with torch.no_grad():
                    for n, t in snaps[e].items():
                        params[n].copy_(t)
                test_now(m, e)
        te = sorted(tests)
        return {**rec, "test_epochs": te, "test_correct": [tests[e][0] for e in te],
                "test_abstained": [tests[e][1] for e in te], "early_stop": es,
                "convergence": int(conv), "seconds": time.perf_counter() - t0}

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
    from tqdm.auto import tqdm

    fp = model_fingerprint or (fingerprint(model) if cache else None)
    return [run_variant(model, tokenizer, v, split, config, seed=seed, cache=cache,
                        model_fingerprint=fp, progress=False)
            for v in tqdm(list(variants), desc="variants", disable=not progress)]


def summary_table(runs: Sequence[VariantRun], variants: Sequence[Variant],
                  split: KnowledgeSplit):
    """A DataFrame of :func:`summary_row` per variant, indexed by variant name."""
    import pandas as pd

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
    import pandas as pd

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

