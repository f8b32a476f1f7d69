"""Tests of the synthetic fact world: determinism, exposures, tokenizer, QA format."""

from __future__ import annotations

import numpy as np
import pytest

from lamini_lite.facts import Fact, qa_prompt
from lamini_lite.facts.synthetic import (
    CODE_TOKENS,
    RELATIONS,
    SyntheticWorld,
    WorldConfig,
    build_tokenizer,
    entity_relation,
    exposure_counts,
    exposure_distribution,
    make_world,
    qa_text,
    random_answer_variants,
)
from lamini_lite.lm import answer_target, encode_qa, newline_token_ids


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(n_people=60, seed=3)


def test_same_seed_same_world_other_seed_other_world(world):
    again = make_world(n_people=60, seed=3)
    assert [f.to_dict() for f in again.facts] == [f.to_dict() for f in world.facts]
    assert again.corpus == world.corpus
    other = make_world(n_people=60, seed=4)
    assert other.corpus != world.corpus
    assert [f.object for f in other.facts] != [f.object for f in world.facts]


def test_world_shape_and_fact_fields(world):
    assert len(world.people) == len(set(world.people)) == 60
    assert len(world.facts) == 60 * len(RELATIONS)
    for f in world.facts:
        assert isinstance(f, Fact)
        assert f.relation in RELATIONS
        assert f.popularity == f.meta["exposure"]
        assert 0 <= f.meta["exposure"] <= 50
        assert f.subject in f.question and f.question.endswith("?")
        assert f.object in world.values[f.relation]
        assert entity_relation(f.object) == f.relation
    # surnames are unique, so each person is identified by its surname
    surnames = [p.split()[1] for p in world.people]
    assert len(set(surnames)) == len(surnames)


def test_corpus_states_each_fact_exactly_its_exposure(world):
    counts = exposure_counts(world)
    assert sum(counts.values()) > 0
    for f in world.facts:
        assert counts[f.key] == f.meta["exposure"], f
    # Independent count in the raw text: mentions of "<subject> ... <object>" in statements.
    f = max(world.facts, key=lambda f: f.meta["exposure"])
    mentions = sum(1 for item in world.corpus
                   if f.subject in item and f.object in item and not item.startswith("Q:"))
    assert mentions == f.meta["exposure"]


def test_qa_pairs_in_corpus_only_for_chosen_facts(world):
    qa_items = {item for item in world.corpus if item.startswith("Q: ")}
    for f in world.facts:
        in_corpus = qa_text(f.question, f.object) in qa_items
        assert in_corpus == f.meta["qa_in_pretraining"]
        if in_corpus:
            assert f.meta["exposure"] >= world.config.qa_min_exposure
    eligible = [f for f in world.facts if f.meta["exposure"] >= world.config.qa_min_exposure]
    assert len(world.qa_facts) == round(0.5 * len(eligible))
    assert len(world.qa_facts) + len(world.held_out_facts) == len(world.facts)


def test_exposures_follow_the_zipf_law():
    w = make_world(n_people=1000, seed=0)
    e = np.array([f.meta["exposure"] for f in w.facts])
    p = exposure_distribution(50, 1.2)
    assert abs(p.sum() - 1) < 1e-12 and p[0] > p[1] > p[10] > p[50]
    assert abs((e == 0).mean() - p[0]) < 0.03
    assert abs(e.mean() - np.dot(np.arange(51), p)) < 0.6


def test_qa_text_matches_prompt_and_target_conventions():
    text = qa_text("Where was Alice Varn born?", "Velmora")
    assert text + "\n" == qa_prompt("Where was Alice Varn born?") + answer_target("Velmora")
    assert text == "Q: Where was Alice Varn born?\nA: Velmora"


def test_tokenizer_round_trips_corpus_and_questions(world):
    tok = world.tokenizer
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 0
    items = world.corpus[:300] + [qa_prompt(f.question) for f in world.facts[:50]]
    enc = tok(items, add_special_tokens=False)["input_ids"]
    for text, ids in zip(items, enc):
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    # names and values are few tokens; "\n" is its own token
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(nl) == 1 and newline_token_ids(tok) == frozenset(nl)
    assert len(tok(world.people[0], add_special_tokens=False)["input_ids"]) == 2
    assert tok("Velmora")["input_ids"] == tok(" Velmora")["input_ids"]


def test_encode_qa_and_decoded_answer_round_trip(world):
    tok = world.tokenizer
    for f in world.facts[:40]:
        prompt = qa_prompt(f.question)
        ids, labels = encode_qa(tok, prompt, f.object)
        target = [t for t in labels if t != -100]
        # what greedy_answers does with generated ids: decode, cut at "\n", strip
        decoded = tok.decode(target, skip_special_tokens=True)
        assert decoded.split("\n", 1)[0].strip() == f.object
        assert tok.decode(ids) == prompt + answer_target(f.object)
        whole = tok(qa_text(f.question, f.object) + "\n", add_special_tokens=False)
        assert ids == whole["input_ids"]
    # padding tokens are skipped when decoding
    padded = [0, 0] + tok("Velmora\n")["input_ids"]
    assert tok.decode(padded, skip_special_tokens=True) == "Velmora\n"


def test_unknown_words_become_unk(world):
    tok = world.tokenizer
    ids = tok("Zorblax was born in Velmora.", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.unk_token_id and tok.unk_token_id not in ids[1:]


def test_build_tokenizer_from_word_list():
    tok = build_tokenizer(["hello", "world", "?", "\n"])
    assert tok.decode(tok("hello world?\nworld")["input_ids"]) == "hello world?\nworld"
    with pytest.raises(ValueError, match="non-empty vocabulary"):
        build_tokenizer([])
    with pytest.raises(ValueError, match="single words"):
        build_tokenizer(["two words"])


def test_random_answer_variants_code_and_entity(world):
    facts = world.held_out_facts[:40]
    tok = world.tokenizer
    out = random_answer_variants(world, facts, 0.25, seed=1)
    assert len(out) == len(facts)
    changed = [f for f in out if f.meta["random_answer"]]
    assert len(changed) == 10
    for old, new in zip(facts, out):
        assert new.question == old.question and new.subject == old.subject
        if new.meta["random_answer"]:
            assert new.meta["true_object"] == old.object
            codes = new.object.split()
            assert len(codes) == 4 and all(c in CODE_TOKENS for c in codes)
            ids, labels = encode_qa(tok, qa_prompt(new.question), new.object)
            assert tok.unk_token_id not in ids
            assert tok.decode([t for t in labels if t != -100]).strip() == new.object
        else:
            assert new.object == old.object
    assert [f.object for f in random_answer_variants(world, facts, 0.25, seed=1)] == \
        [f.object for f in out]
    ent = random_answer_variants(world, facts, 1.0, seed=2, kind="entity")
    for old, new in zip(facts, ent):
        assert new.object != old.object and entity_relation(new.object) == old.relation
    assert not any(f.meta["random_answer"] for f in random_answer_variants(world, facts, 0.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.5}, "fraction"), ({"fraction": 0.5, "kind": "noise"}, "kind"),
    ({"fraction": 0.5, "length": 0}, "length"),
])
def test_random_answer_variants_bad_args(world, kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_answer_variants(world, world.facts[:4], **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_people": 0}, "n_people"), ({"n_people": 2.5}, "n_people"),
    ({"max_exposure": -1}, "max_exposure"), ({"qa_fraction": 2.0}, "qa_fraction"),
    ({"relations": ("birth_city", "height")}, "relations"), ({"zipf_exponent": -1}, "zipf"),
])
def test_bad_world_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)


def test_make_world_bad_args():
    with pytest.raises(ValueError, match="seed"):
        make_world(n_people=5, seed=-1)
    with pytest.raises(TypeError, match="unknown WorldConfig fields"):
        make_world(n_peoples=5)


def test_subset_of_relations():
    w = make_world(n_people=10, relations=("employer", "sport"), seed=0)
    assert {f.relation for f in w.facts} == {"employer", "sport"}
    assert set(w.values) == {"employer", "sport"}
