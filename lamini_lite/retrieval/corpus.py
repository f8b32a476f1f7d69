"""A corpus of passages stating facts, and the questions a retrieval study asks about them.

* :func:`build_corpus` -- short passages stating facts in plain English
  (``"Ouagadougou is the capital of Burkina Faso."``), one or a few paraphrases
  per fact, each tagged with the fact it states (its *gold* fact,
  :func:`fact_id`);
* :func:`make_retrieval_world` -- the facts a study asks (true answers, random
  answers, held-out ones, ambiguous names), the exemplar pool, and the corpus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..facts.core import Fact, with_random_answers
from ..seeding import numpy_rng

__all__ = ["RetrievalError", "Passage", "fact_id", "passage_templates", "build_corpus",
           "PARAPHRASES", "paraphrase_question", "RetrievalWorld", "make_retrieval_world"]


class RetrievalError(ValueError):
    """Bad input to a retriever or to the evaluation (empty corpus, k < 1, ...)."""


def fact_id(fact: Fact) -> str:
    """A unique id of a fact: ``relation|subject|object``.

    :attr:`Fact.key` (``relation|subject``) is not unique when two cities share
    a name; adding the object is.
    """
    return f"{fact.relation}|{fact.subject}|{fact.object}"


@dataclass(frozen=True)
class Passage:
    """One passage of the corpus."""

    id: str  # unique id, e.g. "capital|Burkina Faso|Ouagadougou#0"
    text: str  # the passage itself
    fact: str | None = None  # fact_id() of the fact it states (None for filler text)


# Sentence templates per relation: {s} = subject, {o} = object. Several per
# relation, so that a corpus can state a fact in different words. Relations
# not listed use the generic templates.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": ("{o} is the capital of {s}.",
                "The capital city of {s} is {o}.",
                "{s} is governed from {o}, its capital."),
    "city_country": ("{s} is a city in {o}.",
                "The city of {s} is located in {o}.",
                "{s} lies in the country of {o}."),
    "currency": ("The currency of {s} is the {o}.",
                 "In {s}, people pay with the {o}.",
                 "{s} uses the {o} as its currency."),
    "us_state": ("{s} is a city in the US state of {o}.",
                 "The city of {s} lies in {o}, United States.",
                 "{s}, {o}, is an American city."),
    "region": ("{s} is a country in {o}.",
               "{s} lies in the region of {o}.",
               "Geographically, {s} belongs to {o}."),
    "continent": ("{s} is on the continent of {o}.",
                  "{s} lies in {o}.",
                  "The continent of {s} is {o}."),
    "calling_code": ("The international calling code of {s} is {o}.",
                     "To phone {s} from abroad, dial {o}.",
                     "{s} has the telephone code {o}."),
    "tld": ("The internet domain of {s} is {o}.",
            "Web sites in {s} end in {o}.",
            "{s} has the top-level domain {o}."),
    "language": ("People in {s} speak {o}.",
                 "The official language of {s} is {o}.",
                 "{o} is spoken in {s}."),
}


_GENERIC = ("The {r} of {s} is {o}.", "{s} has {o} as its {r}.", "For {s}, the {r} is {o}.")


# Wikidata-style ids used by EntityQuestions, mapped to the names above.
_ALIASES = {"P36": "capital", "P17": "city_country", "P131": "us_state", "P38": "currency",
            "P30": "continent", "P37": "language", "country": "city_country"}


def passage_templates(relation: str) -> tuple[str, ...]:
    """The sentence templates for ``relation`` (``{s}`` subject, ``{o}`` object)."""
    name = _ALIASES.get(relation, relation)
    if name in _TEMPLATES:
        return _TEMPLATES[name]
    words = relation.replace("_", " ").strip()
    return tuple(t.replace("{r}", words) for t in _GENERIC)


def build_corpus(facts: Sequence[Fact], *, n_paraphrases: int = 1,
                 templates: Mapping[str, Sequence[str]] | None = None) -> list[Passage]:
    """A corpus stating every fact in ``n_paraphrases`` different sentences.

    Passage ``j`` of a fact uses template ``j`` of its relation (see
    :func:`passage_templates`; ``templates`` overrides them per relation).
    Facts that appear twice (same :func:`fact_id`) are stated once.

    Raises:
        RetrievalError: if ``facts`` is empty or ``n_paraphrases < 1``.
    """
    if not facts:
        raise RetrievalError("build_corpus needs at least one fact, got an empty list")
    if not isinstance(n_paraphrases, int) or n_paraphrases < 1:
        raise RetrievalError(f"n_paraphrases must be an int >= 1, got {n_paraphrases!r}")
    out: list[Passage] = []
    seen: set[str] = set()
    for f in facts:
        if not isinstance(f, Fact):
            raise RetrievalError(f"facts must hold Fact objects, got {type(f).__name__}")
        fid = fact_id(f)
        if fid in seen:
            continue
        seen.add(fid)
        tpl = tuple((templates or {}).get(f.relation, ())) or passage_templates(f.relation)
        for j in range(n_paraphrases):
            text = tpl[j % len(tpl)].format(s=f.subject, o=f.object)
            out.append(Passage(id=f"{fid}#{j}", text=text, fact=fid))
    return out


# Questions worded unlike both the standard question and the corpus passages.
PARAPHRASES: dict[str, str] = {
    "capital": "Which city is the seat of government of {s}?",
    "city_country": "{s} is a town in which nation?",
    "continent": "On which landmass does {s} lie?",
    "currency": "What money do people spend in {s}?",
    "us_state": "{s} belongs to which American state?",
}


def paraphrase_question(fact: Fact) -> str:
    """The fact's question in other words (:data:`PARAPHRASES`; generic otherwise)."""
    name = _ALIASES.get(fact.relation, fact.relation)
    tpl = PARAPHRASES.get(name, "Tell me the " + fact.relation.replace("_", " ") + " of {s}.")
    return tpl.format(s=fact.subject)


@dataclass
class RetrievalWorld:
    """The facts of a retrieval experiment and the one corpus that serves them all."""

    ask: list[Fact]  # ordinary questions, stated in the corpus
    random: list[Fact]  # facts whose answer is a random string, stated so in the corpus
    held_out: list[Fact]  # real facts the corpus does not state
    ambiguous: list[Fact]  # city names shared across countries; every namesake in the corpus
    pool: list[Fact]  # exemplar facts (in the corpus, never asked)
    corpus: list[Passage]  # all passages


def make_retrieval_world(facts: Sequence[Fact], *, n_ask: int, n_hard: int,
               ambiguous: Sequence[Fact] = (), random_length: int = 8, n_paraphrases: int = 1,
               seed: int = 0) -> RetrievalWorld:
    """Split ``facts`` into asked, random-answer, held-out and exemplar facts; build the corpus.

    Disjoint draws, each spread evenly over relations: ``n_ask`` asked facts,
    ``n_hard`` facts re-answered with random strings of ``random_length``
    characters (:func:`lamini_lite.facts.with_random_answers`; only the random
    version is in the corpus) and ``n_hard`` held-out facts (in no passage).
    The rest is the exemplar pool. Each ambiguous fact adds one fact per
    namesake (``meta["candidates"]``) to the corpus.

    Raises:
        RetrievalError: if there are too few facts for the draws.
    """

    facts = list(facts)
    rels = sorted({f.relation for f in facts})
    by_rel = {r: [f for f in facts if f.relation == r] for r in rels}
    rng = numpy_rng(seed)
    for r in rels:
        by_rel[r] = [by_rel[r][i] for i in rng.permutation(len(by_rel[r]))]

    def take(n: int) -> list[Fact]:
        out, i = [], 0
        while len(out) < n:
            r = rels[i % len(rels)]
            if not by_rel[r] and not any(by_rel.values()):
                raise RetrievalError(f"too few facts ({len(facts)}) for n_ask={n_ask} and "
                                     f"n_hard={n_hard}")
            if by_rel[r]:
                out.append(by_rel[r].pop())
            i += 1
        return out

    ask, rand_src, held = take(n_ask), take(n_hard), take(n_hard)
    pool = [f for r in rels for f in by_rel[r]]
    if not pool:
        raise RetrievalError("no facts left for the exemplar pool")
    rand = with_random_answers(rand_src, length=random_length, seed=seed)
    namesakes = []
    for f in ambiguous:
        for c in f.meta.get("candidates", [{"answer": f.object}]):
            namesakes.append(Fact(f.subject, f.relation, c["answer"], f.question))
    corpus = build_corpus(pool + ask + rand + namesakes, n_paraphrases=n_paraphrases)
    return RetrievalWorld(ask, rand, held, list(ambiguous), pool, corpus)
