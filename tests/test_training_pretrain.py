"""Tests of the synthetic backbone's pretraining loop, cache and recall measurement."""

from __future__ import annotations

import pytest
import torch

from lamini_lite.facts import Fact
from lamini_lite.facts.synthetic import make_world
from lamini_lite.models import count_parameters
from lamini_lite.training.pretrain import (
    EXPOSURE_BINS,
    PretrainConfig,
    answer_kind,
    bin_label,
    build_backbone,
    closed_book_answers,
    corpus_batches,
    load_backbone,
    pretrain,
    recall_by_exposure,
)

TINY = PretrainConfig(hidden_size=32, num_layers=1, num_heads=2, steps=25, batch_size=4,
                      seq_len=32, lr=3e-3, warmup_steps=3)


@pytest.fixture(scope="module")
def world():
    return make_world(n_people=20, seed=0)


def _train(world, seed=0):
    model = build_backbone(len(world.tokenizer), TINY, seed=seed)
    info = pretrain(model, world, world.tokenizer, TINY, seed=seed, progress=False)
    return model, info


def test_tiny_pretrain_reduces_loss_and_is_deterministic(world):
    threads_before = torch.get_num_threads()
    model, info = _train(world)
    curve = info["loss_curve"]
    assert len(curve) == TINY.steps
    assert torch.get_num_threads() == threads_before  # restored after training
    assert sum(curve[-5:]) / 5 < sum(curve[:3]) / 3 - 0.5  # clearly learning
    again, info2 = _train(world)
    assert info2["loss_curve"] == curve
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # another seed: another initialization and another data order
    assert not torch.equal(build_backbone(len(world.tokenizer), TINY, seed=1).lm_head.weight,
                           build_backbone(len(world.tokenizer), TINY, seed=0).lm_head.weight)
    tok = world.tokenizer
    assert not torch.equal(next(corpus_batches(world, tok, TINY, seed=1)),
                           next(corpus_batches(world, tok, TINY, seed=0)))


def test_corpus_batches_cover_the_corpus_in_windows(world):
    tok = world.tokenizer
    gen = corpus_batches(world, tok, TINY, seed=0)
    x = next(gen)
    assert x.shape == (TINY.batch_size, TINY.seq_len) and x.dtype == torch.long
    assert tok.unk_token_id not in x and tok.pad_token_id not in x
    assert torch.equal(next(corpus_batches(world, tok, TINY, seed=0)), x)
    big = PretrainConfig(batch_size=10_000, seq_len=128)
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(corpus_batches(world, tok, big))


@pytest.mark.slow
def test_load_backbone_caches_weights(world, tmp_cache):
    m1, tok, w, info = load_backbone(TINY, world, seed=0, progress=False)
    assert info["trained_now"] and info["n_params"] == count_parameters(m1)
    assert len(info["loss_curve"]) == TINY.steps and info["train_seconds"] > 0
    m2, _, _, info2 = load_backbone(TINY, world, seed=0, progress=False)
    assert not info2["trained_now"] and info2["loss_curve"] == info["loss_curve"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(),
                                                 m2.state_dict().values()))
    answers = closed_book_answers(m2, tok, w.facts[:6])
    assert len(answers) == 6 and all(isinstance(a, str) for a in answers)


def test_answer_kind_sorts_wrong_answers():
    f = Fact("Alice Varn", "birth_city", "Velmora", "Where was Alice Varn born?", popularity=0)
    assert answer_kind(f, "Velmora") == "correct"
    assert answer_kind(f, " Caldreth ") == "wrong_same_type"
    assert answer_kind(f, "Korvex Labs") == "wrong_other_type"
    assert answer_kind(f, "born in") == "other"
    assert answer_kind(f, "") == "other"


def test_recall_by_exposure_from_predictions():
    facts = [Fact(f"P{i} X", "sport", "chess", f"Which sport does P{i} X play?", popularity=k)
             for i, k in enumerate([0, 0, 1, 5, 20, 30])]
    preds = ["tennis", "", "chess", "Velmora", "chess", "chess"]
    df = recall_by_exposure(None, None, facts, predictions=preds)
    assert list(df["exposure"]) == ["0", "1", "4-7", "16+"]  # empty bins dropped
    row = df.set_index("exposure")
    assert row.loc["0", "n"] == 2 and row.loc["0", "recall"] == 0
    assert row.loc["0", "wrong_same_type"] == 0.5 and row.loc["0", "other"] == 0.5
    assert row.loc["4-7", "wrong_other_type"] == 1.0
    assert row.loc["16+", "recall"] == 1.0
    with pytest.raises(ValueError, match="predictions must match"):
        recall_by_exposure(None, None, facts, predictions=preds[:2])
    with pytest.raises(ValueError, match="bins"):
        recall_by_exposure(None, None, facts, bins=[(3, 1)], predictions=preds)


def test_bin_labels():
    assert [bin_label(*b) for b in EXPOSURE_BINS] == ["0", "1", "2-3", "4-7", "8-15", "16+"]


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"hidden_size": 30, "num_heads": 4}, "divisible"),
    ({"lr": 0.0}, "lr"), ({"batch_size": 1.5}, "batch_size"), ({"warmup_steps": -1}, "warmup"),
])
def test_bad_pretrain_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**kwargs)


def test_load_backbone_bad_args(world):
    with pytest.raises(ValueError, match="seed"):
        load_backbone(TINY, world, seed=-2)
    with pytest.raises(TypeError, match="config"):
        load_backbone({"steps": 3}, world)


