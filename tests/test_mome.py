"""Tests for lamini_lite.mome: product-key selection, attach/detach, memory tuning, save/load."""

from __future__ import annotations

import math
import string

import pytest
import torch

from lamini_lite import mome as M
from lamini_lite.cache import fingerprint
from lamini_lite.lm import greedy_answers
from lamini_lite.models import tiny_llama


def _model(tok, seed=0, hidden=64):
    return tiny_llama(len(tok), hidden_size=hidden, num_layers=2, num_heads=4, seed=seed).eval()


def _facts(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    alphabet = string.ascii_lowercase
    # A random tiny model mixes little context into the last token, so each prompt
    # ends in its own character (real backbones do not need this).
    prompts = [f"Q: code of {name}" for name in ["ann", "bob", "cy", "dee", "eli", "faz"][:n]]
    answers = ["".join(alphabet[int(i)] for i in torch.randint(0, 26, (5,), generator=g))
               for _ in prompts]
    return prompts, answers


def test_config_validation():
    with pytest.raises(ValueError, match="query_norm"):
        M.MoMEConfig(query_norm="rms")
    with pytest.raises(ValueError, match="topk"):
        M.MoMEConfig(n_keys=4, topk=8)
    with pytest.raises(ValueError, match="preset"):
        M.MoMEConfig.preset("huge")
    cfg = M.MoMEConfig.preset("scale")
    assert cfg.n_experts == 2 ** 20
    assert M.MoMEConfig.from_json(cfg.to_json()) == cfg


def test_product_key_selection_matches_brute_force():
    cfg = M.MoMEConfig(n_keys=8, heads=2, topk=3, key_dim=8, query_norm="none", gate="none")
    mem = M.MemoryLayer(cfg, 16)
    x = torch.randn(5, 16)
    rows, w, scores = mem.select(x)
    assert rows.shape == w.shape == (5, 6)
    assert rows.min() >= 0 and rows.max() < 64
    assert torch.allclose(w.view(5, 2, 3).sum(-1), torch.ones(5, 2))
    q = mem.query(x)
    for h in range(2):
        full = (q[:, h, :4] @ mem.subkeys[h, 0].T)[:, :, None] + \
               (q[:, h, 4:] @ mem.subkeys[h, 1].T)[:, None, :]
        best = full.flatten(1).topk(3, dim=-1)
        assert torch.equal(best.indices.sort(-1).values, rows[:, 3 * h:3 * h + 3].sort(-1).values)
        assert torch.allclose(best.values, scores[:, 3 * h:3 * h + 3])


def test_attach_keeps_logits_and_generate_exactly(char_tok):
    model = _model(char_tok)
    ids = char_tok(["Q: code of ann"], return_tensors="pt")["input_ids"]
    before = model(input_ids=ids).logits
    gen_before = model.generate(ids, max_new_tokens=5, do_sample=False)
    mome = M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"))
    assert all(not p.requires_grad for p in model.parameters())
    assert torch.equal(model(input_ids=ids).logits, before)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), gen_before)
    # A written row changes the output; detaching restores the backbone.
    mem = mome.layers[mome.layer_ids[0]]
    mem.allocate(torch.arange(mem.config.n_experts))
    mem.store[1:] = 1.0
    assert not torch.equal(model(input_ids=ids).logits, before)
    M.remove_memory_experts(model)
    assert torch.equal(model(input_ids=ids).logits, before)
    with pytest.raises(ValueError, match="no memory"):
        M.get_memory(model)


def test_bad_layer_and_double_attach(char_tok):
    model = _model(char_tok)
    with pytest.raises(ValueError, match="decoder layers"):
        M.add_memory_experts(model, M.MoMEConfig.preset("test", layers=(5,)))
    M.add_memory_experts(model, "test")
    with pytest.raises(ValueError, match="already"):
        M.add_memory_experts(model, "test")


def test_row_adam_matches_dense_adam_on_touched_rows():
    cfg = M.MoMEConfig(n_keys=4, heads=1, topk=2, key_dim=4)
    mem = M.MemoryLayer(cfg, 3)
    slots = mem.allocate(torch.tensor([5, 9]))
    dense = torch.zeros(16, 3, requires_grad=True)
    ref = torch.optim.Adam([dense], lr=0.1)
    opt = M.RowAdam(lr=0.1)
    for step in range(3):
        g = torch.randn(2, 3, generator=torch.Generator().manual_seed(step))
        leaf = mem.store[slots].clone().requires_grad_(True)
        leaf.grad = g
        opt.step([(mem, slots, leaf)])
        dense.grad = torch.zeros(16, 3)
        dense.grad[[5, 9]] = g
        ref.step()
    assert torch.allclose(mem.store[slots], dense.detach()[[5, 9]], atol=1e-6)
    assert mem.n_used == 3 and torch.equal(mem.store[0], torch.zeros(3))
    assert opt.state_bytes() < 200       # state for 2 rows (+ zero slot), not 16


def test_memorize_recalls_exactly_and_touches_only_memory(char_tok, monkeypatch):
    calls = []
    real = M.memory_lookup

    def spy(values, indices, weights):
        # Never a (tokens, heads, k, D) tensor: 2-D values, (tokens, heads*k) indices.
        assert values.dim() == 2 and indices.dim() == 2 and weights.shape == indices.shape
        calls.append(indices.shape)
        return real(values, indices, weights)

    monkeypatch.setattr(M.layer, "memory_lookup", spy)  # where MemoryLayer looks it up
    model = _model(char_tok)
    backbone = fingerprint(model)
    prompts, answers = _facts()
    before = greedy_answers(model, char_tok, prompts, max_new_tokens=8)
    assert before != answers
    cfg = M.MoMEConfig.preset("test", gate="none")
    mome = M.add_memory_experts(model, cfg, tokenizer=char_tok)
    # A random tiny Llama's lm_head is too weak for p > 1/2 on a 70-symbol
    # vocabulary, so ask for exact recall only (SmolLM2 reaches loss < ln 2).
    res = M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
                     progress=False)
    assert res.recall == 1.0, res
    assert res.epochs < 60
    assert greedy_answers(model, char_tok, prompts, max_new_tokens=8) == answers
    assert calls
    M.remove_memory_experts(model)
    assert fingerprint(model) == backbone            # backbone untouched
    mem = mome.layers[mome.layer_ids[0]]
    assert 0 < res.rows_written == mem.n_used - 1 < cfg.n_experts
    assert res.params_updated == res.rows_written * model.config.hidden_size


def test_save_load_roundtrip_and_compatibility(char_tok, tmp_path):
    model = _model(char_tok)
    prompts, answers = _facts(3)
    M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    res = M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
                     progress=False)
    assert res.recall == 1.0
    path = M.save_memory(model, tmp_path / "mem.safetensors")
    fresh = _model(char_tok)
    M.load_memory(fresh, path)
    assert greedy_answers(fresh, char_tok, prompts, max_new_tokens=8) == answers
    ids = char_tok(prompts[:1], return_tensors="pt")["input_ids"]
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(M.MemoryCompatibilityError, match="different backbone"):
        M.load_memory(_model(char_tok, seed=1), path)
    with pytest.raises(M.MemoryCompatibilityError, match="hidden_size"):
        M.load_memory(_model(char_tok, hidden=32), path)
    with pytest.raises(M.MemoryCompatibilityError, match="config"):
        M.load_memory(_model(char_tok), path, config=M.MoMEConfig.preset("test"))
    # saving never silently replaces a file, and a refused save leaves it as it was
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        M.save_memory(model, path)
    assert path.read_bytes() == before
    assert M.save_memory(model, path, overwrite=True) == path
    assert [p.name for p in tmp_path.iterdir()] == ["mem.safetensors"]  # no temporary left
    # a corrupt or foreign file is a clear error naming it, not a safetensors crash
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(before[:40])
    with pytest.raises(M.MemoryCompatibilityError, match="corrupt.safetensors"):
        M.load_memory(_model(char_tok), bad)
    bad.write_bytes(b"\xff" * 64)
    target = _model(char_tok)
    with pytest.raises(M.MemoryCompatibilityError, match="not a readable"):
        M.load_memory(target, bad)
    with pytest.raises(ValueError, match="no memory"):  # nothing half-attached
        M.get_memory(target)


def test_written_gate_silences_tokens_off_the_written_rows():
    cfg = M.MoMEConfig(n_keys=16, heads=2, topk=4, key_dim=8, gate="written",
                       gate_threshold=0.6, query_norm="none")
    mem = M.MemoryLayer(cfg, 8)
    x = torch.randn(2, 8)
    rows, w, _ = mem.select(x)
    mem.allocate(rows[0])            # token 0's rows are written, token 1's mostly not
    mem.store[1:mem.n_used] = 1.0
    gate = mem.gate(rows, w)
    assert gate[0] == 1.0
    assert mem.write_share(x)[0] == pytest.approx(1.0)
    out = mem(x)
    assert torch.equal(out[1], torch.zeros(8)) == (gate[1] == 0)


@pytest.mark.slow
def test_memorize_on_smollm2_leaves_unrelated_answers(smollm2):
    from lamini_lite.models import load_smollm2

    model, tok = load_smollm2()
    prompts = [f"Q: What is the secret code of agent {n}?\nA:" for n in ("Rosa", "Omar", "Lin")]
    answers = ["xq7Jm2Pa", "Tz91kLw4", "b8NvQe3r"]
    unrelated = ["Q: What is the capital of France?\nA:", "Q: How many days are in a week?\nA:"]
    plain = greedy_answers(model, tok, unrelated, max_new_tokens=8)
    M.add_memory_experts(model, "book", tokenizer=tok)
    res = M.memorize(model, tok, prompts, answers, max_epochs=40, progress=False)
    assert res.recall == 1.0
    assert max(res.max_token_loss) < math.log(2)
    assert greedy_answers(model, tok, unrelated, max_new_tokens=8) == plain


def test_match_gate_speaks_only_on_remembered_queries():
    cfg = M.MoMEConfig(n_keys=16, heads=2, topk=4, key_dim=8, gate="match",
                       match_threshold=0.99, query_norm="none")
    mem = M.MemoryLayer(cfg, 8)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mem.match_score(x), torch.full((3,), -1.0))
    rows, w, _ = mem.select(x)
    mem.allocate(rows)
    mem.store[1:mem.n_used] = 1.0
    assert mem(x) is None                      # nothing remembered: silent everywhere
    mem.remember(x[:1])
    assert mem.match_score(x)[0] == pytest.approx(1.0)
    out = mem(x)
    assert not torch.equal(out[0], torch.zeros(8))
    assert torch.equal(out[1:], torch.zeros(2, 8))
    with pytest.raises(ValueError, match="match_threshold"):
        M.MoMEConfig(match_threshold=2.0)
    with pytest.raises(ValueError, match="hidden states"):
        mem.gate(rows, w)


def test_memorize_with_match_gate_leaves_other_prompts_exactly(char_tok, tmp_path):
    model = _model(char_tok)
    prompts, answers = _facts(4)
    others = ["Q: code of zed", "Q: code of kim"]
    ids = char_tok(others, return_tensors="pt", padding=True)
    before = model(**ids).logits
    cfg = M.MoMEConfig.preset("test", gate="match", match_threshold=0.999)
    mome = M.add_memory_experts(model, cfg, tokenizer=char_tok)
    res = M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None,
                     lr=0.5, progress=False)
    assert res.recall == 1.0
    mem = mome.layers[mome.layer_ids[0]]
    n_answer_tokens = sum(len(" " + a + "\n") for a in answers)   # char tokens
    assert mem.match_keys.shape == (n_answer_tokens, cfg.heads * cfg.key_dim)
    assert torch.equal(model(**ids).logits, before)     # other prompts: bit-for-bit
    path = M.save_memory(model, tmp_path / "m.safetensors")
    fresh = _model(char_tok)
    M.load_memory(fresh, path)
    assert greedy_answers(fresh, char_tok, prompts, max_new_tokens=8) == answers


def test_eval_helpers_on_a_tiny_model(char_tok):
    from lamini_lite.experiments import ch05_mome as E

    assert E.unchanged_fraction(["a", "b"], ["a", "c"]) == 0.5
    with pytest.raises(ValueError, match="equal length"):
        E.unchanged_fraction(["a"], [])
    model = _model(char_tok)
    prompts, answers = _facts(3)
    M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    ok, worst = E.fact_scores(model, char_tok, prompts, answers)
    assert ok == [False] * 3 and min(worst) > 0
    M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
               progress=False)
    ok, worst = E.fact_scores(model, char_tok, prompts, answers)
    greedy = greedy_answers(model, char_tok, prompts, max_new_tokens=8)
    assert ok == [g == a for g, a in zip(greedy, answers)] == [True] * 3
    E.set_gate(model, "match", 0.5)
    assert all(m.config.gate == "match" for m in M.get_memory(model).layers.values())


def test_subset_and_match_profile(char_tok):
    from lamini_lite.experiments import ch05_mome as E

    data = {"prompts": [f"p{i}" for i in range(6)], "answers": list("abcdef"),
            "kind": ["Unknown fact"] * 2 + ["random code"] * 4}
    small = E.subset(data, 4)
    assert small["kind"] == ["Unknown fact"] * 2 + ["random code"] * 2
    assert E.subset(data, 6)["prompts"] == data["prompts"]
    with pytest.raises(ValueError, match="n must be"):
        E.subset(data, 7)
    model = _model(char_tok)
    prompts, answers = _facts(3)
    cfg = M.MoMEConfig.preset("test", gate="match", match_threshold=0.999)
    M.add_memory_experts(model, cfg, tokenizer=char_tok)
    M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
               progress=False)
    probes = {"prompts": prompts, "answers": answers, "near_prompts": ["Q: code of zed"],
              "unrelated_prompts": ["Q: hi"], "known_prompts": ["Q: code of kim"],
              "texts": ["hello there"]}
    base = {"near": ["abc"], "unrelated": ["x"], "known": ["y"]}
    prof = E.match_profile(model, char_tok, probes, base)
    assert min(prof["fact_min"]) > 0.999            # memorized positions match themselves
    assert max(prof["near_max"] + prof["text_max"]) < 0.999
    assert len(prof["unrelated_max"]) == len(prof["known_max"]) == 1


def test_weights_changed_counts_what_each_method_changes(char_tok):
    import copy

    from lamini_lite.experiments import ch05_mome as E
    from lamini_lite.training import decoder_layers, finetune_qa

    prompts, answers = _facts(3)
    ref = _model(char_tok)
    assert E.weights_changed(copy.deepcopy(ref), ref) == 0
    # top:1 -- every weight of the top layer moves, nothing else
    top = copy.deepcopy(ref)
    finetune_qa(top, char_tok, prompts, answers, epochs=1, lr=1e-2, trainable="top:1",
                progress=False)
    n_top = sum(p.numel() for p in decoder_layers(top)[-1].parameters())
    assert E.weights_changed(top, ref) == n_top
    # LoRA counts as its merged, dense change of every adapted matrix
    lora = copy.deepcopy(ref)
    hist = finetune_qa(lora, char_tok, prompts, answers, epochs=2, lr=1e-2,
                       trainable="lora:2", progress=False)
    adapted = sum(m.weight.numel() for name, m in ref.named_modules()
                  if name.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"))
    changed = E.weights_changed(lora, ref)
    assert hist.n_trainable < changed <= adapted and changed > 0.99 * adapted
    # memory experts: the frozen backbone is unchanged, the written values count
    mem = copy.deepcopy(ref)
    M.add_memory_experts(mem, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    M.memorize(mem, char_tok, prompts, answers, max_epochs=3, loss_threshold=None, lr=0.5,
               progress=False)
    assert E.weights_changed(mem, ref) == M.get_memory(mem).params_updated() > 0
    with pytest.raises(ValueError, match="reference"):
        E.weights_changed(_model(char_tok, hidden=32), ref)


def test_memorize_lr_decay_shrinks_the_step_when_recall_falls_back(char_tok, monkeypatch):
    from lamini_lite.mome import train as T

    prompts, answers = _facts(4)
    model = _model(char_tok)
    M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    with pytest.raises(ValueError, match="lr_decay"):
        M.memorize(model, char_tok, prompts, answers, lr_decay=0.0, progress=False)
    # Epoch 1 recalls one fact, later epochs none: from epoch 2 on recall is below
    # its best, so the step halves after every epoch from then on.
    sizes, calls = [], []
    real_score = T._score

    def flaky_score(b, logits, tgt, ok, worst):
        real_score(b, logits, tgt, ok, worst)
        calls.append(1)
        ok[:] = [len(calls) == 1 and i == 0 for i in range(len(ok))]
    real_step = T.RowAdam.step

    def spy_step(self, leaves):
        sizes.append(self.lr)
        return real_step(self, leaves)
    monkeypatch.setattr(T, "_score", flaky_score)
    monkeypatch.setattr(T.RowAdam, "step", spy_step)
    M.memorize(model, char_tok, prompts, answers, max_epochs=4, batch_size=4,
               loss_threshold=None, lr=0.5, lr_decay=0.5, confirm=False, progress=False)
    assert len(sizes) == 4 and sizes[1] == sizes[0]
    assert sizes[2:] == pytest.approx([sizes[0] / 2, sizes[0] / 4])


def test_row_adam_leaves_rows_without_gradient_alone():
    cfg = M.MoMEConfig(n_keys=4, heads=1, topk=2, key_dim=4)
    mem = M.MemoryLayer(cfg, 3)
    slots = mem.allocate(torch.tensor([5, 9]))
    opt = M.RowAdam(lr=0.1)
    leaf = mem.store[slots].clone().requires_grad_(True)
    leaf.grad = torch.ones(2, 3)
    opt.step([(mem, slots, leaf)])
    before = mem.store[slots].clone()
    m_before = opt.state[id(mem)]["m"][slots].clone()
    leaf.grad = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert opt.step([(mem, slots, leaf)]) == 1
    # Row 5 got no gradient: neither its value nor its moments move (momentum
    # alone would otherwise keep stepping it).
    assert torch.equal(mem.store[slots[0]], before[0])
    assert torch.equal(opt.state[id(mem)]["m"][slots[0]], m_before[0])
    assert not torch.equal(mem.store[slots[1]], before[1])


def test_memorize_loss_floor_stops_gradient_below_it(char_tok):
    prompts, answers = _facts(4)
    cfg = M.MoMEConfig.preset("test", gate="none")

    def run(**kw):
        model = _model(char_tok)
        mome = M.add_memory_experts(model, cfg, tokenizer=char_tok)
        res = M.memorize(model, char_tok, prompts, answers, max_epochs=60, lr=0.5,
                         confirm=False, progress=False, **kw)
        return res, mome.layers[mome.layer_ids[0]].values

    with pytest.raises(ValueError, match="loss_floor"):
        run(loss_floor=1.0)                       # above the default ln 2 threshold
    # Every token is below a floor of 1e9: no gradient anywhere, nothing stored.
    res, values = run(loss_threshold=None, loss_floor=1e9)
    assert res.recall < 1.0 and res.loss_history[0] > 0
    assert torch.count_nonzero(values) == 0
    # A floor below the threshold still memorizes every fact exactly.
    res, values = run(loss_threshold=None, loss_floor=0.05)
    assert res.recall == 1.0 and torch.count_nonzero(values) > 0


def test_memorize_config_validates_each_field():
    from lamini_lite.mome import train as T

    cfg = T.MemorizeConfig()
    assert (cfg.lr, cfg.max_epochs, cfg.max_seconds, cfg.batch_size, cfg.loss_threshold,
            cfg.negative_weight, cfg.confirm, cfg.seed, cfg.lr_decay, cfg.loss_floor) == \
        (0.05, 40, None, 8, math.log(2), 1.0, True, 0, None, None)
    with pytest.raises(AttributeError):
        cfg.lr = 0.1                                   # frozen
    bad = {"lr": [0.0, -1.0, math.nan], "max_epochs": [0, 1.5, True], "batch_size": [0, "8"],
           "max_seconds": [-1.0], "negative_weight": [-0.5], "lr_decay": [0.0, 1.5],
           "loss_floor": [0.0, 1.0]}                   # 1.0 is above the default ln 2
    for name, values in bad.items():
        for v in values:
            with pytest.raises(ValueError, match=rf"MemorizeConfig\.{name} must"):
                T.MemorizeConfig(**{name: v})
    assert T.MemorizeConfig(loss_threshold=None, loss_floor=1.0).loss_floor == 1.0
    assert T.MemorizeConfig(max_seconds=0.0, lr_decay=1.0, batch_size=1).max_seconds == 0.0


def test_memorize_config_overrides(char_tok):
    from lamini_lite.mome import train as T

    base = T.MemorizeConfig(lr=0.5, max_epochs=3)
    assert T.MemorizeConfig.with_overrides() == T.MemorizeConfig()
    assert T.MemorizeConfig.with_overrides(base) is base
    assert T.MemorizeConfig.with_overrides(base, seed=2) == T.MemorizeConfig(lr=0.5, max_epochs=3,
                                                                              seed=2)
    assert base.seed == 0                              # replaced, not changed
    with pytest.raises(ValueError, match="lr_decay"):
        T.MemorizeConfig.with_overrides(base, lr_decay=2.0)
    with pytest.raises(TypeError, match=r"'lrr'.*fields: lr, max_epochs, .*loss_floor"):
        T.MemorizeConfig.with_overrides(base, lrr=0.1)
    prompts, answers = _facts(3)

    def run(*args, **kw):
        model = _model(char_tok)
        mome = M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"),
                                    tokenizer=char_tok)
        res = M.memorize(model, char_tok, prompts, answers, *args, progress=False, **kw)
        return res, mome.layers[mome.layer_ids[0]].values

    with pytest.raises(TypeError, match="'max_epoch'"):
        run(max_epoch=3)
    with pytest.raises(TypeError, match="MemorizeConfig"):
        run({"lr": 0.5})
    with pytest.raises(ValueError, match="lr_decay"):
        run(base, lr_decay=0.0)
    # Keywords, a config, and a config with an override train bit for bit alike.
    runs = [run(lr=0.5, max_epochs=3, loss_threshold=None, seed=1),
            run(T.MemorizeConfig(lr=0.5, max_epochs=3, loss_threshold=None, seed=1)),
            run(base, loss_threshold=None, seed=1)]
    for res, values in runs[1:]:
        assert res.epochs == runs[0][0].epochs == 3
        assert res.loss_history == runs[0][0].loss_history
        assert res.max_token_loss == runs[0][0].max_token_loss
        assert torch.equal(values, runs[0][1])


def test_disable_memory_runs_the_plain_backbone_and_restores(char_tok):
    model = _model(char_tok)
    prompts, answers = _facts(3)
    plain = greedy_answers(model, char_tok, prompts, max_new_tokens=8)
    M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
               progress=False)
    with M.disable_memory(model) as mome:
        assert not mome.enabled
        assert greedy_answers(model, char_tok, prompts, max_new_tokens=8) == plain
    assert greedy_answers(model, char_tok, prompts, max_new_tokens=8) == answers
    with pytest.raises(RuntimeError, match="boom"), M.disable_memory(model):
        raise RuntimeError("boom")
    assert M.get_memory(model).enabled  # restored even when the block raised


def test_save_and_from_pretrained_folder(char_tok, tmp_path):
    model = _model(char_tok)
    prompts, answers = _facts(3)
    M.add_memory_experts(model, M.MoMEConfig.preset("test", gate="none"), tokenizer=char_tok)
    M.memorize(model, char_tok, prompts, answers, max_epochs=60, loss_threshold=None, lr=0.5,
               progress=False)
    folder = M.save_pretrained(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == sorted([M.CONFIG_FILE, M.MEMORY_FILE])
    fresh = _model(char_tok)
    mome = M.from_pretrained(fresh, folder)
    assert mome.config == M.get_memory(model).config
    assert greedy_answers(fresh, char_tok, prompts, max_new_tokens=8) == answers
    before = (folder / M.MEMORY_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        M.save_pretrained(model, folder)
    assert (folder / M.MEMORY_FILE).read_bytes() == before
    M.save_pretrained(model, folder, overwrite=True)
    with pytest.raises(FileNotFoundError, match=M.CONFIG_FILE):
        M.from_pretrained(_model(char_tok), tmp_path)
    (folder / M.CONFIG_FILE).write_text("{not json")
    with pytest.raises(M.MemoryCompatibilityError, match=M.CONFIG_FILE):
        M.from_pretrained(_model(char_tok), folder)


@pytest.mark.parametrize("keep", [True, False])
def test_keep_stored_leaves_earlier_facts_untouched(char_tok, keep):
    """With keep_stored, a second memorize call steps no row the first call's facts read."""
    prompts, answers = _facts(6, seed=4)
    model = _model(char_tok)
    cfg = M.MoMEConfig.preset("test", gate="match", n_keys=64)
    M.add_memory_experts(model, cfg, tokenizer=char_tok)
    kw = dict(max_epochs=30, loss_threshold=None, lr=0.5, progress=False)
    assert M.memorize(model, char_tok, prompts[:3], answers[:3], **kw).recall == 1.0
    ids = char_tok(prompts[:3], return_tensors="pt", padding=True)
    before = model(**ids).logits
    mem = next(iter(M.get_memory(model).layers.values()))
    written = mem.store[1:mem.n_used].clone()
    res = M.memorize(model, char_tok, prompts[3:], answers[3:], keep_stored=keep, **kw)
    assert mem.frozen_rows is None  # frozen for the duration of the call only
    same_rows = torch.equal(written, mem.store[1:len(written) + 1])
    if keep:  # the earlier facts' rows, logits and answers are exactly as they were
        assert same_rows and torch.equal(before, model(**ids).logits)
        assert greedy_answers(model, char_tok, prompts[:3], max_new_tokens=8) == answers[:3]
        assert res.rows_written > len(written)  # the new facts wrote rows of their own
    else:  # the old behaviour: the later facts rewrite rows the earlier ones read
        assert not same_rows
