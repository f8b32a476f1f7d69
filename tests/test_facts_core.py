"""Tests of lamini_lite.facts: normalization, exact match, splits, exemplars, random answers."""

from __future__ import annotations

import pytest

from lamini_lite.facts import (
    RANDOM_ALPHABET,
    Fact,
    FactError,
    exact_match,
    exemplar_sets,
    exemplars,
    fact_prompt,
    facts_table,
    normalize_answer,
    relation_counts,
    split_facts,
    with_random_answers,
)


def make(subject: str, relation: str, obj: str, **kw) -> Fact:
    return Fact(subject=subject, relation=relation, object=obj,
                question=f"{relation} of {subject}?", **kw)


@pytest.fixture
def world() -> list[Fact]:
    """3 relations: an entity-object one (capital), two with shared objects."""
    facts = [make(f"Country{i}", "capital", f"City{i}", popularity=float(i)) for i in range(40)]
    facts += [make(f"Town{i}", "located_in", f"Country{i % 7}") for i in range(60)]
    facts += [make(f"Country{i}", "continent", ["Asia", "Europe", "Africa"][i % 3])
              for i in range(40)]
    return facts


# ---- normalization and exact match -----------------------------------------

@pytest.mark.parametrize("a, b", [
    ("Bogotá", "Bogota"),
    ("Côte d'Ivoire", "Cote d’Ivoire"),
    ("Côte d'Ivoire", "cote divoire"),
    ("Guinea-Bissau", "Guinea Bissau"),
    ("Guinea–Bissau", "guinea-bissau"),  # en dash
    ("The Gambia", "Gambia"),
    ("St. John's", "St Johns"),
    ("  Paris \t\n", "paris"),
    ("Paris.", "Paris"),
    ("U.S.A.", "USA"),
    ("Washington, D.C.", "Washington DC"),
    ("Łódź", "Lodz"),
    ("Tórshavn", "Torshavn"),
    ("Straße", "STRASSE"),
    ("«Québec»", "Quebec"),
])
def test_normalize_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize("a, b", [
    ("Guinea", "Guinea-Bissau"),
    ("Niger", "Nigeria"),
    ("Saint John's", "St. John's"),   # no abbreviation expansion (aliases carry both)
    ("Dominica", "Dominican Republic"),
    ("North Korea", "South Korea"),
])
def test_normalize_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_normalize_exact_values():
    assert normalize_answer("The  Bahamas ") == "bahamas"
    assert normalize_answer("St. John's") == "st johns"
    assert normalize_answer("Anthem of the Sea") == "anthem of sea"
    assert normalize_answer("北京") == "北京"
    with pytest.raises(TypeError):
        normalize_answer(None)


def test_exact_match_aliases_and_empty():
    f = make("United States", "capital", "Washington", aliases=("Washington D.C.",))
    assert f.is_correct("washington, d.c.")
    assert f.is_correct(" Washington ")
    assert not f.is_correct("Washington State")
    assert not f.is_correct("")
    assert not f.is_correct("   ")
    assert not f.is_correct("The")          # normalizes to empty
    assert exact_match("Ouagadougou", "ouagadougou")
    assert not exact_match("Ouaga", ["Ouagadougou"])


def test_fact_validation():
    with pytest.raises(FactError, match="subject"):
        make("", "capital", "Paris")
    with pytest.raises(FactError, match="aliases"):
        make("France", "capital", "Paris", aliases=("",))
    with pytest.raises(FactError, match="empty after normalize_answer"):
        make("France", "capital", "The")
    f = make("France", "capital", "Paris", aliases=("Paname",))
    assert f.aliases[0] == "Paris" and Fact.from_dict(f.to_dict()) == f
    with pytest.raises(FactError, match="missing"):
        Fact.from_dict({"subject": "x"})


def test_fact_prompt():
    a, b = make("A", "r", "1"), make("B", "r", "2")
    assert fact_prompt(b, [a]) == "Q: r of A?\nA: 1\nQ: r of B?\nA:"


# ---- tables --------------------------------------------------------------

def test_counts_and_table(world):
    assert relation_counts(world) == {"capital": 40, "located_in": 60, "continent": 40}
    df = facts_table(world[:3])
    assert list(df["object"]) == ["City0", "City1", "City2"]
    assert {"relation", "subject", "question", "aliases", "popularity"} <= set(df.columns)
    assert len(facts_table([])) == 0
    with pytest.raises(FactError, match="not a Fact"):
        relation_counts(["x"])


# ---- splits --------------------------------------------------------------

def test_split_no_leakage(world):
    s = split_facts(world, seed=0)
    assert s.entity_object_relations == ("capital",)   # auto rule
    test_ents = {normalize_answer(f.subject) for f in s.test}
    test_ents |= {normalize_answer(f.object) for f in s.test if f.relation == "capital"}
    for f in s.train:
        assert normalize_answer(f.subject) not in test_ents
        if f.relation == "capital":
            assert normalize_answer(f.object) not in test_ents
    # countries shared with test are removed across relations (capital <-> continent)
    assert s.removed == len(s.removed_facts) > 0
    assert any(f.relation == "continent" for f in s.removed_facts)
    # located_in objects are shared values: the object rule must not empty its train
    assert relation_counts(s.train)["located_in"] == len(
        [f for f in s.removed_facts + tuple(s.train) if f.relation == "located_in"])
    # every fact lands in exactly one place
    keys = [f.key for part in (s.train, s.dev, s.test, s.removed_facts) for f in part]
    assert sorted(keys) == sorted(f.key for f in world)
    counts = s.counts()
    assert counts.loc["capital"].sum() == 40 and counts.loc["capital", "test"] == 8


def test_split_object_rule_when_asked(world):
    # With located_in counted as entity-object, a test country removes every town of it.
    s = split_facts(world, seed=0, entity_object_relations=["capital", "located_in"])
    test_objs = {f.object for f in s.test if f.relation == "located_in"}
    assert test_objs and not any(f.object in test_objs for f in s.train
                                 if f.relation == "located_in")
    plain = split_facts(world, seed=0)
    assert (relation_counts(s.train)["located_in"]
            < relation_counts(plain.train)["located_in"])


def test_split_cross_relation_object(world):
    # a capital (object) in test removes a train fact whose subject is that city
    extra = [make(f"City{i}", "city_country", f"Country{i}") for i in range(40)]
    s = split_facts(world + extra, seed=1)
    test_caps = {normalize_answer(f.object) for f in s.test if f.relation == "capital"}
    assert not any(normalize_answer(f.subject) in test_caps for f in s.train)


def test_split_determinism(world):
    a, b, c = split_facts(world, seed=3), split_facts(world, seed=3), split_facts(world, seed=4)
    assert [f.key for f in a.test] == [f.key for f in b.test]
    assert [f.key for f in a.test] != [f.key for f in c.test]
    train, dev, test = a
    assert train == a.train and dev == a.dev and test == a.test


@pytest.mark.parametrize("bad", [(0.5, 0.5, 0.0), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (1,), "x"])
def test_split_bad_fractions(world, bad):
    with pytest.raises(FactError, match="fractions"):
        split_facts(world, fractions=bad)


def test_split_errors(world):
    with pytest.raises(FactError, match="empty"):
        split_facts([])
    with pytest.raises(FactError, match="not relations"):
        split_facts(world, entity_object_relations=["nope"])
    with pytest.raises(FactError, match="seed"):
        split_facts(world, seed=-1)


# ---- exemplars -------------------------------------------------------------

def test_exemplar_sets_distinct_same_relation(world):
    q = world[0]
    sets = exemplar_sets(world, "capital", 4, 10, seed=0, exclude=q)
    assert len(sets) == 10
    assert len({frozenset(f.key for f in s) for s in sets}) == 10
    for s in sets:
        assert len(s) == 4 and len({f.key for f in s}) == 4
        assert all(f.relation == "capital" and f.subject != q.subject for f in s)
    again = exemplar_sets(world, "capital", 4, 10, seed=0, exclude=q)
    assert [[f.key for f in s] for s in sets] == [[f.key for f in s] for s in again]
    other = exemplar_sets(world, "capital", 4, 10, seed=1, exclude=q)
    assert [[f.key for f in s] for s in sets] != [[f.key for f in s] for s in other]


def test_exemplar_sets_small_pool_and_errors(world):
    pool = [make(f"S{i}", "r", f"O{i}") for i in range(5)]
    sets = exemplar_sets(pool, "r", 4, 5, seed=0)   # C(5,4) = 5: all of them
    assert len({frozenset(f.key for f in s) for s in sets}) == 5
    with pytest.raises(FactError, match="distinct sets"):
        exemplar_sets(pool, "r", 4, 6)
    with pytest.raises(FactError, match="fewer than k"):
        exemplars(pool, "r", 4, exclude=pool[:2])
    with pytest.raises(FactError, match="no fact in the exemplar pool"):
        exemplars(pool, "capital", 1)
    assert len(exemplars(world, "continent", 4, seed=2)) == 4


# ---- random answers ------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_random_answers_fraction(world, fraction):
    out = with_random_answers(world, fraction=fraction, seed=0)
    replaced = [f for f in out if f.meta["random_answer"]]
    assert len(out) == len(world) and len(replaced) == round(fraction * len(world))
    for new, old in zip(out, world):
        assert new.subject == old.subject and new.question == old.question
        if new.meta["random_answer"]:
            assert len(new.object) == 32 and new.aliases == (new.object,)
            assert set(new.object) <= set(RANDOM_ALPHABET)
            assert normalize_answer(new.object) == new.object
            assert new.meta["true_object"] == old.object
            assert not new.is_correct(old.object)
        else:
            assert new.object == old.object
    assert len({f.object for f in replaced}) == len(replaced)


def test_random_answers_nested_and_deterministic(world):
    a = with_random_answers(world, fraction=0.25, seed=5)
    b = with_random_answers(world, fraction=0.5, seed=5)
    again = with_random_answers(world, fraction=0.25, seed=5)
    assert [f.object for f in a] == [f.object for f in again]
    for x, y in zip(a, b):
        if x.meta["random_answer"]:
            assert y.meta["random_answer"] and x.object == y.object
    c = with_random_answers(world, fraction=0.25, seed=6)
    assert [f.object for f in a] != [f.object for f in c]
    assert len(with_random_answers(world[:3], length=5)[0].object) == 5


@pytest.mark.parametrize("kw, match", [
    ({"fraction": 1.5}, "fraction"), ({"fraction": -0.1}, "fraction"),
    ({"length": 0}, "length"), ({"alphabet": "ABC"}, "alphabet"),
    ({"alphabet": "ab-"}, "alphabet"), ({"alphabet": "a"}, "alphabet"),
])
def test_random_answers_errors(world, kw, match):
    with pytest.raises(FactError, match=match):
        with_random_answers(world, **kw)
    with pytest.raises(FactError, match="empty"):
        with_random_answers([])
