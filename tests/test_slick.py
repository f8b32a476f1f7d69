"""Tests for lamini_lite.slick: the category rule, prompts, decoding, caching, errors."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from lamini_lite import Fact, FactError, qa_prompt, tiny_llama
import lamini_lite.slick as slick
from lamini_lite.slick import (SliCKProtocol, SliCKResult, build_prompts, categories_from_probs,
                               categorize, category, chance_rates, corrected_categories,
                               decode_answers)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def char_tok():
    """A character-level tokenizer (no download): one token per printable character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in sorted(set(string.printable)):
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


@pytest.fixture(scope="module")
def tiny(char_tok):
    model = tiny_llama(len(char_tok), hidden_size=32, num_layers=2, num_heads=2, seed=3)
    return model.eval()


def _facts(n=8, relation="capital"):
    names = ["Aland", "Borl", "Cerin", "Dova", "Ester", "Fuma", "Gondo", "Hast", "Ivo", "Jura"]
    return [Fact(s, relation, s[::-1].title(), f"Capital of {s}?", popularity=float(i))
            for i, s in enumerate(names[:n])]


SMALL = SliCKProtocol(n_prompts=3, n_shots=2, n_samples=4, max_new_tokens=4)


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("p0,p1,expected", [
    (1.0, 1.0, "HighlyKnown"), (1.0, 0.0, "HighlyKnown"),
    (0.9, 0.0, "MaybeKnown"), (0.1, 1.0, "MaybeKnown"), (1e-9, 0.0, "MaybeKnown"),
    (1 - 1e-12, 1.0, "MaybeKnown"),
    (0.0, 1e-9, "WeaklyKnown"), (0.0, 1 / 160, "WeaklyKnown"), (0.0, 1.0, "WeaklyKnown"),
    (0.0, 0.0, "Unknown"),
])
def test_category_rule_and_boundaries(p0, p1, expected):
    assert category(p0, p1) == expected


def test_category_rejects_non_probabilities():
    with pytest.raises(ValueError, match="p_greedy"):
        category(1.5, 0.0)
    with pytest.raises(ValueError, match="p_sample"):
        category(0.0, -0.1)
    with pytest.raises(ValueError, match="same length"):
        categories_from_probs([0.0, 1.0], [0.0])


def test_result_scoring_and_probabilities():
    facts = [Fact("France", "capital", "Paris", "Capital of France?", aliases=("Paris, France",)),
             Fact("Peru", "capital", "Lima", "Capital of Peru?")]
    proto = SliCKProtocol(n_prompts=2, n_shots=0, n_samples=2)
    res = SliCKResult(facts, proto, 0, [["p", "p"], ["p", "p"]],
                      greedy=[["paris", "the Paris"], ["Cusco", "Cusco"]],
                      samples=[[["Paris.", "Lyon"], ["paris, france", "x"]],
                               [["Cusco", "Lima"], ["", "Quito"]]])
    np.testing.assert_allclose(res.p_greedy, [1.0, 0.0])
    np.testing.assert_allclose(res.p_sample, [0.5, 0.25])
    assert res.categories == ["HighlyKnown", "WeaklyKnown"]
    assert list(res.sample_hits) == [2, 1]
    df = res.to_frame()
    assert list(df["category"]) == ["HighlyKnown", "WeaklyKnown"]
    assert res.shares()["HighlyKnown"] == 0.5 and res.shares()["Unknown"] == 0.0
    sub = res.subsample(1, 1)
    assert sub.categories == ["HighlyKnown", "Unknown"]  # Peru's one hit was sample 2
    assert res.fact_detail(0)["greedy ok"].all()


# ---------------------------------------------------------------- prompts

def test_build_prompts_excludes_the_fact_and_matches_qa_prompt():
    facts = _facts(8)
    prompts = build_prompts(facts, SliCKProtocol(n_prompts=5, n_shots=4), seed=1)
    assert len(prompts) == 8 and all(len(p) == 5 for p in prompts)
    for f, fp in zip(facts, prompts):
        assert len({a for a, _ in fp}) > 1  # the exemplar sets differ between prompts
        for block, tail in fp:
            assert tail == qa_prompt(f.question)
            assert block.count("Q: ") == 4
            assert f.question not in block and f.object not in block
    # the draw of a fact does not depend on the other facts asked
    assert build_prompts(facts[:1], SliCKProtocol(n_prompts=5, n_shots=4),
                         exemplars=facts, seed=1)[0] == prompts[0]
    assert build_prompts(facts, SliCKProtocol(n_prompts=5, n_shots=4), seed=2) != prompts


def test_exemplar_sets_and_templates():
    facts = _facts(8)
    temps = ["Capital of {subject}?", "Which city is the capital of {subject}?"]
    proto = SliCKProtocol(n_prompts=3, n_shots=2, exemplar_sets=4,
                          question_templates={"capital": temps})
    prompts = build_prompts(facts, proto, seed=0)
    blocks = {b for fp in prompts for b, _ in fp}
    for f, fp in zip(facts, prompts):
        for block, tail in fp:
            assert f.object not in block
            assert f.subject in tail
    # at most 4 shared sets, plus versions where a fact's own exemplar was swapped out
    n_plain = len({b for fp, f in zip(prompts, facts) for b, _ in fp})
    assert n_plain == len(blocks) and len(blocks) < 8 * 3
    wordings = {t.split(f.subject)[0] for fp, f in zip(prompts, facts) for _, t in fp}
    assert len(wordings) == 2


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(FactError, match="empty"):
        build_prompts([])
    with pytest.raises(FactError, match="n_shots=4 needs at least 4"):
        build_prompts(_facts(4))
    with pytest.raises(FactError, match="needs at least 3"):
        build_prompts(_facts(2), SliCKProtocol(n_shots=2, exemplar_sets=10))
    with pytest.raises(ValueError, match="temperature"):
        SliCKProtocol(temperature=0.0)
    SliCKProtocol(temperature=0.0, n_samples=0)  # greedy only: fine
    with pytest.raises(ValueError, match="top_k"):
        SliCKProtocol(top_k=0)
    with pytest.raises(ValueError, match="n_prompts"):
        SliCKProtocol(n_prompts=0)
    with pytest.raises(ValueError, match="exemplar_sets"):
        SliCKProtocol(n_prompts=10, exemplar_sets=5)
    with pytest.raises(ValueError, match="subject"):
        SliCKProtocol(question_templates={"capital": ["no placeholder"]})
    with pytest.raises(FactError, match="no entry for relation"):
        build_prompts(_facts(6), SliCKProtocol(n_shots=2, question_templates={"x": ["{subject}"]}))
    with pytest.raises(TypeError, match="single Fact"):
        build_prompts(_facts(1)[0])


# ---------------------------------------------------------------- decoding

def _plain_greedy(model, tok, text, max_new_tokens):
    """Reference: transformers' own generate(), one prompt at a time, greedy."""
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=sorted(slick.answer_stop_ids(tok).tolist()))
    return slick.answer_text(tok, out[0, ids.shape[1]:].tolist())


def test_shared_question_tokens_join_the_block():
    """Prompts with one block share their common question tokens, but keep at least one."""
    pre, suf = slick._join_shared_question_tokens(
        [(1,), (1,), (2,), (1,)], [[5, 6, 7], [5, 6, 8, 9], [5, 6], [5, 6]])
    assert pre == [(1, 5), (1, 5), (2,), (1, 5)]  # [5, 6] is all of prompt 3: keep its 6
    assert suf == [[6, 7], [6, 8, 9], [5, 6], [6]]  # a block of one prompt is left alone
    assert slick._common_prefix_len([[3, 4], [3, 4]]) == 1
    assert slick._common_prefix_len([[3, 4, 5], [3, 4, 6]]) == 2


def test_shared_prefix_greedy_equals_plain_generate(tiny, char_tok):
    facts = _facts(6)
    proto = SliCKProtocol(n_prompts=2, n_shots=2, n_samples=3, max_new_tokens=5, exemplar_sets=3)
    prompts = build_prompts(facts, proto, seed=0)
    greedy, _ = decode_answers(tiny, char_tok, prompts, proto, progress=False)
    ref = [[_plain_greedy(tiny, char_tok, a + b, 5) for a, b in fp] for fp in prompts]
    assert greedy == ref
    assert any(g for row in greedy for g in row)  # non-trivial answers were compared


def test_batched_equals_unbatched(tiny, char_tok):
    facts = _facts(6)
    prompts = build_prompts(facts, SMALL, seed=0)
    keys = [f.key for f in facts]
    g_all, s_all = decode_answers(tiny, char_tok, prompts, SMALL, keys=keys, batch_size=64,
                                  progress=False)
    g_one, s_one = [], []
    for i in range(len(facts)):
        g, s = decode_answers(tiny, char_tok, prompts[i:i + 1], SMALL, keys=keys[i:i + 1],
                              batch_size=1, progress=False)
        g_one += g
        s_one += s
    assert g_all == g_one
    # samples use per-fact random numbers, so they match too unless floats tip a draw
    same = sum(a == b for x, y in zip(s_all, s_one) for a, b in zip(x, y))
    assert same >= 0.8 * len(facts) * SMALL.n_prompts


def test_sampling_is_seeded_and_follows_the_distribution(tiny, char_tok):
    facts = _facts(4)
    prompts = build_prompts(facts, SMALL, seed=0)
    a = decode_answers(tiny, char_tok, prompts, SMALL, seed=0, progress=False)
    b = decode_answers(tiny, char_tok, prompts, SMALL, seed=0, progress=False)
    c = decode_answers(tiny, char_tok, prompts, SMALL, seed=1, progress=False)
    assert a == b
    assert a[1] != c[1]
    # top_k=1 sampling is greedy decoding
    proto1 = SliCKProtocol(n_prompts=3, n_shots=2, n_samples=4, max_new_tokens=4, top_k=1)
    g, s = decode_answers(tiny, char_tok, prompts, proto1, progress=False)
    assert all(x == gi for gf, sf in zip(g, s) for gi, row in zip(gf, sf) for x in row)


def test_tree_sampling_matches_token_frequencies(char_tok):
    """First sampled token: empirical frequencies match softmax(top-k logits / T)."""
    model = tiny_llama(len(char_tok), hidden_size=16, num_layers=1, num_heads=2, seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(0.02)  # flat-ish distribution -> many tokens drawn
    fact = _facts(3)
    proto = SliCKProtocol(n_prompts=1, n_shots=0, n_samples=400, max_new_tokens=1,
                          temperature=1.0, top_k=5)
    prompts = build_prompts(fact[:1], proto, exemplars=fact, seed=0)
    _, samples = decode_answers(model, char_tok, prompts, proto, progress=False)
    text = prompts[0][0][0] + prompts[0][0][1]
    with torch.no_grad():
        logits = model(char_tok(text, add_special_tokens=False, return_tensors="pt")
                       ["input_ids"]).logits[0, -1]
    top = logits.topk(5)
    probs = torch.softmax(top.values, -1)
    drawn = samples[0][0]
    for p, i in zip(probs.tolist(), top.indices.tolist()):
        tok_text = char_tok.decode([i]).strip()
        freq = np.mean([d == tok_text for d in drawn]) if tok_text else None
        if freq is not None and tok_text not in "\n":
            assert abs(freq - p) < 0.1, (tok_text, freq, p)


def test_categorize_caches(tiny, char_tok, tmp_cache, monkeypatch):
    facts = _facts(6)
    calls = []
    real = slick.decode_answers

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(slick, "decode_answers", counting)
    r1 = categorize(tiny, char_tok, facts, SMALL, seed=0, progress=False)
    r2 = categorize(tiny, char_tok, facts, SMALL, seed=0, progress=False)
    assert len(calls) == 1
    assert r1.greedy == r2.greedy and r1.samples == r2.samples
    assert r1.categories == r2.categories and len(r1.categories) == 6
    categorize(tiny, char_tok, facts, SMALL, seed=1, progress=False)
    assert len(calls) == 2  # another seed is another entry
    assert any(tmp_cache.rglob("meta.json"))


def test_chance_rate_and_corrected_categories():
    # a "model" that answers a random one of two countries: pure guessing
    rng = np.random.default_rng(0)
    facts = [Fact(f"city{i}", "country", ["Chad", "Peru"][i % 2], f"Country of city{i}?")
             for i in range(40)]
    proto = SliCKProtocol(n_prompts=10, n_shots=0, n_samples=16)
    samples = [[[str(x) for x in rng.choice(["Chad", "Peru"], 16)] for _ in range(10)]
               for _ in facts]
    res = SliCKResult(facts, proto, 0, [["p"] * 10] * 40, [["Mali"] * 10] * 40, samples)
    assert abs(chance_rates(res)["country"] - 0.5) < 0.05
    assert res.shares()["WeaklyKnown"] == 1.0  # the paper's rule calls all of it knowledge
    fixed = corrected_categories(res)
    assert fixed.count("WeaklyKnown") <= 2  # lucky guesses are no longer counted
    # a fact with many more hits than chance stays WeaklyKnown
    samples[0] = [["Peru" if facts[0].object == "Peru" else "Chad"] * 16] * 10
    res2 = SliCKResult(facts, proto, 0, [["p"] * 10] * 40, [["Mali"] * 10] * 40, samples)
    assert corrected_categories(res2)[0] == "WeaklyKnown"
    with pytest.raises(ValueError, match="alpha"):
        corrected_categories(res, alpha=0.0)


@pytest.mark.slow
def test_smollm2_shared_prefix_matches_generate_and_knows_paris(smollm2):
    model, tok = smollm2
    caps = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo",
            "Spain": "Madrid", "Peru": "Lima", "Kenya": "Nairobi"}
    facts = [Fact(c, "capital", a, f"What is the capital of {c}?") for c, a in caps.items()]
    proto = SliCKProtocol(n_prompts=2, n_shots=4, n_samples=4)
    res = categorize(model, tok, facts[:3], proto, exemplars=facts, seed=0, progress=False,
                     cache=False)
    assert res.categories[0] == "HighlyKnown"  # France -> Paris
    ref = [[_plain_greedy(model, tok, p, proto.max_new_tokens) for p in fp]
           for fp in res.prompts]
    assert res.greedy == ref
