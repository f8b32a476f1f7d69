"""The shape of a Mixture of Memory Experts: :class:`MoMEConfig` and its presets.

Li et al. (2024) give no sizes, layers or key dimensions for Lamini-1's memory
experts; the fields below make those choices, following product-key memory
(Lample et al. 2019), memory layers at scale (Berges et al. 2024), PEER (He
2024) and sparse memory fine-tuning (Lin et al. 2025).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["MoMEConfig", "PRESETS", "MemoryCompatibilityError", "QUERY_NORMS", "EXPERT_FORMS",
           "GATES"]


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


class MemoryCompatibilityError(ValueError):
    """A saved memory does not fit this backbone or configuration."""
