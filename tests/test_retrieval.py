"""Tests of lamini_lite.retrieval: corpus, BM25, dense retriever, RAG prompts, attribution."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lamini_lite.facts import Fact
from lamini_lite.retrieval import (
    UNKNOWN,
    BM25Retriever,
    DenseRetriever,
    Passage,
    RetrievalError,
    accuracy_table,
    attribute_failures,
    bm25_tokenize,
    build_corpus,
    closed_book_prompts,
    evaluate,
    fact_id,
    is_abstention,
    make_retrieval_world,
    paraphrase_question,
    pick_exemplars,
    rag_prompt,
    rag_prompts,
)


def _cap(country, city):
    return Fact(country, "capital", city, f"What is the capital of {country}?")


FACTS = [_cap("Burkina Faso", "Ouagadougou"), _cap("France", "Paris"), _cap("Peru", "Lima"),
         _cap("Japan", "Tokyo"), _cap("Kenya", "Nairobi"),
         Fact("Lyon", "city_country", "France", "Which country is Lyon located in?"),
         Fact("Osaka", "city_country", "Japan", "Which country is Osaka located in?")]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(FACTS, n_paraphrases=2)


def test_build_corpus_states_every_fact(corpus):
    assert len(corpus) == 2 * len(FACTS)
    assert corpus[0].text == "Ouagadougou is the capital of Burkina Faso."
    assert corpus[1].text != corpus[0].text  # a paraphrase
    assert {p.fact for p in corpus} == {fact_id(f) for f in FACTS}
    assert all(f.object in p.text for f in FACTS for p in corpus if p.fact == fact_id(f))
    # duplicates stated once; unknown relations get a generic sentence
    odd = Fact("Kenya", "national_animal", "lion", "What is Kenya's national animal?")
    c = build_corpus([odd, odd])
    assert len(c) == 1 and c[0].text == "The national animal of Kenya is lion."


def test_bm25_tokenize_drops_stopwords_and_accents():
    assert bm25_tokenize("What is the capital of Bogotá's country?") == [
        "capital", "bogota", "s", "country"]


def _naive_bm25(docs, query, k1=1.5, b=0.75):
    toks = [bm25_tokenize(d) for d in docs]
    avgdl = sum(map(len, toks)) / len(toks)
    out = []
    for d in toks:
        s = 0.0
        for t in bm25_tokenize(query):
            n = sum(t in x for x in toks)
            idf = math.log(1 + (len(toks) - n + 0.5) / (n + 0.5))
            tf = d.count(t)
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


def test_bm25_scores_match_formula(corpus):
    r = BM25Retriever(corpus)
    q = "capital of Peru and Japan"
    hits = r.search([q], k=len(corpus))[0]
    got = dict(hits)
    want = _naive_bm25([p.text for p in corpus], q)
    for p, w in zip(corpus, want):
        assert got[p.id] == pytest.approx(w, rel=1e-5, abs=1e-6)
    assert r.index_bytes > 0 and r.build_seconds >= 0


def test_bm25_finds_gold_passage(corpus):
    r = BM25Retriever(corpus)
    hits = r.search([f.question for f in FACTS], k=2)
    for f, h in zip(FACTS, hits):
        assert len(h) == 2
        assert h[0][1] >= h[1][1]  # best first
        assert r.by_id[h[0][0]].fact == fact_id(f), (f.question, h)


@pytest.mark.slow
def test_dense_finds_gold_offline(corpus, tmp_cache):
    # conftest installs the network guard: loading must not touch the network.
    r = DenseRetriever(corpus)
    assert r.embeddings.shape == (len(corpus), 384)
    assert r.index_bytes == len(corpus) * 384 * 4
    # paraphrased questions whose words differ from the passages
    queries = ["In which city is the government of Kenya seated?",
               "Which nation is the town of Osaka part of?"]
    hits = r.search(queries, k=1)
    assert [r.by_id[h[0][0]].fact for h in hits] == [fact_id(FACTS[4]), fact_id(FACTS[6])]
    # the embeddings are cached by corpus fingerprint: a rebuild loads the same
    again = DenseRetriever(corpus)
    assert (again.embeddings == r.embeddings).all()
    assert list(tmp_cache.glob("retrieval-embeddings/*/meta.json"))


def test_search_errors(corpus):
    r = BM25Retriever(corpus)
    with pytest.raises(RetrievalError, match="k must be"):
        r.search(["x"], k=0)
    with pytest.raises(RetrievalError, match="list of strings"):
        r.search("What is the capital of Peru?", k=1)
    with pytest.raises(RetrievalError, match="non-empty corpus"):
        BM25Retriever([])
    with pytest.raises(RetrievalError, match="unique"):
        BM25Retriever([Passage("a", "x"), Passage("a", "y")])
    with pytest.raises(RetrievalError, match="at least one fact"):
        build_corpus([])
    assert r.search([], k=3) == []
    assert len(r.search(["capital"], k=99)[0]) == len(corpus)  # k clipped to the corpus


def test_rag_prompt_format():
    p = rag_prompt("What is the capital of Peru?", ["Lima is the capital of Peru.", "X."],
                   [(["Paris is the capital of France."], "What is the capital of France?",
                     "Paris")])
    assert p == ("Context: Paris is the capital of France.\n"
                 "Q: What is the capital of France?\nA: Paris\n\n"
                 "Context: Lima is the capital of Peru. X.\n"
                 "Q: What is the capital of Peru?\nA:")
    u = rag_prompt("q?", ["p."], allow_unknown=True)
    assert u.startswith("Answer from the context.") and UNKNOWN in u.splitlines()[0]
    assert u.endswith("Context: p.\nQ: q?\nA:")
    with pytest.raises(RetrievalError, match="not one string"):
        rag_prompt("q?", "p.")
    with pytest.raises(RetrievalError, match="exemplar"):
        rag_prompt("q?", ["p."], [("q", "a")])


def test_rag_prompts_exemplars_show_gold_and_unknown(corpus):
    r = BM25Retriever(corpus)
    ask = [FACTS[0]]
    ex = pick_exemplars(ask, FACTS, 2, seed=0)
    assert all(e.relation == "capital" and e.subject != "Burkina Faso" for e in ex[0])
    prompts, hits = rag_prompts(r, ask, ex, k=2, allow_unknown=True)
    blocks = prompts[0].split("\n\n")
    assert len(blocks) == 1 + 3  # instruction, 2 exemplars, the question
    first, last_ex = blocks[1], blocks[2]
    assert ex[0][0].object in first.splitlines()[0]  # its context states its answer
    assert last_ex.endswith(f"A: {UNKNOWN}")
    assert ex[0][1].object not in last_ex.splitlines()[0]  # gold removed from context
    assert prompts[0].endswith("Q: What is the capital of Burkina Faso?\nA:")
    assert r.by_id[hits[0][0][0]].fact == fact_id(FACTS[0])
    cb = closed_book_prompts(ask, ex)
    assert cb[0].startswith(f"Q: {ex[0][0].question}\nA: {ex[0][0].object}\n")
    with pytest.raises(RetrievalError, match="same length"):
        closed_book_prompts(ask, ex * 2)
    with pytest.raises(RetrievalError, match="exemplars"):
        pick_exemplars(ask, FACTS, 9)


def test_abstention():
    assert is_abstention("Unknown") and is_abstention("I don't know.")
    assert not is_abstention("Lima")


def _fake_rows():
    # correct, retriever miss, reader failure, reader abstained, correct without gold
    return pd.DataFrame({
        "approach": ["RAG (BM25)"] * 5 + ["closed-book"] * 2,
        "condition": ["standard"] * 7,
        "category": ["Unknown", "Unknown", "HighlyKnown", "HighlyKnown", "Unknown", "Unknown",
                     "HighlyKnown"],
        "question": list("abcdefg"), "gold": list("ABCDEFG"),
        "prediction": ["A", "x", "y", "unknown", "E", "z", "G"],
        "correct": [True, False, False, False, True, False, True],
        "abstained": [False, False, False, True, False, False, False],
        "gold_rank": [1, 0, 2, 1, 0, -1, -1],
        "retrieved": [[]] * 7,
    })


def test_attribute_failures_counts_and_examples():
    counts, examples = attribute_failures(_fake_rows())
    rag = counts.loc["RAG (BM25)"]
    assert rag["correct"] == 1 and rag["retriever miss"] == 1
    assert rag["reader failure"] == 1 and rag["reader abstained"] == 1
    assert rag["correct without gold"] == 1
    cb = counts.loc["closed-book"]
    assert cb["correct"] == 1 and cb["wrong"] == 1
    assert set(examples["outcome"]) == {"retriever miss", "reader failure", "reader abstained",
                                        "wrong"}
    assert examples.loc[examples.outcome == "retriever miss", "prediction"].item() == "x"


def test_accuracy_table_by_category():
    tab = accuracy_table(_fake_rows(), by="category")
    assert tab.loc["RAG (BM25)", "Unknown"] == pytest.approx(200 / 3, abs=0.1)
    assert tab.loc["closed-book", "HighlyKnown"] == 100.0
    with pytest.raises(RetrievalError, match="columns"):
        accuracy_table(pd.DataFrame({"x": [1]}))


def test_evaluate_with_stub_reader(corpus):
    """The evaluation loop with a stub reader that copies the first passage's first word."""
    r = BM25Retriever(corpus)
    ask = FACTS[:3]

    def reader(prompts):
        return [p.split("Context: ")[-1].split()[0] for p in prompts]

    df = evaluate(None, None, ask, FACTS, retriever=r, k=2, n_shots=2, answer_fn=reader,
                  categories={FACTS[0].key: "Unknown"})
    assert list(df["correct"]) == [True, True, True]
    assert list(df["gold_rank"]) == [1, 1, 1]
    assert df["category"].iloc[0] == "Unknown" and df["category"].iloc[1:].isna().all()
    assert (df["approach"] == "RAG (BM25)").all()
    cb = evaluate(None, None, ask, FACTS, n_shots=2, answer_fn=lambda ps: ["?"] * len(ps))
    assert not cb["correct"].any() and (cb["gold_rank"] == -1).all()
    with pytest.raises(RetrievalError, match="questions must match"):
        evaluate(None, None, ask, FACTS, questions=["a"], answer_fn=reader)
    with pytest.raises(RetrievalError, match="k must be"):
        evaluate(None, None, ask, FACTS, retriever=r, k=0, answer_fn=reader)
    with pytest.raises(RetrievalError, match="empty"):
        evaluate(None, None, [], FACTS, answer_fn=reader)


@pytest.mark.slow
def test_rag_makes_smollm2_read_the_answer(smollm2):
    """Given the passage, SmolLM2 answers a fact it gets wrong closed-book."""
    model, tok = smollm2
    facts = [FACTS[0], _cap("Japan", "Tokyo"), _cap("France", "Paris"),
             _cap("Kenya", "Nairobi")]
    r = BM25Retriever(build_corpus(facts))
    df = evaluate(model, tok, facts[:1], facts, retriever=r, k=1, n_shots=3)
    assert df["correct"].item(), df["prediction"].item()
    cb = evaluate(model, tok, facts[:1], facts, n_shots=3)
    assert not cb["correct"].item()


def test_make_world_is_disjoint_and_states_the_right_facts():
    facts = [_cap(f"Land{i}", f"City{i}") for i in range(12)]
    amb = Fact("Cordoba", "city_country", "Argentina", "Which country is Cordoba located in?",
               aliases=("Spain",), meta={"candidates": [{"answer": "Argentina"},
                                                        {"answer": "Spain"}]})
    w = make_retrieval_world(facts, n_ask=3, n_hard=2, ambiguous=[amb], random_length=6, seed=1)
    ids = [{f.subject for f in s} for s in (w.ask, w.random, w.held_out, w.pool)]
    assert [len(s) for s in ids] == [3, 2, 2, 5]
    assert not set.intersection(*ids[:2]) and not ids[2] & (ids[0] | ids[1] | ids[3])
    stated = {p.fact for p in w.corpus}
    assert all(fact_id(f) in stated for f in w.ask + w.random + w.pool)
    assert not any(fact_id(f) in stated for f in w.held_out)
    assert all(len(f.object) == 6 and f.meta["true_object"] not in
               " ".join(p.text for p in w.corpus) for f in w.random)
    assert {"Cordoba is a city in Argentina.", "Cordoba is a city in Spain."} <= {
        p.text for p in w.corpus}
    assert paraphrase_question(w.ask[0]) != w.ask[0].question
    with pytest.raises(RetrievalError, match="too few"):
        make_retrieval_world(facts, n_ask=10, n_hard=2)


