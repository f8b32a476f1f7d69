"""Language-model utilities shared by every chapter (both model tracks).

Conventions, used everywhere in the book:

* A question is asked with a *prompt* that ends right before the answer
  (e.g. ``"Q: What is the capital of France?\\nA:"``).
* The *target* the model must produce is ``" " + answer + "\\n"``: one space,
  the answer, and a newline that ends the answer line. Decoding stops at the
  first newline, and the answer is the text before it, stripped.
* Training labels are ``-100`` on the prompt, so only answer tokens (and the
  closing newline) are learned.

This module is the one place for decoding (:func:`greedy_answers`), answer-token
losses under teacher forcing (:func:`answer_token_losses`), recall as a user
sees it (:func:`fact_measurements`: greedy decoding to the end of the answer
line, scored by exact match; :func:`fact_recall`: the same, compared verbatim)
and plain-text losses (:func:`text_loss`, :func:`statement_loss`). ``LN2`` is
the recall threshold of chapter 1: every answer token below ``ln 2`` nats
means greedy decoding must reproduce the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .facts.core import exact_match

STOP = "\n"

__all__ = ["STOP", "answer_target", "encode_qa", "collate_qa", "left_pad", "greedy_answers",
           "answer_token_losses", "newline_token_ids", "top_next_tokens", "position_ids",
           "LN2", "DECODE_SLACK", "decode_cap", "fact_measurements", "greedy_recall",
           "teacher_forced_record", "greedy_match", "fact_recall",
           "text_loss", "statement_loss", "statement_losses"]


def answer_target(answer: str, stop: str = STOP) -> str:
    """The text a model must emit after the prompt: ``" " + answer + stop``."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer must be a non-empty string, got {answer!r}")
    return " " + answer.strip() + stop


def encode_qa(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, *,
              stop: str = STOP, add_special_tokens: bool = False
              ) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + answer_target(answer)`` and labels masking the prompt.

    The prompt and the target are tokenized separately and concatenated, so
    the answer's tokens are the same whatever the prompt. Returns
    ``(input_ids, labels)`` with ``labels = -100`` on prompt positions.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    p = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    a = tokenizer(answer_target(answer, stop), add_special_tokens=False)["input_ids"]
    if not a:
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return p + a, [-100] * len(p) + list(a)


def collate_qa(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[list[int], list[int]]]
               ) -> dict[str, torch.Tensor]:
    """Left-pad encoded (input_ids, labels) pairs into a batch for a causal LM."""
    if not pairs:
        raise ValueError("collate_qa needs at least one encoded pair")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        n = len(x)
        ids[i, width - n:] = torch.tensor(x)
        labels[i, width - n:] = torch.tensor(y)
        mask[i, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id sequences into ``(ids, attention_mask)``, both ``(len(seqs), width)``.

    ``width`` is the longest sequence; padding goes on the left, so every row's
    last token sits in the last column (where generation continues). Empty
    sequences give an all-padding row with a zero mask.
    """
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so left padding changes nothing."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def newline_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of every token whose text contains a newline (computed once per tokenizer)."""
    cached = getattr(tokenizer, "_lamini_newline_ids", None)
    if cached is None:
        cached = frozenset(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))
        tokenizer._lamini_newline_ids = cached
    return cached


@torch.no_grad()
def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 32,
                   stop: str = STOP, progress: bool = False, add_special_tokens: bool = False
                   ) -> list[str]:
    """Greedy-decode an answer line for every prompt, in left-padded batches.

    Decoding of a batch ends when every row has produced ``stop`` (a newline)
    or ``max_new_tokens`` tokens; each answer is the text before the first
    ``stop``, stripped. Uses the model's KV cache.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got "
                         f"{max_new_tokens} and {batch_size}")
    was_training = model.training
    model.eval()
    stop_ids = torch.tensor(sorted(newline_token_ids(tokenizer)) if stop == STOP else [],
                            dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="greedy answers", disable=not progress):
        chunk = list(prompts[start:start + batch_size])
        enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in chunk]
        ids, mask = left_pad(enc, pad)
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                    use_cache=True, logits_to_keep=1)  # the head on the last position only
        past = out.past_key_values
        generated = []
        done = torch.zeros(len(enc), dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1, :].argmax(-1)
            generated.append(nxt)
            if len(stop_ids):
                done |= torch.isin(nxt, stop_ids)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(len(enc), 1, dtype=mask.dtype)], dim=1)
            pos = (mask.sum(-1, keepdim=True) - 1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
        gen = torch.stack(generated, dim=1)
        for row in gen.tolist():
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers.append(text.split(stop, 1)[0].strip() if stop else text.strip())
    model.train(was_training)
    return answers


@torch.no_grad()
def answer_token_losses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 32,
                        stop: str = STOP, include_stop: bool = True, progress: bool = False,
                        return_hits: bool = False
                        ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token loss ``-log p(token)`` (nats) of each answer given its prompt.

    Returns one 1-D float tensor per (prompt, answer): the losses of the
    answer's tokens in order, including the closing ``stop`` token(s) unless
    ``include_stop=False``. Greedy decoding reproduces an answer exactly if
    every one of these tokens is the argmax -- guaranteed when each loss is
    below ``ln 2`` (then p > 1/2). With ``return_hits=True`` it returns
    ``(losses, hits)``, ``hits`` holding per token whether it is the argmax
    (all true: greedy decoding writes exactly these tokens).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got "
                         f"{len(prompts)} and {len(answers)}")
    was_training = model.training
    model.eval()
    result: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    n_stop = len(tokenizer(stop, add_special_tokens=False)["input_ids"]) if stop else 0
    for start in tqdm(range(0, len(prompts), batch_size), desc="answer losses",
                      disable=not progress):
        pairs = [encode_qa(tokenizer, p, a, stop=stop)
                 for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size])]
        batch = collate_qa(tokenizer, pairs)
        # the decoder once, the LM head on answer positions only
        hidden = model.get_decoder()(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"],
                                     position_ids=position_ids(batch["attention_mask"])
                                     ).last_hidden_state[:, :-1]
        tgt = batch["labels"][:, 1:]
        head = model.get_output_embeddings()
        for i in range(len(pairs)):
            sel = tgt[i] != -100
            logp = torch.log_softmax(head(hidden[i][sel]).float(), dim=-1)
            tok_loss = -logp.gather(-1, tgt[i][sel][:, None]).squeeze(-1)
            tok_hit = logp.argmax(-1) == tgt[i][sel]
            if not include_stop and n_stop and tok_loss.numel() > n_stop:
                # The stop text may merge with the answer's last token; drop only
                # trailing tokens that are pure stop tokens.
                tok_loss, tok_hit = tok_loss[:-n_stop], tok_hit[:-n_stop]
            result.append(tok_loss)
            hits.append(tok_hit)
    model.train(was_training)
    return (result, hits) if return_hits else result


@torch.no_grad()
def top_next_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                    k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prompt`` with their probabilities."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    top = probs.topk(k)
    return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


# --------------------------------------------------------------------------- recall

LN2 = math.log(2.0)


# tokens greedy decoding may write past the longest answer and its newline
DECODE_SLACK = 8


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
    out = teacher_forced_record(losses, hits)
    if not greedy:
        return out
    return {**out, **greedy_recall(model, tokenizer, prompts, answers, batch_size=batch_size,
                              max_new_tokens=max_new_tokens)}


def greedy_recall(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                  batch_size: int = 64, max_new_tokens: int | None = None) -> dict[str, list]:
    """Greedy answer lines (batched, KV cache, to the newline) and their exact match.

    Returns ``prediction`` and ``recalled`` lists, as :func:`fact_measurements`
    does; ``max_new_tokens`` defaults to :func:`decode_cap`.
    """
    if max_new_tokens is None:
        max_new_tokens = decode_cap(tokenizer, answers)
    preds = greedy_answers(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    return {"prediction": preds,
            "recalled": [bool(exact_match(p, a)) for p, a in zip(preds, answers)]}


def teacher_forced_record(losses, hits) -> dict[str, list]:
    """:func:`fact_measurements`' record without decoding, from per-fact token losses and
    argmax hits (as :func:`answer_token_losses` returns them with ``return_hits=True``)."""
    return {"token_losses": [[round(float(v), 6) for v in x] for x in losses],
            "max_loss": [float(x.max()) for x in losses],
            "mean_loss": [float(x.mean()) for x in losses],
            "argmax": [bool(h.all()) for h in hits],
            "prediction": [None] * len(losses), "recalled": [None] * len(losses)}


def statement_loss(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) of ``texts`` after their first word.

    A held-out *text* loss, the LM analogue of test error: each text is split
    after its first word, which serves as the prompt; the rest (and a closing
    newline) is scored with :func:`~lamini_lite.lm.answer_token_losses`.
    """
    return float(torch.cat(_statement_token_losses(model, tokenizer, texts,
                                                   batch_size=batch_size)).mean())


def statement_losses(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64
                     ) -> tuple[list[float], list[int]]:
    """Per text: the summed next-token loss (nats) after its first word, and the
    number of tokens scored, as in :func:`statement_loss` (whose value is
    ``sum(sums) / sum(counts)``). For intervals that resample the texts."""
    losses = _statement_token_losses(model, tokenizer, texts, batch_size=batch_size)
    return [float(x.double().sum()) for x in losses], [len(x) for x in losses]


def _statement_token_losses(model, tokenizer, texts, *, batch_size: int = 64):
    heads, tails = [], []
    for t in texts:
        head, _, tail = t.strip().partition(" ")
        if not tail:
            raise ValueError(f"texts need at least two words, got {t!r}")
        heads.append(head)
        tails.append(tail)
    return answer_token_losses(model, tokenizer, heads, tails, batch_size=batch_size)


def _max_tokens(tokenizer, answers: Sequence[str]) -> int:
    return 2 + max(len(tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"])
                   for a in answers)


def fact_recall(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Per fact: does greedy decoding reproduce the answer exactly?"""
    got = greedy_answers(model, tokenizer, list(prompts),
                         max_new_tokens=_max_tokens(tokenizer, answers))
    return [g == a.strip() for g, a in zip(got, answers)]


@torch.no_grad()
def text_loss(model, tokenizer, texts: Sequence[str]) -> float:
    """Mean next-token loss (nats) of ``model`` over ``texts`` (token-weighted)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    total, n = 0.0, 0
    for t in texts:
        ids = tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    return total / max(1, n)


def _match_rows(tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]]
                ) -> list[tuple[int, int, list[int], list[int]]]:
    """(prompt index, candidate index, prompt ids, answer ids) of every candidate."""
    rows = []
    for i, (p, cands) in enumerate(zip(prompts, candidates)):
        if isinstance(cands, str):
            raise TypeError(f"candidates[{i}] must be a list of strings, not a string")
        pid = tokenizer(p, add_special_tokens=False)["input_ids"]
        for j, c in enumerate(cands):
            aid = tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"]
            if not pid or not aid:
                raise ValueError(f"prompt {i} or its candidate {c!r} encodes to no tokens")
            rows.append((i, j, pid, aid))
    return rows


def _match_positions(chunk, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, wanted token or -1 for a stop) of each prediction a chunk checks."""
    # positions whose next-token prediction we need: the last prompt token
    # up to the last answer token (the latter must predict a newline)
    rr, pos, want = [], [], []
    for r, (_, _, p, a) in enumerate(chunk):
        off = width - len(p) - len(a)
        for k in range(len(a) + 1):
            rr.append(r)
            pos.append(off + len(p) - 1 + k)
            want.append(a[k] if k < len(a) else -1)
    return torch.tensor(rr), torch.tensor(pos), torch.tensor(want)


def _argmax_at(model, ids: torch.Tensor, mask: torch.Tensor, rr_t: torch.Tensor,
               pos_t: torch.Tensor) -> torch.Tensor:
    """Most likely next token at (row, position) pairs, projecting only those states."""
    decoder = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if decoder is not None and head is not None:
        hidden = decoder(input_ids=ids, attention_mask=mask,
                         position_ids=position_ids(mask)).last_hidden_state
        return head(hidden[rr_t, pos_t]).argmax(-1)  # (n_positions,)
    logits = model(input_ids=ids, attention_mask=mask,
                   position_ids=position_ids(mask)).logits
    return logits[rr_t, pos_t].argmax(-1)


def _chunk_matches(model, chunk, pad: int, stop_t: torch.Tensor) -> torch.Tensor:
    """Per row of ``chunk``, whether greedy decoding writes its answer and then stops."""
    ids, mask = left_pad([p + a for _, _, p, a in chunk], pad)
    rr_t, pos_t, want_t = _match_positions(chunk, ids.shape[1])
    pred = _argmax_at(model, ids, mask, rr_t, pos_t)
    ok = torch.where(want_t >= 0, pred == want_t, torch.isin(pred, stop_t))
    per_row = torch.ones(len(chunk), dtype=torch.bool)
    per_row.scatter_reduce_(0, rr_t, ok, reduce="amin")
    return per_row


@torch.no_grad()
def greedy_match(model, tokenizer, prompts: Sequence[str],
                 candidates: Sequence[Sequence[str]], *, batch_size: int = 64) -> list[int]:
    """For each prompt, which candidate answer greedy decoding would write, or -1.

    Candidate ``j`` of prompt ``i`` matches when, after ``prompts[i]``, every
    token of ``" " + candidates[i][j]`` is the most likely next token and the
    most likely token after it contains a newline (or is end-of-sequence):
    exactly the condition for :func:`lamini_lite.lm.greedy_answers` to return
    that candidate. One forward pass per (prompt, candidate) row, no decoding.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(prompts) != len(candidates):
        raise ValueError(f"prompts and candidates must have the same length, got "
                         f"{len(prompts)} and {len(candidates)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = set(newline_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        stop.add(int(tokenizer.eos_token_id))
    stop_t = torch.tensor(sorted(stop), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = _match_rows(tokenizer, prompts, candidates)
    result = [-1] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            per_row = _chunk_matches(model, chunk, pad, stop_t)
            for r, (i, j, _, _) in enumerate(chunk):
                if bool(per_row[r]) and result[i] < 0:
                    result[i] = j
    finally:
        model.train(was_training)
    return result
