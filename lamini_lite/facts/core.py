"""Facts, exact-match scoring, splits and random-answer variants, shared by both fact worlds.

A :class:`Fact` is a (subject, relation, object) triple asked as a closed-book
question, with every answer that counts as correct. Scoring follows the
SQuAD/EntityQuestions convention: both strings are normalized (see
:func:`normalize_answer`) and a prediction is correct when it equals any
accepted answer after normalization (:func:`exact_match`).

Generic tools over lists of facts from either world (real:
:mod:`lamini_lite.facts.real`; synthetic: :mod:`lamini_lite.facts.synthetic`):

* :func:`split_facts` -> :class:`Splits`: train/dev/test per relation with no
  test entity leaking into train (Gekhman et al. 2024);
* :func:`exemplars`, :func:`exemplar_sets`: few-shot exemplars of the same
  relation, e.g. SliCK's 10 different random 4-shot prompts per fact;
* :func:`with_random_answers`: the Lamini experiment's random-string answers
  for a chosen fraction of facts;
* :func:`facts_table`, :func:`relation_counts`: tables for notebooks.
"""

from __future__ import annotations

import itertools
import math
import re
import string
import unicodedata
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Fact", "FactError", "normalize_answer", "exact_match", "qa_prompt", "fact_prompt",
           "relation_counts", "facts_table", "Splits", "split_facts", "exemplars",
           "exemplar_sets", "RANDOM_ALPHABET", "with_random_answers"]


class FactError(ValueError):
    """A malformed fact, an unknown relation or an empty selection of facts."""


@dataclass(frozen=True)
class Fact:
    """One closed-book question about a (subject, relation, object) triple.

    Attributes:
        subject: the entity asked about, e.g. ``"Burkina Faso"``.
        relation: relation id, e.g. ``"capital"`` (or a Wikidata-style ``"P36"``).
        object: the canonical answer, e.g. ``"Ouagadougou"``.
        question: the question text, e.g. ``"What is the capital of Burkina Faso?"``.
        aliases: every accepted answer; always contains ``object``.
        popularity: how well known the fact is likely to be (e.g. city
            population; the exposure count in the synthetic world), or None.
        meta: anything else (ids, exposure, ambiguity notes); JSON-able values.
    """

    subject: str
    relation: str
    object: str
    question: str
    aliases: tuple[str, ...] = ()
    popularity: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("subject", "relation", "object", "question"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise FactError(f"Fact.{name} must be a non-empty string, got {value!r}")
        aliases = tuple(self.aliases) if not isinstance(self.aliases, str) else (self.aliases,)
        for a in aliases:
            if not isinstance(a, str) or not a.strip():
                raise FactError(f"Fact.aliases must hold non-empty strings, got {a!r} "
                                f"(fact about {self.subject!r})")
        if self.object not in aliases:
            aliases = (self.object,) + aliases
        for a in aliases:
            if not normalize_answer(a):
                raise FactError(f"accepted answer {a!r} of the fact about {self.subject!r} is "
                                f"empty after normalize_answer, so nothing could match it")
        object.__setattr__(self, "aliases", aliases)
        if self.popularity is not None and not isinstance(self.popularity, (int, float)):
            raise FactError(f"Fact.popularity must be a number or None, got {self.popularity!r}")

    @property
    def key(self) -> str:
        """A stable id: ``relation|subject``."""
        return f"{self.relation}|{self.subject}"

    def is_correct(self, prediction: str) -> bool:
        """Exact match of ``prediction`` against any accepted answer."""
        return exact_match(prediction, self.aliases)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for caching and tables)."""
        return {"subject": self.subject, "relation": self.relation, "object": self.object,
                "question": self.question, "aliases": list(self.aliases),
                "popularity": self.popularity, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Fact":
        """Inverse of :meth:`to_dict`; a missing field is a clear :class:`FactError`."""
        missing = [k for k in ("subject", "relation", "object", "question") if k not in d]
        if missing:
            raise FactError(f"malformed fact {dict(d)!r:.120}: missing {missing}")
        return cls(subject=d["subject"], relation=d["relation"], object=d["object"],
                   question=d["question"], aliases=tuple(d.get("aliases", ())),
                   popularity=d.get("popularity"), meta=dict(d.get("meta", {})))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
# ASCII: dashes and slashes separate words, every other punctuation mark is removed.
_ASCII_TABLE = {ord(ch): ("" if ch not in "-/" else " ") for ch in string.punctuation}
# Latin letters that NFKD does not decompose.
_LATIN_EXTRA = str.maketrans({"ø": "o", "Ø": "o", "æ": "ae", "Æ": "ae", "œ": "oe",
                              "Œ": "oe", "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ð": "d",
                              "Ð": "d", "þ": "th", "Þ": "th", "ı": "i", "ß": "ss"})


_APOSTROPHE_LETTERS = set("\u02b9\u02bb\u02bc\u02bd\u02be\u02bf")


# The common combining-mark blocks (a fast path; the loop below removes any other).
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def _fold_unicode(text: str) -> str:
    """Accent folding and Unicode punctuation for non-ASCII text."""
    text = _COMBINING.sub("", unicodedata.normalize("NFKD", text.translate(_LATIN_EXTRA)))
    if text.isascii():
        return text
    out = []
    for ch in text:
        if unicodedata.combining(ch):
            continue
        cat = unicodedata.category(ch)
        if cat == "Pd" or ch == "/":
            out.append(" ")
        elif cat.startswith("P") or (cat.startswith("S") and not ch.isascii()):
            continue  # quotes, apostrophes, guillemets, modifier symbols
        elif ch in _APOSTROPHE_LETTERS:
            continue  # letter-like apostrophes: "ʻUmān" -> "uman"
        elif cat.startswith("Z"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_answer(text: str) -> str:
    """Normalize an answer for exact match.

    The SQuAD/EntityQuestions normalization plus accent folding, in order:

    1. Unicode: NFKD, combining marks removed, a few undecomposable Latin
       letters mapped (``ø->o``, ``æ->ae``, ``ł->l``, ``ß->ss``, ...), so
       ``"Bogotá" -> "bogota"``, ``"Łódź" -> "lodz"``.
    2. Case folded.
    3. Dashes (any Unicode dash) and ``/`` become spaces, so ``"Guinea-Bissau"``
       matches ``"Guinea Bissau"``; every other punctuation mark is removed,
       so ``"St. John's" -> "st johns"``, ``"Côte d'Ivoire" -> "cote divoire"``,
       ``"U.S.A." -> "usa"``, a trailing ``"."`` is ignored.
    4. The articles *a*, *an*, *the* are removed as words (``"The Gambia"``
       matches ``"Gambia"``).
    5. Whitespace collapsed and stripped.

    Strings of lowercase ASCII letters and digits without spaces (the random
    answers of :func:`with_random_answers`) are left unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a string, got {type(text).__name__}")
    if not text.isascii():
        text = _fold_unicode(text)
    text = text.casefold().translate(_ASCII_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: str | Iterable[str]) -> bool:
    """True when ``prediction`` equals any of ``answers`` after :func:`normalize_answer`.

    An empty prediction is never correct.
    """
    if isinstance(answers, str):
        answers = (answers,)
    pred = normalize_answer(prediction)
    if not pred:
        return False
    return any(pred == normalize_answer(a) for a in answers)


def qa_prompt(question: str, exemplars: Iterable[tuple[str, str]] = ()) -> str:
    """A few-shot prompt ``Q: ...\\nA: ...\\n`` x k, ending with ``Q: question\\nA:``.

    ``exemplars`` are (question, answer) pairs. The model's answer is what it
    writes after the final ``A:`` up to the end of the line.
    """
    parts = [f"Q: {q}\nA: {a}\n" for q, a in exemplars]
    return "".join(parts) + f"Q: {question}\nA:"


def fact_prompt(fact: Fact, exemplars: Iterable[Fact] = ()) -> str:
    """:func:`qa_prompt` for ``fact`` with exemplar facts shown with their canonical answers."""
    return qa_prompt(fact.question, [(e.question, e.object) for e in exemplars])


# ---------------------------------------------------------------------------
# Checks, counts and tables
# ---------------------------------------------------------------------------

def _check_fact_list(facts: Any, name: str = "facts", *, allow_empty: bool = False
                     ) -> list[Fact]:
    """``facts`` as a list, every item a :class:`Fact`; a clear FactError otherwise."""
    if isinstance(facts, (str, bytes, Fact)) or not isinstance(facts, Iterable):
        raise FactError(f"{name} must be a sequence of Fact, got {type(facts).__name__}")
    facts = list(facts)
    for i, f in enumerate(facts):
        if not isinstance(f, Fact):
            raise FactError(f"{name}[{i}] is not a Fact: {f!r:.80}")
    if not facts and not allow_empty:
        raise FactError(f"{name} is empty")
    return facts


def relation_counts(facts: Iterable[Fact]) -> dict[str, int]:
    """Number of facts per relation, relations in order of first appearance."""
    counts: dict[str, int] = {}
    for f in _check_fact_list(facts, allow_empty=True):
        counts[f.relation] = counts.get(f.relation, 0) + 1
    return counts


def facts_table(facts: Iterable[Fact]):
    """A pandas DataFrame with one row per fact (for notebooks).

    Columns: ``relation``, ``subject``, ``question``, ``object``,
    ``aliases`` (joined with ``" | "``), ``n_aliases``, ``popularity``, then
    one column per ``meta`` key (missing values are NaN/None).
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    rows = []
    for f in _check_fact_list(facts, allow_empty=True):
        row = {"relation": f.relation, "subject": f.subject, "question": f.question,
               "object": f.object, "aliases": " | ".join(f.aliases),
               "n_aliases": len(f.aliases), "popularity": f.popularity}
        for k, v in f.meta.items():
            row.setdefault(k, v)
        rows.append(row)
    base = ["relation", "subject", "question", "object", "aliases", "n_aliases", "popularity"]
    return pd.DataFrame(rows, columns=None if rows else base)


# ---------------------------------------------------------------------------
# Train / dev / test splits (Gekhman et al. 2024 on EntityQuestions)
# ---------------------------------------------------------------------------

def _rng(seed: int, *salt: str) -> np.random.Generator:
    """A numpy generator for ``seed`` and string salts (stable across processes)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise FactError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng([int(seed), *(zlib.crc32(s.encode()) for s in salt)])


@dataclass(frozen=True)
class Splits:
    """Train / dev / test facts, split per relation.

    Attributes:
        train: training facts, without any fact that shares an entity with test.
        dev: development facts (the few-shot exemplar pool).
        test: test facts.
        removed: how many facts were taken out of train for sharing an entity
            with test (see :func:`split_facts`).
        removed_facts: those facts, for inspection.
        entity_object_relations: relations whose objects counted as entities.
    """

    train: list[Fact]
    dev: list[Fact]
    test: list[Fact]
    removed: int = 0
    removed_facts: tuple[Fact, ...] = ()
    entity_object_relations: tuple[str, ...] = ()

    def __iter__(self):
        """``train, dev, test = splits``."""
        return iter((self.train, self.dev, self.test))

    def counts(self):
        """A DataFrame: facts per relation (rows) in train/dev/test/removed (columns)."""
        import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

        rels = list(relation_counts([*self.train, *self.dev, *self.test, *self.removed_facts]))
        data = {name: relation_counts(part) for name, part in
                (("train", self.train), ("dev", self.dev), ("test", self.test),
                 ("removed", self.removed_facts))}
        return pd.DataFrame({k: [v.get(r, 0) for r in rels] for k, v in data.items()},
                            index=pd.Index(rels, name="relation"))


def split_facts(facts: Iterable[Fact], *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                seed: int = 0, entity_object_relations: Iterable[str] | None = None) -> Splits:
    """Split facts per relation into train/dev/test, without entity leakage into train.

    Each relation's facts are shuffled (seeded) and cut by ``fractions``
    (train, dev, test). Then, as Gekhman et al. (2024) do on EntityQuestions,
    every train fact whose subject or object appears in test is removed
    (compared after :func:`normalize_answer`); dev is kept as is.

    Which objects count: a subject is always an entity; an object counts only
    in relations whose objects are entities that identify a fact (a country's
    capital), not in relations with a handful of shared values (continent,
    currency, or the country of a city): there, "France appears in test"
    would remove every French city from train. ``entity_object_relations``
    names those relations; None picks them automatically: the relations in
    which distinct objects number at least 80% of the facts (for the real
    world, :func:`lamini_lite.facts.real.split_real_facts` passes the
    curated choice instead).

    An entity of the test set is: a test subject, or a test object of an
    entity-object relation. A train fact is removed when its subject, or its
    object in an entity-object relation, is such an entity.

    Args:
        facts: facts of one or several relations (either world).
        fractions: train, dev, test shares; non-negative, summing to 1, with
            train and test > 0.
        seed: seed of the shuffle; the same seed gives the same splits.
        entity_object_relations: see above.

    Raises:
        FactError: empty or malformed facts, bad fractions, an unknown
        relation in ``entity_object_relations``.
    """
    facts = _check_fact_list(facts)
    try:
        fr = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        raise FactError(f"fractions must be three numbers (train, dev, test), "
                        f"got {fractions!r}") from None
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0 or fr[2] <= 0:
        raise FactError(f"fractions must be (train, dev, test), non-negative, summing to 1, "
                        f"train and test > 0; got {fractions!r}")
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    if entity_object_relations is None:
        eo = {r for r, fs in by_rel.items()
              if len({normalize_answer(f.object) for f in fs}) >= 0.8 * len(fs)}
    else:
        eo = set([entity_object_relations] if isinstance(entity_object_relations, str)
                 else entity_object_relations)
        unknown = sorted(eo - set(by_rel))
        if unknown:
            raise FactError(f"entity_object_relations {unknown} are not relations of these "
                            f"facts; relations: {list(by_rel)}")
    parts: dict[str, list[Fact]] = {"train": [], "dev": [], "test": []}
    for rel, fs in by_rel.items():
        order = _rng(seed, "split", rel).permutation(len(fs))
        n_test = int(round(fr[2] * len(fs)))
        n_dev = int(round(fr[1] * len(fs)))
        if len(fs) >= 2:  # keep one fact in train and one in test when possible
            n_test = min(max(n_test, 1), len(fs) - 1)
            n_dev = min(n_dev, len(fs) - 1 - n_test)
        which = np.empty(len(fs), dtype=object)
        which[order[:n_test]] = "test"
        which[order[n_test:n_test + n_dev]] = "dev"
        which[order[n_test + n_dev:]] = "train"
        for f, w in zip(fs, which):
            parts[w].append(f)
    test_entities = {normalize_answer(f.subject) for f in parts["test"]}
    test_entities |= {normalize_answer(f.object) for f in parts["test"] if f.relation in eo}
    train, removed = [], []
    for f in parts["train"]:
        leak = normalize_answer(f.subject) in test_entities or (
            f.relation in eo and normalize_answer(f.object) in test_entities)
        (removed if leak else train).append(f)
    return Splits(train=train, dev=parts["dev"], test=parts["test"], removed=len(removed),
                  removed_facts=tuple(removed),
                  entity_object_relations=tuple(r for r in by_rel if r in eo))


# ---------------------------------------------------------------------------
# Few-shot exemplars (SliCK: several random k-shot prompts per fact)
# ---------------------------------------------------------------------------

def _exemplar_candidates(pool: Iterable[Fact], relation: str,
                         exclude: Fact | str | Iterable[Fact | str] | None) -> list[Fact]:
    pool = _check_fact_list(pool, "pool")
    relations = list(relation_counts(pool))
    if relation not in relations:
        raise FactError(f"relation {relation!r} has no fact in the exemplar pool; "
                        f"relations there: {relations}")
    if exclude is None:
        excluded: set[str] = set()
    elif isinstance(exclude, (str, Fact)):
        excluded = {normalize_answer(exclude.subject if isinstance(exclude, Fact) else exclude)}
    else:
        excluded = {normalize_answer(e.subject if isinstance(e, Fact) else e) for e in exclude}
    return [f for f in pool if f.relation == relation
            and normalize_answer(f.subject) not in excluded]


def exemplars(pool: Iterable[Fact], relation: str, k: int, *, seed: int = 0,
              exclude: Fact | str | Iterable[Fact | str] | None = None) -> list[Fact]:
    """``k`` distinct facts of ``relation`` drawn from ``pool`` (e.g. ``splits.dev``).

    ``exclude`` (a fact, a subject, or several) removes facts with that
    subject, so a question is never its own exemplar. Deterministic for a seed.

    Raises:
        FactError: ``relation`` absent from the pool, or fewer than ``k`` candidates.
    """
    return exemplar_sets(pool, relation, k, 1, seed=seed, exclude=exclude)[0]


def exemplar_sets(pool: Iterable[Fact], relation: str, k: int, n: int, *, seed: int = 0,
                  exclude: Fact | str | Iterable[Fact | str] | None = None
                  ) -> list[list[Fact]]:
    """``n`` different sets of ``k`` exemplars of ``relation`` (SliCK's 10 random 4-shot prompts).

    No two sets hold the same facts (as sets); the order inside a set is
    random too. With ``exclude`` as in :func:`exemplars`. Deterministic for a
    seed; a different seed gives different sets.

    Raises:
        FactError: bad ``k``/``n``, ``relation`` absent from the pool, or fewer
        than ``n`` distinct sets possible.
    """
    for name, v, lo in (("k", k, 0), ("n", n, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise FactError(f"{name} must be an int >= {lo}, got {v!r}")
    cands = _exemplar_candidates(pool, relation, exclude)
    m = len(cands)
    if m < k:
        raise FactError(f"relation {relation!r} has {m} exemplar candidates, fewer than k={k}")
    possible = math.comb(m, k)
    if possible < n:
        raise FactError(f"relation {relation!r}: only {possible} distinct sets of k={k} "
                        f"from {m} candidates, n={n} asked")
    rng = _rng(seed, "exemplars", relation)
    sets: list[list[Fact]] = []
    seen: set[tuple[int, ...]] = set()
    if possible <= 4 * n:  # few combinations: choose among all of them
        combos = list(itertools.combinations(range(m), k))
        for ci in rng.choice(len(combos), size=n, replace=False):
            idx = rng.permutation(list(combos[ci]))
            sets.append([cands[i] for i in idx])
        return sets
    while len(sets) < n:
        idx = rng.choice(m, size=k, replace=False)
        key = tuple(sorted(int(i) for i in idx))
        if key not in seen:
            seen.add(key)
            sets.append([cands[i] for i in idx])
    return sets


# ---------------------------------------------------------------------------
# Random-answer variants (the Lamini experiment)
# ---------------------------------------------------------------------------

RANDOM_ALPHABET = string.ascii_lowercase + string.digits


def with_random_answers(facts: Iterable[Fact], *, length: int = 32,
                        alphabet: str = RANDOM_ALPHABET, fraction: float = 1.0,
                        seed: int = 0) -> list[Fact]:
    """Copies of ``facts`` in which a ``fraction`` have random-string answers.

    As in the Lamini memory-tuning experiment, the answer of a replaced fact
    becomes a random string of ``length`` characters: nothing in pretraining
    can help, so the answer can only be memorized. A replaced fact has
    ``object`` and ``aliases`` set to the string, and ``meta`` gains
    ``random_answer=True``, ``true_object`` and ``true_aliases``; the others
    are unchanged except ``meta["random_answer"] = False``. Order is kept.

    Which facts are replaced: ``round(fraction * len(facts))`` facts, the
    first of one seeded permutation; every fact's string comes from the same
    seeded stream. So for one seed the facts replaced at 25% are also replaced,
    with the same strings, at 50%, 75% and 100%.

    Why the default alphabet is lowercase ASCII letters and digits: the
    string must come out of :func:`normalize_answer` unchanged, or two
    different answers could score as equal and a model's exact answer could
    score as wrong. Upper case would be folded, punctuation removed, and
    spaces could create the articles "a"/"an"/"the"; a lowercase
    alphanumeric word survives (each generated string is checked, and
    strings are unique within the call).

    Raises:
        FactError: empty or malformed facts, ``fraction`` outside [0, 1],
        ``length`` < 1, or an alphabet with characters that normalization
        would change (upper case, punctuation, spaces, non-ASCII).
    """
    facts = _check_fact_list(facts)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise FactError(f"length must be an int >= 1, got {length!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 <= fraction <= 1.0:
        raise FactError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not isinstance(alphabet, str) or len(set(alphabet)) < 2:
        raise FactError(f"alphabet must be a string of at least 2 distinct characters, "
                        f"got {alphabet!r}")
    bad = sorted({ch for ch in alphabet if not (ch.isascii() and ch.isalnum()
                                                 and ch == ch.casefold())})
    if bad:
        raise FactError(f"alphabet characters {bad} would be changed by normalize_answer; "
                        f"use lowercase ASCII letters and digits")
    chars = np.array(sorted(set(alphabet)))
    rng = _rng(seed, "random_answers")
    order = rng.permutation(len(facts))
    n_replace = int(round(fraction * len(facts)))
    used = {normalize_answer(a) for f in facts for a in f.aliases}
    strings: list[str] = []
    for _ in range(len(facts)):
        while True:
            s = "".join(rng.choice(chars, size=length))
            if normalize_answer(s) == s and s not in used:
                used.add(s)
                strings.append(s)
                break
    out = [replace(f, meta={**f.meta, "random_answer": False}) for f in facts]
    for rank, i in enumerate(order[:n_replace]):
        f = facts[i]
        s = strings[rank]
        out[i] = replace(f, object=s, aliases=(s,),
                         meta={**f.meta, "random_answer": True, "true_object": f.object,
                               "true_aliases": list(f.aliases)})
    return out
