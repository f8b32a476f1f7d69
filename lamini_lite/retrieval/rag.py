"""Retrieval-augmented answering, closed-book answering, and how to score both.

* :func:`rag_prompt` puts the retrieved passages before each question of the
  few-shot ``Q:/A:`` prompt of :func:`lamini_lite.facts.qa_prompt`; the
  exemplars carry their own retrieved passages, and with ``allow_unknown=True``
  one exemplar whose passages lack the answer is answered ``unknown``, so the
  model may abstain.
* :func:`evaluate` answers questions closed-book or with a retriever and
  returns a DataFrame of one row per question (prediction, correct, abstained,
  gold passage retrieved, latency); :func:`accuracy_table` and
  :func:`attribute_failures` (retriever miss vs reader failure) summarize it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from ..facts.core import Fact, normalize_answer, qa_prompt
from ..lm import greedy_answers
from ..seeding import numpy_rng
from .corpus import RetrievalError, fact_id
from .retrievers import Retriever, check_search

__all__ = ["UNKNOWN", "is_abstention", "rag_prompt", "rag_prompts", "closed_book_prompts",
           "pick_exemplars", "evaluate", "accuracy_table", "attribute_failures", "latency_table"]


UNKNOWN = "unknown"


_ABSTAIN = {"unknown", "i dont know", "dont know", "not known", "no answer", "not in context",
            "not given", "none", "unknown answer"}


def is_abstention(prediction: str) -> bool:
    """True when the model declined to answer (``unknown``, ``I don't know``...)."""
    return normalize_answer(prediction) in _ABSTAIN


def _context(passages: Sequence[str]) -> str:
    return "Context: " + " ".join(p.strip() for p in passages) + "\n"


def rag_prompt(question: str, passages: Sequence[str],
               exemplars: Sequence[tuple[Sequence[str], str, str]] = (), *,
               allow_unknown: bool = False) -> str:
    """A few-shot prompt where every question follows its retrieved passages.

    Each exemplar is ``(passages, question, answer)``; each block reads
    ``"Context: <passages joined by spaces>\\n"`` followed by
    :func:`lamini_lite.facts.qa_prompt`'s ``"Q: ...\\nA: ...\\n"``, blocks are
    separated by a blank line, and the prompt ends with ``"Q: question\\nA:"``.
    With ``allow_unknown`` an instruction line first says to answer
    ``unknown`` when the context lacks the answer (give an exemplar that
    does so).

    Raises:
        RetrievalError: if ``passages`` is a single string or an exemplar is malformed.
    """
    if isinstance(passages, str):
        raise RetrievalError("passages must be a list of strings, not one string")
    head = ""
    if allow_unknown:
        head = (f"Answer from the context. If the context does not contain the answer, "
                f"answer {UNKNOWN}.\n\n")
    blocks = []
    for ex in exemplars:
        if len(ex) != 3:
            raise RetrievalError(f"an exemplar must be (passages, question, answer), got {ex!r:.80}")
        ps, q, a = ex
        blocks.append(_context(ps) + f"Q: {q}\nA: {a}\n")  # as qa_prompt writes it
    blocks.append(_context(passages) + qa_prompt(question))
    return head + "\n".join(blocks)


def pick_exemplars(facts: Sequence[Fact], pool: Sequence[Fact], n_shots: int, *,
                   seed: int = 0) -> list[list[Fact]]:
    """``n_shots`` exemplar facts per fact: same relation, drawn from ``pool``.

    Never the fact itself (same :func:`fact_id`) nor a fact about the same
    subject. Deterministic for ``seed``.

    Raises:
        RetrievalError: if a relation has fewer than ``n_shots`` usable exemplars.
    """
    if n_shots < 0:
        raise RetrievalError(f"n_shots must be >= 0, got {n_shots}")
    by_rel: dict[str, list[Fact]] = {}
    for f in pool:
        by_rel.setdefault(f.relation, []).append(f)
    rng = numpy_rng(seed)
    out = []
    for f in facts:
        cands = [e for e in by_rel.get(f.relation, []) if e.subject != f.subject]
        if len(cands) < n_shots:
            raise RetrievalError(f"relation {f.relation!r} has {len(cands)} exemplars in the "
                                 f"pool for {f.subject!r}; n_shots={n_shots} needed")
        idx = rng.choice(len(cands), size=n_shots, replace=False) if n_shots else []
        out.append([cands[i] for i in idx])
    return out


def closed_book_prompts(facts: Sequence[Fact], exemplars: Sequence[Sequence[Fact]],
                        questions: Sequence[str] | None = None) -> list[str]:
    """The closed-book few-shot prompts (:func:`lamini_lite.facts.qa_prompt`)."""
    questions = list(questions) if questions is not None else [f.question for f in facts]
    if not len(facts) == len(exemplars) == len(questions):
        raise RetrievalError(f"facts, exemplars and questions must have the same length, got "
                             f"{len(facts)}, {len(exemplars)}, {len(questions)}")
    return [qa_prompt(q, [(e.question, e.object) for e in ex])
            for q, ex in zip(questions, exemplars)]


def _gold_ids(retriever: Retriever) -> dict[str, list[str]]:
    gold: dict[str, list[str]] = {}
    for p in retriever.passages:
        if p.fact is not None:
            gold.setdefault(p.fact, []).append(p.id)
    return gold


def rag_prompts(retriever: Retriever, facts: Sequence[Fact],
                exemplars: Sequence[Sequence[Fact]], k: int, *,
                questions: Sequence[str] | None = None, allow_unknown: bool = False,
                hits: list[list[tuple[str, float]]] | None = None
                ) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """RAG prompts for ``facts`` and the retrieved hits of each question.

    Exemplar ``j`` of a fact gets the retriever's top ``k`` passages for its
    own question, with its gold passage put in first place if the retriever
    missed it (a demonstration should show a passage that answers). With
    ``allow_unknown``, the last exemplar instead gets the top ``k`` passages
    *other than* its gold ones and the answer ``unknown``.
    Returns ``(prompts, hits)``; ``hits`` may be passed in to reuse a search.
    """
    questions = list(questions) if questions is not None else [f.question for f in facts]
    if not len(facts) == len(exemplars) == len(questions):
        raise RetrievalError(f"facts, exemplars and questions must have the same length, got "
                             f"{len(facts)}, {len(exemplars)}, {len(questions)}")
    if hits is None:
        hits = retriever.search(questions, k)
    if len(hits) != len(facts):
        raise RetrievalError(f"hits must have one list per fact, got {len(hits)} for "
                             f"{len(facts)} facts")
    gold = _gold_ids(retriever)
    ex_facts = sorted({fact_id(e): e for ex in exemplars for e in ex}.values(), key=fact_id)
    ex_hits = dict(zip([fact_id(e) for e in ex_facts],
                       retriever.search([e.question for e in ex_facts], k + 2)))
    prompts = []
    for q, ex, h in zip(questions, exemplars, hits):
        shots = []
        for j, e in enumerate(ex):
            eh = [pid for pid, _ in ex_hits[fact_id(e)]]
            g = gold.get(fact_id(e), [])
            if allow_unknown and j == len(ex) - 1:
                ids, ans = [p for p in eh if p not in g][:k], UNKNOWN
            else:
                top = eh[:k]
                if g and not any(p in g for p in top):
                    top = [g[0]] + top[:k - 1]
                ids, ans = top, e.object
            shots.append(([retriever.by_id[p].text for p in ids], e.question, ans))
        prompts.append(rag_prompt(q, retriever.texts(h), shots, allow_unknown=allow_unknown))
    return prompts, hits


def evaluate(model, tokenizer, facts: Sequence[Fact], pool: Sequence[Fact], *,
             retriever: Retriever | None = None, k: int = 3, n_shots: int = 3,
             questions: Sequence[str] | None = None, allow_unknown: bool = False,
             categories: Mapping[str, str] | None = None, condition: str = "standard",
             approach: str | None = None, max_new_tokens: int = 12, batch_size: int = 16,
             seed: int = 0, progress: bool = False, answer_fn: Callable | None = None):
    """Answer ``facts`` closed-book (``retriever=None``) or with RAG; one row per fact.

    Exemplars are drawn from ``pool`` (:func:`pick_exemplars`). ``questions``
    replaces the facts' own question text (e.g. paraphrases). ``categories``
    maps :attr:`Fact.key` (or :func:`fact_id`) to a label such as a SliCK
    category; facts it does not cover get ``None``. ``answer_fn(prompts)``
    replaces greedy decoding by SmolLM2 (e.g. a memory-tuned model).

    Returns a DataFrame with columns ``approach, condition, fact, key,
    category, question, gold, prediction, correct, abstained, retrieved
    (list of passage ids), gold_rank (1-based rank of the first gold passage
    in the top k, 0 if missed, -1 closed-book or no gold passage in the
    corpus), seconds (per question: retrieval + generation)``.
    """
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency


    facts = list(facts)
    if not facts:
        raise RetrievalError("evaluate needs at least one fact, got an empty list")
    if questions is not None and len(questions) != len(facts):
        raise RetrievalError(f"questions must match facts, got {len(questions)} questions "
                             f"for {len(facts)} facts")
    if retriever is not None:
        check_search([], k)
    exemplars = pick_exemplars(facts, pool, n_shots, seed=seed)
    t0 = time.perf_counter()
    if retriever is None:
        prompts = closed_book_prompts(facts, exemplars, questions)
        hits = [[] for _ in facts]
        t_ret = 0.0
    else:
        qs = list(questions) if questions is not None else [f.question for f in facts]
        hits = retriever.search(qs, k)
        t_ret = time.perf_counter() - t0
        prompts, hits = rag_prompts(retriever, facts, exemplars, k, questions=qs,
                                    allow_unknown=allow_unknown, hits=hits)
    t1 = time.perf_counter()
    if answer_fn is not None:
        preds = list(answer_fn(prompts))
    else:
        preds = greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress)
    t_gen = time.perf_counter() - t1
    if len(preds) != len(facts):
        raise RetrievalError(f"got {len(preds)} answers for {len(facts)} prompts")
    gold = _gold_ids(retriever) if retriever is not None else {}
    per_q = (t_ret + t_gen) / len(facts)
    name = approach or ("closed-book" if retriever is None else f"RAG ({retriever.name})")
    rows = []
    for i, f in enumerate(facts):
        ids = [pid for pid, _ in hits[i]]
        g = gold.get(fact_id(f))
        rank = -1 if retriever is None or not g else next(
            (r + 1 for r, pid in enumerate(ids) if pid in g), 0)
        cat = None
        if categories is not None:
            cat = categories.get(fact_id(f), categories.get(f.key))
        rows.append({"approach": name, "condition": condition, "fact": fact_id(f),
                     "key": f.key, "category": cat,
                     "question": questions[i] if questions is not None else f.question,
                     "gold": f.object, "prediction": preds[i],
                     "correct": bool(f.is_correct(preds[i])),
                     "abstained": is_abstention(preds[i]), "retrieved": ids,
                     "gold_rank": rank, "seconds": per_q, "prompt_chars": len(prompts[i])})
    return pd.DataFrame(rows)


def accuracy_table(results, by: str | Sequence[str] = "condition"):
    """EM accuracy (%) per approach (rows) and ``by`` (columns), from :func:`evaluate` rows."""
    df = _frame(results)
    by = [by] if isinstance(by, str) else list(by)
    tab = df.groupby(["approach"] + by)["correct"].mean().mul(100).unstack(by)
    return tab.round(1)


def _frame(results):
    import pandas as pd  # lazy: pandas is a notebook extra, not a package dependency

    if isinstance(results, pd.DataFrame):
        df = results
    else:
        df = pd.concat(list(results), ignore_index=True)
    need = {"approach", "correct", "gold_rank", "prediction", "abstained"}
    if not need <= set(df.columns):
        raise RetrievalError(f"results need the columns of evaluate(); missing "
                             f"{sorted(need - set(df.columns))}")
    if df.empty:
        raise RetrievalError("results are empty")
    return df


def _outcome(correct: bool, gold_rank: int, abstained: bool) -> str:
    if gold_rank == -1:
        return "correct" if correct else ("abstained" if abstained else "wrong")
    if correct:
        return "correct" if gold_rank > 0 else "correct without gold"
    if gold_rank == 0:
        return "retriever miss"
    return "reader abstained" if abstained else "reader failure"


def attribute_failures(results, n_examples: int = 3):
    """Why RAG answers failed: retriever miss vs reader failure, with examples.

    Every RAG row is one of ``correct`` (gold passage in the top k, right
    answer), ``correct without gold`` (right answer, gold passage not
    retrieved: the model knew it), ``retriever miss`` (gold passage not in
    the top k, wrong answer), ``reader abstained`` (gold passage retrieved,
    model answered unknown) and ``reader failure`` (gold passage retrieved,
    wrong answer). Closed-book rows and questions whose answer is in no
    passage are ``correct``, ``abstained`` or ``wrong``.

    Returns ``(counts, examples)``: a DataFrame of counts per approach and
    outcome, and a DataFrame with up to ``n_examples`` failed rows per
    (approach, outcome).
    """
    df = _frame(results).copy()
    df["outcome"] = [_outcome(c, r, a) for c, r, a in
                     zip(df["correct"], df["gold_rank"], df["abstained"])]
    counts = df.groupby(["approach", "outcome"]).size().unstack("outcome", fill_value=0)
    bad = df[~df["outcome"].isin(["correct", "correct without gold"])]
    cols = [c for c in ("approach", "outcome", "question", "gold", "prediction", "retrieved")
            if c in bad.columns]
    examples = bad.groupby(["approach", "outcome"], sort=True).head(n_examples)[cols]
    return counts, examples.reset_index(drop=True)


def latency_table(results, retrievers: Sequence[Retriever] = ()):
    """Mean seconds per question per approach, with each retriever's index size and build time."""

    df = _frame(results)
    tab = df.groupby("approach")["seconds"].mean().rename("seconds / question").to_frame()
    tab["prompt chars"] = df.groupby("approach")["prompt_chars"].mean().round(0)
    info = {f"RAG ({r.name})": (r.index_bytes, r.build_seconds) for r in retrievers}
    tab["index bytes"] = [info.get(a, (0, 0.0))[0] for a in tab.index]
    tab["index build s"] = [round(info.get(a, (0, 0.0))[1], 3) for a in tab.index]
    return tab
