import random

import numpy as np
import pytest
import torch

from lamini_lite.seeding import numpy_rng, seed_everything, torch_generator


def test_seed_everything_is_deterministic():
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_local_generators():
    assert torch.equal(torch.rand(3, generator=torch_generator(1)),
                       torch.rand(3, generator=torch_generator(1)))
    assert numpy_rng(1).random() == numpy_rng(1).random()


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)


def test_run_seed_reads_the_environment(monkeypatch):
    from lamini_lite.seeding import run_seed, run_seeds
    monkeypatch.delenv("LAMINI_LITE_SEED", raising=False)
    assert run_seed() == 0 and run_seeds([0, 1]) == [0, 1]
    monkeypatch.setenv("LAMINI_LITE_SEED", "3")
    assert run_seed() == 3 and run_seeds([0, 1]) == [300, 301]
    monkeypatch.setenv("LAMINI_LITE_SEED", "-1")
    with pytest.raises(ValueError, match="LAMINI_LITE_SEED must be a non-negative integer"):
        run_seed()
    monkeypatch.setenv("LAMINI_LITE_SEED", "abc")
    with pytest.raises(ValueError, match="non-negative integer"):
        run_seed()
    with pytest.raises(ValueError, match="seeds must be ints"):
        run_seeds([100], run=0)
