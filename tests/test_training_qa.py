import pytest
import torch

from lamini_lite.lm import answer_token_losses, greedy_answers
from lamini_lite.models import tiny_llama
from lamini_lite.training import (
    FinetuneHistory,
    decoder_layers,
    finetune_qa,
    first_trained_layer,
    has_lora,
    merge_lora,
    select_trainable,
    unload_lora,
)

from conftest import toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def toy():
    tok = toy_tokenizer()
    model = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
    prompts = [f"Q: what n{i} likes ?\nA:" for i in range(8)]
    answers = [f"w{(3 * i) % 12} w{(5 * i + 1) % 12}" for i in range(8)]
    return model, tok, prompts, answers


def test_toy_tokenizer_round_trip(toy):
    _, tok, prompts, answers = toy
    ids = tok(" " + answers[0] + "\n", add_special_tokens=False)["input_ids"]
    assert 1 not in ids and ids[-1] == 2  # no unknown words; newline ends it
    assert tok.decode(ids).split("\n")[0].split() == answers[0].split()


def test_training_reduces_loss_and_memorizes(toy):
    model, tok, prompts, answers = toy
    before = [float(x.mean()) for x in answer_token_losses(model, tok, prompts, answers)]
    hist = finetune_qa(model, tok, prompts, answers, epochs=80, lr=3e-3, batch_size=8,
                       seed=0, progress=False)
    after = [float(x.mean()) for x in answer_token_losses(model, tok, prompts, answers)]
    assert isinstance(hist, FinetuneHistory) and hist.epochs_run == 80
    assert len(hist.train_loss) == 80 and len(hist.step_loss) == 80
    assert hist.train_loss[-1] < 0.1 * hist.train_loss[0]
    assert max(after) < 0.1 < min(before)
    got = greedy_answers(model, tok, prompts, max_new_tokens=4)
    assert [g.split() for g in got] == [a.split() for a in answers]
    assert not model.training


def test_deterministic_for_a_seed(toy):
    _, tok, prompts, answers = toy
    runs = []
    for seed in (0, 0, 1):
        model = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
        h = finetune_qa(model, tok, prompts, answers, epochs=3, lr=1e-3, batch_size=3,
                        seed=seed, progress=False)
        runs.append((h.step_loss, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]  # another seed shuffles differently


def _changed(model, before):
    return {k for k, v in model.state_dict().items()
            if k in before and not torch.equal(v, before[k])}


def test_top_n_trains_only_top_layers(toy):
    model, tok, prompts, answers = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    h = finetune_qa(model, tok, prompts, answers, epochs=2, lr=1e-3, batch_size=4,
                    trainable="top:1", progress=False)
    changed = _changed(model, before)
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    assert h.n_trainable == sum(p.numel() for p in decoder_layers(model)[1].parameters())
    assert [p.requires_grad for p in model.parameters()] == flags  # flags restored


def test_lora_trains_only_adapters_and_merges(toy):
    model, tok, prompts, answers = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = finetune_qa(model, tok, prompts, answers, epochs=30, lr=1e-2, batch_size=4,
                    trainable="lora:4", progress=False)
    assert has_lora(model) and h.train_loss[-1] < h.train_loss[0] - 0.3
    state = model.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys
    for k, v in before.items():  # base weights untouched (names gain '.base_layer')
        k2 = k if k in state else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[k2], v), k
    # our utilities work on the adapted model, and merging keeps its function
    prompts2 = prompts[:3]
    ans_lora = greedy_answers(model, tok, prompts2, max_new_tokens=4)
    loss_lora = answer_token_losses(model, tok, prompts2, answers[:3])
    merge_lora(model)
    assert not has_lora(model) and type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert greedy_answers(model, tok, prompts2, max_new_tokens=4) == ans_lora
    for a, b in zip(loss_lora, answer_token_losses(model, tok, prompts2, answers[:3])):
        assert torch.allclose(a, b, atol=1e-4)
    assert set(model.state_dict()) == set(before)


def test_unload_lora_restores_base(toy):
    model, tok, prompts, answers = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune_qa(model, tok, prompts, answers, epochs=2, lr=1e-2, batch_size=4,
                trainable="lora:2", progress=False)
    unload_lora(model)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(model)


def test_callable_trainable_and_eval_hooks(toy):
    model, tok, prompts, answers = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def only_norm(m):
        return [m.model.norm.weight]

    def stop_at_3(epoch, history):
        seen.append((epoch, len(history.train_loss)))
        return epoch == 3

    h = finetune_qa(model, tok, prompts, answers, epochs=10, lr=1e-2, batch_size=8,
                    trainable=only_norm, eval_fn=lambda m, e: {"epoch": e, "train": m.training},
                    eval_at_start=True, eval_every=2, on_epoch_end=stop_at_3, progress=False)
    assert _changed(model, before) == {"model.norm.weight"}
    assert h.stopped_early and h.epochs_run == 3 and seen == [(1, 1), (2, 2), (3, 3)]
    assert h.eval_epochs == [0, 2, 3] and all(e["train"] is False for e in h.evals)
    assert FinetuneHistory.from_dict(h.to_dict()) == h


@pytest.mark.parametrize("kwargs, match", [
    ({"trainable": "top"}, "trainable"), ({"trainable": "lora:0"}, ">= 1"),
    ({"trainable": "all:3"}, "trainable"), ({"trainable": "top:9"}, "only 2"),
    ({"trainable": 3}, "trainable"), ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"),
    ({"batch_size": 0}, "batch_size"), ({"optimizer": "lion"}, "optimizer"),
])
def test_bad_arguments(toy, kwargs, match):
    model, tok, prompts, answers = toy
    args = dict(epochs=1, lr=1e-3, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        finetune_qa(model, tok, prompts, answers, **args)


def test_mismatched_lengths(toy):
    model, tok, prompts, answers = toy
    with pytest.raises(ValueError, match="same length"):
        finetune_qa(model, tok, prompts, answers[:-1], epochs=1, lr=1e-3)
    with pytest.raises(TypeError, match="lists of strings"):
        finetune_qa(model, tok, prompts[0], answers[0], epochs=1, lr=1e-3)


def test_adafactor_option_trains(toy):
    model, tok, prompts, answers = toy
    h = finetune_qa(model, tok, prompts, answers, epochs=10, lr=1e-2, batch_size=4,
                    optimizer="adafactor", progress=False)
    assert h.train_loss[-1] < h.train_loss[0]


def test_select_trainable_all_then_lora_reuses_adapters(toy):
    model, *_ = toy
    n_all = len(select_trainable(model, "all"))
    assert n_all == len(list(model.parameters()))
    first = select_trainable(model, "lora:2")
    again = select_trainable(model, "lora:2")
    assert [id(p) for p in first] == [id(p) for p in again]


def test_cached_frozen_prefix_matches_the_full_forward(toy, monkeypatch):
    import lamini_lite.training.qa as ft
    _, tok, prompts, answers = toy
    prompts = [p if i % 2 else "who likes what ? " + p for i, p in enumerate(prompts)]  # ragged
    runs = []
    for cache in (False, True):
        if cache:  # the cached path must not fall back to the full forward
            monkeypatch.setattr(ft, "qa_loss", lambda *a: pytest.fail("full forward ran"))
        model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
        h = finetune_qa(model, tok, prompts, answers, epochs=4, lr=1e-3, batch_size=3,
                        trainable="top:2", cache_frozen_prefix=cache, progress=False)
        runs.append((h.step_loss, model.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4, abs=1e-6)
    assert all(torch.allclose(runs[0][1][k], runs[1][1][k], atol=1e-5) for k in runs[0][1])


def test_first_trained_layer(toy):
    model, *_ = toy
    assert first_trained_layer(model) == 0  # everything trains by default
    select_trainable(model, "top:1")
    assert first_trained_layer(model) == 1
    for p in model.parameters():
        p.requires_grad_(False)
    assert first_trained_layer(model) == 2


def test_frozen_prefix_scores_match_answer_token_losses(toy):
    from lamini_lite.lm import encode_qa
    from lamini_lite.training import FrozenPrefix
    _, tok, prompts, answers = toy
    model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
    finetune_qa(model, tok, prompts, answers, epochs=30, lr=3e-3, batch_size=4, progress=False)
    prefix = FrozenPrefix(model, [encode_qa(tok, p, a) for p, a in zip(prompts, answers)], 2)
    losses, hits = prefix.token_scores(tok)
    ref, ref_hits = answer_token_losses(model, tok, prompts, answers, return_hits=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(losses, ref))
    assert [h.tolist() for h in hits] == [h.tolist() for h in ref_hits]
    assert any(h.any() for h in hits) and len(losses) == len(prompts)
    with pytest.raises(ValueError, match="first"):
        FrozenPrefix(model, [], 3)


def test_frozen_prefix_for_only_top_layers(toy):
    from lamini_lite.training import frozen_prefix_for
    model, tok, prompts, answers = toy  # 2 decoder layers
    assert frozen_prefix_for(model, tok, prompts, answers, "all") is None
    assert frozen_prefix_for(model, tok, prompts, answers, "top:2") is None  # nothing frozen
    prefix = frozen_prefix_for(model, tok, prompts, answers, "top:1")
    assert prefix.first == 1 and len(prefix.states) == len(prompts)


def test_finetune_reuses_a_given_frozen_prefix(toy):
    from lamini_lite.training import frozen_prefix_for
    _, tok, prompts, answers = toy
    runs = []
    for given in (False, True):
        model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
        prefix = frozen_prefix_for(model, tok, prompts, answers, "top:1") if given else True
        h = finetune_qa(model, tok, prompts, answers, epochs=3, lr=1e-3, batch_size=3,
                        trainable="top:1", cache_frozen_prefix=prefix, progress=False)
        runs.append(h.step_loss)
    assert runs[0] == runs[1]
    model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=2, seed=0)
    other = frozen_prefix_for(model, tok, prompts[:4], answers[:4], "top:1")
    with pytest.raises(ValueError, match="other pairs"):
        finetune_qa(model, tok, prompts, answers, epochs=1, lr=1e-3, trainable="top:1",
                    cache_frozen_prefix=other, progress=False)
    low = frozen_prefix_for(model, tok, prompts, answers, "top:1")
    with pytest.raises(ValueError, match="trains"):
        finetune_qa(model, tok, prompts, answers, epochs=1, lr=1e-3, trainable="top:2",
                    cache_frozen_prefix=low, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs must be an int >= 1"), ({"epochs": True}, "epochs"),
    ({"lr": float("inf")}, "lr must be a positive number"), ({"lr": "1e-3"}, "lr"),
    ({"batch_size": 2.0}, "batch_size must be an int"), ({"eval_every": 0}, "eval_every"),
    ({"optimizer": "lion"}, r"optimizer must be one of \('adamw'"),
    ({"trainable": "top"}, "trainable"), ({"trainable": "lora:0"}, ">= 1"),
    ({"trainable": 3}, "trainable must be a string spec or a callable"),
    ({"seed": 1.5}, "seed must be an int"), ({"warmup_steps": -1}, "warmup_steps must be"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"max_grad_norm": 0.0}, "max_grad_norm must be a positive number or None"),
    ({"lora_alpha": -2}, "lora_alpha"), ({"eval_at_start": 1}, "eval_at_start must be a bool"),
    ({"desc": None}, "desc must be a str"),
])
def test_finetune_config_validation(kwargs, match):
    from lamini_lite.training.qa import FinetuneConfig
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**({"epochs": 1, "lr": 1e-3} | kwargs))


def test_finetune_config_fields_and_defaults():
    import dataclasses
    from lamini_lite.training.qa import FinetuneConfig
    cfg = FinetuneConfig(epochs=2, lr=1e-3)
    assert (cfg.batch_size, cfg.trainable, cfg.seed, cfg.optimizer, cfg.max_grad_norm,
            cfg.warmup_steps, cfg.lora_alpha, cfg.eval_every, cfg.eval_at_start, cfg.desc) == \
        (16, "all", 0, "adamw", 1.0, 0, None, 1, False, "fine-tune")
    assert FinetuneConfig(epochs=2, lr=1e-3, max_grad_norm=None, lora_alpha=4).lora_alpha == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3
    with pytest.raises(TypeError, match="epochs"):
        FinetuneConfig(lr=1e-3)  # epochs and lr have no default
    with pytest.raises(ValueError, match="epochs"):  # replace validates again
        dataclasses.replace(cfg, epochs=0)


def test_config_and_overrides_train_as_keywords(toy):
    from lamini_lite.training.qa import FinetuneConfig
    _, tok, prompts, answers = toy
    kw = dict(epochs=2, lr=1e-3, batch_size=3, trainable="top:1", seed=1, warmup_steps=2)
    cfg = FinetuneConfig(**(kw | {"seed": 5, "batch_size": 8}))
    calls = [((), kw),  # keywords only, as every caller does
             ((FinetuneConfig(**kw),), {}),  # a config only
             ((cfg,), {"seed": 1, "batch_size": 3})]  # a config and overrides
    runs = []
    for args, over in calls:
        model = tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=2, seed=0)
        h = finetune_qa(model, tok, prompts, answers, *args, progress=False, **over)
        runs.append((h.step_loss, model.state_dict()))
    assert cfg.seed == 5 and cfg.batch_size == 8  # overrides do not change the config
    for steps, state in runs[1:]:
        assert steps == runs[0][0] and len(steps) == 2 * 3
        assert all(torch.equal(state[k], runs[0][1][k]) for k in state)


def test_unknown_or_missing_overrides(toy):
    from lamini_lite.training.qa import FinetuneConfig
    model, tok, prompts, answers = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"'epoch', 'learning_rate'.*fields are epochs, lr, "):
        finetune_qa(model, tok, prompts, answers, epoch=1, learning_rate=1e-3, progress=False)
    with pytest.raises(TypeError, match="'epoch'"):
        finetune_qa(model, tok, prompts, answers, FinetuneConfig(epochs=1, lr=1e-3), epoch=2)
    with pytest.raises(TypeError, match="needs epochs and lr"):
        finetune_qa(model, tok, prompts, answers, progress=False)
    with pytest.raises(TypeError, match="needs lr"):
        finetune_qa(model, tok, prompts, answers, epochs=1, progress=False)
    with pytest.raises(TypeError, match="config must be a FinetuneConfig"):
        finetune_qa(model, tok, prompts, answers, {"epochs": 1, "lr": 1e-3})
    with pytest.raises(ValueError, match="epochs"):  # an override is validated too
        finetune_qa(model, tok, prompts, answers, FinetuneConfig(epochs=1, lr=1e-3), epochs=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen
