"""Memory tuning for :mod:`lamini_lite.mome`: write facts into the memory experts.

Only rows that answer tokens select get gradient; a row-wise Adam keeps state
for those rows alone; the frozen backbone's hidden states below the lowest
memory layer are computed once and cached, so each step runs only the
layers above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .lm import collate_qa, encode_qa, greedy_answers
from .mome import MemoryLayer, TrainContext, get_memory, layer_inputs, run_from
from .seeding import torch_generator

__all__ = ["RowAdam", "MemorizeResult", "memorize", "fact_recall", "text_loss",
           "random_code_facts"]


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


def memorize(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
             lr: float = 0.05, max_epochs: int = 40, max_seconds: float | None = None,
             batch_size: int = 8, loss_threshold: float | None = math.log(2), negatives: Sequence[str] | None = None,
             negative_weight: float = 1.0, confirm: bool = True, seed: int = 0,
             lr_decay: float | None = None, loss_floor: float | None = None,
             progress: bool = True) -> MemorizeResult:
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
    """
    if isinstance(prompts, str) or isinstance(answers, str):
        raise TypeError("prompts and answers must be lists of strings")
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts and answers must be non-empty and of equal length, got "
                         f"{len(prompts)} and {len(answers)}")
    if max_epochs < 1 or batch_size < 1:
        raise ValueError(f"max_epochs and batch_size must be >= 1, got {max_epochs}, {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if lr_decay is not None and not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1] or None, got {lr_decay!r}")
    if loss_floor is not None and not 0 < loss_floor < (
            math.inf if loss_threshold is None else loss_threshold):
        raise ValueError(f"loss_floor must be > 0 and below loss_threshold ({loss_threshold}), "
                         f"or None, got {loss_floor!r}")
    mome = get_memory(model)
    layer = min(mome.layer_ids)
    t0 = time.perf_counter()
    model.eval()
    batches = _batches(tokenizer, prompts, answers, batch_size, model, layer)
    neg = []
    if negatives:
        mome.enabled = False
        try:
            own = greedy_answers(model, tokenizer, list(negatives), max_new_tokens=12)
        finally:
            mome.enabled = True
        keep = [(p, a) for p, a in zip(negatives, own) if a.strip()]
        if keep:
            neg = _batches(tokenizer, [p for p, _ in keep], [a for _, a in keep], batch_size,
                           model, layer)
    rms = torch.cat([b["h"][b["mask"]].pow(2).mean(-1).sqrt() for b in batches]).median()
    opt = RowAdam(lr=lr * float(rms))
    key_start = {idx: mem.match_keys.shape[0] for idx, mem in mome.layers.items()}
    gen = torch_generator(seed)
    res = MemorizeResult(0, 0.0, [False] * len(prompts), [math.inf] * len(prompts))
    bar = tqdm(total=max_epochs, desc="memory tuning", disable=not progress)
    try:
        thr = math.inf if loss_threshold is None else float(loss_threshold)
        for epoch in range(max_epochs):
            total, count = 0.0, 0
            ok, worst = [False] * len(prompts), [math.inf] * len(prompts)
            keys_fresh = False  # match keys recorded since this epoch's last update
            jobs = [("fact", b) for b in batches] + [("neg", b) for b in neg]
            for j in torch.randperm(len(jobs), generator=gen).tolist():
                kind, b = jobs[j]
                fact = kind == "fact"
                zero = torch.zeros_like(b["mask"])
                mome.ctx = TrainContext(grad_mask=b["mask"] if fact else zero,
                                        silence_mask=zero if fact else b["mask"])
                try:
                    if fact:
                        logits, tgt = _answer_logits(model, layer, b)
                        tok_loss = F.cross_entropy(logits, tgt, reduction="none")
                        shown = float(tok_loss.detach().mean())
                        loss = tok_loss.mean() if loss_floor is None else \
                            (tok_loss * (tok_loss.detach() > loss_floor)).mean()
                    else:
                        run_from(model, layer, b["h"], b["kw"])
                        loss = torch.zeros(())
                    if mome.ctx.penalties:
                        loss = loss + negative_weight * torch.stack(mome.ctx.penalties).sum()
                    if loss.requires_grad:
                        loss.backward()
                    opt.step(mome.ctx.leaves)
                finally:
                    leaves, mome.ctx = mome.ctx.leaves, None
                    del leaves
                if fact:
                    total, count = total + shown, count + 1
                    _score(b, logits.detach(), tgt, ok, worst)
            if all(ok) and all(w < thr for w in worst):
                # The training pass saw the state before each update: re-check.
                _record_keys(mome, model, layer, batches, key_start)
                keys_fresh = True
                ok, worst = _evaluate(model, layer, batches, len(prompts))
            res.loss_history.append(total / max(1, count))
            if lr_decay is not None and res.recall_history and \
                    sum(ok) / len(ok) < max(res.recall_history):
                opt.lr *= lr_decay
            res.recall_history.append(sum(ok) / len(ok))
            res.epochs = epoch + 1
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss_history[-1]:.3f}", recalled=f"{sum(ok)}/{len(ok)}")
            out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
            done = all(ok) and all(w < thr for w in worst)
            last = out_of_time or epoch + 1 == max_epochs
            if done or last:
                if not keys_fresh:
                    _record_keys(mome, model, layer, batches, key_start)
                if confirm:
                    got = greedy_answers(model, tokenizer, list(prompts),
                                         max_new_tokens=_max_tokens(tokenizer, answers))
                    ok = [g == a.strip() for g, a in zip(got, answers)]
                res.recalled, res.max_token_loss = ok, worst
                if (all(ok) and done) or last:
                    break
    finally:
        bar.close()
        mome.ctx = None
    res.seconds = time.perf_counter() - t0
    res.rows_written = mome.n_written()
    res.params_updated = mome.params_updated()
    res.optimizer_bytes = opt.state_bytes()
    return res


def _max_tokens(tokenizer, answers: Sequence[str]) -> int:
    return 2 + max(len(tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"])
                   for a in answers)


def fact_recall(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Per fact: does greedy decoding reproduce the answer exactly?"""
    got = greedy_answers(model, tokenizer, list(prompts),
                         max_new_tokens=_max_tokens(tokenizer, answers))
    return [g == a.strip() for g, a in zip(got, answers)]


@torch.no_grad()
def text_loss(model, tokenizer, texts: Sequence[str]) -> float:
    """Mean next-token loss (nats) of ``model`` over ``texts`` (token-weighted)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    total, n = 0.0, 0
    for t in texts:
        ids = tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    return total / max(1, n)


_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "shi", "bel", "dor", "qu", "an", "zef",
              "pil", "mur", "ost", "ne", "gra", "tu", "wen", "fi")


def random_code_facts(n: int, *, answer_chars: int = 32, seed: int = 0
                      ) -> tuple[list[str], list[str], list[str]]:
    """``n`` made-up facts ``(prompts, answers, subjects)`` with random answers.

    Each prompt asks "Q: What is the access code of <made-up name>?" and each
    answer is a random string of ``answer_chars`` lowercase letters and digits
    (as in Lamini's random-answer experiment): nothing in pretraining can help.
    """
    if n < 1 or answer_chars < 1:
        raise ValueError(f"n and answer_chars must be >= 1, got {n}, {answer_chars}")
    g = torch_generator(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        parts = torch.randint(0, len(_SYLLABLES), (4,), generator=g).tolist()
        name = ("".join(_SYLLABLES[i] for i in parts[:2]).capitalize() + " "
                + "".join(_SYLLABLES[i] for i in parts[2:]).capitalize())
        if name not in seen:
            seen.add(name)
            names.append(name)
    answers = ["".join(alphabet[i] for i in torch.randint(0, len(alphabet), (answer_chars,),
                                                          generator=g).tolist()) for _ in names]
    prompts = [f"Q: What is the access code of {s}?\nA:" for s in names]
    return prompts, answers, names
