"""Memory tuning for :mod:`lamini_lite.mome`: write facts into the memory experts.

Only rows that answer tokens select get gradient; a row-wise Adam keeps state
for those rows alone; the frozen backbone's hidden states below the lowest
memory layer are computed once and cached, so each step runs only the
layers above it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..lm import collate_qa, encode_qa, fact_recall, greedy_answers
from ..seeding import torch_generator
from ..training.layers import layer_inputs, run_from
from .layer import MemoryLayer, TrainContext
from .model import MoME, get_memory

__all__ = ["RowAdam", "MemorizeConfig", "MemorizeResult", "memorize"]


class RowAdam:
    """Adam over the rows of memory value stores, with state only for touched rows.

    State (first and second moments, per-row step count) lives in compact
    tensors aligned with each layer's store slots, so its size grows with the
    number of written rows, never with the number of experts ``N``. Slot 0
    (the shared zero row) is never updated.
    """

    def __init__(self, lr: float = 0.3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.lr, self.betas, self.eps = float(lr), betas, eps
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _state(self, layer: MemoryLayer) -> dict[str, torch.Tensor]:
        cap = layer.store.shape[0]
        st = self.state.get(id(layer))
        if st is None:
            st = {"m": layer.store.new_zeros(0, layer.hidden_size),
                  "v": layer.store.new_zeros(0, layer.hidden_size),
                  "t": torch.zeros(0, dtype=torch.long)}
            self.state[id(layer)] = st
        grow = cap - st["m"].shape[0]
        if grow > 0:
            st["m"] = torch.cat([st["m"], st["m"].new_zeros(grow, layer.hidden_size)])
            st["v"] = torch.cat([st["v"], st["v"].new_zeros(grow, layer.hidden_size)])
            st["t"] = torch.cat([st["t"], st["t"].new_zeros(grow)])
        return st

    @torch.no_grad()
    def step(self, leaves: Sequence[tuple[MemoryLayer, torch.Tensor, torch.Tensor]]) -> int:
        """Apply one update from ``(layer, slots, leaf)`` triples; returns rows updated."""
        b1, b2 = self.betas
        n = 0
        for layer, slots, leaf in leaves:
            if leaf.grad is None:
                continue
            # Slot 0 is the shared zero row; rows whose gradient is exactly zero
            # (e.g. read only by answer tokens below memorize's loss_floor) are
            # left alone, moments included (lazy Adam).
            keep = (slots > 0) & leaf.grad.ne(0).any(-1)
            if layer.frozen_rows is not None:  # stored by an earlier memorize call
                keep &= ~layer.frozen_rows[layer.slot_rows[slots]]
            slots, g = slots[keep], leaf.grad[keep]
            st = self._state(layer)
            m = st["m"][slots].mul_(b1).add_(g, alpha=1 - b1)
            v = st["v"][slots].mul_(b2).addcmul_(g, g, value=1 - b2)
            t = st["t"][slots] + 1
            st["m"][slots], st["v"][slots], st["t"][slots] = m, v, t
            c1 = (1 - b1 ** t.double()).to(m.dtype)[:, None]
            c2 = (1 - b2 ** t.double()).to(m.dtype)[:, None]
            layer.store[slots] -= self.lr * (m / c1) / ((v / c2).sqrt() + self.eps)
            n += int(slots.numel())
        return n

    def state_bytes(self) -> int:
        """Bytes of optimizer state held."""
        return sum(t.numel() * t.element_size() for st in self.state.values() for t in st.values())


@dataclass
class MemorizeResult:
    """What memory tuning did."""

    epochs: int                       # epochs run
    seconds: float                    # wall time, including caching and the greedy check
    recalled: list[bool]              # per fact: greedy answer equals the target exactly
    max_token_loss: list[float]       # per fact: largest answer-token loss (nats)
    loss_history: list[float] = field(default_factory=list)    # mean train loss per epoch
    recall_history: list[float] = field(default_factory=list)  # teacher-forced recall per epoch
    rows_written: int = 0             # memory rows with a stored value
    params_updated: int = 0           # scalars changed (rows x hidden size)
    optimizer_bytes: int = 0          # optimizer state size

    @property
    def recall(self) -> float:
        """Share of facts recalled exactly."""
        return sum(self.recalled) / max(1, len(self.recalled))


@dataclass(frozen=True)
class MemorizeConfig:
    """The knobs of memory tuning (:func:`memorize`); the defaults are the book's.

    Pass one to :func:`memorize` as ``config``, or name fields as keywords of
    :func:`memorize`, which replace those of ``config``.
    """

    lr: float = 0.05                  # Adam step relative to the hidden states' median RMS
    max_epochs: int = 40              # epochs at most
    max_seconds: float | None = None  # stop after the epoch that ends past it (None: no limit)
    batch_size: int = 8               # facts (and negatives) per batch
    loss_threshold: float | None = math.log(2)  # done needs every answer-token loss below it
    negative_weight: float = 1.0      # weight of the silence penalty on ``negatives``
    confirm: bool = True              # confirm recall by greedy decoding before stopping
    seed: int = 0                     # seed of the batch order
    lr_decay: float | None = None     # step factor after an epoch below the best recall
    loss_floor: float | None = None   # answer tokens with loss below it give no gradient
    keep_stored: bool = False         # freeze the rows earlier calls' facts read

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MemorizeConfig.{name} must be an int >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"MemorizeConfig.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.keep_stored, bool):
            raise ValueError(f"MemorizeConfig.keep_stored must be True or False, "
                             f"got {self.keep_stored!r}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ValueError(f"MemorizeConfig.max_seconds must be >= 0 or None, "
                             f"got {self.max_seconds!r}")
        if not self.negative_weight >= 0:
            raise ValueError(f"MemorizeConfig.negative_weight must be >= 0, "
                             f"got {self.negative_weight!r}")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ValueError(f"MemorizeConfig.lr_decay must be in (0, 1] or None, "
                             f"got {self.lr_decay!r}")
        thr = self.loss_threshold
        if self.loss_floor is not None and not 0 < self.loss_floor < (
                math.inf if thr is None else thr):
            raise ValueError(f"MemorizeConfig.loss_floor must be > 0 and below loss_threshold "
                             f"({thr}), or None, got {self.loss_floor!r}")

    @classmethod
    def with_overrides(cls, config: "MemorizeConfig | None" = None,
                       **overrides: Any) -> "MemorizeConfig":
        """``config`` (default ``MemorizeConfig()``) with the fields in ``overrides`` replaced.

        A name that is not a field raises :class:`TypeError` listing the fields.
        """
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config must be a MemorizeConfig or None, got "
                            f"{type(config).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"unknown memorize option(s) {', '.join(map(repr, unknown))}; "
                            f"MemorizeConfig fields: {', '.join(valid)}")
        if config is None:
            return cls(**overrides)
        return dataclasses.replace(config, **overrides) if overrides else config


def _batches(tokenizer, prompts, answers, batch_size, model, layer):
    pairs = [encode_qa(tokenizer, p, a) for p, a in zip(prompts, answers)]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate_qa(tokenizer, [pairs[i] for i in idx])
        nxt = torch.cat([batch["labels"][:, 1:],
                         torch.full_like(batch["labels"][:, :1], -100)], dim=1)
        h, kw = layer_inputs(model, layer, batch)
        out.append({"idx": idx, "h": h, "kw": kw, "mask": nxt != -100, "next": nxt})
    return out


def _answer_logits(model, layer, b):
    hN = run_from(model, layer, b["h"], b["kw"])
    return model.lm_head(hN[b["mask"]]).float(), b["next"][b["mask"]]


def _score(b, logits, tgt, ok, worst):
    loss = F.cross_entropy(logits, tgt, reduction="none")
    hit = logits.argmax(-1) == tgt
    start = 0
    for i, c in zip(b["idx"], b["mask"].sum(-1).tolist()):
        ok[i] = bool(hit[start:start + c].all())
        worst[i] = float(loss[start:start + c].max())
        start += c


@torch.no_grad()
def _record_keys(mome, model, layer, batches, start: dict) -> None:
    """(Re)store the queries of the facts' answer positions as match keys.

    Keys stored before this memorize call (``start``: layer id -> count) are
    kept; those of this call are replaced (upper layers' queries move as the
    memory below them learns).
    """
    for idx, mem in mome.layers.items():
        mem.match_keys = mem.match_keys[:start[idx]]
    for b in batches:
        zero = torch.zeros_like(b["mask"])
        mome.ctx = TrainContext(grad_mask=b["mask"], silence_mask=zero, record=True)
        try:
            run_from(model, layer, b["h"], b["kw"])
        finally:
            mome.ctx = None


@torch.no_grad()
def _evaluate(model, layer, batches, n):
    ok, worst = [False] * n, [math.inf] * n
    for b in batches:
        logits, tgt = _answer_logits(model, layer, b)
        _score(b, logits, tgt, ok, worst)
    return ok, worst


@dataclass
class _Tuning:
    """What the steps of one :func:`memorize` call share."""

    model: Any
    mome: MoME
    layer: int                        # lowest memory layer: training runs from its input
    config: MemorizeConfig
    batches: list                     # the facts, cached hidden states at ``layer``
    neg: list                         # the near-miss negatives, same form
    opt: RowAdam
    key_start: dict                   # layer id -> match keys stored before this call
    gen: torch.Generator              # batch order


def _negative_batches(model, tokenizer, mome, layer, negatives, batch_size) -> list:
    """Batches of the negatives the bare backbone answers (its own answers as targets)."""
    mome.enabled = False
    try:
        own = greedy_answers(model, tokenizer, list(negatives), max_new_tokens=12)
    finally:
        mome.enabled = True
    keep = [(p, a) for p, a in zip(negatives, own) if a.strip()]
    if not keep:
        return []
    return _batches(tokenizer, [p for p, _ in keep], [a for _, a in keep], batch_size,
                    model, layer)


def _prepare(model, tokenizer, prompts, answers, negatives, cfg: MemorizeConfig,
             mome: MoME, layer: int) -> _Tuning:
    """Cache the batches' hidden states, size the step, seed the batch order."""
    model.eval()
    batches = _batches(tokenizer, prompts, answers, cfg.batch_size, model, layer)
    neg = []
    if negatives:
        neg = _negative_batches(model, tokenizer, mome, layer, negatives, cfg.batch_size)
    rms = torch.cat([b["h"][b["mask"]].pow(2).mean(-1).sqrt() for b in batches]).median()
    opt = RowAdam(lr=cfg.lr * float(rms))
    key_start = {idx: mem.match_keys.shape[0] for idx, mem in mome.layers.items()}
    gen = torch_generator(cfg.seed)
    return _Tuning(model, mome, layer, cfg, batches, neg, opt, key_start, gen)


def _step(run: _Tuning, b: dict, fact: bool):
    """One update on batch ``b``; for a fact batch returns ``(shown loss, logits, targets)``."""
    cfg, mome = run.config, run.mome
    zero = torch.zeros_like(b["mask"])
    mome.ctx = TrainContext(grad_mask=b["mask"] if fact else zero,
                            silence_mask=zero if fact else b["mask"])
    try:
        if fact:
            logits, tgt = _answer_logits(run.model, run.layer, b)
            tok_loss = F.cross_entropy(logits, tgt, reduction="none")
            shown = float(tok_loss.detach().mean())
            loss = tok_loss.mean() if cfg.loss_floor is None else \
                (tok_loss * (tok_loss.detach() > cfg.loss_floor)).mean()
        else:
            run_from(run.model, run.layer, b["h"], b["kw"])
            loss = torch.zeros(())
        if mome.ctx.penalties:
            loss = loss + cfg.negative_weight * torch.stack(mome.ctx.penalties).sum()
        if loss.requires_grad:
            loss.backward()
        run.opt.step(mome.ctx.leaves)
    finally:
        leaves, mome.ctx = mome.ctx.leaves, None
        del leaves
    return (shown, logits, tgt) if fact else None


def _epoch(run: _Tuning, n: int) -> tuple[float, list[bool], list[float]]:
    """One pass over facts and negatives in random order: mean loss, per-fact ok and worst.

    Each fact is scored on the state its own update started from.
    """
    total, count = 0.0, 0
    ok, worst = [False] * n, [math.inf] * n
    jobs = [("fact", b) for b in run.batches] + [("neg", b) for b in run.neg]
    for j in torch.randperm(len(jobs), generator=run.gen).tolist():
        kind, b = jobs[j]
        out = _step(run, b, kind == "fact")
        if out is not None:
            shown, logits, tgt = out
            total, count = total + shown, count + 1
            _score(b, logits.detach(), tgt, ok, worst)
    return total / max(1, count), ok, worst


def _all_done(ok: list[bool], worst: list[float], thr: float) -> bool:
    return all(ok) and all(w < thr for w in worst)


def _log_epoch(run: _Tuning, res: MemorizeResult, bar, epoch: int, loss: float,
               ok: list[bool]) -> None:
    """Record the epoch in ``res``, decay the step if recall fell back, move the bar."""
    res.loss_history.append(loss)
    if run.config.lr_decay is not None and res.recall_history and \
            sum(ok) / len(ok) < max(res.recall_history):
        run.opt.lr *= run.config.lr_decay
    res.recall_history.append(sum(ok) / len(ok))
    res.epochs = epoch + 1
    bar.update(1)
    bar.set_postfix(loss=f"{res.loss_history[-1]:.3f}", recalled=f"{sum(ok)}/{len(ok)}")


def _confirm(run: _Tuning, tokenizer, prompts, answers, ok: list[bool],
             keys_fresh: bool) -> list[bool]:
    """Store the match keys unless fresh; with ``confirm`` recheck recall greedily."""
    if not keys_fresh:
        _record_keys(run.mome, run.model, run.layer, run.batches, run.key_start)
    if run.config.confirm:
        return fact_recall(run.model, tokenizer, prompts, answers)
    return ok


def _train(run: _Tuning, tokenizer, prompts, answers, res: MemorizeResult, bar,
           t0: float) -> None:
    """Epochs until every fact is recalled (and confirmed) or epochs / time run out."""
    cfg, n = run.config, len(prompts)
    thr = math.inf if cfg.loss_threshold is None else float(cfg.loss_threshold)
    for epoch in range(cfg.max_epochs):
        loss, ok, worst = _epoch(run, n)
        keys_fresh = False  # match keys recorded since this epoch's last update
        if _all_done(ok, worst, thr):
            # The training pass saw the state before each update: re-check.
            _record_keys(run.mome, run.model, run.layer, run.batches, run.key_start)
            keys_fresh = True
            ok, worst = _evaluate(run.model, run.layer, run.batches, n)
        _log_epoch(run, res, bar, epoch, loss, ok)
        out_of_time = cfg.max_seconds is not None and \
            time.perf_counter() - t0 > cfg.max_seconds
        done = _all_done(ok, worst, thr)
        last = out_of_time or epoch + 1 == cfg.max_epochs
        if done or last:
            ok = _confirm(run, tokenizer, prompts, answers, ok, keys_fresh)
            res.recalled, res.max_token_loss = ok, worst
            if (all(ok) and done) or last:
                break


@torch.no_grad()
def _freeze_stored_rows(mome: MoME) -> None:
    """Freeze, for this call, every row that the answer positions of earlier calls read.

    Those positions' queries are the match keys stored so far, so their rows are
    known exactly; no new fact may allocate or step them, and the earlier facts'
    memory output stays what it was (facts added in sequence are not forgotten).
    """
    for mem in mome.layers.values():
        if mem.match_keys.shape[0]:
            frozen = torch.zeros(mem.config.n_experts, dtype=torch.bool)
            frozen[mem.rows_of_keys(mem.match_keys).reshape(-1)] = True
            mem.frozen_rows = frozen


def memorize(model, tokenizer, prompts: Sequence[str], answers: Sequence[str],
             config: MemorizeConfig | None = None, *, negatives: Sequence[str] | None = None,
             progress: bool = True, **overrides: Any) -> MemorizeResult:
    """Memory tuning: train the memory of ``model`` until it recalls every fact exactly.

    ``prompts[i]`` must make the model answer ``answers[i]`` (target
    ``" " + answer + "\\n"``, see :mod:`lamini_lite.lm`). Backbone and selector
    stay frozen; gradient reaches only the rows selected at positions that
    predict answer tokens, and :class:`RowAdam` updates only those rows.
    Recall is checked after every epoch by teacher forcing (every answer
    token is the argmax, which is exactly when greedy decoding reproduces
    the answer) and confirmed at the end with
    :func:`lamini_lite.lm.greedy_answers`. Stops when all facts are recalled
    or ``max_epochs`` / ``max_seconds`` run out. With ``loss_threshold`` (default
    ``ln 2``) a fact also needs every answer-token loss below it, which makes
    its greedy recall robust (each correct token then has p > 1/2).

    The training knobs (``lr``, ``max_epochs``, ``max_seconds``, ``batch_size``,
    ``loss_threshold``, ``negative_weight``, ``confirm``, ``seed``, ``lr_decay``,
    ``loss_floor``, ``keep_stored``) are the fields of :class:`MemorizeConfig`: pass one as
    ``config`` (default ``MemorizeConfig()``) and/or name fields as keywords
    (``memorize(model, tok, prompts, answers, lr=0.5, max_epochs=60)``), which
    replace those of ``config``; an unknown keyword raises :class:`TypeError`
    and a bad value :class:`ValueError`. ``progress`` shows a progress bar.

    ``lr`` is relative to the scale of the residual stream: the Adam step size
    is ``lr`` times the median per-token RMS of the hidden states entering the
    memory layer (SmolLM2-135M at layer 28: RMS ~25, so 0.05 -> 1.25), which
    makes one setting work for backbones of any scale.

    With ``gate="match"`` the queries of the facts' answer positions are
    stored as match keys (before the recall checks, so the checks see the
    gated memory); keys stored by earlier calls are kept.

    ``negatives``: optional near-miss prompts (e.g. same-format questions about
    other subjects) on which the memory is taught to stay silent: the squared
    norm of its output there, relative to the hidden state's, is added to the
    loss with weight ``negative_weight``.

    ``lr_decay``: if set, the step size is multiplied by it after every epoch
    that ends with fewer facts recalled than the best epoch so far. Adam's
    normalized steps stay large once a row's gradient is tiny, so with many facts
    sharing rows recall can climb to ~99% and then fall back (1,000 SmolLM2 facts
    at 2^20 rows: 99.2% at epoch 14, 74.7% at epoch 16); shrinking the step when
    that happens keeps it from collapsing, but alone it left one of the 1,000 facts
    unrecalled after 58 epochs.

    ``loss_floor``: if set, answer tokens whose loss is already below it give no
    gradient, and rows that only they read are not stepped: the memory stops
    pushing facts it already holds, so rows shared with a fact still missing
    serve that fact (a hinge on the token loss). Must be below
    ``loss_threshold``, or facts could stop improving before they count as done.
    With ``lr_decay=0.5`` and ``loss_floor=0.1`` the 1,000 facts above reach
    1000/1000 exact greedy recall in 23 epochs (worst token loss 0.53).

    ``keep_stored``: facts added by earlier calls are not forgotten. The rows
    their answer positions read (known exactly from their match keys) are
    frozen for this call: new facts may neither write nor step them, so the
    earlier facts' memory output does not change (for memory layers whose input
    no other memory layer changes). New facts learn in the other rows only, and
    facts asked in one format share many rows, so later facts may not fit:
    see ``python -m lamini_lite.bench mome --triangle --batches 10 --keep-stored``.
    """
    if isinstance(prompts, str) or isinstance(answers, str):
        raise TypeError("prompts and answers must be lists of strings")
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts and answers must be non-empty and of equal length, got "
                         f"{len(prompts)} and {len(answers)}")
    cfg = MemorizeConfig.with_overrides(config, **overrides)
    mome = get_memory(model)
    layer = min(mome.layer_ids)
    t0 = time.perf_counter()
    run = _prepare(model, tokenizer, prompts, answers, negatives, cfg, mome, layer)
    res = MemorizeResult(0, 0.0, [False] * len(prompts), [math.inf] * len(prompts))
    bar = tqdm(total=cfg.max_epochs, desc="memory tuning", disable=not progress)
    if cfg.keep_stored:
        _freeze_stored_rows(mome)
    try:
        _train(run, tokenizer, prompts, answers, res, bar, t0)
    finally:
        bar.close()
        mome.ctx = None
        for mem in mome.layers.values():
            mem.frozen_rows = None
    res.seconds = time.perf_counter() - t0
    res.rows_written = mome.n_written()
    res.params_updated = mome.params_updated()
    res.optimizer_bytes = run.opt.state_bytes()
    return res
