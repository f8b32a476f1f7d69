import math

import pytest
import torch

from lamini_lite.facts import qa_prompt
from lamini_lite.lm import (answer_target, answer_token_losses, collate_qa, encode_qa,
                            greedy_answers)

EXEMPLARS = [("What is the capital of Italy?", "Rome"), ("What is the capital of Japan?", "Tokyo")]


def test_answer_target_convention():
    assert answer_target(" Paris ") == " Paris\n"
    with pytest.raises(ValueError, match="answer"):
        answer_target("  ")


@pytest.mark.slow
def test_encode_qa_masks_prompt(smollm2):
    _, tok = smollm2
    ids, labels = encode_qa(tok, "Q: x?\nA:", "Paris")
    n_prompt = len(tok("Q: x?\nA:", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert tok.decode(ids[n_prompt:]) == " Paris\n"
    batch = collate_qa(tok, [encode_qa(tok, "Q: a much longer question?\nA:", "Rome"),
                             (ids, labels)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1, 0] == 0  # left padded


@pytest.mark.slow
def test_greedy_answers_batched_equals_unbatched(smollm2):
    model, tok = smollm2
    qs = ["What is the capital of France?", "What is the capital of Burkina Faso?",
          "Which country is Lyon located in?"]
    prompts = [qa_prompt(q, EXEMPLARS) for q in qs]
    batched = greedy_answers(model, tok, prompts, batch_size=3)
    single = [greedy_answers(model, tok, [p], batch_size=1)[0] for p in prompts]
    assert batched == single
    assert batched[0] == "Paris"
    # Same as transformers' own greedy generate, cut at the newline.
    enc = tok(prompts[1], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert batched[1] == ref.split("\n")[0].strip()


@pytest.mark.slow
def test_answer_token_losses_match_threshold_argument(smollm2):
    model, tok = smollm2
    prompts = [qa_prompt("What is the capital of France?", EXEMPLARS)]
    (losses,) = answer_token_losses(model, tok, prompts, ["Paris"])
    assert losses.ndim == 1 and len(losses) == 2  # " Paris", "\n"
    assert (losses < math.log(2)).all()  # so greedy decoding must return it
    (wrong,) = answer_token_losses(model, tok, prompts, ["Lyon"])
    assert wrong[0] > losses[0]
    (same,), (hits,) = answer_token_losses(model, tok, prompts, ["Paris"], return_hits=True)
    assert torch.equal(same, losses) and hits.tolist() == [True, True]
    _, (miss,) = answer_token_losses(model, tok, prompts, ["Lyon"], return_hits=True)
    assert not miss[0]  # " Lyon" is not what the model would write first
    with pytest.raises(ValueError, match="same length"):
        answer_token_losses(model, tok, prompts, ["a", "b"])


def test_greedy_answers_rejects_single_string():
    with pytest.raises(TypeError, match="list of strings"):
        greedy_answers(None, None, "Q: x\nA:")


@pytest.mark.slow
def test_top_next_tokens(smollm2):
    from lamini_lite.lm import top_next_tokens
    model, tok = smollm2
    top = top_next_tokens(model, tok, qa_prompt("What is the capital of France?", EXEMPLARS), k=5)
    assert len(top) == 5 and top[0][0].strip() == "Paris"
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    with pytest.raises(ValueError, match="k must be"):
        top_next_tokens(model, tok, "x", k=0)


def test_left_pad_puts_every_last_token_in_the_last_column():
    from lamini_lite.lm import left_pad

    ids, mask = left_pad([[5, 6, 7], [8], []], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="at least one"):
        left_pad([], pad=0)
