"""Facts and exact-match scoring, shared by the real and the synthetic fact worlds.

A :class:`Fact` is a (subject, relation, object) triple asked as a closed-book
question, with every answer that counts as correct. Scoring follows the
SQuAD/EntityQuestions convention: both strings are normalized (see
:func:`normalize_answer`) and a prediction is correct when it equals any
accepted answer after normalization (:func:`exact_match`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fact", "FactError", "normalize_answer", "exact_match", "qa_prompt"]


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
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}


def normalize_answer(text: str) -> str:
    """Normalize an answer for exact match.

    Steps (SQuAD's, plus accent folding): Unicode NFKD and removal of combining
    accents (``"Bogotá" -> "bogota"``), lower case, punctuation replaced by
    nothing (``"St. John's" -> "st johns"``), the articles *a/an/the*
    removed, whitespace collapsed.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.lower()
    text = "".join(" " if ch in "-/" else ("" if ch in _PUNCT else ch) for ch in text)
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
