"""MoME: a Mixture of Memory Experts on a frozen backbone.

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
* :func:`memorize` (in :mod:`lamini_lite.mome_train`) -- memory tuning:
  gradient only reaches the rows that answer tokens select, Adam state only
  for those rows, until every fact is recalled exactly.
* :func:`save_memory` / :func:`load_memory` -- the memory alone, as safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lm import position_ids
from .profiles import register_sizes

try:  # the Triton-backed lookup (PyTorch reference on CPU tensors)
    from lamini_lite.kernels import memory_lookup
except ImportError:  # pragma: no cover - only while the kernels package is incomplete
    def memory_lookup(values: torch.Tensor, indices: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """Reference lookup: ``out[..., :] = sum_k weights[..., k] * values[indices[..., k]]``."""
        lead = indices.shape[:-1]
        k = indices.shape[-1]
        out = F.embedding_bag(indices.reshape(-1, k), values, mode="sum",
                              per_sample_weights=weights.reshape(-1, k).to(values.dtype))
        return out.reshape(*lead, values.shape[-1])

__all__ = ["MoMEConfig", "PRESETS", "MemoryLayer", "MoME", "MemoryCompatibilityError",
           "add_memory_experts", "remove_memory_experts", "get_memory", "save_memory",
           "load_memory", "calibrate_query_norm", "CALIBRATION_TEXT", "memory_lookup"]

QUERY_NORMS = ("none", "layernorm", "batchnorm")
EXPERT_FORMS = ("value", "peer")
GATES = ("none", "written", "match")


@dataclass(frozen=True)
class MoMEConfig:
    """How the memory experts look and where they sit (choices of this book).

    The paper gives none of these numbers; the defaults follow product-key
    memory (Lample et al. 2019) and what worked on SmolLM2-135M here.
    """

    # Sub-keys per half of the product key; the memory has n_keys**2 expert rows
    # (1024 -> 2^20 = 1,048,576 experts).
    n_keys: int = 256
    # Independent selection heads; each picks its own top-k rows, outputs are summed.
    heads: int = 4
    # Rows (experts) each head selects per token. Rows written per answer token
    # grow with heads * topk: 4 x 4 memorizes as reliably as 4 x 8 on SmolLM2 and
    # writes ~40% fewer rows (200 facts: 2,757 vs 4,540 rows).
    topk: int = 4
    # Query / product-key size per head (split in two halves of key_dim // 2).
    key_dim: int = 256
    # "value": an expert is one value vector; "peer": a single-neuron expert whose
    # down vector is its own product key, so it outputs gelu(score) * value
    # (PEER-style, He 2024, without a second gather).
    expert: str = "value"
    # Query normalization: "none", "layernorm" (per token), or "batchnorm" (per
    # feature, with statistics estimated once on text and then frozen).
    query_norm: str = "batchnorm"
    # Decoder layers after which a memory adds its output to the residual stream;
    # negative numbers count from the top (-3 = third-from-last layer).
    layers: tuple[int, ...] = (-3,)
    # "none": the memory output is always added. "written": it is added only at
    # tokens whose selected rows are mostly rows that memory tuning wrote to.
    # "match": only at tokens whose query matches the query of a memorized
    # answer position (cosine >= match_threshold): a key-match confidence gate.
    gate: str = "match"
    # With gate="written": the share of selection weight that must land on written
    # rows (averaged over heads) for the memory to speak at a token.
    gate_threshold: float = 0.6
    # With gate="match": the cosine similarity between a token's query and the
    # nearest memorized query needed for the memory to speak.
    match_threshold: float = 0.999
    # Softmax temperature over each head's top-k scores.
    temperature: float = 1.0
    # Seed of the frozen random query projection and product keys.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_keys", "heads", "topk", "key_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MoMEConfig.{name} must be a positive int, got {v!r}")
        if self.key_dim % 2:
            raise ValueError(f"MoMEConfig.key_dim must be even (two halves), got {self.key_dim}")
        if self.topk > self.n_keys:
            raise ValueError(f"MoMEConfig.topk ({self.topk}) must be <= n_keys ({self.n_keys})")
        if self.expert not in EXPERT_FORMS:
            raise ValueError(f"MoMEConfig.expert must be one of {EXPERT_FORMS}, got {self.expert!r}")
        if self.query_norm not in QUERY_NORMS:
            raise ValueError(f"MoMEConfig.query_norm must be one of {QUERY_NORMS}, "
                             f"got {self.query_norm!r}")
        if self.gate not in GATES:
            raise ValueError(f"MoMEConfig.gate must be one of {GATES}, got {self.gate!r}")
        if not 0.0 < float(self.gate_threshold) <= 1.0:
            raise ValueError(f"MoMEConfig.gate_threshold must be in (0, 1], "
                             f"got {self.gate_threshold!r}")
        if not -1.0 <= float(self.match_threshold) <= 1.0:
            raise ValueError(f"MoMEConfig.match_threshold must be in [-1, 1], "
                             f"got {self.match_threshold!r}")
        if not self.temperature > 0:
            raise ValueError(f"MoMEConfig.temperature must be > 0, got {self.temperature!r}")
        layers = tuple(self.layers) if not isinstance(self.layers, int) else (self.layers,)
        if not layers or not all(isinstance(i, int) for i in layers):
            raise ValueError(f"MoMEConfig.layers must be a non-empty tuple of ints, "
                             f"got {self.layers!r}")
        object.__setattr__(self, "layers", layers)

    @property
    def n_experts(self) -> int:
        """Number of expert rows, ``n_keys ** 2``."""
        return self.n_keys ** 2

    def to_json(self) -> str:
        """The config as a JSON string (saved with the memory)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MoMEConfig":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["layers"] = tuple(d["layers"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "MoMEConfig":
        """A named preset (``"test"``, ``"book"``, ``"scale"``), optionally changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown MoME preset {name!r}; presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **changes)


PRESETS: dict[str, MoMEConfig] = {
    # Tiny, for unit tests on a tiny Llama: 256 rows.
    "test": MoMEConfig(n_keys=16, heads=2, topk=4, key_dim=16, layers=(-1,)),
    # The chapter on SmolLM2: 2^16 rows after layer 28 of 30.
    "book": MoMEConfig(n_keys=256, heads=4, topk=4, key_dim=256, layers=(-3,)),
    # A million experts: 2^20 rows (only written rows are stored).
    "scale": MoMEConfig(n_keys=1024, heads=4, topk=4, key_dim=256, layers=(-3,)),
}

register_sizes(
    "mome",
    # n_facts: facts memorized (half SliCK-Unknown real facts, half random codes);
    # n_keys: sqrt of the expert count of their memory, sized to n_facts (at 2^16 rows
    # 1,000 facts interfere: recall peaked at 93.5%, then fell); the n_compare facts
    # always use the "book" preset's 2^16;
    # n_unrelated, n_near, n_known: probe sets (ci: the chapter's targets, >= 85% of
    # unrelated and >= 80% of near answers unchanged, are tested on the lower end of
    # a 95% Wilson interval, which needs 22 and 16 questions even if all are
    # unchanged; 40 of each leave room for one and for three changed answers);
    # n_compare: facts of the MoME vs fine-tuning
    # comparison (every method trains on the same ones); baselines: (trainable, lr)
    # of the fine-tuning baselines; scale_log2 and lookup_tokens: the lookup sweep.
    ci=dict(n_facts=16, n_keys=256, answer_chars=32, n_unrelated=40,
            n_near=40, n_known=10, max_epochs=40, n_compare=16, baselines=[["top:2", 1e-3]],
            scale_log2=[10, 12, 14, 16], lookup_tokens=256),
    book=dict(n_facts=200, n_keys=256, answer_chars=32, n_unrelated=50,
              n_near=50, n_known=40, max_epochs=40, n_compare=30, baselines=[["top:2", 1e-3]],
              scale_log2=[10, 12, 14, 16, 18, 20], lookup_tokens=1024),
    full=dict(n_facts=1000, n_keys=1024, answer_chars=32, n_unrelated=60,
              n_near=200, n_known=100, max_epochs=60, n_compare=30,
              baselines=[["top:2", 1e-3], ["all", 3e-5]],
              scale_log2=[10, 12, 14, 16, 18, 20], lookup_tokens=4096),
)


class MemoryLayer(nn.Module):
    """A product-key memory over ``n_keys**2`` expert rows with a sparse value store.

    Frozen: the query projection, the product keys and the query statistics.
    Trained: only ``values`` rows that memory tuning allocated ("written" rows).
    Row ``r`` lives at slot ``row_map[r]`` of ``store``; slot 0 is a permanent
    zero row that every unwritten row points to, so an untrained memory outputs
    exactly zero.
    """

    def __init__(self, config: MoMEConfig, hidden_size: int, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
        self.config = config
        self.hidden_size = hidden_size
        c = config
        g = torch.Generator().manual_seed(c.seed if seed is None else seed)
        half = c.key_dim // 2
        self.register_buffer("proj", torch.randn(c.heads * c.key_dim, hidden_size, generator=g,
                                                 dtype=dtype) / math.sqrt(hidden_size))
        self.register_buffer("subkeys", torch.randn(c.heads, 2, c.n_keys, half, generator=g,
                                                    dtype=dtype) / math.sqrt(half))
        self.register_buffer("q_mean", torch.zeros(c.heads * c.key_dim, dtype=dtype))
        self.register_buffer("q_std", torch.ones(c.heads * c.key_dim, dtype=dtype))
        self.register_buffer("row_map", torch.zeros(c.n_experts, dtype=torch.long))
        self.register_buffer("store", torch.zeros(1, hidden_size, dtype=dtype))
        self.register_buffer("slot_rows", torch.full((1,), -1, dtype=torch.long))
        # Unit-norm queries of memorized answer positions (for gate="match").
        self.register_buffer("match_keys", torch.zeros(0, c.heads * c.key_dim, dtype=dtype))
        self.n_used = 1            # slot 0 is the zero row
        self.calibrated = False

    # ----- selection -------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized queries ``(M, heads, key_dim)`` for hidden states ``x`` ``(M, hidden)``."""
        c = self.config
        q = x.to(self.proj.dtype) @ self.proj.T
        if c.query_norm == "batchnorm":
            q = (q - self.q_mean) / self.q_std
        q = q.view(-1, c.heads, c.key_dim)
        if c.query_norm == "layernorm":
            q = F.layer_norm(q, (c.key_dim,))
        return q

    @torch.no_grad()
    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, weights and scores of the experts each token picks.

        ``x`` is ``(M, hidden)``. Returns ``rows`` ``(M, heads*topk)`` (int64 ids
        in ``[0, n_keys**2)``), ``weights`` (softmax within each head, so each
        head's weights sum to 1) and the raw ``scores``, both ``(M, heads*topk)``.
        Cost per token: ``2 * heads * n_keys`` half-key dot products plus a
        ``topk x topk`` candidate grid -- never the ``N`` rows.
        """
        c = self.config
        q = self.query(x)
        half = c.key_dim // 2
        s1 = torch.einsum("mhd,hnd->mhn", q[..., :half], self.subkeys[:, 0])
        s2 = torch.einsum("mhd,hnd->mhn", q[..., half:], self.subkeys[:, 1])
        v1, i1 = s1.topk(c.topk, dim=-1)
        v2, i2 = s2.topk(c.topk, dim=-1)
        grid = (v1[..., :, None] + v2[..., None, :]).flatten(-2)       # (M, h, k*k)
        best, pos = grid.topk(c.topk, dim=-1)
        # Gather the real sub-key ids of the winners (not their grid positions).
        a = i1.gather(-1, pos // c.topk)
        b = i2.gather(-1, pos % c.topk)
        rows = a * c.n_keys + b
        w = torch.softmax(best / c.temperature, dim=-1)
        if c.expert == "peer":
            w = w * F.gelu(best)
        m = x.shape[0]
        return rows.reshape(m, -1), w.reshape(m, -1), best.reshape(m, -1)

    # ----- the value store -------------------------------------------------
    @property
    def written_rows(self) -> torch.Tensor:
        """Ids of the rows memory tuning has written (one per used slot)."""
        return self.slot_rows[1:self.n_used]

    @property
    def values(self) -> torch.Tensor:
        """The stored value vectors ``(n_written + 1, hidden)``; slot 0 is zeros."""
        return self.store[:self.n_used]

    def allocate(self, rows: torch.Tensor) -> torch.Tensor:
        """Give every not-yet-written row in ``rows`` a zero slot; return their slots."""
        rows = rows.reshape(-1)
        new = torch.unique(rows[self.row_map[rows] == 0])
        if new.numel():
            need = self.n_used + new.numel()
            if need > self.store.shape[0]:
                cap = max(need, 2 * self.store.shape[0])
                grow = cap - self.store.shape[0]
                self.store = torch.cat([self.store, self.store.new_zeros(grow, self.hidden_size)])
                self.slot_rows = torch.cat([self.slot_rows, self.slot_rows.new_full((grow,), -1)])
            slots = torch.arange(self.n_used, need)
            self.row_map[new] = slots
            self.slot_rows[slots] = new
            self.n_used = need
        return self.row_map[rows]

    @torch.no_grad()
    def remember(self, x: torch.Tensor) -> None:
        """Store the unit-norm queries of hidden states ``x`` ``(M, hidden)`` as match keys."""
        q = F.normalize(self.query(x).reshape(x.shape[0], -1), dim=-1)
        self.match_keys = torch.cat([self.match_keys, q.to(self.match_keys.dtype)])

    @torch.no_grad()
    def match_score(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Cosine similarity ``(M,)`` of each token's query to the nearest match key.

        -1 where no key is stored. Cost per token: one dot product per
        memorized answer position (it grows with the facts, not with ``N``).
        """
        m = x.shape[0]
        if not self.match_keys.shape[0]:
            return x.new_full((m,), -1.0)
        q = F.normalize(self.query(x).reshape(m, -1), dim=-1)
        best = torch.full((m,), -1.0, dtype=q.dtype)
        for s in range(0, self.match_keys.shape[0], chunk):
            best = torch.maximum(best, (q @ self.match_keys[s:s + chunk].T).amax(-1))
        return best

    def gate(self, rows: torch.Tensor, weights: torch.Tensor,
             x: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token gate ``(M,)`` in {0, 1} (all ones when ``config.gate == "none"``).

        ``x`` (the hidden states, ``(M, hidden)``) is needed for ``gate="match"``.
        """
        c = self.config
        if c.gate == "none":
            return torch.ones(rows.shape[0], dtype=self.store.dtype)
        if c.gate == "match":
            if x is None:
                raise ValueError("gate='match' needs the hidden states x")
            return (self.match_score(x) >= c.match_threshold).to(self.store.dtype)
        written = (self.row_map[rows] > 0).to(weights.dtype)
        w = weights.abs().view(rows.shape[0], c.heads, c.topk)
        share = (w * written.view_as(w)).sum(-1) / w.sum(-1).clamp_min(1e-12)
        return (share.mean(-1) >= c.gate_threshold).to(self.store.dtype)

    def write_share(self, x: torch.Tensor) -> torch.Tensor:
        """Share of each token's selection weight on written rows, ``(M,)``."""
        rows, w, _ = self.select(x)
        written = (self.row_map[rows] > 0).to(w.dtype)
        w = w.abs().view(rows.shape[0], self.config.heads, self.config.topk)
        return ((w * written.view_as(w)).sum(-1) / w.sum(-1).clamp_min(1e-12)).mean(-1)

    # ----- forward ---------------------------------------------------------
    def forward(self, h: torch.Tensor, ctx: "TrainContext | None" = None) -> torch.Tensor | None:
        """The memory's contribution for hidden states ``h`` ``(..., hidden)``, or None.

        None means "exactly zero" (nothing written, or every token gated off).
        With a :class:`TrainContext`, tokens in ``ctx.grad_mask`` allocate their
        rows and read them through small leaf tensors whose gradients the
        optimizer applies to the store (no dense gradient over N rows).
        """
        shape = h.shape
        x = h.reshape(-1, shape[-1])
        if ctx is None and self.n_used == 1:
            return None
        rows, w, _ = self.select(x)
        out = None
        if ctx is not None:
            active = (ctx.grad_mask | ctx.silence_mask).reshape(-1)
            gm = ctx.grad_mask.reshape(-1)
            if bool(gm.any()):
                self.allocate(rows[gm])
            if ctx.record and bool(gm.any()):
                self.remember(x[gm])
            gate = self.gate(rows, w, x)
            gate[gm] = 1          # the facts being memorized always read their rows
            pos = torch.nonzero(active & (gate > 0)).squeeze(-1)
            rest = torch.nonzero(~active & (gate > 0)).squeeze(-1)
            parts = []
            if pos.numel():
                slots = self.row_map[rows[pos]]
                uniq, inv = torch.unique(slots, return_inverse=True)
                leaf = self.store[uniq].clone().requires_grad_(True)
                ctx.leaves.append((self, uniq, leaf))
                y = memory_lookup(leaf, inv, w[pos].to(leaf.dtype))
                parts.append((pos, y))
                sil = ctx.silence_mask.reshape(-1)[pos]
                if bool(sil.any()):
                    ctx.penalties.append(y[sil].pow(2).sum(-1).mean()
                                         / x[pos][sil].detach().pow(2).sum(-1).mean())
            if rest.numel():
                with torch.no_grad():
                    y = memory_lookup(self.values, self.row_map[rows[rest]], w[rest])
                parts.append((rest, y))
            if not parts:
                return None
            out = x.new_zeros(x.shape[0], self.hidden_size)
            for p, y in parts:
                out = out.index_put((p,), y.to(out.dtype))
            return out.view(shape)
        gate = self.gate(rows, w, x)
        on = torch.nonzero(gate > 0).squeeze(-1)
        if not on.numel():
            return None
        y = memory_lookup(self.values, self.row_map[rows[on]], w[on])
        out = x.new_zeros(x.shape[0], self.hidden_size).index_put((on,), y.to(x.dtype))
        return out.view(shape)


@dataclass
class TrainContext:
    """Per-batch state that memory tuning hands to the memory layers."""

    # (B, T) tokens whose selected rows are trained (they predict answer tokens).
    grad_mask: torch.Tensor
    # (B, T) tokens where the memory is taught to stay silent (near-miss negatives).
    silence_mask: torch.Tensor
    # (layer, slots, leaf) triples filled by the forward; the leaf's grad is the rows' grad.
    leaves: list = field(default_factory=list)
    # Silence penalties (scalars) added to the loss.
    penalties: list = field(default_factory=list)
    # Store the queries at grad_mask tokens as match keys (for gate="match").
    record: bool = False


class MemoryCompatibilityError(ValueError):
    """A saved memory does not fit this backbone or configuration."""


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
        decoder = _decoder_layers(self.model)
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


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"model must be a transformers Llama-family causal LM with "
                        f"model.model.layers, got {type(model).__name__}")
    return layers


def get_memory(model: nn.Module) -> MoME:
    """The :class:`MoME` attached to ``model`` (raises if there is none)."""
    mome = model.__dict__.get("_lamini_mome")
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
    if "_lamini_mome" in model.__dict__:
        raise ValueError("model already has memory experts; remove_memory_experts(model) first")
    decoder = _decoder_layers(model)
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
    model.__dict__["_lamini_mome"] = mome
    if config.query_norm == "batchnorm" and tokenizer is not None:
        calibrate_query_norm(model, tokenizer, calibration_texts or CALIBRATION_TEXT)
    return mome


def remove_memory_experts(model: nn.Module) -> MoME:
    """Detach the memory from ``model`` (backbone untouched); returns the handle."""
    mome = get_memory(model)
    mome.detach()
    del model.__dict__["_lamini_mome"]
    return mome


class _Captured(Exception):
    pass


def _probe_backbone(model: nn.Module, batch: dict[str, torch.Tensor], handle) -> None:
    """Run the plain backbone (memory off) on ``batch`` until a hook raises ``_Captured``.

    ``handle`` is the hook's removable handle; it is removed afterwards.
    """
    mome = model.__dict__.get("_lamini_mome")
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
    decoder = _decoder_layers(model)
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

    _probe_backbone(model, batch, _decoder_layers(model)[layer].register_forward_hook(post))
    return box["h"]


def run_from(model: nn.Module, layer: int, h: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """Run decoder layers ``layer..`` (memory hooks active) and the final norm."""
    for block in _decoder_layers(model)[layer:]:
        out = block(h, **kw)
        h = out[0] if isinstance(out, tuple) else out
    return model.model.norm(h)


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
            "num_hidden_layers": len(_decoder_layers(model)), "vocab_size": emb.shape[0],
            "embedding_hash": digest}


def save_memory(model: nn.Module, path: str | Path) -> Path:
    """Write the attached memory alone (no backbone weights) to a safetensors file."""
    from safetensors.torch import save_file

    mome = get_memory(model)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_memory(model: nn.Module, path: str | Path, *,
                config: MoMEConfig | None = None) -> MoME:
    """Attach a memory saved by :func:`save_memory` to ``model`` (a fresh backbone).

    Raises:
        MemoryCompatibilityError: the file was saved on a different backbone
            (shape or weights), or ``config`` differs from the saved one.
        FileNotFoundError: no such file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no memory file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "lamini_lite.mome/1":
            raise MemoryCompatibilityError(f"{path} is not a saved MoME memory")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
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


from .mome_train import (MemorizeResult, RowAdam, fact_recall, memorize,  # noqa: E402
                         random_code_facts, text_loss)

__all__ += ["MemorizeResult", "RowAdam", "fact_recall", "memorize", "text_loss",
            "random_code_facts"]
