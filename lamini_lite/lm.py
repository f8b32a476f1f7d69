"""Language-model utilities shared by every chapter (both model tracks).

Conventions, used everywhere in the book:

* A question is asked with a *prompt* that ends right before the answer
  (e.g. ``"Q: What is the capital of France?\\nA:"``).
* The *target* the model must produce is ``" " + answer + "\\n"``: one space,
  the answer, and a newline that ends the answer line. Decoding stops at the
  first newline, and the answer is the text before it, stripped.
* Training labels are ``-100`` on the prompt, so only answer tokens (and the
  closing newline) are learned.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

STOP = "\n"

__all__ = ["STOP", "answer_target", "encode_qa", "collate_qa", "left_pad", "greedy_answers",
           "answer_token_losses", "newline_token_ids", "top_next_tokens", "position_ids"]


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
