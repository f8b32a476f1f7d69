"""Chapter 5: a Mixture of Memory Experts on a frozen SmolLM2 -- its studies and claims.

``book/05_building_mome.ipynb`` checks each claim below with
:func:`lamini_lite.claims.check`, on quantities computed by the functions of
this module from the results of its studies (further below), so that the
chapter and ``python -m lamini_lite.bench robustness`` measure the same things.

The statistical claims are tested on an end of a 95% interval: a share of
probe answers left unchanged is a Wilson interval, a difference of two such
shares (two models on the same probes) Newcombe's interval, and a change of
HighlyKnown accuracy on the same facts a paired bootstrap over the facts.

What the chapter no longer asserts, because the code makes it true: that the
memorized facts are recalled exactly with every answer token below ln 2
(that is the rule memory tuning stops on, so it holds whenever tuning stopped
before its budget: :data:`MEMORIZES` checks that instead), that the gated
memory still recalls every fact (its match keys are the facts' own queries,
so they match with cosine 1), and that the selector's keys are smaller than a
dense value table (arithmetic on the configuration).

Its studies, and the sizes they run at (``sizes("mome")``):

The MoME chapter's measurements: memorize, forget, near questions, cost, selection.

Each public function here is one experiment of ``book/05_building_mome.ipynb``
on SmolLM2-135M-Instruct, cached with :func:`lamini_lite.cache.cached` (keyed by
its inputs and the profile's SliCK labels), so the notebook re-runs instantly:

* :func:`chapter_data` -- the facts to memorize (SliCK-Unknown real facts with
  their true answers, plus made-up subjects with random 32-character codes)
  and the probe sets: unrelated questions, near questions (same format, other
  subjects), HighlyKnown facts and held-out English text;
* :func:`snapshot` -- what a model does on all of them (recall, per-fact max
  answer-token loss, greedy answers, HighlyKnown accuracy, text loss);
* :func:`forgetting_study` -- MoME vs top-layer fine-tuning (and LoRA) trained
  to the same recall on the same facts, before/after on the probes;
* :func:`near_study` -- gate thresholds and near-miss negatives against the
  near questions;
* :func:`row_overlap` -- rows shared between facts and between facts and
  unrelated text, per query normalization, before any training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..cache import cached, fingerprint
from ..claims import Claim
from ..editing import QA_EXEMPLARS
from ..facts import Fact, exact_match, qa_prompt
from ..facts.real import load_real_facts
from ..facts.synthetic import random_code_facts
from ..lm import answer_token_losses, collate_qa, encode_qa, greedy_answers, text_loss
from ..models import load_smollm2
from ..mome import (
    MemoryLayer,
    MoMEConfig,
    add_memory_experts,
    get_memory,
    memorize,
    memory_lookup,
    remove_memory_experts,
)
from ..profiles import register_sizes, sizes
from ..slick import SliCKProtocol, categorize
from ..stats import (
    Interval,
    newcombe_difference,
    paired_bootstrap_difference,
    wilson_interval,
)
from ..training import (
    finetune_qa,
    frozen_prefix_for,
    has_lora,
    layer_output,
    merge_lora,
)
from . import common as _common  # noqa: F401  (registers the shared sizes: "slick", ...)

__all__ = ["lookup_scaling", "MEMORIZES", "UNRELATED_UNCHANGED", "KNOWN_KEPT",
           "TEXT_LOSS_KEPT", "FINETUNE_CHANGES_MORE", "GATE_NEEDED", "NEAR_TAKEN_OVER",
           "NEAR_KEPT", "NEAR_BELOW_THRESHOLD", "FEWER_WEIGHTS", "LOOKUP_SUBLINEAR",
           "BATCHNORM_LEAST_TEXT", "LARGER_LESS_OVERLAP", "EPOCH_BUDGET",
           "epochs_to_memorize", "unchanged_counts", "unchanged_share",
           "unchanged_difference", "known_correct", "known_drop", "growth_exponent",
           "norm_advantage", "overlap_reduction", "EXEMPLARS", "UNRELATED_QUESTIONS",
           "HELD_OUT_TEXT", "NEW_TOKENS", "chapter_data", "fact_scores", "snapshot",
           "base_snapshot", "compare", "subset", "memorize_mome", "finetune_to_recall",
           "weights_changed", "baseline_study", "memorize_study", "forgetting_study",
           "match_profile", "set_gate", "row_overlap"]

register_sizes(
    "mome",
    # n_facts: facts memorized (half SliCK-Unknown real facts, half random codes);
    # n_keys: sqrt of the expert count of their memory, sized to n_facts (at 2^16 rows
    # 1,000 facts interfere: recall peaked at 93.5%, then fell); the n_compare facts
    # always use the "book" preset's 2^16;
    # n_unrelated, n_near, n_known: probe sets (ci: the chapter's targets, >= 85% of
    # unrelated and >= 80% of near answers unchanged, are tested on the lower end of
    # a 95% Wilson interval, which needs 22 and 16 questions even if all are
    # unchanged; 40 of each leave room for one and for three changed answers);
    # n_compare: facts of the MoME vs fine-tuning
    # comparison (every method trains on the same ones); baselines: (trainable, lr)
    # of the fine-tuning baselines; scale_log2 and lookup_tokens: the lookup sweep.
    ci=dict(n_facts=16, n_keys=256, answer_chars=32, n_unrelated=40,
            n_near=40, n_known=10, max_epochs=40, n_compare=16, baselines=[["top:2", 1e-3]],
            scale_log2=[10, 12, 14, 16], lookup_tokens=256),
    book=dict(n_facts=200, n_keys=256, answer_chars=32, n_unrelated=50,
              n_near=50, n_known=40, max_epochs=40, n_compare=30, baselines=[["top:2", 1e-3]],
              scale_log2=[10, 12, 14, 16, 18, 20], lookup_tokens=1024),
    full=dict(n_facts=1000, n_keys=1024, answer_chars=32, n_unrelated=60,
              n_near=200, n_known=100, max_epochs=60, n_compare=30,
              baselines=[["top:2", 1e-3], ["all", 3e-5]],
              scale_log2=[10, 12, 14, 16, 18, 20], lookup_tokens=4096),
)


LN2 = math.log(2)  # the loss bound of chapter 1: p > 1/2 at every answer token

# Epochs within which every method must have memorized its facts (the ci and
# book profiles' max_epochs; the full profile allows 60 but needs fewer).
EPOCH_BUDGET = 40

# --------------------------------------------------------------------------- claims

MEMORIZES = Claim(
    "ch05.memorizes_within_budget",
    f"Each method memorizes its facts by the common rule (every fact recalled exactly, "
    f"every answer token below ln 2) within {EPOCH_BUDGET} epochs: epochs it needed",
    "<=", EPOCH_BUDGET, unit="epochs")
UNRELATED_UNCHANGED = Claim(
    "ch05.unrelated_unchanged",
    "With its gate the memory leaves unrelated answers alone: share of unrelated "
    "questions whose first greedy tokens are unchanged, lower end of its 95% Wilson "
    "interval at least 85%",
    ">=", 85.0, unit="%", on="low")
KNOWN_KEPT = Claim(
    "ch05.known_kept",
    "With its gate the memory costs no HighlyKnown fact: HighlyKnown accuracy before minus "
    "after, upper end of its 95% paired bootstrap interval at most 2 points",
    "<=", 2.0, unit="points", on="high")
TEXT_LOSS_KEPT = Claim(
    "ch05.text_loss_kept",
    "With its gate the memory leaves the loss on held-out English text where it was: "
    "absolute change at most 0.01 nats",
    "<=", 0.01, unit="nats")
FINETUNE_CHANGES_MORE = Claim(
    "ch05.finetune_changes_more",
    "Fine-tuning to the same recall changes more unrelated answers than the gated memory: "
    "share unchanged (memory) minus share unchanged (fine-tuned), lower end of its 95% "
    "Newcombe interval above 0",
    ">", 0.0, unit="points", on="low")
GATE_NEEDED = Claim(
    "ch05.gate_needed",
    "Without its gate the same trained memory changes more unrelated answers: share "
    "unchanged with the gate minus without it, lower end of its 95% Newcombe interval "
    "above 0",
    ">", 0.0, unit="points", on="low")
NEAR_TAKEN_OVER = Claim(
    "ch05.near_taken_over",
    "Without the gate the memory takes over near questions (the memorized format, other "
    "subjects): share of their answers unchanged, upper end of its 95% Wilson interval "
    "below 80%",
    "<", 80.0, unit="%", on="high")
NEAR_KEPT = Claim(
    "ch05.near_kept",
    "With the match gate near questions keep their answers: share unchanged, lower end of "
    "its 95% Wilson interval at least 80%",
    ">=", 80.0, unit="%", on="low")
NEAR_BELOW_THRESHOLD = Claim(
    "ch05.near_below_threshold",
    "No near question comes close enough to a memorized query to open the gate: the "
    "highest match score (cosine) over all near questions is below the threshold 0.999",
    "<", 0.999, unit="cosine")
FEWER_WEIGHTS = Claim(
    "ch05.fewer_weights_changed",
    "At the same recall the memory changes at least 10x fewer model weights than any "
    "fine-tuning baseline: weights changed by the baseline / by the memory",
    ">=", 10.0, unit="x")
LOOKUP_SUBLINEAR = Claim(
    "ch05.lookup_sublinear",
    "Selection + lookup time per token grows more slowly than sqrt(N) with the number of "
    "experts N: exponent a of time ~ N^a over the measured sizes",
    "<", 0.5)
BATCHNORM_LEAST_TEXT = Claim(
    "ch05.batchnorm_least_text",
    "Per-feature (batch-norm) query normalization puts the least of unrelated text's "
    "selection weight on the facts' rows: the next-lowest normalization's share minus "
    "batch-norm's",
    ">", 0.0, unit="points")
LARGER_LESS_OVERLAP = Claim(
    "ch05.larger_less_overlap",
    "A larger memory separates the facts: share of a fact's rows shared with another fact "
    "at the smaller size minus at the larger size (batch-norm queries)",
    ">", 0.0, unit="points")


# ------------------------------------------------------------------------ quantities


def epochs_to_memorize(epochs: int, summary: Mapping) -> float:
    """``epochs`` if the run memorized every fact by the common rule, else ``inf``.

    ``summary`` is :func:`compare`'s dict (``recall``: share
    of facts recalled exactly, teacher-forced; ``max_loss``: largest answer-token
    loss over the facts), measured on the trained model after training.
    """
    ok = float(summary["recall"]) == 1.0 and float(summary["max_loss"]) < LN2
    return float(epochs) if ok else math.inf


def unchanged_counts(before: Sequence[str], after: Sequence[str]) -> tuple[int, int]:
    """``(unchanged, total)``: probe answers identical before and after."""
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must be non-empty and of equal length, got "
                         f"{len(before)} and {len(after)}")
    return sum(a == b for a, b in zip(before, after)), len(before)


def unchanged_share(before: Sequence[str], after: Sequence[str]) -> Interval:
    """Share of probe answers unchanged, in %, with its 95% Wilson interval."""
    return wilson_interval(*unchanged_counts(before, after)).scaled(100)


def unchanged_difference(before: Sequence[str], after_a: Sequence[str],
                         after_b: Sequence[str]) -> Interval:
    """Share unchanged after ``a`` minus after ``b`` (points), Newcombe's 95% interval."""
    return newcombe_difference(*unchanged_counts(before, after_a),
                               *unchanged_counts(before, after_b)).scaled(100)


def known_correct(answers: Sequence[str], aliases: Sequence[Sequence[str]]) -> list[bool]:
    """Per HighlyKnown fact: does the greedy answer match one of its accepted answers?"""
    if len(answers) != len(aliases):
        raise ValueError(f"one alias list per answer needed, got {len(answers)} answers and "
                         f"{len(aliases)} alias lists")
    return [any(exact_match(p, a) for a in al) for p, al in zip(answers, aliases)]


def known_drop(before: Sequence[str], after: Sequence[str],
               aliases: Sequence[Sequence[str]], *, seed: int = 0) -> Interval:
    """HighlyKnown accuracy before minus after (points), paired bootstrap 95% interval."""
    b = np.array(known_correct(before, aliases), dtype=float)
    a = np.array(known_correct(after, aliases), dtype=float)
    return paired_bootstrap_difference(b, a, seed=seed).scaled(100)


def growth_exponent(experts: Sequence[float], seconds: Sequence[float]) -> float:
    """Slope of log(time) against log(N) by least squares: time grows like N^slope."""
    x, y = np.log(np.asarray(experts, float)), np.log(np.asarray(seconds, float))
    if len(x) < 2 or not np.all(np.isfinite(y)):
        raise ValueError("need at least two sizes with positive times")
    return float(np.polyfit(x, y, 1)[0])


def norm_advantage(rows: Sequence[Mapping], experts: int) -> float:
    """Points by which batch-norm queries put less text weight on fact rows than the
    better of the other normalizations, at ``experts`` (rows of ``row_overlap``)."""
    at = {r["query_norm"]: r["text_weight_on_fact_rows"] for r in rows
          if r["experts"] == experts}
    if "batchnorm" not in at or len(at) < 2:
        raise ValueError(f"need batchnorm and another normalization at {experts} experts")
    others = min(v for k, v in at.items() if k != "batchnorm")
    return 100 * (others - at["batchnorm"])


def overlap_reduction(rows: Sequence[Mapping], norm: str = "batchnorm") -> float:
    """Points by which the largest memory shares fewer fact rows than the smallest."""
    mine = sorted((r for r in rows if r["query_norm"] == norm), key=lambda r: r["experts"])
    if len(mine) < 2:
        raise ValueError(f"need {norm!r} rows at two memory sizes")
    return 100 * (mine[0]["fact_fact_overlap"] - mine[-1]["fact_fact_overlap"])


# =============================================================================
# The chapter's studies
# =============================================================================


# Two true exemplars in front of every fact question (an instruct model asked
# zero-shot often answers in sentences); their subjects are never memorized. The
# same as the editing evaluation's (lamini_lite.editing), so its scores compare.
EXEMPLARS: tuple[tuple[str, str], ...] = QA_EXEMPLARS

# Questions unrelated to the memorized facts, asked zero-shot ("Q: ...\nA:").
UNRELATED_QUESTIONS: tuple[str, ...] = (
    "How many days are in a week?", "What colour is grass?", "What do bees make?",
    "How many legs does a cat have?", "What is frozen water called?",
    "Which planet do we live on?", "What is the opposite of hot?",
    "What do you use to write on paper?", "How many hours are in a day?",
    "What is the largest animal in the sea?", "What gas do plants take in?",
    "Who wrote Hamlet?", "What is two plus three?", "What language is spoken in Mexico?",
    "What is the boiling point of water in Celsius?", "What fruit is yellow and curved?",
    "What do cows drink?", "How many months are in a year?", "What is the color of the sun?",
    "Which season comes after winter?", "What instrument has black and white keys?",
    "What is a baby dog called?", "How many sides does a triangle have?",
    "What do you call a person who fixes teeth?", "What is the main ingredient of bread?",
    "Which animal is known as the king of the jungle?", "What is the fastest land animal?",
    "What shape is a football?", "What do we breathe?", "What is the tallest animal?",
    "How many continents are there?", "Who painted the Mona Lisa?",
    "What is the chemical symbol for gold?", "What is the square root of nine?",
    "Which bird is a symbol of peace?", "What do caterpillars turn into?",
    "How many players are on a soccer team?", "What is the largest planet?",
    "What metal is liquid at room temperature?", "What do you call a house made of ice?",
    "Which organ pumps blood?", "What is the hardest natural substance?",
    "How many strings does a violin have?", "What is the capital letter of the alphabet's start?",
    "What is the freezing point of water in Fahrenheit?", "Who discovered penicillin?",
    "What do spiders spin?", "Which direction does the sun rise?",
    "What is the smallest prime number?", "How many wheels does a bicycle have?",
    "What is the main language of Brazil?", "What do pandas eat?",
    "Which ocean is the largest?", "What is the currency of Japan?",
    "How many minutes are in an hour?", "What is the color of a ripe tomato?",
    "Who was the first person on the Moon?", "What do you call a group of wolves?",
    "What is H2O?", "Which month has the fewest days?",
)

# Held-out English text (not the query-calibration text) for the text-loss probe.
HELD_OUT_TEXT: tuple[str, ...] = (
    "The farmer walked along the fence at dawn, counting the sheep that had wandered "
    "close to the road during the night.",
    "Our train was delayed by an hour, so we bought coffee and watched the rain on the "
    "platform roof.",
    "A recipe for soup usually begins with onions softened slowly in a little oil.",
    "The school library opens early on weekdays so that students can study before class.",
    "When the storm passed, the streets were full of branches and the air smelled of wet "
    "earth.",
    "Scientists believe the comet will return in about seventy years, brighter than before.",
    "He spent the afternoon repairing an old radio that had belonged to his grandfather.",
    "The orchestra tuned their instruments while the audience slowly found their seats.",
    "Most mountains are formed when large plates of the earth's crust push against each "
    "other.",
    "She planted tomatoes, beans and a row of sunflowers along the garden wall.",
    "The city council voted to build a new bridge across the river next spring.",
    "After dinner the family played cards by the fire until the children fell asleep.",
    "Ancient sailors used the stars to find their way across the open sea.",
    "The bakery on the corner sells fresh bread every morning before seven.",
    "Good sleep helps the body recover and the mind remember what it learned.",
    "The old castle on the hill is now a museum that welcomes visitors all year.",
)

# Greedy tokens compared on the probes ("unchanged" = the same first 10 tokens).
NEW_TOKENS = 10

_PLACE_RELATIONS = ["capital", "continent", "us_state", "city_country"]


def _prompt(question: str) -> str:
    return qa_prompt(question, EXEMPLARS)


def chapter_data(n_facts: int, *, answer_chars: int = 32, n_unrelated: int = 50,
                 n_near: int = 50, n_known: int = 40, seed: int = 0,
                 slick_seed: int = 0) -> dict[str, Any]:
    """Facts to memorize and probe sets, from chapter 2's SliCK labels of SmolLM2.

    Half of the ``n_facts`` (at most as many as there are) are real facts SliCK
    called Unknown, with their true answers; the rest are made-up subjects with
    random ``answer_chars``-character codes. Probes: ``n_unrelated`` unrelated
    questions (zero-shot), ``n_near`` near questions (the memorized format, other
    subjects: half real MaybeKnown/WeaklyKnown facts, half other made-up
    subjects), ``n_known`` HighlyKnown facts, and :data:`HELD_OUT_TEXT`.
    The SliCK call is chapter 2's in the active profile (its real facts and
    categorization drawn with ``slick_seed``, chapter 2's run seed), so it is a
    cache hit once chapter 2 ran in that profile with that seed. ``seed`` draws
    the facts, probes and random codes from them.
    Returns a JSON-able dict of prompt/answer lists.
    """

    if n_facts < 2 or min(n_unrelated, n_near, n_known) < 1:
        raise ValueError(f"n_facts must be >= 2 and the probe sizes >= 1, got n_facts={n_facts}, "
                         f"n_unrelated={n_unrelated}, n_near={n_near}, n_known={n_known}")
    if n_unrelated > len(UNRELATED_QUESTIONS):
        raise ValueError(f"n_unrelated must be <= {len(UNRELATED_QUESTIONS)}, got {n_unrelated}")
    S = sizes("slick")
    facts = load_real_facts(_PLACE_RELATIONS, per_relation=S.per_relation, seed=slick_seed)
    model, tok = load_smollm2()
    res = categorize(model, tok, facts, SliCKProtocol(exemplar_sets=S.exemplar_sets),
                     seed=slick_seed)
    ex_q = {q for q, _ in EXEMPLARS}
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[Fact]] = {}
    for f, c in zip(facts, res.categories):
        if f.question not in ex_q:
            by_cat.setdefault(c, []).append(f)
    unknown = [by_cat["Unknown"][i] for i in rng.permutation(len(by_cat["Unknown"]))]
    n_real = min(len(unknown), n_facts // 2)
    real = unknown[:n_real]
    n_codes = n_facts - n_real
    c_prompts, c_answers, c_names = random_code_facts(n_codes + n_near, answer_chars=answer_chars,
                                                      seed=seed)
    others = by_cat.get("MaybeKnown", []) + by_cat.get("WeaklyKnown", [])
    others = [others[i] for i in rng.permutation(len(others))]
    known = by_cat.get("HighlyKnown", [])
    known = [known[i] for i in rng.permutation(len(known))][:n_known]
    n_near_real = min(len(others), n_near // 2)
    near_codes = c_names[n_codes:n_codes + n_near - n_near_real]
    code_q = [f"What is the access code of {s}?" for s in c_names[:n_codes]]
    return {
        "prompts": [_prompt(f.question) for f in real] + [_prompt(q) for q in code_q],
        "answers": [f.object for f in real] + list(c_answers[:n_codes]),
        "kind": ["Unknown fact"] * n_real + ["random code"] * n_codes,
        "near_prompts": [_prompt(f.question) for f in others[:n_near_real]]
                        + [_prompt(f"What is the access code of {s}?") for s in near_codes],
        "near_kind": ["real"] * n_near_real + ["code"] * len(near_codes),
        "unrelated_prompts": [f"Q: {q}\nA:" for q in UNRELATED_QUESTIONS[:n_unrelated]],
        "known_prompts": [_prompt(f.question) for f in known],
        "known_aliases": [list(f.aliases) or [f.object] for f in known],
        "texts": list(HELD_OUT_TEXT),
        "slick_counts": {c: len(v) for c, v in by_cat.items()},
    }


def _is_correct(pred: str, aliases: Sequence[str]) -> bool:
    return any(exact_match(pred, a) for a in aliases)


@torch.no_grad()
def fact_scores(model, tok, prompts: Sequence[str], answers: Sequence[str], *,
                batch_size: int = 32) -> tuple[list[bool], list[float]]:
    """Per fact: exact recall and the largest answer-token loss (nats), in one pass.

    Recall is teacher-forced: every answer token (and the closing newline) is
    the argmax given the prompt and the answer so far -- exactly the condition
    under which greedy decoding reproduces the answer and stops.
    """

    if not prompts:
        return [], []
    losses, hits = answer_token_losses(model, tok, prompts, answers, batch_size=batch_size,
                                       return_hits=True)
    return [bool(h.all()) for h in hits], [float(x.max()) for x in losses]


@torch.no_grad()
def snapshot(model, tok, data: dict[str, Any], *, facts: bool = True) -> dict[str, Any]:
    """What ``model`` does on the chapter's facts and probes (a JSON-able dict).

    Keys: ``recalled`` and ``max_loss`` per memorized fact (exact recall, see
    :func:`fact_scores`; largest answer-token loss in nats), ``unrelated`` and ``near``
    (greedy answers), ``known`` (greedy answers) and ``known_acc``,
    ``text_loss`` (mean next-token loss on the held-out text, nats).
    """

    out: dict[str, Any] = {}
    if facts:
        out["recalled"], out["max_loss"] = fact_scores(model, tok, data["prompts"],
                                                       data["answers"])
    out["unrelated"] = greedy_answers(model, tok, data["unrelated_prompts"],
                                      max_new_tokens=NEW_TOKENS, batch_size=32)
    out["near"] = greedy_answers(model, tok, data["near_prompts"], max_new_tokens=NEW_TOKENS,
                                 batch_size=32)
    out["known"] = greedy_answers(model, tok, data["known_prompts"],
                                  max_new_tokens=NEW_TOKENS, batch_size=32)
    out["known_acc"] = float(np.mean([_is_correct(p, a) for p, a in
                                      zip(out["known"], data["known_aliases"])]))
    out["text_loss"] = float(text_loss(model, tok, data["texts"]))
    return out


def unchanged_fraction(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of greedy answers that are identical before and after."""
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must be non-empty and of equal length, got "
                         f"{len(before)} and {len(after)}")
    return float(np.mean([a == b for a, b in zip(before, after)]))


def compare(base: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Before/after summary: recall, unrelated / near unchanged, HighlyKnown and text deltas."""
    return {"recall": float(np.mean(after["recalled"])),
            "max_loss": float(max(after["max_loss"])),
            "unrelated_unchanged": unchanged_fraction(base["unrelated"], after["unrelated"]),
            "near_unchanged": unchanged_fraction(base["near"], after["near"]),
            "known_acc_before": base["known_acc"], "known_acc_after": after["known_acc"],
            "known_acc_drop": base["known_acc"] - after["known_acc"],
            "text_loss_before": base["text_loss"], "text_loss_after": after["text_loss"],
            "text_loss_delta": after["text_loss"] - base["text_loss"]}


def memorize_mome(data: dict[str, Any], config, *, max_epochs: int = 40, negatives=None,
                  seed: int = 0, lr_decay: float | None = None, loss_floor: float | None = None,
                  progress: bool = True):
    """Fresh SmolLM2 + memory experts (``config``), memory-tuned on the chapter's facts.

    Returns ``(model, tokenizer, MemorizeResult)``.
    """

    model, tok = load_smollm2()
    add_memory_experts(model, config, tokenizer=tok)
    res = memorize(model, tok, data["prompts"], data["answers"], max_epochs=max_epochs,
                   negatives=negatives, seed=seed, lr_decay=lr_decay, loss_floor=loss_floor,
                   progress=progress)
    return model, tok, res


def finetune_to_recall(data: dict[str, Any], trainable: str, *, lr: float,
                       max_epochs: int = 40, batch_size: int = 4, seed: int = 0,
                       max_seconds: float | None = None, progress: bool = True):
    """Fresh SmolLM2 fine-tuned (``trainable``: "top:2", "lora:8", ...) until every fact is
    memorized or ``max_epochs`` run out.

    Memorized means what memory tuning (:func:`lamini_lite.mome.memorize`)
    stops on: every fact recalled exactly under teacher forcing and every
    answer token's loss below ln 2, checked after each epoch. Top-layer
    fine-tuning reuses the frozen layers' states, as memory tuning does
    (``cache_frozen_prefix``), so wall times compare like with like.
    Returns ``(model, tok, info)``."""
    model, tok = load_smollm2()
    state = {"recall": 0.0}
    t0 = time.perf_counter()
    prefix = frozen_prefix_for(model, tok, data["prompts"], data["answers"], trainable)

    def stop(epoch, history):
        if prefix is not None:
            losses, hits = prefix.token_scores(tok)
            ok, worst = [bool(h.all()) for h in hits], [float(x.max()) for x in losses]
        else:
            ok, worst = fact_scores(model, tok, data["prompts"], data["answers"])
        state["recall"] = float(np.mean(ok))
        out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        return out_of_time or (state["recall"] == 1.0 and max(worst) < math.log(2))

    hist = finetune_qa(model, tok, data["prompts"], data["answers"], epochs=max_epochs, lr=lr,
                       batch_size=batch_size, trainable=trainable, seed=seed,
                       on_epoch_end=stop, cache_frozen_prefix=prefix or True,
                       progress=progress, desc=trainable)
    info = {"epochs": hist.epochs_run, "seconds": time.perf_counter() - t0,
            "params_updated": int(hist.n_trainable), "recall": state["recall"]}
    return model, tok, info


def _data_key(data: dict[str, Any]) -> dict[str, Any]:
    return {"data": fingerprint({k: v for k, v in data.items() if k != "slick_counts"})}


def subset(data: dict[str, Any], n: int) -> dict[str, Any]:
    """``data`` with only ``n`` of its facts (half real, half codes where possible)."""
    if not 1 <= n <= len(data["prompts"]):
        raise ValueError(f"n must be in [1, {len(data['prompts'])}], got {n}")
    real = [i for i, k in enumerate(data["kind"]) if k != "random code"]
    codes = [i for i, k in enumerate(data["kind"]) if k == "random code"]
    k = max(min(len(real), n // 2), n - len(codes))
    pick = sorted(real[:k] + codes[:n - k])
    out = dict(data)
    for key in ("prompts", "answers", "kind"):
        out[key] = [data[key][i] for i in pick]
    return out


def _mome_cost(res) -> dict[str, Any]:
    return {"epochs": res.epochs, "seconds": res.seconds, "params_updated": res.params_updated,
            "rows_written": res.rows_written, "optimizer_bytes": res.optimizer_bytes,
            "loss_history": res.loss_history, "recall_history": res.recall_history}


def base_snapshot(data: dict[str, Any]) -> dict[str, Any]:
    """The plain SmolLM2's :func:`snapshot` on the probes (cached; facts skipped).

    Keyed on the probes only, so subsets of the same facts share it."""
    def compute():
        model, tok = load_smollm2()
        return snapshot(model, tok, data, facts=False)

    probes = {k: v for k, v in data.items() if k not in ("prompts", "answers", "kind",
                                                           "slick_counts")}
    return cached("mome_base_snapshot", {"probes": fingerprint(probes), "new_tokens": NEW_TOKENS,
                                         "version": 2}, compute)


def set_gate(model, gate: str, threshold: float | None = None) -> None:
    """Change the gate of every memory layer of ``model`` (inference-time only).

    ``threshold`` is the ``match_threshold`` for ``gate="match"`` and the
    ``gate_threshold`` for ``gate="written"``.
    """
    mome = get_memory(model)
    changes: dict[str, Any] = {"gate": gate}
    if threshold is not None:
        changes["match_threshold" if gate == "match" else "gate_threshold"] = threshold
    cfg = dataclasses.replace(mome.config, **changes)
    mome.config = cfg
    for m in mome.layers.values():
        m.config = cfg


@torch.no_grad()
def match_profile(model, tok, data: dict[str, Any], base: dict[str, Any]) -> dict[str, list]:
    """Key-match scores that decide the match gate, per fact and per probe.

    ``fact_min``: per memorized fact, the lowest match score over its answer
    positions (the gate opens at all of them iff threshold <= this).
    ``near_max`` / ``unrelated_max`` / ``known_max``: per probe, the highest
    score over its prompt and the plain model's own answer (if the gate opens
    nowhere there, the memory adds exactly zero and the answer cannot change).
    ``text_max``: per held-out text, the highest score over its tokens.
    Only the backbone below the memory runs.
    """

    mome = get_memory(model)
    idx = min(mome.layer_ids)
    mem = mome.layers[idx]

    def scores(prompts, answers, answer_only):
        out = []
        for s in range(0, len(prompts), 32):
            pairs = [encode_qa(tok, p, a) for p, a in zip(prompts[s:s + 32],
                                                          answers[s:s + 32])]
            batch = collate_qa(tok, pairs)
            h = layer_output(model, idx, batch)
            lab = batch["labels"]
            nxt = torch.cat([lab[:, 1:], torch.full_like(lab[:, :1], -100)], dim=1)
            sel = (nxt != -100) if answer_only else batch["attention_mask"].bool()
            sc = mem.match_score(h.reshape(-1, h.shape[-1])).view(h.shape[:2])
            for j in range(h.shape[0]):
                v = sc[j][sel[j]]
                out.append(float(v.min() if answer_only else v.max()))
        return out

    res = {"fact_min": scores(data["prompts"], data["answers"], True)}
    for key in ("near", "unrelated", "known"):
        res[f"{key}_max"] = scores(data[f"{key}_prompts"], [a or "." for a in base[key]], False)
    res["text_max"] = scores(list(data["texts"]), ["."] * len(data["texts"]), False)
    return res


def memorize_study(data: dict[str, Any], config, *, max_epochs: int = 40, seed: int = 0,
                   lr_decay: float | None = 0.5, loss_floor: float | None = 0.1,
                   progress: bool = True) -> dict[str, Any]:
    """Points 1 and 3: memory-tune all facts, then measure (cached).

    ``lr_decay`` and ``loss_floor``: see :func:`lamini_lite.mome.memorize`.
    The defaults are this book's protocol in every profile: halve the step
    whenever recall falls back, and stop pushing answer tokens already below
    0.1 nats (p > 0.9). Both matter only with many facts sharing rows (1,000
    facts at 2^20 rows).

    Returns ``cost`` (epochs, seconds, rows, optimizer bytes, curves),
    ``greedy_recalled`` (memorize's final greedy check), ``snapshot`` under the
    config's gate and ``snapshot_nogate`` with the gate off (same memory),
    ``match`` (:func:`match_profile`) and the ``base`` snapshot.
    """
    inputs = {**_data_key(data), "config": config.to_json(), "max_epochs": max_epochs,
              "seed": seed, "new_tokens": NEW_TOKENS, "lr_decay": lr_decay,
              "loss_floor": loss_floor, "version": 3}

    def compute():
        base = base_snapshot(data)
        model, tok, res = memorize_mome(data, config, max_epochs=max_epochs, seed=seed,
                                        lr_decay=lr_decay, loss_floor=loss_floor,
                                        progress=progress)
        snap = snapshot(model, tok, data)
        prof = match_profile(model, tok, data, base)
        set_gate(model, "none")
        nogate = snapshot(model, tok, data)
        return {"cost": _mome_cost(res), "greedy_recalled": list(res.recalled),
                "train_max_loss": list(res.max_token_loss), "snapshot": snap,
                "snapshot_nogate": nogate, "match": prof, "base": dict(base)}

    return cached("mome_memorize", inputs, compute)


@torch.no_grad()
def weights_changed(model, reference=None) -> int:
    """How many weights of ``model`` differ from ``reference`` (default: a fresh SmolLM2).

    LoRA adapters are merged first (in place), so LoRA counts as what it does to
    the model: a dense rank-r change of every matrix it adapts, not the size of
    its adapters. Memory experts add their written values
    (:meth:`lamini_lite.mome.MoME.params_updated`) to the backbone's changes.
    Parameters are matched by name; tied weights count once.
    """

    if reference is None:
        reference = load_smollm2()[0]
    if has_lora(model):
        merge_lora(model)
    mine = dict(model.named_parameters())
    changed = 0
    for name, ref in reference.named_parameters():
        if name not in mine or mine[name].shape != ref.shape:
            raise ValueError(f"model and reference differ in parameter {name!r}: pass the "
                             "backbone the model was trained from as reference")
        changed += int((mine[name] != ref).sum())
    try:
        changed += get_memory(model).params_updated()
    except ValueError:
        pass  # no memory experts attached
    return changed


def baseline_study(data: dict[str, Any], trainable: str, *, lr: float, max_epochs: int = 40,
                   seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """One fine-tuning baseline of :func:`forgetting_study`, on its own (cached).

    :func:`finetune_to_recall`, then :func:`snapshot` of the tuned model and
    :func:`weights_changed`. Returns ``{"snapshot", "cost"}``; cost holds epochs,
    wall seconds, recall, ``params_updated`` (trainable parameters) and
    ``weights_changed``.
    """
    inputs = {**_data_key(data), "trainable": trainable, "lr": lr, "max_epochs": max_epochs,
              "seed": seed, "new_tokens": NEW_TOKENS, "batch_size": 4, "version": 1}

    def compute():
        model, tok, info = finetune_to_recall(data, trainable, lr=lr, max_epochs=max_epochs,
                                              seed=seed, progress=progress)
        snap = snapshot(model, tok, data)
        info["weights_changed"] = weights_changed(model)
        return {"snapshot": snap, "cost": info}

    return cached("mome_baseline", inputs, compute)


def forgetting_study(data: dict[str, Any], config, *, max_epochs: int = 40,
                     baselines: Sequence[Sequence] = (("top:2", 3e-4),),
                     seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Point 2: MoME vs fine-tuning baselines at equal recall on the same facts (cached).

    ``baselines`` are ``(trainable, lr)`` pairs for :func:`finetune_to_recall`.
    Returns ``{"base": snapshot, "methods": {name: {"snapshot", "summary", "cost"}}}``
    where cost holds epochs, wall seconds and parameters updated. "MoME, no gate"
    is the same memory read with the gate off. Each baseline is its own
    :func:`baseline_study` (cached on its own, so baselines can be added or
    computed in parallel processes).
    """
    inputs = {**_data_key(data), "config": config.to_json(), "max_epochs": max_epochs,
              "baselines": [list(b) for b in baselines], "seed": seed,
              "new_tokens": NEW_TOKENS, "batch_size": 4, "version": 6}

    def compute():
        base = base_snapshot(data)
        # the memory side is memorize_study's run (a cache hit for the same facts)
        mem = memorize_study(data, config, max_epochs=max_epochs, seed=seed, progress=progress)
        # the backbone is frozen, so what changed is exactly the written values
        cost = {**mem["cost"], "weights_changed": mem["cost"]["params_updated"]}
        methods = {"MoME": {"snapshot": mem["snapshot"],
                            "summary": compare(base, mem["snapshot"]), "cost": cost},
                   "MoME, no gate": {"snapshot": mem["snapshot_nogate"],
                                     "summary": compare(base, mem["snapshot_nogate"]),
                                     "cost": cost}}
        for trainable, lr in baselines:
            run = baseline_study(data, trainable, lr=lr, max_epochs=max_epochs, seed=seed,
                                 progress=progress)
            methods[f"fine-tune {trainable}"] = {
                "snapshot": run["snapshot"], "summary": compare(base, run["snapshot"]),
                "cost": run["cost"]}
        return {"base": dict(base), "methods": methods}

    return cached("mome_forgetting", inputs, compute)


@torch.no_grad()
def row_overlap(data: dict[str, Any], *, n_keys: int, norms: Sequence[str] = ("none", "layernorm",
                                                                               "batchnorm"),
                seed: int = 0) -> list[dict[str, Any]]:
    """Point 5b: row overlap before any training, per query normalization (cached).

    For each normalization, the rows selected at the facts' answer-predicting
    positions are "fact rows". Reports how many distinct rows the facts touch,
    the share of each fact's rows also touched by another fact (mean over
    facts), and the share of selection weight on unrelated text (held-out
    text + unrelated questions) that lands on fact rows -- what memory tuning
    would disturb outside the facts.
    """
    inputs = {**_data_key(data), "n_keys": n_keys, "norms": list(norms), "seed": seed,
              "config": MoMEConfig.preset("book").to_json(), "version": 2}

    def compute():

        model, tok = load_smollm2()
        idx = add_memory_experts(model, MoMEConfig.preset("book", n_keys=n_keys)
                                 ).layer_ids[0]  # only the layer index: no calibration
        remove_memory_experts(model)
        # The backbone's states at the memory layer do not depend on the selector:
        # computed once, then every normalization selects rows from them.
        fact_states, text_states = [], []
        for s in range(0, len(data["prompts"]), 32):
            pairs = [encode_qa(tok, p, a) for p, a in zip(data["prompts"][s:s + 32],
                                                          data["answers"][s:s + 32])]
            batch = collate_qa(tok, pairs)
            h = layer_output(model, idx, batch)
            lab = batch["labels"]
            nxt = torch.cat([lab[:, 1:], torch.full_like(lab[:, :1], -100)], dim=1)
            fact_states += [h[j][nxt[j] != -100] for j in range(h.shape[0])]
        for t in list(data["texts"]) + list(data["unrelated_prompts"]):
            enc = tok(t, return_tensors="pt", add_special_tokens=False)
            text_states.append(layer_output(model, idx, {
                "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0])
        out = []
        for norm in norms:
            cfg = MoMEConfig.preset("book", n_keys=n_keys, query_norm=norm, gate="none",
                                    seed=seed)
            mem = add_memory_experts(model, cfg, tokenizer=tok).layers[idx]
            per_fact = [set(mem.select(h)[0].reshape(-1).tolist()) for h in fact_states]
            counts: dict[int, int] = {}
            for rows in per_fact:
                for r in rows:
                    counts[r] = counts.get(r, 0) + 1
            shared = [np.mean([counts[r] > 1 for r in rows]) for rows in per_fact]
            mask = torch.zeros(cfg.n_experts, dtype=torch.bool)
            mask[torch.tensor(sorted(counts))] = True
            w_on, w_all = 0.0, 0.0
            for h in text_states:
                rows, w, _ = mem.select(h)
                w_on += float((w * mask[rows]).sum())
                w_all += float(w.sum())
            out.append({"query_norm": norm, "experts": cfg.n_experts,
                        "fact_rows": len(counts),
                        "rows_per_fact": float(np.mean([len(r) for r in per_fact])),
                        "fact_fact_overlap": float(np.mean(shared)),
                        "text_weight_on_fact_rows": w_on / max(w_all, 1e-12)})
            remove_memory_experts(model)
        return {"rows": out}

    return cached("mome_overlap", inputs, compute)["rows"]


@torch.no_grad()
def lookup_scaling(log2_sizes, *, tokens: int = 1024, hidden: int = 576, heads: int = 4,
                   topk: int = 4, key_dim: int = 256, written_rows: int = 4096,
                   repeats: int = 3, seed: int = 0) -> list[dict]:
    """Selection + lookup time per token and memory footprint for N = 2**s experts.

    ``s`` must be even (N = n_keys**2). ``written_rows`` rows hold values, as
    after memorizing a few hundred facts; the dense equivalent (all N rows) is
    reported beside the sparse store's actual size.
    """
    out = []
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(seed))
    for s in log2_sizes:
        if s % 2:
            raise ValueError(f"log2 sizes must be even (N = n_keys**2), got {s}")
        cfg = MoMEConfig(n_keys=2 ** (s // 2), heads=heads, topk=min(topk, 2 ** (s // 2)),
                         key_dim=key_dim, query_norm="none", gate="none", seed=seed)
        mem = MemoryLayer(cfg, hidden)
        mem.allocate(torch.randperm(cfg.n_experts)[:min(written_rows, cfg.n_experts)])
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            rows, w, _ = mem.select(x)
            memory_lookup(mem.values, mem.row_map[rows], w)
            best = min(best, time.perf_counter() - t)
        keys = sum(getattr(mem, n).numel() * getattr(mem, n).element_size()
                   for n in ("proj", "subkeys", "row_map"))
        out.append({"log2_experts": s, "experts": cfg.n_experts,
                    "us_per_token": 1e6 * best / tokens,
                    "selector_mb": keys / 2 ** 20,
                    "store_mb": mem.n_used * hidden * 4 / 2 ** 20,
                    "dense_values_mb": cfg.n_experts * hidden * 4 / 2 ** 20})
    return out
