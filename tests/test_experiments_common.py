"""Tests of lamini_lite.experiments.common: the shared sizes, world and backbone of the book."""

from __future__ import annotations

import pytest

from lamini_lite.experiments.common import config_from_sizes, load_backbone, world_from_sizes
from lamini_lite.profiles import sizes


def test_sizes_registered_and_world_from_sizes():
    for profile in ("ci", "book", "full"):
        assert sizes("facts_synthetic", profile).n_people >= 100
    w = world_from_sizes("ci", seed=0)
    assert len(w.people) == sizes("facts_synthetic", "ci").n_people


def test_sizes_registered():
    for profile in ("ci", "book", "full"):
        cfg = config_from_sizes(profile)
        assert cfg.steps == sizes("pretrain", profile).steps >= 300


def test_load_backbone_rejects_a_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        load_backbone(seed=-1)
