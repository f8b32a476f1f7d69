"""Memory-lookup kernels: the PyTorch reference and the Triton kernels under the interpreter.

The Triton kernels run here through Triton's CPU interpreter, requested per call
with ``backend="triton"`` on CPU tensors (no environment variable, so other test
modules calling the lookup on CPU keep the fast reference). The interpreter
costs ~3 ms per program instance: shapes stay tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lamini_lite.kernels import (
    check_lookup_inputs,
    memory_lookup,
    memory_lookup_reference,
    resolve_backend,
)

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter needs it

TOL = {  # (rtol, atol) against a float32 reference on the same (rounded) inputs
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (3e-3, 3e-3),
}


def make_case(N, D, lead, K, n_used=None, dtype=torch.float32, index_dtype=torch.int64,
              seed=0):
    """values (N, D), indices/weights (*lead, K); indices drawn from the first n_used rows."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(N, D, generator=g).to(dtype)
    indices = torch.randint(0, n_used or N, (*lead, K), generator=g).to(index_dtype)
    weights = torch.randn(*lead, K, generator=g).to(dtype)
    return values, indices, weights


def embedding_bag_oracle(values, indices, weights):
    """torch's embedding_bag in float32 (float64 for float64) on the same inputs, as (..., D)."""
    K, D = indices.shape[-1], values.shape[1]
    acc = torch.float64 if values.dtype == torch.float64 else torch.float32
    out = F.embedding_bag(indices.reshape(-1, K).long(), values.to(acc),
                          per_sample_weights=weights.reshape(-1, K).to(acc), mode="sum")
    return out.reshape(*indices.shape[:-1], D)


def run_with_grads(fn, values, indices, weights, grad_seed=1, **kwargs):
    """Forward + backward with a fixed random output gradient; returns (out, dvalues, dweights)."""
    v = values.detach().clone().requires_grad_(True)
    w = weights.detach().clone().requires_grad_(True)
    out = fn(v, indices, w, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    out.backward(g)
    dv = v.grad.to_dense() if v.grad.is_sparse else v.grad
    return out.detach(), dv, w.grad


def reference_grads(values, indices, weights):
    """Forward and gradients of the float32 reference on upcast copies of the inputs."""
    return run_with_grads(memory_lookup_reference, values.float(), indices, weights.float())


def assert_close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# The reference and the dispatch rule
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_reference_matches_embedding_bag(dtype):
    values, indices, weights = make_case(30, 13, (4, 3), 6, dtype=dtype)
    out = memory_lookup(values, indices, weights)  # auto on CPU = reference
    assert out.shape == (4, 3, 13) and out.dtype == dtype
    tol = TOL.get(dtype, (1e-12, 1e-12))
    torch.testing.assert_close(out.double(), embedding_bag_oracle(values, indices, weights)
                               .double(), rtol=tol[0], atol=tol[1])


def test_reference_gradients_match_embedding_bag_autograd():
    values, indices, weights = make_case(20, 9, (7,), 4, n_used=3)
    out, dv, dw = run_with_grads(memory_lookup, values, indices, weights)
    v = values.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    ref = F.embedding_bag(indices, v, per_sample_weights=w, mode="sum")
    ref.backward(torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(dv, v.grad)
    torch.testing.assert_close(dw, w.grad)


def test_reference_gradcheck_float64():
    values, indices, weights = make_case(6, 3, (4,), 3, n_used=3, dtype=torch.float64)
    v, w = values.requires_grad_(True), weights.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: memory_lookup(a, indices, b), (v, w))


def test_reference_sparse_grad_is_coo_of_touched_rows():
    values, indices, weights = make_case(40, 5, (6,), 3, n_used=7)
    _, dense, _ = run_with_grads(memory_lookup, values, indices, weights)
    v = values.clone().requires_grad_(True)
    memory_lookup(v, indices, weights, sparse_grad=True).backward(
        torch.randn(6, 5, generator=torch.Generator().manual_seed(1)))
    assert v.grad.is_sparse
    grad = v.grad.coalesce()
    assert torch.equal(grad.indices()[0], torch.unique(indices))
    torch.testing.assert_close(grad.to_dense(), dense)
    torch.optim.SparseAdam([v], lr=0.1).step()  # usable by a sparse optimizer


def test_dispatch_rule():
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("triton", torch.device("cpu")) == "interpret"
    assert resolve_backend("triton", torch.device("cuda")) == "triton"
    assert resolve_backend("reference", torch.device("cuda")) == "reference"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.device("meta"))


def test_auto_on_cpu_never_uses_the_interpreter(monkeypatch):
    import lamini_lite.kernels.triton_lookup as tk

    def boom(*args, **kwargs):
        raise AssertionError("the Triton path ran for backend='auto' on CPU")

    monkeypatch.setattr(tk, "memory_lookup_triton", boom)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    values, indices, weights = make_case(10, 4, (3,), 2)
    out = memory_lookup(values, indices, weights)
    torch.testing.assert_close(out, embedding_bag_oracle(values, indices, weights))
    with pytest.raises(AssertionError, match="Triton path ran"):
        memory_lookup(values, indices, weights, backend="triton")


# ---------------------------------------------------------------------------
# Triton kernels under the interpreter vs the reference
# ---------------------------------------------------------------------------

# (N, D, lead, K, n_used, block_d, block_k): what each case covers
CASES = {
    "D_not_pow2": (16, 37, (3, 2), 5, None, None, None),
    "K_is_1": (12, 8, (4,), 1, None, None, None),
    "collisions_3_rows_multiblock": (50, 20, (6,), 8, 3, 8, 4),  # 3 D-blocks, 2 K-blocks
    "one_row_only": (9, 12, (5,), 4, 1, 8, 2),  # duplicates within and across queries
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backward", ["deterministic", "atomic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, dtype, backward):
    N, D, lead, K, n_used, bd, bk = CASES[case]
    index_dtype = torch.int32 if len(lead) == 1 else torch.int64
    values, indices, weights = make_case(N, D, lead, K, n_used, dtype, index_dtype)
    out, dv, dw = run_with_grads(memory_lookup, values, indices, weights, backend="triton",
                                 backward=backward, block_d=bd, block_k=bk)
    ref_out, ref_dv, ref_dw = reference_grads(values, indices, weights)
    assert out.dtype == dtype and out.shape == (*lead, D)
    assert dv.dtype == dtype and dw.dtype == dtype
    assert_close(out, ref_out, dtype)
    assert_close(dv, ref_dv, dtype)
    assert_close(dw, ref_dw, dtype)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
def test_triton_strided_values_and_mixed_weight_dtype(index_dtype):
    """A column slice of a wider table (row stride 48 != D) and float32 weights on bf16 values."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(10, 48, generator=g).bfloat16().requires_grad_(True)
    indices = torch.randint(0, 10, (5, 3), generator=g).to(index_dtype)
    weights = torch.randn(5, 3, generator=g)
    out = memory_lookup(table[:, :37], indices, weights, backend="triton")
    ref = embedding_bag_oracle(table.detach()[:, :37], indices, weights)
    assert_close(out, ref, torch.bfloat16)
    out.float().sum().backward()
    assert table.grad[:, 37:].abs().sum() == 0 and table.grad[:, :37].abs().sum() > 0


@pytest.mark.parametrize("backward", ["deterministic", "atomic"])
def test_triton_empty_batch(backward):
    values, indices, weights = make_case(8, 6, (0, 3), 4)
    out, dv, dw = run_with_grads(memory_lookup, values, indices, weights, backend="triton",
                                 backward=backward)
    assert out.shape == (0, 3, 6)
    assert dw.shape == (0, 3, 4)
    assert dv.shape == (8, 6) and dv.abs().sum() == 0


@pytest.mark.parametrize("backward", ["deterministic", "atomic"])
def test_triton_gradcheck_float64(backward):
    values, indices, weights = make_case(6, 3, (4,), 3, n_used=3, dtype=torch.float64)
    v, w = values.requires_grad_(True), weights.requires_grad_(True)

    def f(a, b):
        return memory_lookup(a, indices, b, backend="triton", backward=backward)

    assert torch.autograd.gradcheck(f, (v, w), fast_mode=True)


def test_backward_algorithms_agree_and_deterministic_is_bit_identical():
    # 8 queries x 8 uses on 2 rows: every gradient row sums ~32 terms.
    values, indices, weights = make_case(30, 16, (8,), 8, n_used=2, seed=5)
    kw = dict(backend="triton", block_d=8)
    _, dv_det, dw_det = run_with_grads(memory_lookup, values, indices, weights,
                                       backward="deterministic", **kw)
    _, dv_det2, dw_det2 = run_with_grads(memory_lookup, values, indices, weights,
                                         backward="deterministic", **kw)
    _, dv_atomic, _ = run_with_grads(memory_lookup, values, indices, weights,
                                     backward="atomic", **kw)
    assert torch.equal(dv_det, dv_det2) and torch.equal(dw_det, dw_det2)
    torch.testing.assert_close(dv_atomic, dv_det, rtol=1e-5, atol=1e-5)
    assert dv_det[:2].abs().min() > 0 and dv_det[2:].abs().sum() == 0


@pytest.mark.parametrize("backward", ["deterministic", "atomic"])
def test_triton_sparse_grad(backward):
    values, indices, weights = make_case(40, 10, (6,), 3, n_used=7)
    _, dense, _ = run_with_grads(memory_lookup_reference, values, indices, weights)
    v = values.clone().requires_grad_(True)
    out = memory_lookup(v, indices, weights, backend="triton", backward=backward,
                        sparse_grad=True)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    assert v.grad.is_sparse
    grad = v.grad.coalesce()
    assert torch.equal(grad.indices()[0], torch.unique(indices))
    torch.testing.assert_close(grad.to_dense(), dense, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_interpreter_when_triton_imported_with_env_var():
    """The notebook's way: TRITON_INTERPRET=1 set before Triton is first imported."""
    code = (
        "import torch\n"
        "from lamini_lite.kernels import memory_lookup, memory_lookup_reference\n"
        "v = torch.randn(9, 5); i = torch.randint(0, 9, (4, 3)); w = torch.randn(4, 3)\n"
        "a = memory_lookup(v, i, w, backend='triton')\n"
        "assert torch.allclose(a, memory_lookup_reference(v, i, w), atol=1e-6)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


# ---------------------------------------------------------------------------
# Errors before any kernel runs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_errors(backend):
    values, indices, weights = make_case(10, 4, (3,), 2)

    def call(v=values, i=indices, w=weights, **kw):
        return memory_lookup(v, i, w, backend=backend, **kw)

    with pytest.raises(ValueError, match="values must be 2-D"):
        call(v=values[0])
    with pytest.raises(ValueError, match="weights must have the shape of indices"):
        call(w=weights[:, :1])
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        call(i=indices.float())
    with pytest.raises(TypeError, match="values must be"):
        call(v=values.to(torch.int64))
    with pytest.raises(TypeError, match="weights must be a floating"):
        call(w=indices)
    with pytest.raises(ValueError, match="K >= 1"):
        call(i=indices[:, :0], w=weights[:, :0])
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        call(i=indices + 10)
    with pytest.raises(IndexError, match=r"found values in \[-"):
        call(i=indices - indices.max() - 1)
    with pytest.raises(ValueError, match="one device"):
        call(w=weights.to("meta"))
    with pytest.raises(ValueError, match="backward must be"):
        call(backward="fast")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        call(i=[[0, 1]])


def test_float64_rejected_for_compiled_kernels():
    values, indices, weights = make_case(10, 4, (3,), 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        check_lookup_inputs(values, indices, weights, allow_float64=False)
    with pytest.raises(TypeError, match="float64"):
        check_lookup_inputs(values.float(), indices, weights, allow_float64=False)
    check_lookup_inputs(values, indices, weights)  # accepted by reference and interpreter
