"""Fine-tuning a causal LM on closed-book QA pairs: the book's one training loop.

Every chapter that teaches a model facts uses :func:`finetune_qa`: chapter 1
memorizes random answers with it, chapter 3 fine-tunes on known/unknown facts
with early stopping, and the MoME chapter uses it as the dense baseline.

Its training knobs (epochs, learning rate, what trains, optimizer, ...) form a
:class:`FinetuneConfig`, passed whole or field by field as keyword arguments.

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

import dataclasses
import math
import numbers
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.optimization import Adafactor

from ..lm import collate_qa, encode_qa, position_ids
from ..seeding import torch_generator
from .layers import FrozenPrefix, decoder_layers, first_trained_layer

__all__ = ["FinetuneConfig", "FinetuneHistory", "finetune_qa", "select_trainable", "merge_lora",
           "unload_lora", "has_lora", "qa_loss", "frozen_prefix_for"]

TrainableSpec = Union[str, Callable[[torch.nn.Module], Iterable[torch.nn.Parameter]]]

# Projections LoRA adapts in Llama-style models (attention and SwiGLU MLP).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("adamw", "adafactor", "sgd")


@dataclass
class FinetuneHistory:
    """What one :func:`finetune_qa` run did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)  # mean answer-token loss per epoch, nats
    step_loss: list[float] = field(default_factory=list)  # loss of every optimizer step (nats)
    evals: list[Any] = field(default_factory=list)  # eval_fn(model, epoch) per evaluated epoch
    eval_epochs: list[int] = field(default_factory=list)  # epoch of each evals entry (0: start)
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


@dataclass(frozen=True)
class FinetuneConfig:
    """The training knobs of one :func:`finetune_qa` run (its callbacks stay arguments).

    ``epochs`` and ``lr`` have no default: every run chooses them. Invalid
    values raise ``ValueError`` naming the field; a ``trainable`` spec is
    checked for its form here and against the model by :func:`select_trainable`.
    """

    epochs: int  # passes over the data (>= 1); each pass is shuffled anew
    lr: float  # learning rate, constant after the linear warm-up
    batch_size: int = 16  # (prompt, answer) pairs per optimizer step
    trainable: TrainableSpec = "all"  # what learns: "all", "top:N", "lora:r" or a callable
    seed: int = 0  # seeds the epoch shuffles and LoRA's initialization
    optimizer: str = "adamw"  # "adamw", "adafactor" (as Li et al. 2024) or "sgd"
    weight_decay: float = 0.0  # the optimizer's weight decay
    max_grad_norm: float | None = 1.0  # gradient-norm clip (None: no clipping)
    warmup_steps: int = 0  # steps of linear learning-rate warm-up from lr / warmup_steps
    lora_alpha: float | None = None  # LoRA scale numerator (None: 2r)
    eval_every: int = 1  # eval_fn runs after every eval_every-th epoch and the last
    eval_at_start: bool = False  # eval_fn also runs before training (as epoch 0)
    desc: str = "fine-tune"  # the progress bar's label

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"{name}.epochs must be an int >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"{name}.batch_size must be an int >= 1, got {self.batch_size!r}")
        lr = self.lr
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"{name}.lr must be a positive number, got {lr!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"{name}.eval_every must be an int >= 1, got {self.eval_every!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{name}.optimizer must be one of {OPTIMIZERS}, "
                             f"got {self.optimizer!r}")
        if isinstance(self.trainable, str):
            _parse_spec(self.trainable)
        elif not callable(self.trainable):
            raise ValueError(f"trainable must be a string spec or a callable, "
                             f"got {self.trainable!r}")
        for field_name in ("seed", "warmup_steps"):
            value = getattr(self, field_name)
            if not _is_int(value) or (field_name == "warmup_steps" and value < 0):
                expected = "an int >= 0" if field_name == "warmup_steps" else "an int"
                raise ValueError(f"{name}.{field_name} must be {expected}, got {value!r}")
        if not _is_real(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"{name}.weight_decay must be a finite number >= 0, "
                             f"got {self.weight_decay!r}")
        for field_name in ("max_grad_norm", "lora_alpha"):
            value = getattr(self, field_name)
            if value is not None and not (_is_real(value) and value > 0):
                raise ValueError(f"{name}.{field_name} must be a positive number or None, "
                                 f"got {value!r}")
        if not isinstance(self.eval_at_start, bool):
            raise ValueError(f"{name}.eval_at_start must be a bool, got {self.eval_at_start!r}")
        if not isinstance(self.desc, str):
            raise ValueError(f"{name}.desc must be a str, got {self.desc!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------- trainable


def has_lora(model: torch.nn.Module) -> bool:
    """True when LoRA adapters are injected in ``model``."""
    from peft.tuners.lora import LoraLayer  # lazy: peft is needed for LoRA only
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
    from peft import LoraConfig, inject_adapter_in_model  # lazy: LoRA only
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
    from peft.tuners.lora import LoraLayer  # lazy: peft is needed for LoRA only
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
        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def finetune_qa(model: torch.nn.Module, tokenizer, prompts: Sequence[str],
                answers: Sequence[str], config: FinetuneConfig | None = None, *,
                eval_fn: Callable[[torch.nn.Module, int], Any] | None = None,
                on_epoch_end: Callable[[int, FinetuneHistory], bool | None] | None = None,
                cache_frozen_prefix: "bool | FrozenPrefix" = False,
                progress: bool = True, **overrides: Any) -> FinetuneHistory:
    """Fine-tune ``model`` in place on (prompt, answer) pairs; return its history.

    The training knobs live in a :class:`FinetuneConfig`: pass one as
    ``config``, or pass its fields as keyword arguments (``overrides``), or
    both -- overrides then replace the config's fields. ``epochs`` and ``lr``
    have no default, so without a config they must be given::

        finetune_qa(model, tok, prompts, answers, epochs=3, lr=1e-3, trainable="top:1")
        finetune_qa(model, tok, prompts, answers, FinetuneConfig(epochs=3, lr=1e-3), seed=1)

    Args:
        model: a transformers causal LM (SmolLM2, a tiny Llama, ...).
        tokenizer: its tokenizer (a pad token id is used for padding, else 0).
        prompts, answers: the QA pairs (same length); the model learns to
            write ``" " + answer + "\\n"`` after each prompt.
        config: the run's :class:`FinetuneConfig` (epochs, lr, batch_size,
            trainable -- see :func:`select_trainable` --, seed, optimizer,
            weight_decay, max_grad_norm, warmup_steps, lora_alpha, eval_every,
            eval_at_start, desc); None: built from ``overrides``.
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
        **overrides: :class:`FinetuneConfig` fields by name, e.g.
            ``epochs=3, lr=1e-3``; any other name raises ``TypeError``.

    Returns:
        A :class:`FinetuneHistory`. The model is left in eval mode, its frozen
        parameters' ``requires_grad`` flags restored.

    Raises:
        TypeError: prompts or answers are strings, a name in ``overrides`` is
            not a field, or ``epochs`` / ``lr`` are missing without a config.
        ValueError: the pairs are empty or of different lengths, a field is
            invalid (see :class:`FinetuneConfig`), or ``cache_frozen_prefix``
            does not fit the model and pairs.
    """
    _check_pairs(prompts, answers)
    cfg = _resolve_config(config, overrides)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    run = _setup(model, tokenizer, prompts, answers, cfg, cache_frozen_prefix)
    run.eval_fn, run.on_epoch_end = eval_fn, on_epoch_end
    start = time.perf_counter()
    try:
        _train(run, progress)
    finally:
        model.eval()
        for p in model.parameters():
            if id(p) in flags:
                p.requires_grad_(flags[id(p)])
        run.history.seconds = time.perf_counter() - start
    return run.history


@dataclass
class _Run:
    """What the steps of one :func:`finetune_qa` run share."""

    model: torch.nn.Module
    tokenizer: Any
    cfg: FinetuneConfig
    params: list[torch.nn.Parameter]  # the trained parameters (what is clipped)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR  # the linear warm-up
    encoded: list[Any]  # encode_qa of every pair
    prefix: FrozenPrefix | None  # cached frozen layers, or None: full forward
    gen: torch.Generator  # the epoch shuffles
    history: FinetuneHistory
    eval_fn: Callable[[torch.nn.Module, int], Any] | None = None
    on_epoch_end: Callable[[int, FinetuneHistory], bool | None] | None = None


def _check_pairs(prompts: Sequence[str], answers: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(answers, str):
        raise TypeError("prompts and answers must be lists of strings, not strings")
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got "
                         f"{len(prompts)} and {len(answers)}")
    if not prompts:
        raise ValueError("finetune_qa needs at least one (prompt, answer) pair")


def _resolve_config(config: FinetuneConfig | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """``config`` with ``overrides`` applied (validated by :class:`FinetuneConfig`)."""
    names = [f.name for f in dataclasses.fields(FinetuneConfig)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise TypeError(f"finetune_qa got unexpected keyword argument(s) "
                        f"{', '.join(map(repr, unknown))}; the FinetuneConfig fields are "
                        f"{', '.join(names)}")
    if config is None:
        missing = [k for k in ("epochs", "lr") if k not in overrides]
        if missing:
            raise TypeError(f"finetune_qa needs {' and '.join(missing)}: pass them as keyword "
                            f"arguments or in a FinetuneConfig")
        return FinetuneConfig(**overrides)
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig or None, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config


def _setup(model: torch.nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[str],
           cfg: FinetuneConfig, cache_frozen_prefix: "bool | FrozenPrefix") -> _Run:
    """Freeze what does not learn; build the optimizer, schedule, encodings and prefix cache."""
    params = select_trainable(model, cfg.trainable, seed=cfg.seed, lora_alpha=cfg.lora_alpha)
    history = FinetuneHistory(trainable=cfg.trainable if isinstance(cfg.trainable, str)
                              else getattr(cfg.trainable, "__name__", "callable"),
                              n_trainable=sum(p.numel() for p in params))
    opt = _make_optimizer(cfg.optimizer, params, float(cfg.lr), cfg.weight_decay)
    warmup_steps = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    encoded = [encode_qa(tokenizer, p, a) for p, a in zip(prompts, answers)]
    prefix = _frozen_prefix(model, encoded, cache_frozen_prefix)
    return _Run(model, tokenizer, cfg, params, opt, sched, encoded, prefix,
                torch_generator(cfg.seed), history)


def _frozen_prefix(model: torch.nn.Module, encoded: list[Any],
                   cache_frozen_prefix: "bool | FrozenPrefix") -> FrozenPrefix | None:
    """The prefix cache :func:`finetune_qa` uses (checked if given), or None."""
    if isinstance(cache_frozen_prefix, FrozenPrefix):
        prefix = cache_frozen_prefix
        if prefix.model is not model or prefix.encoded != encoded:
            raise ValueError("cache_frozen_prefix was built for another model or other pairs")
        if first_trained_layer(model) < prefix.first:
            raise ValueError(f"cache_frozen_prefix starts at layer {prefix.first}, but "
                             f"layer {first_trained_layer(model)} trains")
        return prefix
    if cache_frozen_prefix:
        first = first_trained_layer(model)
        if 0 < first < len(decoder_layers(model)):
            return FrozenPrefix(model, encoded, first)
    return None


def _train(run: _Run, progress: bool) -> None:
    """The epochs, with their evaluations and early stopping, under one progress bar."""
    cfg, history = run.cfg, run.history
    n_batches = math.ceil(len(run.encoded) / cfg.batch_size)
    if run.eval_fn is not None and cfg.eval_at_start:
        _evaluate(run, 0)
    bar = tqdm(total=cfg.epochs * n_batches, desc=cfg.desc, disable=not progress, leave=False)
    for epoch in range(1, cfg.epochs + 1):
        _epoch(run, epoch, n_batches, bar)
        if run.eval_fn is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            _evaluate(run, epoch)
        if run.on_epoch_end is not None and run.on_epoch_end(epoch, history):
            history.stopped_early = True
            if run.eval_fn is not None and history.eval_epochs[-1:] != [epoch]:
                _evaluate(run, epoch)
            break
    bar.close()


def _epoch(run: _Run, epoch: int, n_batches: int, bar: tqdm) -> None:
    """One shuffled pass over the pairs; records its token-weighted mean loss."""
    run.model.train()
    order = torch.randperm(len(run.encoded), generator=run.gen).tolist()
    size = run.cfg.batch_size
    total, count = 0.0, 0
    for b in range(n_batches):
        value, n_tok = _step(run, order[b * size:(b + 1) * size])
        total, count = total + value * n_tok, count + n_tok
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
    run.history.train_loss.append(total / max(count, 1))
    run.history.epochs_run = epoch


def _step(run: _Run, idx: list[int]) -> tuple[float, int]:
    """One optimizer step on the pairs ``idx``; returns (its loss, its answer tokens)."""
    if run.prefix is not None:
        loss, n_tok = run.prefix.loss(run.tokenizer, idx)
    else:
        loss, n_tok = qa_loss(run.model,
                              collate_qa(run.tokenizer, [run.encoded[i] for i in idx]))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.max_grad_norm)
    run.opt.step()
    run.sched.step()
    value = float(loss.detach())
    run.history.step_loss.append(value)
    return value, n_tok


def _evaluate(run: _Run, epoch: int) -> None:
    """``eval_fn(model, epoch)`` in eval mode without gradients, into the history."""
    run.model.eval()
    with torch.no_grad():
        run.history.evals.append(run.eval_fn(run.model, epoch))
    run.history.eval_epochs.append(epoch)
