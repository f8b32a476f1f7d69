"""Knowledge editing in the field's terms: reliability, generality and locality, as a user sees them.

The model-editing literature (ROME, MEMIT, GRACE, WISE) scores a method that
stores facts in a model on three axes, the "impossible triangle":

* **reliability** -- asked in the wording it was stored with, the model gives
  the stored answer;
* **generality** -- asked in *other* wordings (held-out templates: different
  word order and vocabulary, never used to store anything), it still does;
* **locality** -- everything else is unchanged: (a) the same wording about
  other subjects of the relation, (b) unrelated questions, (c) facts the model
  already knew, (d) the loss of plain text.

Papers often score with teacher forcing; "The Mirage of Model Editing" (Yang
et al. 2025) shows how much that flatters a method. Here every answer is judged
as a user sees it: greedy decoding to the end of the answer line
(:func:`lamini_lite.lm.greedy_answers`) and exact match
(:func:`lamini_lite.facts.exact_match`), never teacher forcing and never a cut
at the answer's length.

The pieces:

* :data:`WORDINGS` -- per relation, the stored wording, paraphrases a method
  may train on, and held-out wordings used only to measure generality;
* :class:`Edit` -- one fact to store (subject, relation, answer), with
  :func:`edits_from_facts` (real facts) and :func:`invented_edits` (made-up
  subjects with random codes, which no pretraining can know);
* :class:`Probes` / :func:`measure_baseline` -- the locality probes and the
  backbone's own answers on them, measured once before any edit;
* :func:`triangle` -> :class:`TriangleScores` -- the three axes with 95%
  intervals; :func:`sequential_edits` applies edits in batches and re-scores
  every earlier edit after each batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .facts.core import Fact, exact_match, qa_prompt
from .facts.synthetic import random_code_facts
from .lm import greedy_answers, text_loss
from .stats import Interval, bootstrap_interval, wilson_interval

__all__ = ["Wordings", "WORDINGS", "QA_EXEMPLARS", "Edit", "edits_from_facts",
           "invented_edits", "Probes", "Baseline", "measure_baseline", "TriangleScores",
           "triangle", "sequential_edits", "clustered_share"]

# Two true exemplars before every question (an instruct model asked zero-shot often
# answers in sentences); never the subject of an edit.
QA_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("Which continent is Brazil located in?", "South America"),
)


@dataclass(frozen=True)
class Wordings:
    """The ways one relation is asked; every template has a ``{subject}`` slot."""

    stored: str  # the wording an edit is stored with (the relation's question)
    paraphrases: tuple[str, ...]  # other wordings a method may train on
    heldout: tuple[str, ...]  # wordings that measure generality only: never trained

    def __post_init__(self) -> None:
        every = (self.stored, *self.paraphrases, *self.heldout)
        if any("{subject}" not in t for t in every):
            raise ValueError(f"every wording needs a {{subject}} slot, got {every}")
        shared = set(self.heldout) & {self.stored, *self.paraphrases}
        if shared:
            raise ValueError(f"held-out wordings must not be trainable, shared: {sorted(shared)}")
        if len(self.heldout) < 3:
            raise ValueError(f"at least 3 held-out wordings are needed, got {len(self.heldout)}")


# The stored wordings are the real relations' questions (lamini_lite.facts.real) and the
# invented facts' (lamini_lite.facts.synthetic.random_code_facts). Held-out wordings change
# the word order and the vocabulary, and share no template with what a method may train on.
WORDINGS: dict[str, Wordings] = {
    "capital": Wordings(
        "What is the capital of {subject}?",
        ("Name the capital of {subject}.", "{subject} has its capital in which city?"),
        ("Which city serves as {subject}'s seat of government?",
         "The government of {subject} sits in what city?",
         "{subject}'s capital city is called what?")),
    "continent": Wordings(
        "Which continent is {subject} located in?",
        ("On which continent is {subject}?", "{subject} is part of which continent?"),
        ("Which of the world's continents does {subject} belong to?",
         "{subject} lies on what landmass?",
         "If you travel to {subject}, which continent are you on?")),
    "currency": Wordings(
        "What is the currency of {subject}?",
        ("Which currency is used in {subject}?", "{subject} pays in which currency?"),
        ("What money do people spend in {subject}?",
         "The official money of {subject} is called what?",
         "Shops in {subject} take payment in which currency?")),
    "city_country": Wordings(
        "Which country is {subject} located in?",
        ("In which country is {subject}?", "{subject} is a city of which country?"),
        ("{subject} belongs to what nation?",
         "To find {subject} on a map, which country would you look in?",
         "What nation is home to the city of {subject}?")),
    "us_state": Wordings(
        "Which state is {subject} located in?",
        ("In which US state is {subject}?", "{subject} is a city of which state?"),
        ("{subject} belongs to what American state?",
         "To visit {subject}, which state would you travel to?",
         "What state of the USA is home to {subject}?")),
    "access_code": Wordings(
        "What is the access code of {subject}?",
        ("Give the access code of {subject}.", "{subject} has which access code?"),
        ("Which code lets {subject} in?",
         "To enter as {subject}, what code do you type?",
         "{subject}'s entry code reads what?")),
}


@dataclass(frozen=True)
class Edit:
    """One fact to store: ``relation`` of ``subject`` is ``answer``."""

    subject: str
    relation: str
    answer: str
    aliases: tuple[str, ...] = ()  # other answers that count as correct

    def __post_init__(self) -> None:
        if self.relation not in WORDINGS:
            raise ValueError(f"relation must be one of {sorted(WORDINGS)}, got {self.relation!r}")
        for name in ("subject", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Edit.{name} must be a non-empty string, got {value!r}")

    def prompt(self, template: str | None = None,
               exemplars: Sequence[tuple[str, str]] = QA_EXEMPLARS) -> str:
        """The prompt asking this fact in ``template`` (default: the stored wording)."""
        template = WORDINGS[self.relation].stored if template is None else template
        return qa_prompt(template.format(subject=self.subject), exemplars)

    def heldout_prompts(self, exemplars: Sequence[tuple[str, str]] = QA_EXEMPLARS) -> list[str]:
        """The prompts of every held-out wording (generality only; never train on them)."""
        return [self.prompt(t, exemplars) for t in WORDINGS[self.relation].heldout]

    @property
    def accepted(self) -> list[str]:
        """Every answer that counts as correct."""
        return [self.answer, *self.aliases]


def edits_from_facts(facts: Sequence[Fact]) -> list[Edit]:
    """Real facts as edits (their relation must have :data:`WORDINGS`)."""
    return [Edit(f.subject, f.relation, f.object, tuple(a for a in f.aliases if a != f.object))
            for f in facts]


def invented_edits(n: int, *, answer_chars: int = 8, seed: int = 0) -> list[Edit]:
    """``n`` made-up subjects with random access codes (nothing pretraining can know)."""
    _, answers, names = random_code_facts(n, answer_chars=answer_chars, seed=seed)
    return [Edit(s, "access_code", a) for s, a in zip(names, answers)]


@dataclass
class Probes:
    """What must stay unchanged: prompts the edits must not touch."""

    neighbours: list[str]  # the stored wording about other subjects of the same relations
    unrelated: list[str]  # questions about anything else
    known: list[str]  # facts the model already knows (e.g. SliCK HighlyKnown)
    known_answers: list[list[str]]  # their accepted answers
    texts: list[str] = field(default_factory=list)  # plain text for the text-loss probe

    def __post_init__(self) -> None:
        if len(self.known) != len(self.known_answers):
            raise ValueError(f"known and known_answers must have the same length, got "
                             f"{len(self.known)} and {len(self.known_answers)}")


@dataclass
class Baseline:
    """The unedited model's greedy answers on the probes (and its text loss)."""

    neighbours: list[str]
    unrelated: list[str]
    known: list[str]
    text_loss: float | None


def _answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answer lines (to the newline), or [] for no prompts."""
    if not prompts:
        return []
    return greedy_answers(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)


def measure_baseline(model, tokenizer, probes: Probes, *, max_new_tokens: int = 24) -> Baseline:
    """Answer every probe with the unedited model (call before editing)."""
    return Baseline(_answers(model, tokenizer, probes.neighbours, max_new_tokens),
                    _answers(model, tokenizer, probes.unrelated, max_new_tokens),
                    _answers(model, tokenizer, probes.known, max_new_tokens),
                    text_loss(model, tokenizer, probes.texts) if probes.texts else None)


def clustered_share(hits: Sequence[Sequence[bool]], *, seed: int = 0) -> Interval:
    """Share of ``True`` over units of several trials each, with a 95% interval that
    resamples whole units (an edit's wordings are not independent of each other).

    When every unit has the same share (all 0 or all 1) the bootstrap collapses;
    the Wilson interval over the units then bounds it, as if each unit were one
    observation (conservative).
    """
    shares = np.array([np.mean(h) for h in hits], dtype=float)
    if not len(shares) or any(len(h) == 0 for h in hits):
        raise ValueError("hits must hold at least one non-empty unit")
    if np.all(shares == shares[0]) and shares[0] in (0.0, 1.0):
        return wilson_interval(int(shares[0]) * len(shares), len(shares))
    return bootstrap_interval(shares, seed=seed)


@dataclass
class TriangleScores:
    """Reliability, generality and locality of a set of edits (shares with 95% intervals)."""

    n_edits: int
    reliability: Interval  # stored wording answered exactly (Wilson over edits)
    generality: Interval  # held-out wordings answered exactly (clustered by edit)
    neighbours_unchanged: Interval  # locality (a): same wording, other subjects
    unrelated_unchanged: Interval  # locality (b): unrelated questions
    known_unchanged: Interval  # locality (c): facts the model knew, same answer as before
    text_loss_delta: float | None  # locality (d): text loss after minus before (nats)
    details: dict[str, Any] = field(default_factory=dict, repr=False)  # per-item verdicts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (intervals as ``[estimate, low, high]``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = [v.estimate, v.low, v.high] if isinstance(v, Interval) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TriangleScores:
        """The inverse of :meth:`to_dict`."""
        kw = {}
        for f in dataclasses.fields(cls):
            v = d[f.name] if f.name != "details" else d.get("details", {})
            kw[f.name] = Interval(*v) if isinstance(v, list) and f.name != "details" else v
        return cls(**kw)

    def row(self) -> dict[str, float | None]:
        """One table row: the point estimates."""
        return {"edits": self.n_edits, "reliability": self.reliability.estimate,
                "generality": self.generality.estimate,
                "neighbours unchanged": self.neighbours_unchanged.estimate,
                "unrelated unchanged": self.unrelated_unchanged.estimate,
                "known unchanged": self.known_unchanged.estimate,
                "text loss delta": self.text_loss_delta}


def _unchanged(before: Sequence[str], after: Sequence[str]) -> Interval:
    """Share of answers identical before and after (Wilson); [0, 1] if there are none."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} answers before but {len(after)} after")
    if not before:
        return Interval(float("nan"), 0.0, 1.0)
    return wilson_interval(sum(a == b for a, b in zip(before, after)), len(before))


def triangle(model, tokenizer, edits: Sequence[Edit], probes: Probes, baseline: Baseline, *,
             exemplars: Sequence[tuple[str, str]] = QA_EXEMPLARS,
             max_new_tokens: int = 24, seed: int = 0) -> TriangleScores:
    """Score ``model`` (after the edits) on reliability, generality and locality.

    Every answer is the greedy answer line, judged by exact match against the
    edit's accepted answers; locality compares the greedy answers with
    ``baseline`` (the same probes answered before any edit).
    """
    if not edits:
        raise ValueError("edits must be a non-empty list of Edit")
    stored = _answers(model, tokenizer, [e.prompt(None, exemplars) for e in edits],
                      max_new_tokens)
    reliable = [exact_match(p, e.accepted) for p, e in zip(stored, edits)]
    held = [e.heldout_prompts(exemplars) for e in edits]
    flat = _answers(model, tokenizer, [p for ps in held for p in ps], max_new_tokens)
    general, i = [], 0
    for e, ps in zip(edits, held):
        general.append([exact_match(p, e.accepted) for p in flat[i:i + len(ps)]])
        i += len(ps)
    after = measure_baseline(model, tokenizer, probes, max_new_tokens=max_new_tokens)
    delta = (after.text_loss - baseline.text_loss
             if after.text_loss is not None and baseline.text_loss is not None else None)
    return TriangleScores(
        len(edits), wilson_interval(sum(reliable), len(edits)),
        clustered_share(general, seed=seed),
        _unchanged(baseline.neighbours, after.neighbours),
        _unchanged(baseline.unrelated, after.unrelated),
        _unchanged(baseline.known, after.known), delta,
        {"stored_answers": stored, "reliable": reliable, "general": general,
         "heldout_answers": flat})


def sequential_edits(model, tokenizer, edits: Sequence[Edit],
                     apply: Callable[[Any, Any, list[Edit]], Any], probes: Probes, *,
                     n_batches: int, baseline: Baseline | None = None,
                     **triangle_kw) -> list[TriangleScores]:
    """Store ``edits`` in ``n_batches`` consecutive batches with ``apply(model, tokenizer,
    batch)``; after each batch, score every edit stored so far with :func:`triangle`.

    ``baseline`` defaults to the model's answers before the first batch.
    """
    if not isinstance(n_batches, int) or not 1 <= n_batches <= len(edits):
        raise ValueError(f"n_batches must be an int in [1, {len(edits)}], got {n_batches!r}")
    if baseline is None:
        baseline = measure_baseline(model, tokenizer, probes)
    bounds = np.linspace(0, len(edits), n_batches + 1).round().astype(int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        apply(model, tokenizer, list(edits[lo:hi]))
        out.append(triangle(model, tokenizer, edits[:hi], probes, baseline, **triangle_kw))
    return out
