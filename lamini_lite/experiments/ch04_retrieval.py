"""Chapter 4's claims: retrieval (RAG) vs memory on SmolLM2 and the book's real facts.

``book/04_retrieval_vs_memory.ipynb`` checks each claim below with
:func:`lamini_lite.claims.check`, on quantities computed by the functions of
this module from the rows of :func:`lamini_lite.retrieval.evaluate` (one row
per question and approach), so that the chapter and ``python -m
lamini_lite.bench robustness`` measure the same things.

The statistical claims are tested on an end of a 95% interval:

* a difference of two approaches on the *same* questions (RAG vs closed-book)
  is a paired bootstrap over the questions
  (:func:`lamini_lite.stats.paired_bootstrap_difference`);
* a difference between two *different* question sets (real vs random answers)
  is Newcombe's interval (:func:`lamini_lite.stats.newcombe_difference`);
* a share (abstentions, reader failures, unchanged answers) is a Wilson
  interval (:func:`lamini_lite.stats.wilson_interval`).

Where a claim pools the answers of both retrievers (BM25 and dense), the two
answers to one question count as two trials; they come from different
contexts but the same reader, so such an interval is somewhat narrower than
one over questions would be.

What the chapter no longer asserts, because the code makes it true: that the
memory-tuned MoME answers its stored facts exactly. It is asked with exactly
the prompts it was tuned on, and memory tuning stops only when every one of
them is recalled, so its 100% there is the stopping rule, not a finding. What
*can* fail is that memory tuning gets there before its epoch budget runs out
(:data:`MEMORY_CONVERGES`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..cache import cached, fingerprint
from ..claims import Claim
from ..models import load_smollm2
from ..mome import MoMEConfig, add_memory_experts, memorize
from ..profiles import register_sizes
from ..retrieval import (
    RetrievalError,
    RetrievalWorld,
    closed_book_prompts,
    evaluate,
    paraphrase_question,
    pick_exemplars,
)
from ..stats import (
    Interval,
    newcombe_difference,
    paired_bootstrap_difference,
    wilson_interval,
)
from . import common as _common  # noqa: F401  (registers the shared sizes: "slick", ...)

__all__ = ["MEMORY_CONVERGES", "BM25_BEATS_CLOSED_BOOK", "BM25_SUPPLIES_UNKNOWN",
           "AMBIGUOUS_FROM_PASSAGES", "RANDOM_NOT_COPIED", "MEMORY_SILENT_PARAPHRASED",
           "RAG_ABSTAINS", "RAG_STILL_INVENTS", "MEMORY_SILENT_HELD_OUT",
           "RETRIEVER_FINDS_GOLD", "READER_FAILS_MOST", "NEVER_GREEDY",
           "READER_OUTCOMES", "MEMORY_EPOCHS", "epochs_to_recall", "correct_by_fact",
           "paired_gain", "em_counts", "em_difference", "share", "same_answers",
           "outcome_share", "gold_found", "reader_failures", "MEMORY_APPROACH",
           "evaluate_memory_tuned"]

register_sizes(
    "retrieval",
    # n_facts: facts asked per condition (ci: 48, so that the 95% paired interval of
    # "RAG beats closed-book" excludes 0 on every seed 0-4; at 24 seed 4 missed);
    # k: passages retrieved per question;
    # n_shots: few-shot exemplars; n_paraphrases: passages stating each fact;
    # n_hard: questions per hard case; max_new_tokens: answer length cap.
    # corpus_per_relation: real facts per relation stated in the corpus. The seed of
    # the fact draws is the run's (lamini_lite.seeding.run_seed), not a size.
    ci=dict(n_facts=48, k=3, n_shots=3, n_paraphrases=2, n_hard=12, corpus_per_relation=40,
            random_length=8, max_new_tokens=10),
    book=dict(n_facts=60, k=3, n_shots=3, n_paraphrases=2, n_hard=12, corpus_per_relation=120,
              random_length=8, max_new_tokens=10),
    full=dict(n_facts=500, k=3, n_shots=3, n_paraphrases=3, n_hard=200,
              corpus_per_relation=2000, random_length=32, max_new_tokens=24),
)


# The SliCK categories whose facts closed-book SmolLM2 never answers greedily
# under SliCK's prompts (P(T=0) = 0).
NEVER_GREEDY = ("WeaklyKnown", "Unknown")
# attribute_failures outcomes that are the reader's fault (gold passage in context)
READER_OUTCOMES = ("reader failure", "reader abstained")
# lamini_lite.retrieval.evaluate_memory_tuned's default epoch budget
MEMORY_EPOCHS = 40

# --------------------------------------------------------------------------- claims

MEMORY_CONVERGES = Claim(
    "ch04.memory_converges",
    f"Memory tuning recalls every stored fact exactly (greedy) before its budget of "
    f"{MEMORY_EPOCHS} epochs runs out: epochs it needed",
    "<", MEMORY_EPOCHS, unit="epochs")
BM25_BEATS_CLOSED_BOOK = Claim(
    "ch04.bm25_beats_closed_book",
    "With BM25's passages in context SmolLM2 answers more of the asked questions exactly "
    "than closed-book: EM gain on the same questions, lower end of its 95% paired "
    "bootstrap interval above 0",
    ">", 0.0, unit="points", on="low")
BM25_SUPPLIES_UNKNOWN = Claim(
    "ch04.bm25_supplies_unknown",
    "RAG supplies facts the model does not know: on the asked facts SliCK calls "
    "WeaklyKnown or Unknown, BM25's EM gain over closed-book, lower end of its 95% "
    "paired bootstrap interval above 0",
    ">", 0.0, unit="points", on="low")
AMBIGUOUS_FROM_PASSAGES = Claim(
    "ch04.ambiguous_from_passages",
    "City names shared by several countries are answered from the namesakes' passages: "
    "BM25's EM gain over closed-book on them, lower end of its 95% paired bootstrap "
    "interval above 0",
    ">", 0.0, unit="points", on="low")
RANDOM_NOT_COPIED = Claim(
    "ch04.random_not_copied",
    "The RAG reader copies a random-string answer from its context less often than a real "
    "one: EM on the asked facts minus EM on the random-answer facts (both retrievers' "
    "answers pooled), lower end of its 95% Newcombe interval above 0",
    ">", 0.0, unit="points", on="low")
MEMORY_SILENT_PARAPHRASED = Claim(
    "ch04.memory_silent_paraphrased",
    "Asked a stored fact in other words, the memory-tuned model answers exactly as the "
    "closed-book model: share of paraphrased questions with identical answers, lower end "
    "of its 95% Wilson interval above 50%",
    ">", 50.0, unit="%", on="low")
RAG_ABSTAINS = Claim(
    "ch04.rag_abstains",
    "Offered 'unknown', the RAG reader abstains on a sizable share of the questions whose "
    "answer is in no passage: share abstained (both retrievers' answers pooled), lower end "
    "of its 95% Wilson interval above 15%",
    ">", 15.0, unit="%", on="low")
RAG_STILL_INVENTS = Claim(
    "ch04.rag_still_invents",
    "Offered 'unknown', the RAG reader still invents an answer for some questions whose "
    "answer is in no passage: share invented (both retrievers' answers pooled), lower end "
    "of its 95% Wilson interval above 0",
    ">", 0.0, unit="%", on="low")
MEMORY_SILENT_HELD_OUT = Claim(
    "ch04.memory_silent_held_out",
    "On facts it never stored the memory-tuned model answers exactly as the closed-book "
    "model, invented answers included: share of identical answers, lower end of its 95% "
    "Wilson interval above 50%",
    ">", 50.0, unit="%", on="low")
RETRIEVER_FINDS_GOLD = Claim(
    "ch04.retriever_finds_gold",
    "Each retriever puts a passage stating the fact in its top k for the great majority "
    "of answerable questions: share of questions, lower end of its 95% Wilson interval "
    "above 75%",
    ">", 75.0, unit="%", on="low")
READER_FAILS_MOST = Claim(
    "ch04.reader_fails_most",
    "Most wrong RAG answers are the reader's: the passage stating the fact was in its "
    "context. Share of wrong answers (both retrievers' answers pooled), lower end of its "
    "95% Wilson interval above 50%",
    ">", 50.0, unit="%", on="low")


# ------------------------------------------------------------------------ quantities


def epochs_to_recall(cost: Mapping) -> float:
    """Epochs memory tuning needed to recall every fact; ``inf`` if it never did.

    ``cost`` is the cost dict of :func:`lamini_lite.retrieval.evaluate_memory_tuned`
    (or any dict with ``epochs`` and ``recall``).
    """
    return float(cost["epochs"]) if float(cost["recall"]) == 1.0 else math.inf


def _rows(results, approach: str, condition: str | None):
    df = results[results["approach"] == approach]
    if condition is not None:
        df = df[df["condition"] == condition]
    if df.empty:
        raise ValueError(f"no rows for approach {approach!r} and condition {condition!r}; "
                         f"approaches: {sorted(set(results['approach']))}")
    if df["fact"].duplicated().any():
        raise ValueError(f"approach {approach!r}, condition {condition!r}: a fact appears "
                         "twice; pass one condition")
    return df


def correct_by_fact(results, approach: str, condition: str | None = "standard") -> dict:
    """``{fact id: correct}`` of one approach in one condition."""
    df = _rows(results, approach, condition)
    return dict(zip(df["fact"], df["correct"].astype(bool)))


def paired_gain(results, a: str, b: str, condition: str | None = "standard", *,
                facts: Iterable[str] | None = None, seed: int = 0) -> Interval:
    """EM of approach ``a`` minus approach ``b`` on the same questions, in points.

    The questions both approaches answered (optionally only ``facts``) are
    paired; the 95% interval is a paired bootstrap over them.

    Raises:
        ValueError: if the two approaches share no question.
    """
    ca, cb = correct_by_fact(results, a, condition), correct_by_fact(results, b, condition)
    keep = set(facts) if facts is not None else None
    common = [f for f in ca if f in cb and (keep is None or f in keep)]
    if not common:
        raise ValueError(f"{a!r} and {b!r} share no question in condition {condition!r}")
    x = np.array([ca[f] for f in common], dtype=float)
    y = np.array([cb[f] for f in common], dtype=float)
    return paired_bootstrap_difference(x, y, seed=seed).scaled(100)


def em_counts(results, approach: str | Sequence[str],
              condition: str | None = "standard") -> tuple[int, int]:
    """``(right, asked)`` of one approach (or several, their answers pooled) in one
    condition."""
    names = [approach] if isinstance(approach, str) else list(approach)
    k = n = 0
    for name in names:
        df = _rows(results, name, condition)
        k, n = k + int(df["correct"].sum()), n + len(df)
    return k, n


def em_difference(results, approach: str | Sequence[str], condition_a: str,
                  condition_b: str) -> Interval:
    """EM on ``condition_a`` minus EM on ``condition_b`` (different questions), in
    points, with Newcombe's 95% interval; several approaches pool their answers."""
    k1, n1 = em_counts(results, approach, condition_a)
    k2, n2 = em_counts(results, approach, condition_b)
    return newcombe_difference(k1, n1, k2, n2).scaled(100)


def share(k: int, n: int) -> Interval:
    """``k`` of ``n`` as a percentage with its 95% Wilson interval."""
    return wilson_interval(int(k), int(n)).scaled(100)


def same_answers(results, a: str, b: str, condition: str) -> tuple[int, int]:
    """``(identical, asked)``: questions of ``condition`` that approaches ``a`` and ``b``
    answered with exactly the same text."""
    pa = dict(zip(*[_rows(results, a, condition)[c] for c in ("fact", "prediction")]))
    pb = dict(zip(*[_rows(results, b, condition)[c] for c in ("fact", "prediction")]))
    common = [f for f in pa if f in pb]
    if not common:
        raise ValueError(f"{a!r} and {b!r} share no question in condition {condition!r}")
    return sum(pa[f] == pb[f] for f in common), len(common)


def outcome_share(outcomes: Iterable[str], which: str) -> tuple[int, int]:
    """``(count, total)`` of ``which`` among ``outcomes``."""
    outcomes = list(outcomes)
    return sum(o == which for o in outcomes), len(outcomes)


def gold_found(results, approach: str) -> tuple[int, int]:
    """``(found, asked)``: questions whose top k held a passage stating the fact.

    Only questions with a gold passage in the corpus count (``gold_rank`` >= 0);
    ``gold_rank`` is 0 when the retriever missed it.
    """
    df = results[(results["approach"] == approach) & (results["gold_rank"] >= 0)]
    if df.empty:
        raise ValueError(f"no retrieval rows with a gold passage for approach {approach!r}")
    return int((df["gold_rank"] > 0).sum()), len(df)


def reader_failures(counts) -> tuple[int, int]:
    """``(reader's, wrong)``: wrong RAG answers with the gold passage in context, of all
    wrong answers, from :func:`lamini_lite.retrieval.attribute_failures`'s counts."""
    cols = [c for c in counts.columns if c not in ("correct", "correct without gold")]
    reader = [c for c in cols if c in READER_OUTCOMES]
    return int(counts[reader].to_numpy().sum()), int(counts[cols].to_numpy().sum())


# =============================================================================
# The chapter's studies
# =============================================================================


MEMORY_APPROACH = "MoME (memory-tuned)"


def evaluate_memory_tuned(world: RetrievalWorld, *, n_hard: int, n_shots: int = 3,
                          max_new_tokens: int = 12, seed: int = 0, config=None,
                          max_epochs: int = 40, categories: Mapping[str, str] | None = None,
                          progress: bool = True):
    """Store the corpus's facts in memory experts instead of retrieving them (cached).

    A fresh SmolLM2 gets memory experts (:func:`lamini_lite.mome.add_memory_experts`,
    ``config`` default: the ``"book"`` preset) and is memory-tuned
    (:func:`lamini_lite.mome.memorize`) on every fact the corpus states and
    the chapter asks -- ``world.ask``, ``world.random`` and ``world.ambiguous`` --
    each with exactly the closed-book prompt :func:`evaluate` will ask it with.
    It then answers, closed-book, the same conditions as the RAG runs:
    ``standard`` (``world.ask``), ``paraphrased`` (the first ``n_hard`` asked
    facts, :func:`paraphrase_question`), ``random answer``, ``ambiguous`` and
    ``not in corpus`` (``world.held_out``: never memorized, so the model answers
    from its own weights).

    Returns ``(rows, cost)``: a DataFrame of :func:`evaluate` rows with approach
    :data:`MEMORY_APPROACH` (``categories`` fills the ``category`` column, as in
    :func:`evaluate`) and a dict with the memory tuning's ``epochs``,
    ``seconds``, ``recall``, ``rows_written``, ``params_updated``,
    ``optimizer_bytes`` and the memory's ``memory_bytes``
    (:meth:`lamini_lite.mome.MoME.footprint_bytes`).
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    if n_hard < 1 or n_hard > len(world.ask):
        raise RetrievalError(f"n_hard must be in [1, {len(world.ask)}] (the asked facts), "
                             f"got {n_hard}")

    config = config or MoMEConfig.preset("book")
    groups = {"standard": list(world.ask), "random answer": list(world.random),
              "ambiguous": list(world.ambiguous)}
    inputs = {"world": fingerprint({name: [f.to_dict() for f in facts] for name, facts in
                                    [*groups.items(), ("held_out", world.held_out),
                                     ("pool", world.pool)]}),
              "n_hard": n_hard, "n_shots": n_shots, "max_new_tokens": max_new_tokens,
              "seed": seed, "config": config.to_json(), "max_epochs": max_epochs, "version": 1}

    def compute() -> dict[str, Any]:

        model, tok = load_smollm2()
        prompts, answers = [], []
        for facts in groups.values():
            if facts:
                prompts += closed_book_prompts(facts, pick_exemplars(facts, world.pool, n_shots,
                                                                     seed=seed))
                answers += [f.object for f in facts]
        mome = add_memory_experts(model, config, tokenizer=tok)
        res = memorize(model, tok, prompts, answers, max_epochs=max_epochs, seed=seed,
                       progress=progress)
        run = {"model": model, "tokenizer": tok, "pool": world.pool, "n_shots": n_shots,
               "max_new_tokens": max_new_tokens, "seed": seed, "approach": MEMORY_APPROACH}
        hard = groups["standard"][:n_hard]
        frames = [evaluate(**run, facts=groups["standard"], condition="standard"),
                  evaluate(**run, facts=hard, questions=[paraphrase_question(f) for f in hard],
                           condition="paraphrased")]
        if groups["random answer"]:
            frames.append(evaluate(**run, facts=groups["random answer"],
                                   condition="random answer"))
        if groups["ambiguous"]:
            frames.append(evaluate(**run, facts=groups["ambiguous"], condition="ambiguous"))
        if world.held_out:
            frames.append(evaluate(**run, facts=world.held_out, condition="not in corpus"))
        rows = pd.concat(frames, ignore_index=True)
        cost = {"epochs": res.epochs, "seconds": res.seconds, "recall": res.recall,
                "rows_written": res.rows_written, "params_updated": res.params_updated,
                "optimizer_bytes": res.optimizer_bytes,
                "memory_bytes": int(mome.footprint_bytes())}
        return {"rows": rows.to_dict(orient="records"), "cost": cost}

    out = cached("retrieval_memory_tuned", inputs, compute)
    rows = pd.DataFrame(out["rows"])
    if categories is not None:
        rows["category"] = pd.Series([categories.get(fid, categories.get(key))
                                      for fid, key in zip(rows["fact"], rows["key"])],
                                     dtype=object, index=rows.index)
    return rows, dict(out["cost"])
