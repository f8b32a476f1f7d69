"""The book's two fact worlds and what they share.

* :mod:`lamini_lite.facts.core` -- :class:`Fact`, exact-match scoring, splits,
  few-shot exemplars and random-answer variants, for facts of either world;
* :mod:`lamini_lite.facts.real` -- real facts (countries and cities) built
  offline from two data packages, with every accepted answer;
* :mod:`lamini_lite.facts.synthetic` -- an invented world whose exposure to
  each fact we control, for claims checked against ground truth.

The core names are re-exported here: ``from lamini_lite.facts import Fact``.
"""

from .core import (
                   RANDOM_ALPHABET,
                   Fact,
                   FactError,
                   Splits,
                   exact_match,
                   exemplar_sets,
                   exemplars,
                   fact_prompt,
                   facts_table,
                   normalize_answer,
                   qa_prompt,
                   relation_counts,
                   split_facts,
                   with_random_answers,
)

__all__ = ["Fact", "FactError", "normalize_answer", "exact_match", "qa_prompt", "fact_prompt",
           "relation_counts", "facts_table", "Splits", "split_facts", "exemplars",
           "exemplar_sets", "RANDOM_ALPHABET", "with_random_answers"]
