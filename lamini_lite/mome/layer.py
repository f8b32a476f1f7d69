"""One memory layer: product keys pick a few expert rows per token, a sparse table holds them.

:class:`MemoryLayer` is a product-key memory with ``n_keys**2`` expert rows. A
frozen random projection makes a query per head; product keys pick the top-k
rows per head in ``O(sqrt(N))``; the output is ``memory_lookup(values, rows,
weights)`` (:mod:`lamini_lite.kernels`: Triton on a GPU, PyTorch on a CPU)
added to the residual stream. The value table is *sparse*: only rows that were
ever trained are stored, all others are zero. :class:`TrainContext` is what
memory tuning hands the layer for one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import memory_lookup
from .config import MoMEConfig

__all__ = ["MemoryLayer", "TrainContext"]


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
        # During memory tuning: rows (bool over experts) that earlier memorize calls' facts
        # read, which this call may neither allocate nor step (None: nothing frozen).
        self.frozen_rows: torch.Tensor | None = None

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
        return self._select_q(self.query(x))

    @torch.no_grad()
    def rows_of_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows ``(K, heads*topk)`` that the queries stored as match keys select.

        A key is its query scaled to unit norm, and a positive scale changes no
        head's top-k, so these are exactly the rows those positions read.
        """
        return self._select_q(keys.view(-1, self.config.heads, self.config.key_dim))[0]

    def _select_q(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`select` from queries ``q`` ``(M, heads, key_dim)``."""
        c = self.config
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
        m = q.shape[0]
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
                mine = rows[gm]
                if self.frozen_rows is not None:  # rows earlier facts read stay as they are
                    mine = mine[~self.frozen_rows[mine]]
                self.allocate(mine)
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
