"""Tests of lamini_lite.facts.real: the offline EntityQuestions-style fact world."""

from __future__ import annotations

from collections import defaultdict

import pytest

from lamini_lite.facts import FactError, normalize_answer, relation_counts
from lamini_lite.facts.real import (
    RELATIONS,
    ambiguous_city_facts,
    country_aliases,
    drop_report,
    load_real_facts,
    relation_pool_sizes,
    split_real_facts,
)


@pytest.fixture(scope="module")
def all_facts():
    return load_real_facts()


def by_subject(facts, relation):
    return {f.subject: f for f in facts if f.relation == relation}


def test_relations_table():
    assert len(RELATIONS) >= 4
    assert RELATIONS["capital"].pid == "P36" and RELATIONS["city_country"].pid == "P17"
    for name, rel in RELATIONS.items():
        assert rel.name == name and "{subject}" in rel.template


def test_pool_sizes_and_known_facts(all_facts):
    sizes = relation_pool_sizes()
    assert relation_counts(all_facts) == sizes
    assert sizes["city_country"] > 20000 and sizes["capital"] > 150
    caps = by_subject(all_facts, "capital")
    assert caps["France"].object == "Paris" and caps["France"].meta["pid"] == "P36"
    assert caps["Burkina Faso"].is_correct("Ouagadougou")
    assert caps["Colombia"].is_correct("Bogotá") and caps["Colombia"].is_correct("Bogota")
    assert caps["United States"].is_correct("Washington, D.C.")
    assert caps["Ukraine"].is_correct("Kiev") and caps["Ukraine"].is_correct("Kyiv")
    assert caps["Antigua and Barbuda"].is_correct("Saint John's")
    assert caps["Antigua and Barbuda"].is_correct("St. John's")
    assert not caps["Australia"].is_correct("Sydney")
    assert "Burundi" not in caps                      # Gitega vs Bujumbura: sources disagree
    assert "Mexico" not in caps                       # Mexico City: answer in the question
    assert by_subject(all_facts, "continent")["Brazil"].object == "South America"
    assert by_subject(all_facts, "currency")["Japan"].is_correct("Japanese yen")
    assert "Canada" not in by_subject(all_facts, "currency")   # "Dollar" is underspecified
    states = by_subject(all_facts, "us_state")
    assert states["Los Angeles"].object == "California"
    cities = by_subject(all_facts, "city_country")
    assert cities["Ouagadougou"].object == "Burkina Faso"
    assert cities["Shanghai"].popularity > 1e7
    assert f"{cities['Shanghai'].question}" == "Which country is Shanghai located in?"


def test_country_aliases():
    us = {normalize_answer(a) for a in country_aliases("US")}
    assert {"usa", "united states", "united states of america"} <= us
    uk = {normalize_answer(a) for a in country_aliases("United Kingdom")}
    assert {"uk", "great britain"} <= uk and "england" not in uk
    assert "Côte d'Ivoire" in country_aliases("CI")
    # a name shared by two countries is nobody's alias
    assert not any(normalize_answer(a) == "congo"
                   for code in ("CG", "CD") for a in country_aliases(code))
    # no ISO codes or demonyms slipped in from countryinfo's altSpellings
    assert "FRA" not in country_aliases("FR") and "Thai" not in country_aliases("TH")
    with pytest.raises(FactError, match="unknown country"):
        country_aliases("Atlantis")


def test_no_ambiguous_city_among_ordinary_facts(all_facts):
    amb = ambiguous_city_facts()
    amb_keys = {(f.relation, normalize_answer(f.subject)) for f in amb}
    assert amb_keys and not any((f.relation, normalize_answer(f.subject)) in amb_keys
                                for f in all_facts)
    # an ordinary city name maps to one answer
    seen = defaultdict(set)
    for f in all_facts:
        seen[(f.relation, normalize_answer(f.subject))].add(f.object)
    assert all(len(v) == 1 for v in seen.values())


def test_ambiguous_facts_carry_all_answers():
    amb = {f.subject: f for f in ambiguous_city_facts("city_country")}
    london = amb["London"]
    assert london.meta["ambiguous"] is True
    answers = [c["answer"] for c in london.meta["candidates"]]
    assert answers[0] == "United Kingdom" and "Canada" in answers
    assert london.is_correct("UK") and london.is_correct("Canada")
    for f in amb.values():
        cands = f.meta["candidates"]
        assert len(cands) >= 2 and len({c["answer"] for c in cands}) == len(cands)
        assert all(f.is_correct(c["answer"]) for c in cands)
        assert f.popularity == max(c["population"] for c in cands)
    us = ambiguous_city_facts("us_state")
    assert all(f.relation == "us_state" and len(f.meta["candidates"]) >= 2 for f in us)


def test_drop_report_counts_something():
    rep = drop_report()
    assert rep["capital"]["sources disagree"] >= 5
    assert rep["city_country"]["ambiguous name"] > 1000
    assert rep["currency"]["underspecified currency"] > 50


def test_sampling_spread_and_determinism():
    a = load_real_facts("city_country", per_relation=90, seed=0)
    b = load_real_facts("city_country", per_relation=90, seed=0)
    c = load_real_facts("city_country", per_relation=90, seed=1)
    assert [f.key for f in a] == [f.key for f in b] and [f.key for f in a] != [f.key for f in c]
    tiers = relation_counts(a)
    assert tiers == {"city_country": 90}
    by_tier = defaultdict(list)
    for f in a:
        by_tier[f.meta["popularity_tier"]].append(f.popularity)
    assert {k: len(v) for k, v in by_tier.items()} == {"large": 30, "mid": 30, "small": 30}
    assert min(by_tier["large"]) >= max(by_tier["mid"])
    assert min(by_tier["mid"]) >= max(by_tier["small"])
    big = load_real_facts(["capital", "city_country"], per_relation=20, min_population=1e6)
    assert relation_counts(big) == {"capital": 20, "city_country": 20}
    assert all(f.popularity >= 1e6 for f in big)


def test_errors():
    with pytest.raises(FactError, match="valid relations"):
        load_real_facts("birthplace")
    with pytest.raises(FactError, match="no 'us_state' fact"):
        load_real_facts("us_state", min_population=1e9)
    with pytest.raises(FactError, match="per_relation"):
        load_real_facts(per_relation=0)
    with pytest.raises(FactError, match="no city subjects"):
        ambiguous_city_facts("capital")


def test_real_splits_no_leakage():
    facts = load_real_facts(per_relation=150, seed=0)
    s = split_real_facts(facts, seed=0)
    assert s.entity_object_relations == ("capital",)
    test_ents = {normalize_answer(f.subject) for f in s.test}
    test_ents |= {normalize_answer(f.object) for f in s.test if f.relation == "capital"}
    assert not any(normalize_answer(f.subject) in test_ents for f in s.train)
    assert not any(normalize_answer(f.object) in test_ents
                   for f in s.train if f.relation == "capital")
    # shared answers (the euro, continents) do not empty train
    assert set(relation_counts(s.train)) == set(RELATIONS)


def test_country_facts_carry_their_own_country_code(all_facts):
    """Every country fact's meta names its own country (a currency fact once carried the
    code of the last country in the table, for every country)."""
    codes = {}
    for f in all_facts:
        if f.relation in ("capital", "continent", "currency"):
            codes.setdefault(f.subject, set()).add(f.meta["subject_id"])
    assert all(len(c) == 1 for c in codes.values())
    currency_ids = {f.meta["subject_id"] for f in all_facts if f.relation == "currency"}
    assert len(currency_ids) == sum(f.relation == "currency" for f in all_facts) > 50
