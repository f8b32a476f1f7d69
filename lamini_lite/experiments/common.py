"""What several chapters share: the synthetic world, its backbone and SliCK's sizes.

The sizes of the sections ``facts_synthetic`` (the invented world), ``pretrain``
(the tiny backbone pretrained on it) and ``slick`` (the knowledge probe) are
registered here, and the helpers below build the profile's world and backbone,
so that chapters 0.1, 1, 2, 3 and 5 train and probe the very same models::

    from lamini_lite.experiments.common import load_backbone
    model, tokenizer, world, info = load_backbone(seed=0)   # active profile's sizes

The library itself never reads a profile: :func:`lamini_lite.training.pretrain.load_backbone`
takes its config and world as arguments.
"""

from __future__ import annotations

from ..facts.synthetic import SyntheticWorld, WorldConfig, make_world
from ..profiles import register_sizes, sizes
from ..training import pretrain

__all__ = ["world_from_sizes", "config_from_sizes", "load_backbone"]

register_sizes(
    "facts_synthetic",
    ci={"n_people": 150, "max_exposure": 50},
    book={"n_people": 1000, "max_exposure": 50},
    full={"n_people": 10000, "max_exposure": 50},
)

register_sizes(
    "pretrain",
    ci={"hidden_size": 128, "num_layers": 2, "num_heads": 4, "steps": 300, "batch_size": 16,
        "seq_len": 128, "lr": 3e-3},
    book={"hidden_size": 128, "num_layers": 4, "num_heads": 4, "steps": 800, "batch_size": 16,
          "seq_len": 128, "lr": 3e-3},
    full={"hidden_size": 256, "num_layers": 6, "num_heads": 8, "steps": 8000, "batch_size": 32,
          "seq_len": 128, "lr": 2e-3},
)

# Sizes for the chapter (book/02_slick_knowledge_categories.ipynb) and the benchmark.
register_sizes(
    "slick",
    # ci: n_synthetic_facts as in the book, so that the rank correlation and AUC of
    # chapter 2 have intervals narrow enough to test (the tiny backbone runs it in
    # seconds); n_template_facts small, since the probe comparison (two reruns of these
    # facts on SmolLM2) carries no claim
    ci=dict(per_relation=12, exemplar_sets=20, n_template_facts=16, n_synthetic_facts=400,
            bench_facts=2),
    book=dict(per_relation=300, exemplar_sets=50, n_template_facts=160, n_synthetic_facts=400,
              bench_facts=4),
    full=dict(per_relation=2000, exemplar_sets=200, n_template_facts=1000,
              n_synthetic_facts=2000, bench_facts=10),
)


def world_from_sizes(profile: str | None = None, *, seed: int = 0) -> SyntheticWorld:
    """The world of the active profile's ``sizes("facts_synthetic")`` (or ``profile``'s)."""
    s = sizes("facts_synthetic", profile)
    return make_world(WorldConfig(n_people=s.n_people, max_exposure=s.max_exposure), seed=seed)


def config_from_sizes(profile: str | None = None) -> pretrain.PretrainConfig:
    """The :class:`~lamini_lite.training.pretrain.PretrainConfig` of ``sizes("pretrain")``."""
    return pretrain.PretrainConfig(**dict(sizes("pretrain", profile)))


def load_backbone(*, seed: int = 0, profile: str | None = None, progress: bool = True,
                  refresh: bool = False):
    """The profile's pretrained synthetic backbone: ``(model, tokenizer, world, info)``.

    :func:`lamini_lite.training.pretrain.load_backbone` on
    ``config_from_sizes(profile)`` and ``world_from_sizes(profile, seed=seed)``
    (the active profile when ``profile`` is None); cached after the first call.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return pretrain.load_backbone(config_from_sizes(profile), world_from_sizes(profile, seed=seed),
                                  seed=seed, progress=progress, refresh=refresh)
