"""Pretraining the synthetic track's tiny backbone on the synthetic world's corpus.

:func:`load_backbone` returns a small ``transformers`` Llama
(:func:`lamini_lite.models.tiny_llama`) pretrained from scratch on the corpus
of :mod:`lamini_lite.facts.synthetic`, trained once and then loaded from the
result cache (keyed by the world's config, seed and corpus, the model and
training config, and the seed). Training is budgeted in optimizer steps, not
wall time, so a run does the same work on any machine. Same seed and config give
the same weights bit for bit on a given CPU and library build (training runs on
one thread, so the thread count cannot reorder sums); another CPU's math
kernels may round differently, and then the weights differ (the claims the
chapters check are tested on several seeds for that reason).

The training objective is plain next-token prediction on the corpus: the
corpus items (statements, a few QA pairs, code lines) are shuffled every
epoch, joined with newlines into one token stream and cut into windows of
``seq_len`` tokens.

:func:`recall_by_exposure` measures what the backbone learned: zero-shot
closed-book QA (``"Q: <question>\\nA:"``, greedy) on facts whose QA pair was
*not* in the corpus, grouped by how often the fact was stated. It also sorts
the wrong answers: a wrong value of the *right type* (a hallucinated city for
a birthplace question), a value of another relation's type, or something else.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import cached_model, fingerprint
from ..facts.core import Fact, qa_prompt
from ..facts.synthetic import (
    WORLD_VERSION,
    SyntheticWorld,
    WorldConfig,
    entity_relation,
    make_world,
)
from ..lm import greedy_answers
from ..models import count_parameters, tiny_llama

__all__ = ["PretrainConfig", "build_backbone", "corpus_batches",
           "pretrain", "load_backbone", "closed_book_answers", "answer_kind",
           "recall_by_exposure", "EXPOSURE_BINS", "bin_label"]


# Bump when the training loop changes what a config produces: cache keys use it.
PRETRAIN_VERSION = 1

# Closed-book recall is reported per exposure bin: (low, high) inclusive, None = no upper end.
EXPOSURE_BINS: tuple[tuple[int, int | None], ...] = (
    (0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, None))


@dataclass(frozen=True)
class PretrainConfig:
    """The backbone's shape and its training budget."""

    hidden_size: int = 128  # model width
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads (hidden_size must be divisible by it)
    steps: int = 800  # optimizer steps (the budget; not wall time)
    batch_size: int = 16  # windows per step
    seq_len: int = 128  # tokens per window
    lr: float = 3e-3  # peak learning rate (AdamW)
    warmup_steps: int = 30  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1  # final learning rate as a share of lr
    weight_decay: float = 0.0  # AdamW weight decay (none: we want memorization)
    grad_clip: float = 1.0  # max gradient norm

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PretrainConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"PretrainConfig.hidden_size ({self.hidden_size}) must be divisible "
                             f"by num_heads ({self.num_heads})")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"PretrainConfig.warmup_steps must be an int >= 0, "
                             f"got {self.warmup_steps!r}")
        for name, lo, hi in (("lr", 0.0, 1.0), ("min_lr_ratio", 0.0, 1.0),
                             ("weight_decay", 0.0, 10.0), ("grad_clip", 0.0, 1e9)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (lo < value <= hi or
                                                           (name != "lr" and value == lo)):
                raise ValueError(f"PretrainConfig.{name} must be a number in ({lo}, {hi}], "
                                 f"got {value!r}")


def build_backbone(vocab_size: int, config: PretrainConfig, seed: int = 0):
    """An untrained :func:`~lamini_lite.models.tiny_llama` of ``config``'s shape (seeded)."""
    return tiny_llama(vocab_size, hidden_size=config.hidden_size, num_layers=config.num_layers,
                      num_heads=config.num_heads,
                      max_position_embeddings=max(256, config.seq_len), pad_token_id=0,
                      seed=seed)


def corpus_batches(world: SyntheticWorld, tokenizer, config: PretrainConfig, seed: int = 0):
    """Yield ``(batch_size, seq_len)`` LongTensors of corpus tokens forever.

    Each epoch shuffles the corpus items (a private generator seeded with
    ``seed``), joins them with newline tokens into one stream and cuts it into
    consecutive windows; a window may start mid-sentence, as in LM pretraining.
    """
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encoded = tokenizer(list(world.corpus), add_special_tokens=False)["input_ids"]
    items = [np.asarray(ids + newline, dtype=np.int64) for ids in encoded]
    n_tokens = sum(len(x) for x in items)
    per_batch = config.batch_size * config.seq_len
    if n_tokens < per_batch:
        raise ValueError(f"the corpus has {n_tokens} tokens, fewer than one batch "
                         f"(batch_size x seq_len = {per_batch}); use a bigger world or a "
                         f"smaller batch")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(items), generator=gen).tolist()
        stream = torch.from_numpy(np.concatenate([items[i] for i in order]))
        n_windows = len(stream) // config.seq_len
        windows = stream[: n_windows * config.seq_len].view(n_windows, config.seq_len)
        for start in range(0, n_windows - config.batch_size + 1, config.batch_size):
            yield windows[start:start + config.batch_size]  # (B, T)


def _lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def pretrain(model: torch.nn.Module, world: SyntheticWorld, tokenizer, config: PretrainConfig,
             *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place on ``world``'s corpus for ``config.steps`` AdamW steps.

    Returns JSON-able information: ``loss_curve`` (loss of every step, nats
    per token), ``train_seconds``, ``tokens_seen``, ``corpus_tokens`` and
    ``epochs`` (passes over the corpus). Runs on one CPU thread and is
    deterministic for a seed: the same weights, bit for bit, on a given CPU and build.
    """
    # One thread: the matrices are tiny (little to gain from more), and a fixed
    # thread count keeps the order of every sum, so the weights are bitwise
    # reproducible on a machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(model, world, tokenizer, config, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(model, world, tokenizer, config, *, seed, progress):
    batches = corpus_batches(world, tokenizer, config, seed=seed)
    corpus_tokens = sum(len(x) + 1 for x in
                        tokenizer(list(world.corpus), add_special_tokens=False)["input_ids"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95),
                            weight_decay=config.weight_decay)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="pretraining", disable=not progress)
    for step in bar:
        x = next(batches)  # (B, T)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    tokens = config.steps * config.batch_size * config.seq_len
    return {"loss_curve": losses, "train_seconds": seconds, "tokens_seen": tokens,
            "corpus_tokens": corpus_tokens, "epochs": tokens / corpus_tokens}


def load_backbone(config: PretrainConfig | None = None, world: SyntheticWorld | None = None, *,
                  seed: int = 0, progress: bool = True, refresh: bool = False):
    """The pretrained synthetic backbone: ``(model, tokenizer, world, info)``.

    Args:
        config: model shape and training budget; default ``PretrainConfig()``.
        world: the synthetic world to pretrain on; default
            ``make_world(WorldConfig(), seed=seed)``. (The book's chapters use
            :func:`lamini_lite.experiments.common.load_backbone`, which passes
            the active profile's sizes.)
        seed: seeds the world (when it is built here), the initialization and
            the data order.
        progress: show a progress bar (with the loss) while training.
        refresh: retrain even if a cached copy exists.

    The first call trains (minutes; see ``info["train_seconds"]``) and caches
    the weights; later calls load them (about a second). ``info`` holds
    ``loss_curve``, ``train_seconds``, ``tokens_seen``, ``epochs``,
    ``n_params`` and ``trained_now`` (False when loaded from the cache).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    config = config if config is not None else PretrainConfig()
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    world = world if world is not None else make_world(WorldConfig(), seed=seed)
    if not isinstance(world, SyntheticWorld):
        raise TypeError(f"world must be a SyntheticWorld, got {type(world).__name__}")
    tok = world.tokenizer
    inputs = {"world": dataclasses.asdict(world.config), "world_seed": world.seed,
              "world_version": WORLD_VERSION, "pretrain_version": PRETRAIN_VERSION,
              "corpus": fingerprint(world.corpus), "vocab": fingerprint(world.vocabulary()),
              "config": dataclasses.asdict(config), "seed": seed}
    trained = []

    def train(model):
        trained.append(True)
        info = pretrain(model, world, tok, config, seed=seed, progress=progress)
        info["n_params"] = count_parameters(model)
        return info

    model, info = cached_model("pretrain_backbone", inputs,
                               lambda: build_backbone(len(tok), config, seed=seed), train,
                               refresh=refresh)
    model.eval()
    info["trained_now"] = bool(trained)
    return model, tok, world, info


def closed_book_answers(model, tokenizer, facts: Sequence[Fact], *, batch_size: int = 64,
                        max_new_tokens: int = 8, progress: bool = False) -> list[str]:
    """Greedy zero-shot answers to ``"Q: <question>\\nA:"`` for every fact."""
    prompts = [qa_prompt(f.question) for f in facts]
    return greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, progress=progress)


def answer_kind(fact: Fact, prediction: str) -> str:
    """Sort an answer: ``"correct"``, ``"wrong_same_type"`` (another value of the
    fact's relation: a hallucinated entity of the right type),
    ``"wrong_other_type"`` (a value of another relation) or ``"other"``
    (no answer, or text that is no value of the world)."""
    if fact.is_correct(prediction):
        return "correct"
    rel = entity_relation(prediction)
    if rel is None:
        return "other"
    return "wrong_same_type" if rel == fact.relation else "wrong_other_type"


def bin_label(low: int, high: int | None) -> str:
    """``"0"``, ``"2-3"`` or ``"16+"`` for an exposure bin."""
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


def recall_by_exposure(model, tokenizer, facts: Sequence[Fact],
                       bins: Sequence[tuple[int, int | None]] = EXPOSURE_BINS, *,
                       batch_size: int = 64, progress: bool = False, predictions=None):
    """Closed-book recall of ``facts`` per exposure bin, as a pandas DataFrame.

    Asks every fact zero-shot (greedy) unless ``predictions`` (one answer per
    fact) are given. Columns: ``exposure`` (bin label), ``n`` (facts in the
    bin), ``recall`` (share answered exactly right) and the shares of wrong
    answers by kind (:func:`answer_kind`): ``wrong_same_type``,
    ``wrong_other_type``, ``other``. Pass held-out facts (QA pair not in the
    corpus) to measure what pretraining taught. Empty bins are dropped.
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    facts = list(facts)
    if not facts:
        raise ValueError("recall_by_exposure needs at least one fact")
    for low, high in bins:
        if not isinstance(low, int) or (high is not None and (not isinstance(high, int)
                                                              or high < low)):
            raise ValueError(f"bins must be (low, high) int pairs with high >= low or None, "
                             f"got {(low, high)!r}")
    if any(f.popularity is None for f in facts):
        raise ValueError("every fact needs an exposure in Fact.popularity")
    if predictions is None:
        predictions = closed_book_answers(model, tokenizer, facts, batch_size=batch_size,
                                          progress=progress)
    if len(predictions) != len(facts):
        raise ValueError(f"predictions must match facts: {len(predictions)} != {len(facts)}")
    kinds = [answer_kind(f, p) for f, p in zip(facts, predictions)]
    rows = []
    for low, high in bins:
        idx = [i for i, f in enumerate(facts)
               if f.popularity >= low and (high is None or f.popularity <= high)]
        if not idx:
            continue
        row = {"exposure": bin_label(low, high), "n": len(idx)}
        for kind in ("correct", "wrong_same_type", "wrong_other_type", "other"):
            row["recall" if kind == "correct" else kind] = (
                sum(kinds[i] == kind for i in idx) / len(idx))
        rows.append(row)
    return pd.DataFrame(rows)
