"""Attaching a Mixture of Memory Experts to a frozen backbone, and saving it.

Li et al. (2024) describe Lamini-1 as a frozen transformer with millions of
small "memory experts": an index picks a few experts for every token, and
memorizing a fact trains only the experts it picked until its loss is near
zero. They give no sizes, layers or key dimensions; this module makes those
choices (see :class:`MoMEConfig`) following the open designs of product-key
memory (Lample et al. 2019), memory layers at scale (Berges et al. 2024),
PEER (He 2024) and sparse memory fine-tuning (Lin et al. 2025).

The pieces:

* :class:`MemoryLayer` -- a product-key memory with ``n_keys**2`` expert rows.
  A frozen random projection makes a query per head; product keys pick the
  top-k rows per head in ``O(sqrt(N))``; the output is
  ``memory_lookup(values, rows, weights)`` added to the residual stream. The
  value table is *sparse*: only rows that were ever trained are stored, all
  others are zero, so a 2^20-row memory costs megabytes until facts arrive.
* the gate -- with ``gate="match"`` (the default) the memory speaks only at
  tokens whose query matches the stored query of a memorized answer position
  (cosine >= ``match_threshold``), so questions in the memorized format about
  other subjects, unrelated text and known facts get exactly zero from it.
* :func:`add_memory_experts` -- attach memory layers to a transformers
  Llama-family model with forward hooks (no copy; the backbone is frozen;
  ``generate`` is unchanged; before tuning the logits are exactly unchanged).
* :func:`memorize` (in :mod:`lamini_lite.mome.train`) -- memory tuning:
  gradient only reaches the rows that answer tokens select, Adam state only
  for those rows, until every fact is recalled exactly.
* :func:`save_memory` / :func:`load_memory` -- the memory alone, as safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..training.layers import MEMORY_ATTRIBUTE, decoder_layers, layer_output
from .config import MemoryCompatibilityError, MoMEConfig
from .layer import MemoryLayer, TrainContext

__all__ = ["MoME", "add_memory_experts", "remove_memory_experts", "get_memory", "save_memory",
           "load_memory", "save_pretrained", "from_pretrained", "disable_memory",
           "calibrate_query_norm", "backbone_signature", "CALIBRATION_TEXT", "MEMORY_FILE",
           "CONFIG_FILE"]


class MoME:
    """The memory attached to one model: its layers, hooks and bookkeeping."""

    def __init__(self, model: nn.Module, config: MoMEConfig, layer_ids: list[int],
                 layers: dict[int, MemoryLayer]):
        self.model = model
        self.config = config
        self.layer_ids = layer_ids
        self.layers = layers
        self.enabled = True
        self.ctx: TrainContext | None = None
        self._handles: list = []

    def _hook(self, idx: int):
        mem = self.layers[idx]

        def hook(module, args, output):
            if not self.enabled:
                return None
            h = output[0] if isinstance(output, tuple) else output
            y = mem(h, self.ctx)
            if y is None:
                return None
            h = h + y.to(h.dtype)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def attach(self) -> None:
        """Install the forward hooks (done by :func:`add_memory_experts`)."""
        decoder = decoder_layers(self.model)
        for i in self.layer_ids:
            self._handles.append(decoder[i].register_forward_hook(self._hook(i)))

    def detach(self) -> None:
        """Remove the hooks: the model is the plain backbone again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def n_written(self) -> int:
        """Rows written over all memory layers."""
        return sum(m.n_used - 1 for m in self.layers.values())

    def params_updated(self) -> int:
        """Number of scalars memory tuning has changed (written rows x hidden size)."""
        return sum((m.n_used - 1) * m.hidden_size for m in self.layers.values())

    def footprint_bytes(self) -> int:
        """Bytes held by the memory (keys, projection, row map, written values)."""
        total = 0
        for m in self.layers.values():
            for name in ("proj", "subkeys", "q_mean", "q_std", "row_map", "match_keys"):
                t = getattr(m, name)
                total += t.numel() * t.element_size()
            total += m.n_used * m.hidden_size * m.store.element_size() + m.n_used * 8
        return total


def get_memory(model: nn.Module) -> MoME:
    """The :class:`MoME` attached to ``model`` (raises if there is none)."""
    mome = model.__dict__.get(MEMORY_ATTRIBUTE)
    if mome is None:
        raise ValueError("model has no memory experts; call add_memory_experts(model, config)")
    return mome


def add_memory_experts(model: nn.Module, config: MoMEConfig | str = "book", *,
                       tokenizer=None, calibration_texts: Sequence[str] | None = None) -> MoME:
    """Attach memory experts to ``model`` in place and freeze the backbone.

    ``config`` is a :class:`MoMEConfig` or a preset name. The memory hooks onto
    the decoder layers named by ``config.layers``; nothing in the model is
    copied or replaced, ``model.generate`` works unchanged, and until memory
    tuning writes a row the logits are bit-for-bit the backbone's. With
    ``query_norm="batchnorm"`` and a ``tokenizer``, the query statistics are
    estimated on ``calibration_texts`` (default: :data:`CALIBRATION_TEXT`).
    Returns the :class:`MoME` handle (also ``get_memory(model)``).
    """
    if isinstance(config, str):
        config = MoMEConfig.preset(config)
    if not isinstance(config, MoMEConfig):
        raise TypeError(f"config must be a MoMEConfig or preset name, got {type(config).__name__}")
    if MEMORY_ATTRIBUTE in model.__dict__:
        raise ValueError("model already has memory experts; remove_memory_experts(model) first")
    decoder = decoder_layers(model)
    n = len(decoder)
    ids = []
    for i in config.layers:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"MoMEConfig.layers has {i}, but the model has {n} decoder layers")
        ids.append(j)
    if len(set(ids)) != len(ids):
        raise ValueError(f"MoMEConfig.layers names a layer twice: {config.layers}")
    for p in model.parameters():
        p.requires_grad_(False)
    hidden = model.config.hidden_size
    dtype = next(model.parameters()).dtype
    layers = {j: MemoryLayer(config, hidden, seed=config.seed + 1000 * k, dtype=dtype)
              for k, j in enumerate(sorted(ids))}
    mome = MoME(model, config, sorted(ids), layers)
    mome.attach()
    model.__dict__[MEMORY_ATTRIBUTE] = mome
    if config.query_norm == "batchnorm" and tokenizer is not None:
        calibrate_query_norm(model, tokenizer, calibration_texts or CALIBRATION_TEXT)
    return mome


def remove_memory_experts(model: nn.Module) -> MoME:
    """Detach the memory from ``model`` (backbone untouched); returns the handle."""
    mome = get_memory(model)
    mome.detach()
    del model.__dict__[MEMORY_ATTRIBUTE]
    return mome


@contextlib.contextmanager
def disable_memory(model: nn.Module) -> Iterator[MoME]:
    """``with disable_memory(model): ...`` runs the plain backbone; the memory is back after.

    The memory stays attached (nothing is detached or copied); it only stops
    adding to the residual stream inside the block, even if the block raises.
    """
    mome = get_memory(model)
    was = mome.enabled
    mome.enabled = False
    try:
        yield mome
    finally:
        mome.enabled = was


@torch.no_grad()
def calibrate_query_norm(model: nn.Module, tokenizer, texts: Sequence[str]) -> None:
    """Estimate and freeze each memory layer's per-feature query mean and std on ``texts``."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    mome = get_memory(model)
    for idx, mem in mome.layers.items():
        qs = []
        for t in texts:
            enc = tokenizer(t, return_tensors="pt", add_special_tokens=False)
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            h = layer_output(model, idx, batch)
            qs.append(h.reshape(-1, h.shape[-1]).to(mem.proj.dtype) @ mem.proj.T)
        q = torch.cat(qs)
        mem.q_mean.copy_(q.mean(0))
        mem.q_std.copy_(q.std(0).clamp_min(1e-5))
        mem.calibrated = True


# ----- save / load -----------------------------------------------------------

def backbone_signature(model: nn.Module) -> dict[str, Any]:
    """What a memory needs to match in a backbone: shape and a hash of some weights."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    probe = emb[: min(64, emb.shape[0])].detach().float().contiguous()
    digest = hashlib.sha256(probe.numpy().tobytes()).hexdigest()[:16]
    return {"model_type": getattr(cfg, "model_type", "?"), "hidden_size": cfg.hidden_size,
            "num_hidden_layers": len(decoder_layers(model)), "vocab_size": emb.shape[0],
            "embedding_hash": digest}


def save_memory(model: nn.Module, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the attached memory alone (no backbone weights) to a safetensors file.

    The file is written to a temporary name in the same folder and renamed into
    place, so an interrupted save never leaves a half-written file. An existing
    file is never replaced unless ``overwrite=True``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    mome = get_memory(model)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose "
                              f"another path")
    tensors = {}
    for idx, m in mome.layers.items():
        p = f"layer{idx}."
        tensors[p + "proj"] = m.proj.contiguous()
        tensors[p + "subkeys"] = m.subkeys.contiguous()
        tensors[p + "q_mean"] = m.q_mean.contiguous()
        tensors[p + "q_std"] = m.q_std.contiguous()
        tensors[p + "rows"] = m.written_rows.clone().contiguous()
        tensors[p + "values"] = m.store[1:m.n_used].clone().contiguous()
        tensors[p + "match_keys"] = m.match_keys.clone().contiguous()
    meta = {"format": "lamini_lite.mome/1", "config": mome.config.to_json(),
            "layer_ids": json.dumps(mome.layer_ids),
            "backbone": json.dumps(backbone_signature(model), sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_memory_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved memory; MemoryCompatibilityError if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "lamini_lite.mome/1":
                raise MemoryCompatibilityError(f"{path} is not a saved MoME memory "
                                               f"(no 'lamini_lite.mome/1' format tag)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except MemoryCompatibilityError:
        raise
    except Exception as e:  # safetensors raises its own error type for a corrupt header
        raise MemoryCompatibilityError(f"{path} is not a readable safetensors file "
                                       f"({type(e).__name__}: {e})") from e
    missing = [k for k in ("config", "layer_ids", "backbone") if k not in meta]
    if missing:
        raise MemoryCompatibilityError(f"{path} lacks the metadata {missing} of a saved memory")
    return meta, tensors


def load_memory(model: nn.Module, path: str | Path, *,
                config: MoMEConfig | None = None) -> MoME:
    """Attach a memory saved by :func:`save_memory` to ``model`` (a fresh backbone).

    Raises:
        MemoryCompatibilityError: the file is not a readable saved memory
            (corrupt, truncated, another format), was saved on a different
            backbone (shape or weights), or ``config`` differs from the saved one.
        FileNotFoundError: no such file.
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no memory file at {path}")
    meta, tensors = _read_memory_file(path)
    saved_cfg = MoMEConfig.from_json(meta["config"])
    if config is not None and config != saved_cfg:
        raise MemoryCompatibilityError(f"config differs from the saved memory's: given {config}, "
                                       f"saved {saved_cfg}")
    want = json.loads(meta["backbone"])
    have = backbone_signature(model)
    diff = {k: (want[k], have.get(k)) for k in want if want[k] != have.get(k)}
    if diff:
        raise MemoryCompatibilityError(
            f"memory in {path} was saved on a different backbone; mismatched "
            f"(saved, this model): {diff}")
    mome = add_memory_experts(model, saved_cfg)
    if json.loads(meta["layer_ids"]) != mome.layer_ids:
        remove_memory_experts(model)
        raise MemoryCompatibilityError("saved layer ids do not match this backbone")
    for idx, m in mome.layers.items():
        p = f"layer{idx}."
        for name in ("proj", "subkeys", "q_mean", "q_std"):
            getattr(m, name).copy_(tensors[p + name])
        rows = tensors[p + "rows"]
        m.allocate(rows)
        m.store[m.row_map[rows]] = tensors[p + "values"].to(m.store.dtype)
        if p + "match_keys" in tensors:
            m.match_keys = tensors[p + "match_keys"].to(m.store.dtype)
        m.calibrated = True
    return mome


MEMORY_FILE = "memory.safetensors"
CONFIG_FILE = "mome_config.json"


def save_pretrained(model: nn.Module, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Save the attached memory as PEFT saves an adapter: a folder with the config as JSON
    (:data:`CONFIG_FILE`) and the memory (:data:`MEMORY_FILE`, see :func:`save_memory`).

    Raises:
        FileExistsError: either file exists and ``overwrite`` is False (nothing is written).
    """
    directory = Path(directory)
    files = [directory / CONFIG_FILE, directory / MEMORY_FILE]
    taken = [str(f) for f in files if f.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken} exist; pass overwrite=True to replace them, or choose "
                              f"another directory")
    mome = get_memory(model)
    save_memory(model, files[1], overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(mome.config.to_json())
    os.replace(tmp, files[0])
    return directory


def from_pretrained(model: nn.Module, directory: str | Path) -> MoME:
    """Attach the memory saved by :func:`save_pretrained` in ``directory`` to ``model``.

    Raises:
        FileNotFoundError: the folder lacks :data:`CONFIG_FILE` or :data:`MEMORY_FILE`.
        MemoryCompatibilityError: the files do not fit this backbone or each other.
    """
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory} (saved by save_pretrained?)")
    try:
        config = MoMEConfig.from_json(cfg_path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise MemoryCompatibilityError(f"{cfg_path} is not a MoME config: {e}") from e
    return load_memory(model, directory / MEMORY_FILE, config=config)


CALIBRATION_TEXT: list[str] = [
    "The river widens below the old mill, where the water slows and turns brown with silt.",
    "She opened the letter at the kitchen table and read it twice before saying anything.",
    "Most bread recipes need only flour, water, salt and yeast, plus a little patience.",
    "The committee met on Tuesday to discuss the budget for the new library wing.",
    "Q: What colour is the sky on a clear day?\nA: Blue\n",
    "In winter the village is quiet, and the only sound at night is the wind in the pines.",
    "Researchers measured the temperature of the lake every hour for three summers.",
    "He forgot his umbrella on the train, so he arrived at the meeting soaked.",
    "Q: How many legs does a spider have?\nA: Eight\n",
    "The museum's new exhibition traces the history of printing from woodblocks to lasers.",
    "A good map shows not only roads and towns but also the shape of the land.",
    "The children built a small boat from driftwood and watched it drift out of the bay.",
    "Q: Who wrote the play Romeo and Juliet?\nA: William Shakespeare\n",
    "Prices rose sharply in the spring, and many families changed how they shopped.",
    "Engineers tested the bridge by driving loaded trucks across it at walking speed.",
    "Q: What is the largest ocean on Earth?\nA: The Pacific Ocean\n",
]
