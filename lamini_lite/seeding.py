"""Seeds as arguments: helpers that make CPU runs deterministic for a given seed."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``.

    Experiment functions take a ``seed`` argument and call this (or use
    :func:`torch_generator` / :func:`numpy_rng` for local streams), so that a
    CPU run is reproducible bit for bit for the same seed and sizes.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def torch_generator(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed``."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    """A fresh NumPy ``Generator`` seeded with ``seed``."""
    return np.random.default_rng(seed)


SEED_ENV = "LAMINI_LITE_SEED"  # the run's seed; the robustness command sets it per run


def run_seed() -> int:
    """The seed of this run of the book: ``$LAMINI_LITE_SEED`` (default 0).

    Each chapter reads it once in its first cell and passes it (as an argument)
    to everything that draws at random: the synthetic world and its
    pretraining, the fact draws, the sampling. The committed outputs come from
    seed 0; ``python -m lamini_lite.bench robustness --seeds 0,1,2,3,4`` runs
    every chapter once per seed to show that its claims survive the change.

    Raises:
        ValueError: if the variable is set to anything but a non-negative integer.
    """
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return 0
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if seed < 0:
        raise ValueError(f"{SEED_ENV} must be a non-negative integer, got {raw!r}")
    return seed


def run_seeds(seeds: list[int], run: int | None = None) -> list[int]:
    """A chapter's list of seeds moved to this run: ``s + 100 * run`` for each ``s``.

    Seed 0 (the committed outputs) keeps the list as it is; another run gets
    seeds no other run of up to 100 seeds shares.
    """
    run = run_seed() if run is None else run
    if any(not isinstance(s, int) or s < 0 or s >= 100 for s in seeds):
        raise ValueError(f"seeds must be ints in [0, 100), got {seeds!r}")
    return [s + 100 * run for s in seeds]


def stable_int(*parts: Any) -> int:
    """A 63-bit seed from ``parts``, the same on every machine and Python run
    (unlike ``hash``): ``numpy.random.default_rng(stable_int("pick", seed, key))``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
