"""Layer surgery on transformers decoder stacks: run part of a model, reuse the rest.

The tools every chapter uses to train or decode cheaply while the bottom of a
model stays frozen:

* :func:`decoder_layers` -- the stack of decoder layers of a causal LM;
* :func:`layer_inputs`, :func:`layer_output`, :func:`run_from` -- the hidden
  states entering or leaving one decoder layer of the plain backbone (memory
  hooks off), and the forward from a layer up;
* :func:`first_trained_layer` -- the lowest decoder layer that learns;
* :class:`FrozenPrefix` -- teacher-forced losses of QA pairs from cached
  states below the lowest trained layer;
* :class:`FrozenBottomDecoder` -- greedy decoding of fixed prompts from cached
  keys and values of the frozen layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..lm import STOP, collate_qa, left_pad, newline_token_ids, position_ids

__all__ = ["decoder_layers", "layer_inputs", "layer_output", "run_from",
           "first_trained_layer", "FrozenPrefix", "FrozenBottomDecoder", "MEMORY_ATTRIBUTE"]

# Where lamini_lite.mome keeps the memory attached to a model (in ``model.__dict__``):
# the probes below switch it off, so that they always see the plain backbone.
MEMORY_ATTRIBUTE = "_lamini_mome"


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder layers of a transformers causal LM (``model.model.layers``
    for Llama; the first ``ModuleList`` named ``layers``/``h``/``blocks`` otherwise)."""
    inner = getattr(model, "model", None)
    if inner is not None and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.ModuleList)
                and name.split(".")[-1] in ("layers", "h", "blocks")):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} "
                     "(expected a ModuleList named 'layers', 'h' or 'blocks')")


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


class _Captured(Exception):
    pass


def _probe_backbone(model: nn.Module, batch: dict[str, torch.Tensor], handle) -> None:
    """Run the plain backbone (memory off) on ``batch`` until a hook raises ``_Captured``.

    ``handle`` is the hook's removable handle; it is removed afterwards.
    """
    mome = model.__dict__.get(MEMORY_ATTRIBUTE)
    was = mome.enabled if mome else None
    if mome:
        mome.enabled = False
    mask = batch["attention_mask"]
    try:
        model(input_ids=batch["input_ids"], attention_mask=mask,
              position_ids=position_ids(mask), use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
        if mome:
            mome.enabled = was


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: int, batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Hidden states entering decoder ``layer`` and the keyword arguments it gets.

    The forward stops right there (the layers above are not run); memory
    hooks are off. Replaying ``decoder[layer:]`` on these inputs reproduces
    the rest of the forward.
    """
    decoder = decoder_layers(model)
    box: dict[str, Any] = {}

    def pre(module, args, kwargs):
        box["h"] = (args[0] if args else kwargs.pop("hidden_states")).detach()
        box["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    _probe_backbone(model, batch, decoder[layer].register_forward_pre_hook(pre, with_kwargs=True))
    if "h" not in box:
        raise RuntimeError(f"decoder layer {layer} was not reached")
    kw = box["kw"]
    kw["use_cache"] = False
    kw.pop("past_key_values", None)
    return box["h"], kw


@torch.no_grad()
def layer_output(model: nn.Module, layer: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states leaving decoder ``layer`` of the plain backbone (memory off)."""
    box: dict[str, torch.Tensor] = {}

    def post(module, args, output):
        box["h"] = (output[0] if isinstance(output, tuple) else output).detach()
        raise _Captured

    _probe_backbone(model, batch, decoder_layers(model)[layer].register_forward_hook(post))
    return box["h"]


def run_from(model: nn.Module, layer: int, h: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """Run decoder layers ``layer..`` (memory hooks active) and the final norm."""
    for block in decoder_layers(model)[layer:]:
        out = block(h, **kw)
        h = out[0] if isinstance(out, tuple) else out
    return model.model.norm(h)


class FrozenBottomDecoder:
    """Greedy decoding of fixed prompts, again and again, while only the layers
    from ``first`` up learn (``trainable="top:N"``).

    The frozen layers' keys and values over each prompt never change, so they
    are computed once (one full forward per batch, here); each :meth:`answers`
    call runs only layers ``first..`` over the prompt, from the cached hidden
    states entering layer ``first``, and then decodes new tokens through the
    whole model with its KV cache, exactly as
    :func:`~lamini_lite.lm.greedy_answers` does (same left padding, positions
    and stop rule; the same answers up to float rounding). Llama-family
    models (``model.model.norm``, ``model.lm_head``).
    """

    def __init__(self, model, tokenizer, prompts: Sequence[str], first: int, *,
                 batch_size: int = 32):
        n_layers = len(decoder_layers(model))
        if not 0 < first < n_layers:
            raise ValueError(f"first must be in [1, {n_layers - 1}], got {first!r}")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        self.model, self.tokenizer, self.first = model, tokenizer, first
        self.n = len(prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batches = []
        layer = decoder_layers(model)[first]
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                enc = [tokenizer(p, add_special_tokens=False)["input_ids"]
                       for p in prompts[start:start + batch_size]]
                ids, mask = left_pad(enc, pad)
                box: dict[str, Any] = {}

                def grab(module, args, kwargs, box=box):
                    box["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
                    box["kw"] = {k: v for k, v in kwargs.items()
                                 if k not in ("hidden_states", "past_key_values")}

                handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    with torch.no_grad():
                        out = model(input_ids=ids, attention_mask=mask,
                                    position_ids=position_ids(mask), use_cache=True,
                                    logits_to_keep=1)
                finally:
                    handle.remove()
                kv = [(cl.keys.clone(), cl.values.clone())
                      for cl in out.past_key_values.layers[:first]]
                self.batches.append((mask, box["h"], box["kw"], kv))
        finally:
            model.train(was_training)

    @torch.no_grad()
    def answers(self, max_new_tokens: int) -> list[str]:
        """The greedy answer line of every prompt under the model's current weights."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        stop_ids = torch.tensor(sorted(newline_token_ids(tok)), dtype=torch.long)
        layers = decoder_layers(model)
        out_text: list[str] = []
        try:
            for mask, h, kw, kv in self.batches:
                cache = DynamicCache()
                for i, (k, v) in enumerate(kv):
                    cache.update(k, v, i)
                x = h
                for layer in layers[self.first:]:
                    x = layer(x, past_key_values=cache, **kw)
                    x = x[0] if isinstance(x, tuple) else x
                logits = model.lm_head(model.model.norm(x[:, -1:, :]))
                generated = []
                done = torch.zeros(len(mask), dtype=torch.bool)
                for _ in range(max_new_tokens):
                    nxt = logits[:, -1, :].argmax(-1)
                    generated.append(nxt)
                    done |= torch.isin(nxt, stop_ids)
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], dim=1)
                    pos = mask.sum(-1, keepdim=True) - 1
                    logits = model(input_ids=nxt[:, None], attention_mask=mask,
                                   position_ids=pos, past_key_values=cache,
                                   use_cache=True).logits
                for row in torch.stack(generated, dim=1).tolist():
                    text = tok.decode(row, skip_special_tokens=True)
                    out_text.append(text.split(STOP, 1)[0].strip())
        finally:
            model.train(was_training)
        return out_text
