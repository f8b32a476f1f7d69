"""Chapter 1: generalization vs memorization, measured.

Zhang et al. (2017) showed that image classifiers fit *random* labels to zero
training loss, only a small constant factor slower than true labels, so
small training loss says nothing about generalization. Li et al. (2024)
transplanted the test to LLMs: fine-tuned on questions whose answers are
random strings, Llama 3 memorizes them while still answering other questions
sensibly. This module turns both claims and the paper's loss-threshold
argument into measurements:

* :func:`randomization_test` -- fine-tune the same backbone on the same
  questions with a share ``noise`` of the answers replaced by random ones
  (0 .. 100 %), and after every epoch measure the training facts (per-token
  answer losses under teacher forcing; the greedy answer line, decoded to its
  newline, and exact recall) and, before and after, held-out quantities that
  do not involve them (QA loss and accuracy on unrelated facts, agreement
  with the base model's answers, the loss of never-read statements);
* :func:`epochs_to_criterion` -- how many epochs until every training fact
  is recalled exactly (or the loss is below a level): the "slowdown factor"
  of random answers;
* :func:`threshold_check`, :func:`threshold_points` and :func:`recall_vs_loss`
  -- the loss threshold: if every answer token of a fact has loss
  ``-log p < ln 2`` then ``p > 1/2``, so the correct token is the unique
  argmax at every step and greedy decoding must reproduce the answer. Recall
  is measured by greedy decoding (never read off the teacher-forced argmax,
  which would make the check an identity) at every decoded checkpoint, and
  shown through the threshold region;
* :func:`real_model_test` and :func:`real_threshold_points` -- the same on
  SmolLM2 with its body frozen and a few top layers (or a LoRA adapter)
  trained, a before/after table in the spirit of the paper's Table 1, and
  the threshold on its random strings and on real facts' true answers;
  :class:`FrozenBottomDecoder` keeps greedy decoding at every checkpoint
  cheap when only the top layers learn.

Sizes come from ``sizes("memorization")``.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .cache import cached
from .facts import Fact, exact_match, normalize_answer, qa_prompt, with_random_answers
from .finetune import decoder_layers, finetune_qa, frozen_prefix_for
from .lm import (STOP, answer_token_losses, greedy_answers, left_pad, newline_token_ids,
                 position_ids)
from .profiles import register_sizes

__all__ = ["LN2", "DECODE_SLACK", "decode_cap", "fact_measurements", "FrozenBottomDecoder",
           "threshold_check", "recall_vs_loss", "epochs_to_criterion", "text_loss",
           "text_losses", "synthetic_setup", "replay_items", "unseen_statements", "memorized",
           "randomization_test", "noise_summary", "threshold_points", "heldout_points",
           "real_model_test", "real_threshold_points", "training_viewer",
           "plot_training_story"]

LN2 = math.log(2.0)
# tokens greedy decoding may write past the longest answer and its newline
DECODE_SLACK = 8

register_sizes(
    "memorization",
    # Synthetic track: n_train facts memorized, n_unrelated held-out facts (and as many
    # never-read statements) measured, noise = shares of random answers, answer_len =
    # tokens of a random string, epochs = the most epochs (training stops once every
    # fact is memorized), replay = corpus items mixed into every epoch (0: the
    # questions alone), greedy_every = epochs between greedy decodings of the trained
    # answers (1: every checkpoint), seeds = seeds every claim is checked on.
    # real_*: the SmolLM2 run of real_model_test (random strings of real_answer_len
    # characters; real_replay questions answered by the base model mixed in).
    ci={"n_train": 32, "n_unrelated": 96, "noise": [0.0, 0.5, 1.0], "answer_len": 2,
        "epochs": 200, "lr": 1e-4, "batch_size": 16, "trainable": "all", "replay": 0,
        "greedy_every": 1, "seeds": [0],
        "real_n_train": 8, "real_n_unrelated": 24, "real_epochs": 40, "real_lr": 3e-4,
        "real_trainable": "top:2", "real_answer_len": 8, "real_batch_size": 8,
        "real_replay": 48, "real_greedy_every": 2},
    book={"n_train": 48, "n_unrelated": 96, "noise": [0.0, 0.25, 0.5, 0.75, 1.0],
          "answer_len": 2, "epochs": 150, "lr": 1e-4, "batch_size": 16, "trainable": "all",
          "replay": 0, "greedy_every": 1, "seeds": [0, 1, 2],
          "real_n_train": 16, "real_n_unrelated": 24, "real_epochs": 40, "real_lr": 3e-4,
          "real_trainable": "top:2", "real_answer_len": 8, "real_batch_size": 8,
          "real_replay": 64, "real_greedy_every": 1},
    full={"n_train": 256, "n_unrelated": 1000, "noise": [0.0, 0.25, 0.5, 0.75, 1.0],
          "answer_len": 4, "epochs": 400, "lr": 1e-4, "batch_size": 32, "trainable": "all",
          "replay": 0, "greedy_every": 1, "seeds": [0, 1, 2, 3, 4],
          "real_n_train": 100, "real_n_unrelated": 100, "real_epochs": 100, "real_lr": 2e-4,
          "real_trainable": "lora:32", "real_answer_len": 32, "real_batch_size": 16,
          "real_replay": 200, "real_greedy_every": 5},
)


# --------------------------------------------------------------------------- measurements


def decode_cap(tokenizer, answers: Sequence[str], *, slack: int = DECODE_SLACK) -> int:
    """How many tokens greedy decoding may write for ``answers``: the longest
    answer's tokens, its closing newline and ``slack`` more.

    Decoding stops at the newline; the cap only bounds a line that does not
    end. It lies well past every answer's length, so a model that writes the
    answer and then goes on is *not* counted as recalling it (no truncation
    at the answer's length).
    """
    if not isinstance(slack, int) or isinstance(slack, bool) or slack < 1:
        raise ValueError(f"slack must be an int >= 1, got {slack!r}")
    longest = max((len(tokenizer(" " + a, add_special_tokens=False)["input_ids"])
                   for a in answers), default=1)
    return longest + 1 + slack


def fact_measurements(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                      batch_size: int = 64, max_new_tokens: int | None = None,
                      greedy: bool = True) -> dict[str, list]:
    """Per fact: answer-token losses and whether greedy decoding reproduces the answer.

    Returns a dict of lists (one entry per fact): ``token_losses`` (nats, the
    answer's tokens and its closing newline, under teacher forcing),
    ``max_loss``, ``mean_loss``, ``argmax`` (every answer token is the argmax
    under teacher forcing), ``prediction`` (the greedy answer line, decoded
    in batches to its newline) and ``recalled`` (exact match of the
    prediction with the answer, :func:`~lamini_lite.facts.exact_match`).
    ``max_new_tokens`` bounds a line that does not end; default
    :func:`decode_cap` (the longest answer + newline + 8 tokens).
    With ``greedy=False`` nothing is decoded: ``prediction`` and ``recalled``
    are ``None`` (the teacher-forced ``argmax`` is no measurement of recall:
    it cannot see another tokenization of the same text, and the ln 2
    argument makes it follow from the losses).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got "
                         f"{len(prompts)} and {len(answers)}")
    losses, hits = answer_token_losses(model, tokenizer, prompts, answers, batch_size=batch_size,
                                       return_hits=True)
    out = _teacher_forced(losses, hits)
    if not greedy:
        return out
    return {**out, **_decoded(model, tokenizer, prompts, answers, batch_size=batch_size,
                              max_new_tokens=max_new_tokens)}


def _decoded(model, tokenizer, prompts, answers, *, batch_size: int = 64,
             max_new_tokens: int | None = None) -> dict[str, list]:
    # greedy answer lines (batched, KV cache) and their exact match with the answers
    if max_new_tokens is None:
        max_new_tokens = decode_cap(tokenizer, answers)
    preds = greedy_answers(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    return {"prediction": preds,
            "recalled": [bool(exact_match(p, a)) for p, a in zip(preds, answers)]}


def _teacher_forced(losses, hits) -> dict[str, list]:
    # fact_measurements' record without decoding: losses and the teacher-forced argmax
    return {"token_losses": [[round(float(v), 6) for v in x] for x in losses],
            "max_loss": [float(x.max()) for x in losses],
            "mean_loss": [float(x.mean()) for x in losses],
            "argmax": [bool(h.all()) for h in hits],
            "prediction": [None] * len(losses), "recalled": [None] * len(losses)}


class FrozenBottomDecoder:
    """Greedy decoding of fixed prompts, again and again, while only the layers
    from ``first`` up learn (``trainable="top:N"``).

    The frozen layers' keys and values over each prompt never change, so they
    are computed once (one full forward per batch, here); each :meth:`answers`
    call runs only layers ``first..`` over the prompt, from the cached hidden
    states entering layer ``first``, and then decodes new tokens through the
    whole model with its KV cache, exactly as
    :func:`~lamini_lite.lm.greedy_answers` does (same left padding, positions
    and stop rule; the same answers up to float rounding). Llama-family
    models (``model.model.norm``, ``model.lm_head``).
    """

    def __init__(self, model, tokenizer, prompts: Sequence[str], first: int, *,
                 batch_size: int = 32):
        n_layers = len(decoder_layers(model))
        if not 0 < first < n_layers:
            raise ValueError(f"first must be in [1, {n_layers - 1}], got {first!r}")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        self.model, self.tokenizer, self.first = model, tokenizer, first
        self.n = len(prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batches = []
        layer = decoder_layers(model)[first]
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                enc = [tokenizer(p, add_special_tokens=False)["input_ids"]
                       for p in prompts[start:start + batch_size]]
                ids, mask = left_pad(enc, pad)
                box: dict[str, Any] = {}

                def grab(module, args, kwargs, box=box):
                    box["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
                    box["kw"] = {k: v for k, v in kwargs.items()
                                 if k not in ("hidden_states", "past_key_values")}

                handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
                try:
                    with torch.no_grad():
                        out = model(input_ids=ids, attention_mask=mask,
                                    position_ids=position_ids(mask), use_cache=True,
                                    logits_to_keep=1)
                finally:
                    handle.remove()
                kv = [(cl.keys.clone(), cl.values.clone())
                      for cl in out.past_key_values.layers[:first]]
                self.batches.append((mask, box["h"], box["kw"], kv))
        finally:
            model.train(was_training)

    @torch.no_grad()
    def answers(self, max_new_tokens: int) -> list[str]:
        """The greedy answer line of every prompt under the model's current weights."""
        from transformers import DynamicCache

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        stop_ids = torch.tensor(sorted(newline_token_ids(tok)), dtype=torch.long)
        layers = decoder_layers(model)
        out_text: list[str] = []
        try:
            for mask, h, kw, kv in self.batches:
                cache = DynamicCache()
                for i, (k, v) in enumerate(kv):
                    cache.update(k, v, i)
                x = h
                for layer in layers[self.first:]:
                    x = layer(x, past_key_values=cache, **kw)
                    x = x[0] if isinstance(x, tuple) else x
                logits = model.lm_head(model.model.norm(x[:, -1:, :]))
                generated = []
                done = torch.zeros(len(mask), dtype=torch.bool)
                for _ in range(max_new_tokens):
                    nxt = logits[:, -1, :].argmax(-1)
                    generated.append(nxt)
                    done |= torch.isin(nxt, stop_ids)
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], dim=1)
                    pos = mask.sum(-1, keepdim=True) - 1
                    logits = model(input_ids=nxt[:, None], attention_mask=mask,
                                   position_ids=pos, past_key_values=cache,
                                   use_cache=True).logits
                for row in torch.stack(generated, dim=1).tolist():
                    text = tok.decode(row, skip_special_tokens=True)
                    out_text.append(text.split(STOP, 1)[0].strip())
        finally:
            model.train(was_training)
        return out_text


def threshold_check(max_losses: Sequence[float], recalled: Sequence[bool],
                    threshold: float = LN2) -> dict[str, Any]:
    """Check "every answer token has loss < ``threshold`` => recalled" on many points.

    Returns counts: ``n`` points, ``n_below`` (max token loss < threshold),
    ``n_below_recalled``, ``violations`` (indices below the threshold but not
    recalled: the implication says there are none for ``threshold = ln 2``),
    ``share_below_recalled`` and ``n_above``/``n_above_recalled`` (above the
    threshold recall is possible but not guaranteed).
    """
    if len(max_losses) != len(recalled):
        raise ValueError(f"max_losses and recalled must have the same length, got "
                         f"{len(max_losses)} and {len(recalled)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    # positions, not labels: a pandas Series may carry a non-unique index
    max_losses = np.asarray(max_losses, dtype=float).tolist()
    recalled = np.asarray(recalled, dtype=bool).tolist()
    below = [i for i, v in enumerate(max_losses) if v < threshold]
    above = [i for i, v in enumerate(max_losses) if v >= threshold]
    violations = [i for i in below if not recalled[i]]
    return {"n": len(max_losses), "n_below": len(below),
            "n_below_recalled": len(below) - len(violations), "violations": violations,
            "share_below_recalled": (1 - len(violations) / len(below)) if below else float("nan"),
            "n_above": len(above), "n_above_recalled": sum(bool(recalled[i]) for i in above)}


def recall_vs_loss(losses: Sequence[float], recalled: Sequence[bool],
                   edges: Sequence[float] | None = None):
    """Recall rate per loss bin, as a pandas DataFrame.

    ``edges`` default to factor-of-2 bins ``ln 2 * 2**k`` for ``k = -8 .. 4``
    (0.0027 to 11 nats), so ``ln 2`` is an edge. Columns: ``low``, ``high``,
    ``center`` (geometric), ``n``, ``recall`` and its 95% Wilson interval
    ``recall_low``, ``recall_high``. Empty bins are dropped.
    """
    import pandas as pd

    from .stats import wilson_interval

    if len(losses) != len(recalled):
        raise ValueError(f"losses and recalled must have the same length, got "
                         f"{len(losses)} and {len(recalled)}")
    if edges is None:
        edges = [LN2 * 2.0 ** k for k in range(-8, 5)]
    edges = list(edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be increasing with at least 2 values, got {edges!r}")
    x = np.asarray(losses, dtype=float)
    y = np.asarray(recalled, dtype=float)
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        sel = (x >= lo) & (x < hi)
        if sel.any():
            ci = wilson_interval(int(y[sel].sum()), int(sel.sum()))
            rows.append({"low": lo, "high": hi, "center": math.sqrt(lo * hi),
                         "n": int(sel.sum()), "recall": float(y[sel].mean()),
                         "recall_low": ci.low, "recall_high": ci.high})
    return pd.DataFrame(rows)


def epochs_to_criterion(curve: Sequence[float], target: float, *, above: bool = True,
                        epochs: Sequence[int] | None = None) -> int | None:
    """First epoch at which ``curve`` reaches ``target`` (and stays there to the end).

    ``above=True`` means "value >= target" (e.g. recall 1.0); ``False`` means
    "value <= target" (e.g. a loss level). ``epochs`` labels the entries of
    ``curve`` (default 1, 2, ...). Returns None if it is never reached for good.
    """
    curve = list(curve)
    labels = list(epochs) if epochs is not None else list(range(1, len(curve) + 1))
    if len(labels) != len(curve):
        raise ValueError("epochs must label every entry of curve")
    ok = [(v >= target) if above else (v <= target) for v in curve]
    if not ok or not ok[-1]:
        return None
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    return labels[i]


# --------------------------------------------------------------------------- synthetic track


def text_loss(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) of ``texts`` after their first word.

    A held-out *text* loss, the LM analogue of test error: each text is split
    after its first word, which serves as the prompt; the rest (and a closing
    newline) is scored with :func:`~lamini_lite.lm.answer_token_losses`.
    """
    return float(torch.cat(_text_token_losses(model, tokenizer, texts,
                                              batch_size=batch_size)).mean())


def text_losses(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64
                ) -> tuple[list[float], list[int]]:
    """Per text: the summed next-token loss (nats) after its first word, and the
    number of tokens scored, as in :func:`text_loss` (whose value is
    ``sum(sums) / sum(counts)``). For intervals that resample the texts."""
    losses = _text_token_losses(model, tokenizer, texts, batch_size=batch_size)
    return [float(x.double().sum()) for x in losses], [len(x) for x in losses]


def _text_token_losses(model, tokenizer, texts, *, batch_size: int = 64):
    heads, tails = [], []
    for t in texts:
        head, _, tail = t.strip().partition(" ")
        if not tail:
            raise ValueError(f"texts need at least two words, got {t!r}")
        heads.append(head)
        tails.append(tail)
    return answer_token_losses(model, tokenizer, heads, tails, batch_size=batch_size)


def synthetic_setup(n_train: int, n_unrelated: int, *, seed: int = 0, profile: str | None = None,
                    backbone_seed: int = 0):
    """Backbone, tokenizer and the fact sets of the synthetic randomization test.

    Returns ``(model, tokenizer, world, train_facts, unrelated_facts)``: the
    pretrained synthetic backbone (:func:`lamini_lite.pretrain.load_backbone`
    with ``seed=backbone_seed``: the world, its pretraining and the data
    order), ``n_train`` facts whose QA pair was never in pretraining (drawn
    with ``seed``), and ``n_unrelated`` facts about *other* people (the
    held-out measures: their questions share nothing with the training facts
    but the format).
    """
    from .pretrain import load_backbone

    model, tok, world, _ = load_backbone(seed=backbone_seed, profile=profile, progress=False)
    rng = random.Random(seed)
    train = rng.sample(world.held_out_facts, n_train)
    people = {f.subject for f in train}
    others = [f for f in world.facts if f.subject not in people]
    unrelated = rng.sample(others, n_unrelated)
    return model, tok, world, train, unrelated


def _noisy_facts(train: Sequence[Fact], noise: float, answer_len: int, seed: int,
                 world=None, kind: str = "code") -> list[Fact]:
    from .facts_synthetic import random_answer_variants
    return random_answer_variants(world, train, noise, seed=seed, kind=kind, length=answer_len)


def replay_items(world, exclude_subjects, n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pretraining-corpus items to mix into continued training, as (prompt, text) pairs.

    Continued training on the memorized facts *alone* is not what Zhang et al.
    or Li et al. did: their random labels sat inside an ordinary training set.
    Mixing a sample of the backbone's own corpus into every epoch reproduces
    that (continued pretraining with the new QA pairs added). Items that
    mention a subject in ``exclude_subjects`` (the people whose facts are
    memorized) are left out, so the corpus never gives the true answer away.
    Each item is split after its first word, the prompt, as in
    :func:`text_loss`. Drawn with ``seed``; fewer than ``n`` if the corpus is small.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n (replay items) must be an int >= 0, got {n!r}")
    exclude = set(exclude_subjects)
    pool = [c.strip() for c in world.corpus
            if " " in c.strip() and not any(s in c for s in exclude)]
    chosen = random.Random(seed).sample(pool, min(n, len(pool)))
    return [tuple(c.partition(" ")[::2]) for c in chosen]


def unseen_statements(world, exclude_subjects, n: int, *, seed: int = 0) -> list[str]:
    """``n`` statements the backbone never read: held-out text in the strict sense.

    Facts stated zero times in pretraining (exposure 0) about people not in
    ``exclude_subjects``; one statement each, cycling through the paraphrase
    templates. Their loss is the LM's *generalization error*: grammar and
    templates are predictable, the fact itself is not.
    """
    exclude = set(exclude_subjects)
    facts = [f for f in world.facts if f.meta["exposure"] == 0 and f.subject not in exclude]
    random.Random(seed).shuffle(facts)
    out = []
    for i, f in enumerate(facts[:n]):
        options = world.statements(f)
        out.append(options[i % len(options)])
    return out


def _all_memorized(e: dict[str, Any]) -> bool:
    # one evaluation: every training fact has all its answer tokens below ln 2 (and is
    # the argmax under teacher forcing, which that implies): the stop rule of training.
    # Whether greedy decoding then recalls every fact is measured, not assumed.
    return all(e["train_argmax"]) and max(e["train_max_loss"]) < LN2


def memorized(history) -> bool:
    """``on_epoch_end`` stop rule of the randomization test: every training fact
    has all its answer tokens below ``ln 2`` (the last evaluation)."""
    return bool(history.evals) and _all_memorized(history.evals[-1])


def _run_one(base, tok, train_facts: Sequence[Fact], unrelated: Sequence[Fact],
             base_unrelated_preds: Sequence[str], *, epochs: int, lr: float, batch_size: int,
             trainable: str, seed: int, progress: bool,
             texts: Sequence[str] | None = None,
             exemplars: Sequence[tuple[str, str]] = (),
             replay: Sequence[tuple[str, str]] = (),
             until_memorized: bool = False,
             held_out_every_epoch: bool = True,
             greedy_every: int = 1,
             cache_prefix: bool = False) -> dict[str, Any]:
    """Fine-tune a copy of ``base`` on ``train_facts`` (+ ``replay``), measured per epoch.

    Every epoch (and at epoch 0) the training facts' answer-token losses are
    scored under teacher forcing (``train_token_losses``, ``train_max_loss``,
    ``train_mean_loss``, ``train_argmax``). Their answers are *greedy-decoded*
    to the end of the line (``train_pred``, ``train_recalled``) at epoch 0,
    every ``greedy_every``-th epoch, the last epoch and the epoch at which the
    stop rule fires; elsewhere those two are ``None`` (``decoded`` says which).
    The held-out side (unrelated questions, ``texts``) is measured at every
    evaluation when ``held_out_every_epoch``, else before and after training.
    """
    if not isinstance(greedy_every, int) or isinstance(greedy_every, bool) or greedy_every < 1:
        raise ValueError(f"greedy_every must be an int >= 1, got {greedy_every!r}")
    model = copy.deepcopy(base)
    prompts = [qa_prompt(f.question, exemplars) for f in train_facts]
    answers = [f.object for f in train_facts]
    u_prompts = [qa_prompt(f.question, exemplars) for f in unrelated]
    u_answers = [f.object for f in unrelated]
    cap, u_cap = decode_cap(tok, answers), decode_cap(tok, u_answers)
    # Only the top layers train: the held-out pairs' frozen states are computed once too.
    u_prefix = (frozen_prefix_for(model, tok, u_prompts, u_answers, trainable)
                if cache_prefix and u_prompts else None)
    u_fast = (FrozenBottomDecoder(model, tok, u_prompts, u_prefix.first)
              if u_prefix is not None else None)

    def held_out(m):
        if u_prefix is None:
            u = fact_measurements(m, tok, u_prompts, u_answers)
        else:
            preds = u_fast.answers(u_cap)
            u = {**_teacher_forced(*u_prefix.token_scores(tok)), "prediction": preds,
                 "recalled": [bool(exact_match(p, a)) for p, a in zip(preds, u_answers)]}
        extra = {}
        if texts:
            sums, counts = text_losses(m, tok, texts)
            extra = {"text_loss": sum(sums) / sum(counts), "text_loss_sums": sums,
                     "text_token_counts": counts}
        return {**extra, "unrelated_pred": u["prediction"],
                "unrelated_loss": float(np.mean(u["mean_loss"])),
                "unrelated_max_loss": u["max_loss"],
                "unrelated_recalled": u["recalled"],
                "unrelated_accuracy": float(np.mean(u["recalled"])),
                "agreement": float(np.mean([normalize_answer(p) == normalize_answer(b) for p, b
                                            in zip(u["prediction"], base_unrelated_preds)]))}

    # Losses every epoch under teacher forcing -- through the frozen layers' cached
    # states when only the top layers train (one prefix over every training pair, facts
    # first, then replay, serves both the training steps and the scoring). Recall is
    # always greedy decoding of the whole model to the end of the line; when only the
    # top layers train, the frozen layers' keys and values over the prompts are
    # computed once (FrozenBottomDecoder).
    all_prompts = prompts + [p for p, _ in replay]
    all_answers = answers + [a for _, a in replay]
    prefix = (frozen_prefix_for(model, tok, all_prompts, all_answers, trainable)
              if cache_prefix else None)
    fast = FrozenBottomDecoder(model, tok, prompts, prefix.first) if prefix is not None else None
    facts = range(len(prompts))

    def decoded(m):
        if fast is None:
            return _decoded(m, tok, prompts, answers, max_new_tokens=cap)
        preds = fast.answers(cap)
        return {"prediction": preds,
                "recalled": [bool(exact_match(p, a)) for p, a in zip(preds, answers)]}

    def evaluate(m, epoch):
        t = (_teacher_forced(*prefix.token_scores(tok, facts)) if prefix is not None
             else fact_measurements(m, tok, prompts, answers, greedy=False))
        out = {"epoch": epoch,
               "train_token_losses": t["token_losses"], "train_argmax": t["argmax"],
               "train_max_loss": t["max_loss"], "train_mean_loss": t["mean_loss"]}
        stops = until_memorized and epoch > 0 and _all_memorized(out)
        decode = epoch == 0 or epoch % greedy_every == 0 or epoch == epochs or stops
        g = (decoded(m) if decode
             else {"prediction": [None] * len(prompts), "recalled": [None] * len(prompts)})
        out.update(decoded=decode, train_pred=g["prediction"], train_recalled=g["recalled"])
        if held_out_every_epoch or epoch == 0:
            out.update(held_out(m))
        return out

    stop = (lambda epoch, h: memorized(h)) if until_memorized else None
    hist = finetune_qa(model, tok, all_prompts, all_answers, epochs=epochs, lr=lr,
                       batch_size=batch_size, trainable=trainable, seed=seed,
                       eval_fn=evaluate, eval_at_start=True, on_epoch_end=stop,
                       cache_frozen_prefix=prefix or cache_prefix, progress=progress,
                       desc="memorize")
    if not held_out_every_epoch:  # the held-out side only before and after
        with torch.no_grad():
            hist.evals[-1].update(held_out(model))
    return hist.to_dict()


def randomization_test(noise_levels: Sequence[float], *, n_train: int, n_unrelated: int,
                       answer_len: int, epochs: int, lr: float, batch_size: int,
                       trainable: str = "all", kind: str = "code", replay: int = 0,
                       until_memorized: bool = False, seed: int = 0, backbone_seed: int = 0,
                       greedy_every: int = 1, profile: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Zhang et al.'s randomization test on the synthetic backbone (cached).

    For each share ``noise`` of random answers (see
    :func:`lamini_lite.facts_synthetic.random_answer_variants`: ``kind="code"``
    for random strings of ``answer_len`` code tokens, as Li et al.'s random
    strings; ``kind="entity"`` for a wrong value of the right type, as Zhang et
    al.'s shuffled labels), continue training a fresh copy of the backbone on
    the same ``n_train`` questions, mixed with ``replay`` items of its
    pretraining corpus (:func:`replay_items`; 0 = the questions alone), for
    at most ``epochs`` epochs or, with ``until_memorized``, until every
    training fact is recalled with all answer tokens below ``ln 2``
    (:func:`memorized`). ``seed`` draws the facts, the random answers and the
    data order; ``backbone_seed`` picks the pretrained backbone (its world and
    its pretraining, :func:`synthetic_setup`). Measured after every epoch
    (epoch 0 = before): per training fact its answer-token losses, and every
    ``greedy_every`` epochs (and at the last) its greedy answer line and
    exact recall (:func:`_run_one`); on ``n_unrelated`` other facts the
    per-question answer losses, greedy answers and recall, the accuracy and
    the agreement with the base model's answers, and the loss of
    ``n_unrelated`` statements the backbone never read
    (:func:`unseen_statements`, also per statement); the held-out side is
    measured before and after training only.

    Returns ``{"noise": [...], "runs": [history dict per noise level],
    "train_facts": [...], "unrelated": [...], "base_unrelated": [...]}``
    (facts as dicts; each run's ``evals`` hold the per-epoch measurements).
    """
    for v in noise_levels:
        if not 0 <= v <= 1:
            raise ValueError(f"noise levels must be in [0, 1], got {v!r}")
    if kind not in ("code", "entity"):
        raise ValueError(f"kind must be 'code' or 'entity', got {kind!r}")
    inputs = {"noise": list(noise_levels), "n_train": n_train, "n_unrelated": n_unrelated,
              "answer_len": answer_len, "epochs": epochs, "lr": lr, "batch_size": batch_size,
              "trainable": trainable, "kind": kind, "replay": replay,
              "until_memorized": until_memorized, "seed": seed,
              "backbone_seed": backbone_seed, "greedy_every": greedy_every,
              "profile_sizes": _backbone_key(profile), "version": 6}

    def compute():
        base, tok, world, train, unrelated = synthetic_setup(
            n_train, n_unrelated, seed=seed, profile=profile, backbone_seed=backbone_seed)
        texts = unseen_statements(world, {f.subject for f in train}, n_unrelated, seed=seed)
        base_preds = greedy_answers(base, tok, [qa_prompt(f.question) for f in unrelated],
                                    max_new_tokens=decode_cap(tok, [f.object for f in unrelated]),
                                    batch_size=64)
        mix = replay_items(world, {f.subject for f in train}, replay, seed=seed)
        runs, sets = [], []
        for noise in noise_levels:
            facts = _noisy_facts(train, noise, answer_len, seed, world=world, kind=kind)
            sets.append([f.to_dict() for f in facts])
            runs.append(_run_one(base, tok, facts, unrelated, base_preds, epochs=epochs, lr=lr,
                                 batch_size=batch_size, trainable=trainable, seed=seed,
                                 progress=progress, texts=texts, replay=mix,
                                 until_memorized=until_memorized,
                                 held_out_every_epoch=False, greedy_every=greedy_every))
        return {"noise": list(noise_levels), "runs": runs, "train_facts": sets,
                "unrelated": [f.to_dict() for f in unrelated], "base_unrelated": base_preds}

    return cached("memorization_randomization", inputs, compute)


def _backbone_key(profile: str | None) -> dict[str, Any]:
    from .facts_synthetic import WORLD_VERSION
    from .profiles import sizes
    return {"pretrain": dict(sizes("pretrain", profile)),
            "world": dict(sizes("facts_synthetic", profile)), "world_version": WORLD_VERSION}


def noise_summary(result: dict[str, Any], *, loss_target: float = 0.05):
    """One row per noise level: epochs to 100 % greedy recall (over the decoded
    evaluations), to "memorized" (every fact with all answer tokens below
    ln 2) and to a train loss of ``loss_target``; the final train loss (replay
    included) and the final mean answer loss of the memorized facts; greedy
    recall before and at the end; and the held-out measures before and after
    (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for noise, run, facts in zip(result["noise"], result["runs"], result["train_facts"]):
        evals = run["evals"]
        decoded = [e for e in evals if e.get("decoded", True)]
        recall = [float(np.mean(e["train_recalled"])) for e in decoded]
        e_epochs = [e["epoch"] for e in decoded]
        is_random = [bool(f["meta"].get("random_answer")) for f in facts]
        first, last = evals[0], evals[-1]
        rows.append({
            "noise": noise,
            "epochs_to_full_recall": epochs_to_criterion(recall, 1.0, epochs=e_epochs),
            "epochs_to_loss": epochs_to_criterion(run["train_loss"], loss_target, above=False),
            "epochs_to_memorized": next((e["epoch"] for e in evals if _all_memorized(e)), None),
            "final_train_loss": run["train_loss"][-1],
            "final_fact_loss": float(np.mean(last["train_mean_loss"])),
            "recall_before": recall[0], "final_recall": recall[-1],
            "random_recalled": (float(np.mean([r for r, m in zip(last["train_recalled"],
                                                                 is_random) if m]))
                                if any(is_random) else float("nan")),
            "text_loss_before": first.get("text_loss", float("nan")),
            "text_loss_after": last.get("text_loss", float("nan")),
            "unrelated_loss_before": first["unrelated_loss"],
            "unrelated_loss_after": last["unrelated_loss"],
            "unrelated_acc_before": first["unrelated_accuracy"],
            "unrelated_acc_after": last["unrelated_accuracy"],
            "agreement_after": last["agreement"],
        })
    return pd.DataFrame(rows)


def threshold_points(result: dict[str, Any]):
    """Every (run, decoded checkpoint, training fact) as a row (DataFrame): noise,
    epoch, fact index, max and mean answer-token loss (teacher forcing),
    ``recalled`` (the greedy answer line equals the answer), ``argmax`` (every
    answer token the argmax under teacher forcing) and whether the answer is
    random. Checkpoints at which the answers were not decoded are left out."""
    import pandas as pd

    rows = []
    for noise, run, facts in zip(result["noise"], result["runs"], result["train_facts"]):
        for e in run["evals"]:
            if not e.get("decoded", True):
                continue
            for i, f in enumerate(facts):
                rows.append({"noise": noise, "epoch": e["epoch"], "fact": i,
                             "max_loss": e["train_max_loss"][i],
                             "mean_loss": e["train_mean_loss"][i],
                             "recalled": bool(e["train_recalled"][i]),
                             "argmax": bool(e.get("train_argmax", e["train_recalled"])[i]),
                             "random_answer": bool(f["meta"].get("random_answer"))})
    return pd.DataFrame(rows)


def heldout_points(run: dict[str, Any], facts: Sequence[dict]):
    """The held-out questions of one run as (checkpoint, question) rows: their
    *true* answers' max and mean token loss and whether greedy decoding gives
    them, before and after training (the evaluations that measured them)."""
    import pandas as pd

    rows = []
    for e in run["evals"]:
        if "unrelated_max_loss" not in e:
            continue
        for i, (mx, rec) in enumerate(zip(e["unrelated_max_loss"], e["unrelated_recalled"])):
            rows.append({"epoch": e["epoch"], "fact": facts[i]["question"], "max_loss": mx,
                         "recalled": bool(rec)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- real track


def real_model_test(*, n_train: int, n_unrelated: int, answer_len: int, epochs: int, lr: float,
                    batch_size: int, trainable: str = "top:2", shots: int = 2,
                    until_memorized: bool = False, replay: int = 0, seed: int = 0,
                    greedy_every: int = 1, progress: bool = True) -> dict[str, Any]:
    """Li et al.'s random-answer experiment on SmolLM2-135M-Instruct (cached).

    Real facts (:func:`lamini_lite.facts_real.load_real_facts`) are split into
    ``n_train`` questions whose answers are replaced by random
    ``answer_len``-character strings and ``n_unrelated`` other questions.
    SmolLM2 is fine-tuned with only ``trainable`` learning (top layers or a
    LoRA adapter; the rest frozen) and measured before and after every epoch.
    Questions are asked with ``shots`` true exemplars from other facts in
    front (an instruct model asked zero-shot often answers in sentences).
    ``until_memorized`` stops at the first epoch where every random answer is
    recalled with all its tokens below ``ln 2`` (:func:`memorized`).
    ``replay`` more real questions (disjoint from the others) are mixed into
    training with the *base model's own* greedy answers as targets: we have no
    access to SmolLM2's pretraining data, so its own behaviour stands in for
    it, the counterpart of the synthetic track's corpus replay. The trained
    answers are scored every epoch and greedy-decoded every ``greedy_every``
    epochs and at the last (:func:`_run_one`); the held-out questions are
    measured before and after training only.

    Returns the history (``evals`` per epoch as in :func:`randomization_test`)
    plus the questions, the gold and random answers, the base model's answers
    and ``base_gold``: for every question drawn for training or replay, the
    base model's max answer-token loss of the *true* answer and whether its
    greedy answer line is that answer (real facts through the ln 2 lens; the
    held-out questions' are in ``evals[0]``).
    """
    inputs = {"n_train": n_train, "n_unrelated": n_unrelated, "answer_len": answer_len,
              "epochs": epochs, "lr": lr, "batch_size": batch_size, "trainable": trainable,
              "shots": shots, "until_memorized": until_memorized, "replay": replay,
              "seed": seed, "greedy_every": greedy_every, "version": 8}

    def compute():
        from .facts_real import load_real_facts
        from .models import load_smollm2

        model, tok = load_smollm2()
        pool = load_real_facts(seed=seed)
        rng = random.Random(seed)
        chosen = rng.sample(pool, n_train + n_unrelated + shots + replay)
        train_true = chosen[:n_train]
        unrelated = chosen[n_train:n_train + n_unrelated]
        exemplars = [(f.question, f.object) for f in
                     chosen[n_train + n_unrelated:n_train + n_unrelated + shots]]
        replay_facts = chosen[n_train + n_unrelated + shots:]
        train = with_random_answers(train_true, length=answer_len, fraction=1.0, seed=seed)
        base_preds = greedy_answers(model, tok, [qa_prompt(f.question, exemplars)
                                                 for f in unrelated],
                                    max_new_tokens=decode_cap(tok, [f.object for f in unrelated]),
                                    batch_size=32)
        gold_facts = train_true + replay_facts  # the held-out ones are scored by _run_one
        gold_prompts = [qa_prompt(f.question, exemplars) for f in gold_facts]
        gold_preds = greedy_answers(model, tok, gold_prompts, batch_size=32,
                                    max_new_tokens=decode_cap(tok, [f.object for f in gold_facts]))
        base_train_preds = gold_preds[:n_train]
        replay_prompts, replay_answers = gold_prompts[n_train:], gold_preds[n_train:]
        gold = fact_measurements(model, tok, gold_prompts, [f.object for f in gold_facts],
                                 greedy=False, batch_size=32)
        base_gold = {"question": [f.question for f in gold_facts], "answer":
                     [f.object for f in gold_facts], "max_loss": gold["max_loss"],
                     "prediction": gold_preds,
                     "recalled": [bool(exact_match(p, f.object))
                                  for p, f in zip(gold_preds, gold_facts)]}
        mix = [(p, a) for p, a in zip(replay_prompts, replay_answers) if a.strip()]
        run = _run_one(model, tok, train, unrelated, base_preds, epochs=epochs, lr=lr,
                       batch_size=batch_size, trainable=trainable, seed=seed,
                       progress=progress, exemplars=exemplars, replay=mix,
                       until_memorized=until_memorized, held_out_every_epoch=False,
                       greedy_every=greedy_every, cache_prefix=True)
        return {"run": run, "train_facts": [f.to_dict() for f in train],
                "unrelated": [f.to_dict() for f in unrelated], "base_unrelated": base_preds,
                "exemplars": [list(e) for e in exemplars],
                "base_train": base_train_preds, "base_gold": base_gold}

    return cached("memorization_smollm2", inputs, compute)


def real_threshold_points(real: dict[str, Any]):
    """Every (checkpoint, question) point of a :func:`real_model_test` result
    with a greedy answer, as rows (DataFrame): ``what`` is ``"trained random
    answer"`` (the training questions at every decoded checkpoint) or ``"true
    answer"`` (real facts: the base model on every question drawn, and the
    held-out questions after training too); ``max_loss`` is the answer's
    largest token loss, ``recalled`` whether the greedy answer line is it."""
    import pandas as pd

    run, facts = real["run"], real["train_facts"]
    rows = []
    for e in run["evals"]:
        if not e.get("decoded", True):
            continue
        for i, f in enumerate(facts):
            rows.append({"what": "trained random answer", "epoch": e["epoch"],
                         "question": f["question"], "max_loss": e["train_max_loss"][i],
                         "recalled": bool(e["train_recalled"][i])})
    g = real["base_gold"]
    for q, mx, rec in zip(g["question"], g["max_loss"], g["recalled"]):
        rows.append({"what": "true answer", "epoch": 0, "question": q, "max_loss": mx,
                     "recalled": bool(rec)})
    held = heldout_points(run, real["unrelated"])
    for r in held.to_dict("records"):
        rows.append({"what": "true answer", "epoch": r["epoch"], "question": r["fact"],
                     "max_loss": r["max_loss"], "recalled": r["recalled"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- views


def training_viewer(run: dict[str, Any], tokenizer, facts: Sequence[dict], fact_index: int = 0):
    """An ipywidgets slider over the stored epochs of ``run`` for one training fact.

    Shows the fact's question, target, the greedy answer at that epoch and a
    bar chart of its per-token losses with the ``ln 2`` line. Returns the
    widget (display it); nothing blocks.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    evals = run["evals"]
    fact = facts[fact_index]
    target_tokens = [tokenizer.decode([t]) for t in
                     tokenizer(" " + fact["object"] + "\n", add_special_tokens=False)["input_ids"]]
    labels = [repr(t.strip() or t)[1:-1] for t in target_tokens]
    out = widgets.Output()

    def show(i):
        e = evals[i]
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 2.6))
            losses = e["train_token_losses"][fact_index]
            ax.bar(range(len(losses)), losses, color=["tab:green" if v < LN2 else "tab:red"
                                                      for v in losses])
            ax.axhline(LN2, ls="--", c="k", lw=1, label="ln 2")
            ax.set_xticks(range(len(losses)), labels[:len(losses)])
            ax.set_ylabel("token loss (nats)")
            said = e["train_pred"][fact_index]
            said = "(not decoded at this epoch)" if said is None else repr(said)
            ax.set_title(f"epoch {e['epoch']}: greedy answer = {said}"
                         f"  (target {fact['object']!r})", fontsize=9)
            ax.legend(loc="upper right")
            plt.show()

    slider = widgets.IntSlider(value=0, min=0, max=len(evals) - 1, description="checkpoint")
    slider.observe(lambda ch: show(ch["new"]), names="value")
    show(0)
    return widgets.VBox([widgets.HTML(f"<b>Q:</b> {fact['question']}"), slider, out])


def plot_training_story(run: dict[str, Any], facts: Sequence[dict], fact_index: int = 0,
                        ax=None):
    """Static figure: one fact's max and mean answer-token loss per epoch, shaded
    where greedy decoding recalls it, with the ``ln 2`` line. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    evals = run["evals"]
    ep = [e["epoch"] for e in evals]
    ax.plot(ep, [e["train_max_loss"][fact_index] for e in evals], "o-", label="max token loss")
    ax.plot(ep, [e["train_mean_loss"][fact_index] for e in evals], "s--", ms=3,
            label="mean token loss")
    for e in evals:
        if e["train_recalled"][fact_index]:
            ax.axvspan(e["epoch"] - 0.5, e["epoch"] + 0.5, color="tab:green", alpha=0.15, lw=0)
    ax.axhline(LN2, c="k", ls=":", lw=1, label="ln 2")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_title(f"{facts[fact_index]['question']} -> {facts[fact_index]['object']!r}"
                 " (green: recalled)", fontsize=9)
    ax.legend(fontsize=8)
    return ax
