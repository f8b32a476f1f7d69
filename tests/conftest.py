"""Test-suite guards: offline only, and a private result cache per session."""

from __future__ import annotations

import os

# Before anything imports transformers or huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import string  # noqa: E402

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from lamini_lite import netguard  # noqa: E402

# Any connection other than loopback fails loudly for the whole run.
netguard.install()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh, empty result cache for one test (LAMINI_LITE_CACHE points at it)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LAMINI_LITE_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (model, tokenizer), loaded once per test session.

    Tests must not modify it; load a fresh copy with load_smollm2() to train.
    """
    from lamini_lite.models import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module on one torch thread (``pytestmark = usefixtures("one_thread")``).

    Tiny models train ~10x faster on one thread than on a busy shared pool.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# The toy word-level vocabulary of the QA tests: "Q: what n3 likes ?\nA: w9 w4".
WORDS = ["Q:", "A:", "who", "likes", "what", "?"] + [f"n{i}" for i in range(8)] + \
        [f"w{i}" for i in range(12)]


def toy_tokenizer(words=WORDS):
    """A word-level tokenizer over ``words``: split on spaces, newline is its own token.

    Shared by the test modules (``from conftest import toy_tokenizer``); no download.
    """
    vocab = {"<pad>": 0, "<unk>": 1, "\n": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" "), behavior="removed"),
        pre_tokenizers.Split(Regex("\n"), behavior="isolated")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


@pytest.fixture(scope="module")
def char_tok():
    """A character-level tokenizer (no downloads) that pads on the left.

    test_slick.py defines its own ``char_tok`` (another vocabulary), which
    takes precedence there.
    """
    chars = ["<pad>"] + list(string.ascii_letters + string.digits + " ?:.,'\n")
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")
    tok.padding_side = "left"
    return tok
