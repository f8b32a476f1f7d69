"""The synthetic fact world: fictional people whose facts we control.

A real LLM's knowledge can only be guessed from proxies (how popular a city
is). In this world we *choose* how often each fact is stated in the
pretraining corpus -- its **exposure** -- so the ground truth of what a model
trained on the corpus could know is stored with every fact.

The world:

* ``n_people`` fictional people, each named ``"<first name> <surname>"``.
  First names come from a shared list of 60 (as in life, many people share
  one); every surname is a made-up word given to one person only, so a name
  is two word tokens of which the surname identifies the person. Two tokens
  keep questions natural and force the model to attend over the name; the
  unique surname keeps a tiny model's task learnable (it need not
  disambiguate people who share a full name).
* Four relations per person, each with a value drawn uniformly from a small
  fixed set: ``birth_city`` (40 one-word fictional cities), ``employer`` (30
  two-word companies), ``university`` (25 two-word universities) and
  ``sport`` (20 sports). Categorical values with a few dozen choices are
  learnable at this scale (a numeric attribute such as a birth year was
  not, in a trial run), and the right answer cannot be guessed from the
  name: chance level is 1/20 to 1/40.
* Each fact's exposure ``k`` is drawn from a Zipf-like law
  ``P(k) ~ (k + 1) ** -zipf_exponent`` for ``k = 0 .. max_exposure``: many
  facts are never or rarely stated, a few very often, as in web text.
  ``Fact.popularity`` and ``Fact.meta["exposure"]`` hold ``k``.
* The **corpus** states every fact exactly ``k`` times, each time with one of
  five paraphrase templates (four name the person first, one names the
  value first), in shuffled order. For a share ``qa_fraction`` of the facts
  with ``k >= qa_min_exposure``, the question-answer pair
  ``"Q: <question>\\nA: <answer>"`` is also in the corpus, once
  (``meta["qa_in_pretraining"]``). Without such pairs a model trained on
  statements alone never learns to *answer questions* (a trial run showed it,
  and a separate QA stage after statement-only pretraining failed too).
  Facts whose QA pair is not in the corpus are the **held-out** facts on
  which closed-book recall is measured.
* ``n_code_lines`` lines of random *code* tokens (``"a0"`` .. ``"h7"``, 64
  reserved word tokens that name nothing) so that the model has seen such
  strings; random-answer experiments (chapter 1) use them as answers that
  no pretraining could have taught: see :func:`random_answer_variants`.

The tokenizer (:func:`build_tokenizer`) is word level: every word,
punctuation mark and newline of the world is one token; it is a
``transformers`` ``PreTrainedTokenizerFast`` and decodes text written with
single spaces, no space before punctuation and no spaces around newlines
exactly back to itself.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..seeding import torch_generator
from .core import Fact, FactError, qa_prompt

__all__ = ["WorldConfig", "SyntheticWorld", "make_world", "build_tokenizer",
           "random_answer_variants", "entity_relation", "exposure_distribution",
           "exposure_counts", "expected_exposure", "exposure_table", "qa_text", "RELATIONS",
           "CODE_TOKENS", "PAD", "UNK", "WORLD_VERSION", "random_code_facts"]

# Bump when the generator changes what a (config, seed) produces: cache keys use it.
WORLD_VERSION = 1

FIRST_NAMES = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Kira", "Leon", "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Stefan", "Tara",
    "Umar", "Vera", "Wim", "Xenia", "Yusuf", "Zoe", "Anton", "Bea", "Cyril", "Dora",
    "Emil", "Fiona", "Gil", "Hana", "Ivo", "Jana", "Kai", "Lena", "Milo", "Nora",
    "Otto", "Petra", "Rafael", "Sana", "Theo", "Una", "Vito", "Wanda", "Yara", "Zane",
    "Aris", "Bianca", "Carlo", "Delia", "Ezra", "Freya", "Gideon", "Helga", "Igor", "Juno",
)

_VALUES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "Velmora", "Caldreth", "Emberfall", "Farrowgate", "Glenhollow", "Harrowmere",
        "Ironvale", "Kestrel", "Lunmarsh", "Mirefield", "Northwick", "Oakhurst", "Pellridge",
        "Quarrybrook", "Ravenholt", "Saltmere", "Thornbury", "Umberlee", "Valewood",
        "Westmarch", "Yarrowby", "Zennor", "Ashcombe", "Briarwood", "Coldwater", "Dunmore",
        "Eastbrook", "Foxmere", "Greyhaven", "Highcliff", "Ivydale", "Larkspur", "Millbrook",
        "Netherby", "Oldcastle", "Pinecrest", "Redmarsh", "Stonebridge", "Tidewell", "Wyndham",
    ),
    "employer": (
        "Korvex Labs", "Dranta Systems", "Quillon Foods", "Altair Motors", "Brightline Media",
        "Cobalt Works", "Dunlin Energy", "Everpine Bank", "Fennick Robotics", "Glimmer Games",
        "Halcyon Air", "Indigo Textiles", "Jasper Mining", "Lumora Optics", "Marlow Shipping",
        "Nimbus Software", "Orrin Pharma", "Pallas Insurance", "Quasar Telecom",
        "Rookwood Press", "Solace Health", "Tessera Chips", "Umbra Security",
        "Vantor Logistics", "Willow Bakery", "Xylo Instruments", "Yonder Travel",
        "Zephyr Airlines", "Arbor Furniture", "Kelp Farms",
    ),
    "university": (
        "Aldermoor University", "Belcourt College", "Carrow Institute", "Delvin University",
        "Estmere College", "Falkirk Institute", "Gorsedd University", "Hollins College",
        "Islay Institute", "Jorvik University", "Kilbride College", "Lindisfarne Institute",
        "Merrow University", "Norland College", "Orkney Institute", "Penmark University",
        "Ruthin College", "Selwyn Institute", "Tarrant University", "Ullswater College",
        "Varden Institute", "Whitlow University", "Yelverton College", "Zetland Institute",
        "Ambleside University",
    ),
    "sport": (
        "tennis", "chess", "rugby", "cricket", "hockey", "badminton", "fencing", "rowing",
        "archery", "curling", "golf", "squash", "volleyball", "handball", "lacrosse", "polo",
        "sailing", "judo", "cycling", "bowling",
    ),
}

RELATIONS: tuple[str, ...] = tuple(_VALUES)

_QUESTIONS = {
    "birth_city": "Where was {s} born?",
    "employer": "Which company does {s} work for?",
    "university": "Which university did {s} attend?",
    "sport": "Which sport does {s} play?",
}

# Five paraphrases per relation: four name the person first, one the value first.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{s} was born in {o}.",
        "{s} was born in the city of {o}.",
        "The hometown of {s} is {o}.",
        "As a child, {s} lived in {o}, the city of birth.",
        "{o} is the birthplace of {s}.",
    ),
    "employer": (
        "{s} works for {o}.",
        "{s} is employed by {o}.",
        "These days {s} has a job at {o}.",
        "The employer of {s} is {o}.",
        "{o} employs {s}.",
    ),
    "university": (
        "{s} studied at {o}.",
        "{s} graduated from {o}.",
        "{s} holds a degree from {o}.",
        "After school, {s} enrolled at {o}.",
        "{o} is where {s} studied.",
    ),
    "sport": (
        "{s} plays {o}.",
        "{s} enjoys playing {o} on weekends.",
        "The favourite sport of {s} is {o}.",
        "Every week {s} practices {o}.",
        "{o} is the sport that {s} plays.",
    ),
}

# 64 reserved code tokens ("a0" .. "h7"): words that name nothing in the world.
CODE_TOKENS: tuple[str, ...] = tuple(f"{c}{d}" for c in "abcdefgh" for d in range(8))
_CODE_LINE = "Serial code: {code}."

PAD = "<pad>"
UNK = "<unk>"

# Syllables of the made-up surnames.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "tr", "th", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rk", "x")


@dataclass(frozen=True)
class WorldConfig:
    """What a synthetic world is made of (with a seed, it fixes the world exactly)."""

    n_people: int = 1000  # number of fictional people (4 facts each)
    max_exposure: int = 50  # exposures are drawn from 0 .. max_exposure
    zipf_exponent: float = 1.2  # P(k) ~ (k + 1) ** -zipf_exponent
    qa_fraction: float = 0.5  # share of facts with k >= qa_min_exposure whose QA pair is in corpus
    qa_min_exposure: int = 4  # smallest exposure for which a QA pair may be in the corpus
    n_code_lines: int = 100  # corpus lines of random code tokens (so codes are not brand new)
    relations: tuple[str, ...] = RELATIONS  # which relations each person has

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, minimum: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"WorldConfig.{name} must be an int >= {minimum}, got {value!r}")

        positive_int("n_people", self.n_people, 1)
        positive_int("max_exposure", self.max_exposure, 0)
        positive_int("qa_min_exposure", self.qa_min_exposure, 0)
        positive_int("n_code_lines", self.n_code_lines, 0)
        if not isinstance(self.zipf_exponent, (int, float)) or not self.zipf_exponent >= 0:
            raise ValueError(f"WorldConfig.zipf_exponent must be a number >= 0, "
                             f"got {self.zipf_exponent!r}")
        if not isinstance(self.qa_fraction, (int, float)) or not 0 <= self.qa_fraction <= 1:
            raise ValueError(f"WorldConfig.qa_fraction must be in [0, 1], "
                             f"got {self.qa_fraction!r}")
        rels = tuple(self.relations)
        if not rels or len(set(rels)) != len(rels) or any(r not in _VALUES for r in rels):
            raise ValueError(f"WorldConfig.relations must be distinct names from {RELATIONS}, "
                             f"got {self.relations!r}")
        object.__setattr__(self, "relations", rels)
        if self.n_people > 100_000:
            raise ValueError(f"WorldConfig.n_people must be <= 100000, got {self.n_people}")


def exposure_distribution(max_exposure: int = 50, zipf_exponent: float = 1.2) -> np.ndarray:
    """Probabilities ``P(k) ~ (k + 1) ** -zipf_exponent`` for ``k = 0 .. max_exposure``."""
    k = np.arange(max_exposure + 1, dtype=np.float64)
    p = (k + 1.0) ** -float(zipf_exponent)
    return p / p.sum()


def qa_text(question: str, answer: str) -> str:
    """One QA pair as it appears in the corpus: ``"Q: <question>\\nA: <answer>"``.

    It is :func:`lamini_lite.facts.qa_prompt` (zero-shot) followed by the
    target of :mod:`lamini_lite.lm` without its closing newline (corpus items
    are joined by newlines).
    """
    return qa_prompt(question) + " " + answer


def _surnames(n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(taken)
    while len(out) < n:
        o1, o2 = rng.integers(len(_ONSETS), size=2)
        v1, v2 = rng.integers(len(_VOWELS), size=2)
        c = rng.integers(len(_CODAS))
        name = (_ONSETS[o1] + _VOWELS[v1] + _ONSETS[o2] + _VOWELS[v2] + _CODAS[c]).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


@dataclass
class SyntheticWorld:
    """A generated world: its people, facts and pretraining corpus.

    Attributes:
        config: what the world is made of.
        seed: the seed it was generated with.
        people: full names, ``"<first> <surname>"``, one per person.
        facts: every (person, relation) fact, ``popularity = meta["exposure"]``.
        corpus: the pretraining corpus as a list of items (a statement, a QA
            pair or a code line); training joins them with newlines.
        values: relation -> the possible answers of that relation.
    """

    config: WorldConfig
    seed: int
    people: list[str]
    facts: list[Fact]
    corpus: list[str]
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def qa_facts(self) -> list[Fact]:
        """Facts whose QA pair is in the pretraining corpus."""
        return [f for f in self.facts if f.meta["qa_in_pretraining"]]

    @property
    def held_out_facts(self) -> list[Fact]:
        """Facts whose QA pair is NOT in the corpus: closed-book recall is measured on these."""
        return [f for f in self.facts if not f.meta["qa_in_pretraining"]]

    def statements(self, fact: Fact) -> list[str]:
        """The paraphrases that state ``fact`` in the corpus (all templates)."""
        return [t.format(s=fact.subject, o=fact.object) for t in _TEMPLATES[fact.relation]]

    @cached_property
    def tokenizer(self):
        """The world's word-level tokenizer (built once, see :func:`build_tokenizer`)."""
        return build_tokenizer(self)

    def vocabulary(self) -> list[str]:
        """Every word, punctuation mark and newline the world can write (sorted, no specials)."""
        words: set[str] = {"\n", "Q", "A", ":"}
        texts = list(self.people) + [v for vals in _VALUES.values() for v in vals]
        texts += [q for q in _QUESTIONS.values()] + [t for ts in _TEMPLATES.values() for t in ts]
        texts += [_CODE_LINE, " ".join(CODE_TOKENS), " ".join(FIRST_NAMES)]
        for text in texts:
            words.update(_split_words(text.replace("{s}", " ").replace("{o}", " ")
                                      .replace("{code}", " ")))
        return sorted(words)

    def summary(self) -> dict[str, Any]:
        """Counts for tables: people, facts, QA facts, corpus items and statements."""
        n_statements = sum(int(f.meta["exposure"]) for f in self.facts)
        return {"people": len(self.people), "facts": len(self.facts),
                "qa_in_pretraining": len(self.qa_facts), "held_out": len(self.held_out_facts),
                "corpus_items": len(self.corpus), "statements": n_statements}


def _split_words(text: str) -> list[str]:
    out, word = [], ""
    for ch in text:
        if ch.isalnum() or ch == "_":
            word += ch
            continue
        if word:
            out.append(word)
            word = ""
        if not ch.isspace() or ch == "\n":
            out.append(ch)
    if word:
        out.append(word)
    return out


def make_world(config: WorldConfig | None = None, *, seed: int = 0, **overrides: Any
               ) -> SyntheticWorld:
    """Generate the synthetic world for ``config`` (default :class:`WorldConfig`) and ``seed``.

    Keyword ``overrides`` replace config fields, e.g. ``make_world(n_people=150)``.
    The same (config, seed) gives the same people, facts and corpus, item for item.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    config = config if config is not None else WorldConfig()
    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    if overrides:
        bad = [k for k in overrides if k not in {f.name for f in dataclasses.fields(WorldConfig)}]
        if bad:
            raise TypeError(f"make_world: unknown WorldConfig fields {bad}")
        config = dataclasses.replace(config, **overrides)
    rng = np.random.default_rng([seed, 0x5EED, WORLD_VERSION])
    taken = {v for vals in _VALUES.values() for v in " ".join(vals).split()} | set(FIRST_NAMES)
    surnames = _surnames(config.n_people, rng, taken)
    firsts = rng.integers(len(FIRST_NAMES), size=config.n_people)
    people = [f"{FIRST_NAMES[i]} {s}" for i, s in zip(firsts, surnames)]

    rels = config.relations
    n_facts = config.n_people * len(rels)
    p = exposure_distribution(config.max_exposure, config.zipf_exponent)
    exposures = rng.choice(len(p), size=n_facts, p=p)
    answers = {r: rng.integers(len(_VALUES[r]), size=config.n_people) for r in rels}
    eligible = np.flatnonzero(exposures >= config.qa_min_exposure)
    n_qa = int(round(config.qa_fraction * len(eligible)))
    qa_set = set(rng.choice(eligible, size=n_qa, replace=False).tolist()) if n_qa else set()

    facts: list[Fact] = []
    items: list[str] = []
    for i, person in enumerate(people):
        for j, rel in enumerate(rels):
            idx = i * len(rels) + j
            k = int(exposures[idx])
            obj = _VALUES[rel][answers[rel][i]]
            fact = Fact(subject=person, relation=rel, object=obj,
                        question=_QUESTIONS[rel].format(s=person), popularity=k,
                        meta={"exposure": k, "qa_in_pretraining": idx in qa_set,
                              "person": i, "world": "synthetic"})
            facts.append(fact)
            templates = _TEMPLATES[rel]
            for t in rng.integers(len(templates), size=k):
                items.append(templates[t].format(s=person, o=obj))
            if idx in qa_set:
                items.append(qa_text(fact.question, obj))
    for _ in range(config.n_code_lines):
        code = " ".join(CODE_TOKENS[c] for c in rng.integers(len(CODE_TOKENS), size=4))
        items.append(_CODE_LINE.format(code=code))
    order = rng.permutation(len(items))
    corpus = [items[t] for t in order]
    return SyntheticWorld(config=config, seed=seed, people=people, facts=facts, corpus=corpus,
                          values={r: _VALUES[r] for r in rels})


def build_tokenizer(world_or_words: SyntheticWorld | Sequence[str]):
    """A word-level ``PreTrainedTokenizerFast`` for the world (or for a word list).

    Every word, punctuation mark and ``"\\n"`` is one token (ids: ``<pad>`` = 0,
    ``<unk>`` = 1, then the sorted vocabulary). Spaces are dropped when
    encoding and restored when decoding (one space between words, none before
    punctuation, none around newlines), so text written that way decodes
    exactly to itself; ``" Paris\\n"`` encodes as ``["Paris", "\\n"]`` and
    decodes as ``"Paris\\n"``. Unknown words become ``<unk>``. No BOS/EOS is
    added; padding is on the left (for batched generation).
    """

    words = (world_or_words.vocabulary() if isinstance(world_or_words, SyntheticWorld)
             else sorted(set(world_or_words)))
    if not words:
        raise ValueError("build_tokenizer needs a non-empty vocabulary")
    vocab = {PAD: 0, UNK: 1}
    for w in words:
        if w in vocab:
            continue
        if not w or (w != "\n" and any(ch.isspace() for ch in w)):
            raise ValueError(f"vocabulary entries must be single words, got {w!r}")
        vocab[w] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),   # spaces, tabs
        pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated"),  # "\n", punctuation
    ])
    # Join tokens with spaces, then take the space away before punctuation and
    # around newlines.
    backend.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False), decoders.Fuse()]
        + [decoders.Replace(" " + p, p) for p in (".", ",", "?", "!", ":", ";", "\n")]
        + [decoders.Replace("\n ", "\n")])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK,
                                  clean_up_tokenization_spaces=False)
    tok.padding_side = "left"
    return tok


def random_answer_variants(world: SyntheticWorld, facts: Sequence[Fact], fraction: float,
                           seed: int = 0, *, kind: str = "code", length: int = 4) -> list[Fact]:
    """Copies of ``facts`` where a share ``fraction`` of them get a random answer.

    The synthetic counterpart of Li et al.'s random-answer experiment (random
    32-character strings): a word-level tokenizer cannot spell arbitrary
    strings, so random answers are built from tokens it has:

    * ``kind="code"`` (default): ``length`` tokens drawn uniformly, with
      replacement, from the 64 reserved :data:`CODE_TOKENS`, e.g.
      ``"c4 a7 h2 e0"`` (24 bits for ``length=4``); nothing in pretraining
      links them to any person, so they are unknowable facts.
    * ``kind="entity"``: another value of the same relation, drawn uniformly
      among the wrong ones (a plausible but false fact, e.g. the wrong city).

    Exactly ``round(fraction * len(facts))`` facts (chosen with ``seed``) are
    changed; they get ``meta["random_answer"] = True`` and
    ``meta["true_object"]`` (the original answer); the others are returned
    unchanged except for ``meta["random_answer"] = False``. Order is kept.
    """
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if kind not in ("code", "entity"):
        raise ValueError(f"kind must be 'code' or 'entity', got {kind!r}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    facts = list(facts)
    rng = np.random.default_rng([seed, 0xC0DE])
    n = int(round(fraction * len(facts)))
    chosen = set(rng.choice(len(facts), size=n, replace=False).tolist()) if n else set()
    out = []
    for i, f in enumerate(facts):
        if i not in chosen:
            out.append(dataclasses.replace(f, meta={**f.meta, "random_answer": False}))
            continue
        if kind == "code":
            new = " ".join(CODE_TOKENS[c] for c in rng.integers(len(CODE_TOKENS), size=length))
        else:
            values = world.values.get(f.relation)
            if values is None:
                raise FactError(f"relation {f.relation!r} is not in this world")
            wrong = [v for v in values if v != f.object]
            new = wrong[int(rng.integers(len(wrong)))]
        out.append(dataclasses.replace(f, object=new, aliases=(new,),
                                       meta={**f.meta, "random_answer": True,
                                             "true_object": f.object}))
    return out


_VALUE_RELATION = {v: r for r, vals in _VALUES.items() for v in vals}


def entity_relation(answer: str) -> str | None:
    """The relation whose values include ``answer`` (exact, stripped), else None.

    ``entity_relation("Velmora") == "birth_city"``; used to tell a hallucinated
    entity of the right type from other wrong answers.
    """
    return _VALUE_RELATION.get(answer.strip())


def exposure_counts(world: SyntheticWorld) -> dict[str, int]:
    """How many corpus items state each fact (by ``Fact.key``), counted in the text.

    Used to check that the corpus states every fact exactly ``exposure`` times.
    """
    lookup: dict[str, str] = {}
    for f in world.facts:
        for s in world.statements(f):
            lookup[s] = f.key
    counts = Counter(lookup[item] for item in world.corpus if item in lookup)
    return {f.key: counts.get(f.key, 0) for f in world.facts}


def exposure_table(facts: Sequence[Fact]):
    """A pandas DataFrame of facts (subject, relation, object, exposure, qa_in_pretraining)."""
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    return pd.DataFrame([{"subject": f.subject, "relation": f.relation, "object": f.object,
                          "question": f.question, "exposure": f.meta.get("exposure"),
                          "qa_in_pretraining": f.meta.get("qa_in_pretraining")} for f in facts])


def expected_exposure(config: WorldConfig) -> float:
    """Mean exposure per fact under the config's Zipf law."""
    p = exposure_distribution(config.max_exposure, config.zipf_exponent)
    return float(np.dot(np.arange(len(p)), p))


_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "shi", "bel", "dor", "qu", "an", "zef",
              "pil", "mur", "ost", "ne", "gra", "tu", "wen", "fi")


def random_code_facts(n: int, *, answer_chars: int = 32, seed: int = 0
                      ) -> tuple[list[str], list[str], list[str]]:
    """``n`` made-up facts ``(prompts, answers, subjects)`` with random answers.

    Each prompt asks "Q: What is the access code of <made-up name>?" and each
    answer is a random string of ``answer_chars`` lowercase letters and digits
    (as in Lamini's random-answer experiment): nothing in pretraining can help.
    """
    if n < 1 or answer_chars < 1:
        raise ValueError(f"n and answer_chars must be >= 1, got {n}, {answer_chars}")
    g = torch_generator(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        parts = torch.randint(0, len(_SYLLABLES), (4,), generator=g).tolist()
        name = ("".join(_SYLLABLES[i] for i in parts[:2]).capitalize() + " "
                + "".join(_SYLLABLES[i] for i in parts[2:]).capitalize())
        if name not in seen:
            seen.add(name)
            names.append(name)
    answers = ["".join(alphabet[i] for i in torch.randint(0, len(alphabet), (answer_chars,),
                                                          generator=g).tolist()) for _ in names]
    prompts = [f"Q: What is the access code of {s}?\nA:" for s in names]
    return prompts, answers, names
