"""MoME: a Mixture of Memory Experts on a frozen backbone, laid out as PEFT lays out LoRA.

Li et al. (2024) describe Lamini-1 as a frozen transformer with millions of
small "memory experts": an index picks a few experts for every token, and
memorizing a fact trains only the experts it picked until its loss is near zero.

* :mod:`~lamini_lite.mome.config` -- :class:`MoMEConfig` (every choice, with
  its reason) and the presets ``test``, ``book`` and ``scale``;
* :mod:`~lamini_lite.mome.layer` -- :class:`MemoryLayer`, a product-key memory
  with a sparse value table and the match gate;
* :mod:`~lamini_lite.mome.model` -- :func:`add_memory_experts` /
  :func:`remove_memory_experts` on a transformers Llama-family model,
  :func:`disable_memory` (a context manager), :func:`save_pretrained` /
  :func:`from_pretrained` (a folder, as PEFT saves adapters) and
  :func:`save_memory` / :func:`load_memory` (one file);
* :mod:`~lamini_lite.mome.train` -- :func:`memorize`, memory tuning: gradient
  only reaches the rows that answer tokens select, Adam state only for them.

Typical use::

    from lamini_lite.mome import add_memory_experts, memorize
    add_memory_experts(model, "book", tokenizer=tokenizer)
    memorize(model, tokenizer, prompts, answers)
"""

from ..kernels import memory_lookup
from .config import PRESETS, MemoryCompatibilityError, MoMEConfig
from .layer import MemoryLayer, TrainContext
from .model import (CALIBRATION_TEXT, CONFIG_FILE, MEMORY_FILE, MoME, add_memory_experts,
                    backbone_signature, calibrate_query_norm, disable_memory, from_pretrained,
                    get_memory, load_memory, remove_memory_experts, save_memory,
                    save_pretrained)
from .train import MemorizeConfig, MemorizeResult, RowAdam, memorize

__all__ = ["MoMEConfig", "PRESETS", "MemoryLayer", "TrainContext", "MoME",
           "MemoryCompatibilityError", "add_memory_experts", "remove_memory_experts",
           "get_memory", "disable_memory", "save_memory", "load_memory",
           "save_pretrained", "from_pretrained", "calibrate_query_norm",
           "backbone_signature", "CALIBRATION_TEXT", "memory_lookup", "CONFIG_FILE",
           "MEMORY_FILE", "MemorizeConfig", "MemorizeResult", "RowAdam", "memorize"]
