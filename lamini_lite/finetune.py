"""Fine-tuning a causal LM on closed-book QA pairs: the book's one training loop.

Every chapter that teaches a model facts uses :func:`finetune_qa`: chapter 1
memorizes random answers with it, chapter 3 fine-tunes on known/unknown facts
with early stopping, and the MoME chapter uses it as the dense baseline.

What it does, per the conventions of :mod:`lamini_lite.lm`:

* each (prompt, answer) pair is encoded with :func:`~lamini_lite.lm.encode_qa`
  and batches are left-padded by :func:`~lamini_lite.lm.collate_qa`; the loss
  is the mean next-token cross-entropy over *answer tokens only* (the answer
  and its closing newline), in nats;
* ``trainable`` chooses what learns, with everything else frozen:
  ``"all"``, ``"top:N"`` (the top N decoder layers), ``"lora:r"`` (LoRA
  adapters of rank r on every attention and MLP projection, via ``peft``), or a
  callable ``model -> parameters``;
* the optimizer is AdamW by default. Li et al. (2024) used Adafactor, whose
  point is memory (factored second moments for an 8B model); at our sizes
  memory is no issue and AdamW converges more predictably with a fixed
  learning rate, so it is the default and ``optimizer="adafactor"`` is there
  to replicate the paper's choice;
* a run is deterministic for a ``seed`` on CPU: the epoch shuffles come from a
  private ``torch.Generator`` and LoRA's initialization from a forked RNG;
* after each epoch ``eval_fn(model, epoch)`` may measure anything (its result
  is stored in the history) and ``on_epoch_end(epoch, history)`` may return
  ``True`` to stop early;
* with ``cache_frozen_prefix=True``, when nothing below some decoder layer
  learns (``"top:N"``), the hidden states entering the lowest trained layer
  are computed once per pair and reused every epoch, and the LM head runs
  only on answer positions: the same loss (up to float rounding) for a
  fraction of the compute.

LoRA is injected *into the model in place* (``peft.inject_adapter_in_model``),
so the model stays the same ``transformers`` object: ``generate``,
:func:`~lamini_lite.lm.greedy_answers` and
:func:`~lamini_lite.lm.answer_token_losses` work unchanged.
:func:`merge_lora` folds the adapters into the base weights and removes them;
:func:`unload_lora` removes them without merging (back to the base model).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .lm import collate_qa, encode_qa, position_ids
from .seeding import torch_generator

__all__ = ["FinetuneHistory", "finetune_qa", "select_trainable", "decoder_layers",
           "merge_lora", "unload_lora", "has_lora", "qa_loss", "first_trained_layer",
           "FrozenPrefix", "frozen_prefix_for"]

TrainableSpec = Union[str, Callable[[torch.nn.Module], Iterable[torch.nn.Parameter]]]

# Projections LoRA adapts in Llama-style models (attention and SwiGLU MLP).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("adamw", "adafactor", "sgd")


@dataclass
class FinetuneHistory:
    """What one :func:`finetune_qa` run did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)  # token-weighted mean loss per epoch (nats)
    step_loss: list[float] = field(default_factory=list)  # loss of every optimizer step (nats)
    evals: list[Any] = field(default_factory=list)  # eval_fn(model, epoch) result per evaluated epoch
    eval_epochs: list[int] = field(default_factory=list)  # epoch of each entry of evals (0 = before training)
    epochs_run: int = 0  # epochs actually trained (fewer than asked if stopped early)
    stopped_early: bool = False  # True when on_epoch_end asked to stop
    trainable: str = ""  # the trainable spec, as text
    n_trainable: int = 0  # number of trained parameters (tied tensors counted once)
    seconds: float = 0.0  # wall time of the training loop, evaluations included

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for :func:`lamini_lite.cache.cached`); evals must be JSON-able."""
        return {"train_loss": list(self.train_loss), "step_loss": list(self.step_loss),
                "evals": list(self.evals), "eval_epochs": list(self.eval_epochs),
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "trainable": self.trainable, "n_trainable": self.n_trainable,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneHistory":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# --------------------------------------------------------------------------- trainable


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder layers of a transformers causal LM (``model.model.layers``
    for Llama; the first ``ModuleList`` named ``layers``/``h``/``blocks`` otherwise)."""
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} "
                     "(expected a ModuleList named 'layers', 'h' or 'blocks')")


def has_lora(model: torch.nn.Module) -> bool:
    """True when LoRA adapters are injected in ``model``."""
    from peft.tuners.lora import LoraLayer
    return any(isinstance(m, LoraLayer) for m in model.modules())


def _parse_spec(spec: str) -> tuple[str, int]:
    m = re.fullmatch(r"\s*(all|top|lora)\s*(?::\s*(\d+))?\s*", spec)
    if not m or (m.group(1) == "all") != (m.group(2) is None):
        raise ValueError(f"trainable must be 'all', 'top:N', 'lora:r' (N, r positive ints) "
                         f"or a callable model -> parameters; got {spec!r}")
    n = int(m.group(2)) if m.group(2) is not None else 0
    if m.group(1) != "all" and n < 1:
        raise ValueError(f"trainable={spec!r}: the number after ':' must be >= 1")
    return m.group(1), n


def select_trainable(model: torch.nn.Module, trainable: TrainableSpec = "all", *,
                     seed: int = 0, lora_alpha: float | None = None,
                     lora_targets: Sequence[str] = LORA_TARGETS) -> list[torch.nn.Parameter]:
    """Freeze ``model`` except what ``trainable`` names; return the trainable parameters.

    ``trainable``:
        * ``"all"`` -- every parameter;
        * ``"top:N"`` -- the top N decoder layers (embeddings, final norm and
          LM head stay frozen; with tied embeddings the head *is* the input
          embedding, which must not move);
        * ``"lora:r"`` -- LoRA adapters of rank r (alpha = ``lora_alpha``,
          default 2r) injected in place on ``lora_targets``; only adapters
          train. Adapters already present are reused, not stacked;
        * a callable ``model -> iterable of parameters``.

    LoRA's random initialization is drawn from an RNG seeded with ``seed``.
    """
    if callable(trainable) and not isinstance(trainable, str):
        chosen = list(trainable(model))
        if not chosen or not all(isinstance(p, torch.nn.Parameter) for p in chosen):
            raise ValueError("trainable callable must return a non-empty iterable of "
                             "torch.nn.Parameter of the model")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
        return _unique(chosen)
    if not isinstance(trainable, str):
        raise ValueError(f"trainable must be a string spec or a callable, got {trainable!r}")
    kind, n = _parse_spec(trainable)
    if kind == "all":
        for p in model.parameters():
            p.requires_grad_(True)
        return _unique(model.parameters())
    if kind == "top":
        layers = decoder_layers(model)
        if n > len(layers):
            raise ValueError(f"trainable={trainable!r}: the model has only {len(layers)} "
                             "decoder layers")
        for p in model.parameters():
            p.requires_grad_(False)
        chosen = [p for layer in layers[len(layers) - n:] for p in layer.parameters()]
        for p in chosen:
            p.requires_grad_(True)
        return _unique(chosen)
    # LoRA, injected in place so the model keeps its class and methods.
    from peft import LoraConfig, inject_adapter_in_model
    if not has_lora(model):
        config = LoraConfig(r=n, lora_alpha=lora_alpha if lora_alpha is not None else 2 * n,
                            lora_dropout=0.0, target_modules=list(lora_targets), bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    chosen = [p for name, p in model.named_parameters() if "lora_" in name]
    if not chosen:
        raise ValueError(f"trainable={trainable!r}: no module named any of {list(lora_targets)}")
    return _unique(chosen)


def _unique(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _replace_lora_layers(model: torch.nn.Module, merge: bool) -> torch.nn.Module:
    from peft.tuners.lora import LoraLayer
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not targets:
        raise ValueError("the model has no LoRA adapters to merge or unload")
    for name, module in targets:
        if merge:
            module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold injected LoRA adapters into the base weights and remove them (in place).

    The model then computes the same function as before, with plain
    ``nn.Linear`` layers (and no adapter cost at inference). Returns ``model``.
    """
    return _replace_lora_layers(model, merge=True)


def unload_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Remove injected LoRA adapters *without* merging: back to the base model (in place)."""
    return _replace_lora_layers(model, merge=False)


# --------------------------------------------------------------------------- loss and loop


def qa_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats) over the answer tokens of a :func:`collate_qa` batch.

    Returns ``(loss, n_tokens)``. Position ids count real tokens only, so left
    padding does not shift the rotary positions (as in :mod:`lamini_lite.lm`).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=position_ids(batch["attention_mask"])).logits  # (B, T, V)
    tgt = batch["labels"][:, 1:]  # (B, T-1)
    n = int((tgt != -100).sum())
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                           tgt.reshape(-1), ignore_index=-100, reduction="sum")
    return loss / max(n, 1), n


def first_trained_layer(model: torch.nn.Module) -> int:
    """Index of the lowest decoder layer with a trainable parameter.

    Returns 0 when the input embeddings (or anything outside the decoder
    layers below it) train, and the number of layers when no layer trains.
    """
    layers = decoder_layers(model)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    if any(p.requires_grad and id(p) not in in_layers
           for p in model.get_input_embeddings().parameters()):
        return 0
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


class FrozenPrefix:
    """Hidden states entering decoder layer ``first`` for each encoded QA pair, computed once.

    While nothing below ``first`` learns these states never change, so each
    training step or evaluation can run only layers ``first..`` and the LM
    head, and the head only on answer positions. ``encoded`` holds
    :func:`~lamini_lite.lm.encode_qa` pairs; rows are picked by index.
    :meth:`loss` equals :func:`qa_loss` on the same batch up to float
    rounding. Llama-family models (``model.model.norm``) only.
    """

    def __init__(self, model: torch.nn.Module, encoded: Sequence[tuple[list[int], list[int]]],
                 first: int):
        from .mome import layer_inputs
        n_layers = len(decoder_layers(model))
        if not 0 < first < n_layers:
            raise ValueError(f"first must be in [1, {n_layers - 1}], got {first!r}")
        self.model, self.first, self.encoded = model, first, list(encoded)
        self.states = []
        for ids, _ in self.encoded:
            batch = {"input_ids": torch.tensor([ids]),
                     "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            self.states.append(layer_inputs(model, first, batch)[0][0])

    def _answer_logits(self, tokenizer, idx: Sequence[int]):
        from .mome import layer_inputs, run_from
        batch = collate_qa(tokenizer, [self.encoded[i] for i in idx])
        _, kw = layer_inputs(self.model, 0, batch)  # mask and rotary terms only
        width = batch["input_ids"].shape[1]
        h = self.states[idx[0]].new_zeros(len(idx), width, self.states[idx[0]].shape[-1])
        for row, i in enumerate(idx):
            h[row, width - self.states[i].shape[0]:] = self.states[i]
        tgt = batch["labels"][:, 1:]
        where = tgt != -100
        hidden = run_from(self.model, self.first, h, kw)[:, :-1][where]
        return self.model.get_output_embeddings()(hidden).float(), tgt[where], where.sum(-1)

    def loss(self, tokenizer, idx: Sequence[int]) -> tuple[torch.Tensor, int]:
        """``(mean answer-token loss, n answer tokens)`` of rows ``idx``, as :func:`qa_loss`."""
        logits, tgt, _ = self._answer_logits(tokenizer, idx)
        return F.cross_entropy(logits, tgt, reduction="sum") / max(len(tgt), 1), len(tgt)

    @torch.no_grad()
    def token_scores(self, tokenizer, idx: Sequence[int] | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per row: answer-token losses (nats) and whether each token is the argmax.

        The same as :func:`~lamini_lite.lm.answer_token_losses` with
        ``return_hits=True``, at the cost of the layers from ``first`` up.
        """
        idx = list(range(len(self.encoded))) if idx is None else list(idx)
        logits, tgt, counts = self._answer_logits(tokenizer, idx)
        loss = F.cross_entropy(logits, tgt, reduction="none")
        hit = logits.argmax(-1) == tgt
        return list(loss.split(counts.tolist())), list(hit.split(counts.tolist()))


def frozen_prefix_for(model: torch.nn.Module, tokenizer, prompts: Sequence[str],
                      answers: Sequence[str], trainable: TrainableSpec) -> "FrozenPrefix | None":
    """A :class:`FrozenPrefix` of (prompt, answer) pairs for ``trainable="top:N"``, else None.

    For scoring the pairs cheaply while only the top N layers train (their
    states below never change); None when every layer may learn.
    """
    if not isinstance(trainable, str) or _parse_spec(trainable)[0] != "top":
        return None
    first = len(decoder_layers(model)) - _parse_spec(trainable)[1]
    if first <= 0:
        return None
    return FrozenPrefix(model, [encode_qa(tokenizer, p, a) for p, a in zip(prompts, answers)],
                        first)


def _make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def finetune_qa(model: torch.nn.Module, tokenizer, prompts: Sequence[str],
                answers: Sequence[str], *, epochs: int, lr: float, batch_size: int = 16,
                trainable: TrainableSpec = "all", seed: int = 0, optimizer: str = "adamw",
                weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                warmup_steps: int = 0, lora_alpha: float | None = None,
                eval_fn: Callable[[torch.nn.Module, int], Any] | None = None,
                eval_every: int = 1, eval_at_start: bool = False,
                on_epoch_end: Callable[[int, FinetuneHistory], bool | None] | None = None,
                cache_frozen_prefix: "bool | FrozenPrefix" = False,
                progress: bool = True, desc: str = "fine-tune") -> FinetuneHistory:
    """Fine-tune ``model`` in place on (prompt, answer) pairs; return its history.

    Args:
        model: a transformers causal LM (SmolLM2, a tiny Llama, ...).
        tokenizer: its tokenizer (a pad token id is used for padding, else 0).
        prompts, answers: the QA pairs (same length); the model learns to
            write ``" " + answer + "\\n"`` after each prompt.
        epochs: passes over the data (>= 1); each pass is shuffled anew.
        lr: learning rate (constant after ``warmup_steps`` linear warm-up).
        batch_size: pairs per optimizer step.
        trainable: what learns, see :func:`select_trainable`.
        seed: makes the run deterministic (shuffles, LoRA init).
        optimizer: ``"adamw"`` (default), ``"adafactor"`` (as Li et al. 2024) or ``"sgd"``.
        weight_decay, max_grad_norm: AdamW decay; gradient-norm clip (None: off).
        lora_alpha: LoRA scale numerator (default 2r).
        eval_fn: ``eval_fn(model, epoch)`` after every ``eval_every``-th epoch
            and after the last one (and at epoch 0 if ``eval_at_start``); its
            result is appended to ``history.evals``. The model is in eval mode
            and gradients are off while it runs.
        on_epoch_end: ``on_epoch_end(epoch, history)`` after each epoch (after
            eval_fn); returning ``True`` stops training (early stopping).
        cache_frozen_prefix: compute the frozen layers below the lowest trained
            decoder layer once per pair and reuse them (Llama-family models;
            no effect when the lowest layer or the embeddings train). A
            :class:`FrozenPrefix` built on these same pairs (e.g. by
            :func:`frozen_prefix_for`, to score them between epochs too) is
            used as it is instead of being computed again.
        progress: show a tqdm bar over steps with the running loss.

    Returns:
        A :class:`FinetuneHistory`. The model is left in eval mode, its frozen
        parameters' ``requires_grad`` flags restored.
    """
    if isinstance(prompts, str) or isinstance(answers, str):
        raise TypeError("prompts and answers must be lists of strings, not strings")
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got "
                         f"{len(prompts)} and {len(answers)}")
    if not prompts:
        raise ValueError("finetune_qa needs at least one (prompt, answer) pair")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1, got {eval_every!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")

    flags = {id(p): p.requires_grad for p in model.parameters()}
    params = select_trainable(model, trainable, seed=seed, lora_alpha=lora_alpha)
    history = FinetuneHistory(trainable=trainable if isinstance(trainable, str)
                              else getattr(trainable, "__name__", "callable"),
                              n_trainable=sum(p.numel() for p in params))
    opt = _make_optimizer(optimizer, params, float(lr), weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    encoded = [encode_qa(tokenizer, p, a) for p, a in zip(prompts, answers)]
    prefix = None
    if isinstance(cache_frozen_prefix, FrozenPrefix):
        prefix = cache_frozen_prefix
        if prefix.model is not model or prefix.encoded != encoded:
            raise ValueError("cache_frozen_prefix was built for another model or other pairs")
        if first_trained_layer(model) < prefix.first:
            raise ValueError(f"cache_frozen_prefix starts at layer {prefix.first}, but "
                             f"layer {first_trained_layer(model)} trains")
    elif cache_frozen_prefix:
        first = first_trained_layer(model)
        if 0 < first < len(decoder_layers(model)):
            prefix = FrozenPrefix(model, encoded, first)
    gen = torch_generator(seed)
    n_batches = math.ceil(len(encoded) / batch_size)
    start = time.perf_counter()

    def run_eval(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            history.evals.append(eval_fn(model, epoch))
        history.eval_epochs.append(epoch)

    try:
        if eval_fn is not None and eval_at_start:
            run_eval(0)
        bar = tqdm(total=epochs * n_batches, desc=desc, disable=not progress, leave=False)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(encoded), generator=gen).tolist()
            total, count = 0.0, 0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                if prefix is not None:
                    loss, n_tok = prefix.loss(tokenizer, idx)
                else:
                    loss, n_tok = qa_loss(model, collate_qa(tokenizer, [encoded[i] for i in idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                sched.step()
                value = float(loss.detach())
                history.step_loss.append(value)
                total, count = total + value * n_tok, count + n_tok
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
            history.train_loss.append(total / max(count, 1))
            history.epochs_run = epoch
            if eval_fn is not None and (epoch % eval_every == 0 or epoch == epochs):
                run_eval(epoch)
            if on_epoch_end is not None and on_epoch_end(epoch, history):
                history.stopped_early = True
                if eval_fn is not None and history.eval_epochs[-1:] != [epoch]:
                    run_eval(epoch)
                break
        bar.close()
    finally:
        model.eval()
        for p in model.parameters():
            if id(p) in flags:
                p.requires_grad_(flags[id(p)])
        history.seconds = time.perf_counter() - start
    return history
