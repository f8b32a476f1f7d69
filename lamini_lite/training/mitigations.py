"""Fine-tuning on facts a model does not know, without the hallucinations it brings.

Gekhman et al. (2024) find that fine-tuning examples of *Unknown* facts (SliCK,
:mod:`lamini_lite.slick`) are fitted late and, once fitted, make a model
hallucinate more; they mitigate it with early stopping, by filtering the
Unknown examples out, or by relabelling them "I don't know". The tools, for a
reader's own data:

* :func:`category_list` -- the SliCK category of each fact;
* :func:`filter_unknowns` and :func:`relabel_unknowns` -- drop or relabel the
  facts a model does not know;
* :class:`EarlyStopping` -- a callback for ``finetune_qa(on_epoch_end=...)``
  that stops at the best dev epoch and restores its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..facts.core import Fact
from ..slick import CATEGORIES, SliCKResult

__all__ = ["KNOWN", "IDK", "category_list", "fact_list", "filter_unknowns", "relabel_unknowns",
           "EarlyStopping"]


KNOWN: tuple[str, ...] = ("HighlyKnown", "MaybeKnown", "WeaklyKnown")  # "Known" in the paper


IDK = "I don't know"  # the relabelled answer of D_IDK


def category_list(facts: Sequence[Fact], categories: SliCKResult | Mapping[str, str]
                  | Sequence[str]) -> list[str]:
    """The SliCK category of each fact in ``facts``.

    ``categories`` is a :class:`~lamini_lite.slick.SliCKResult` (facts are matched
    by :attr:`Fact.key`), a mapping ``fact.key -> category``, or a list of
    categories aligned with ``facts``.
    """
    facts = fact_list(facts)
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


def fact_list(facts: Any, name: str = "facts") -> list[Fact]:
    """``facts`` as a non-empty list of :class:`~lamini_lite.facts.Fact` (raises naming
    ``name``)."""
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


class EarlyStopping:
    """An ``on_epoch_end`` callback for :func:`~lamini_lite.training.qa.finetune_qa`.

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
