"""Memory-lookup kernels, installed as ``lamini_lite.kernels``.

The one entry point is :func:`memory_lookup`: a weighted sum of ``K`` rows of a
value table per query, the inner loop of a memory layer (product-key memory,
MoME). Two implementations sit behind it:

* :mod:`lamini_lite.kernels.reference` -- pure PyTorch (``embedding_bag`` /
  ``index_add_``), fast on CPU, the tests' oracle; needs only torch;
* :mod:`lamini_lite.kernels.triton_lookup` -- Triton kernels (forward, weight
  gradient, two value-gradient algorithms); imported only when used.

Which one runs (the dispatch rule)
----------------------------------
``backend="auto"`` (default): CUDA tensors -> compiled Triton kernels; any other
device -> the PyTorch reference. ``auto`` never uses Triton's interpreter, so
code that calls the lookup on CPU tensors is never slowed down by it, whatever
``TRITON_INTERPRET`` says.

``backend="triton"``: CUDA tensors -> compiled kernels; CPU tensors -> the same
kernels run by Triton's interpreter (numpy, ~3 ms per program instance; for
tests and teaching only). The interpreter is chosen per call, from the tensors'
device, not from the ``TRITON_INTERPRET`` environment variable at import time.

``backend="reference"``: the PyTorch reference on any device.

Importing this package needs only torch and defines no kernel; the Triton
module is imported on the first call that uses it.
"""

from __future__ import annotations

import torch

from .reference import (
    check_lookup_inputs,
    lookup_forward_reference,
    memory_lookup_reference,
    sparse_rows_to_coo,
    values_grad_reference,
    weights_grad_reference,
)

__all__ = [
    "BACKENDS",
    "BACKWARD_ALGORITHMS",
    "check_lookup_inputs",
    "lookup_forward_reference",
    "memory_lookup",
    "memory_lookup_reference",
    "resolve_backend",
    "sparse_rows_to_coo",
    "values_grad_reference",
    "weights_grad_reference",
]


BACKENDS = ("auto", "triton", "reference")
BACKWARD_ALGORITHMS = ("deterministic", "atomic")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The implementation a call runs: ``"triton"``, ``"interpret"`` or ``"reference"``.

    ``"interpret"`` means the Triton kernels under Triton's CPU interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "reference":
        return "reference"
    if device.type == "cuda":
        return "triton"
    if backend == "auto":
        return "reference"
    if device.type == "cpu":
        return "interpret"
    raise ValueError(
        f"backend='triton' needs CUDA tensors (compiled) or CPU tensors (interpreter), "
        f"got tensors on {device}"
    )


def memory_lookup(
    values: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    *,
    backward: str = "deterministic",
    backend: str = "auto",
    sparse_grad: bool = False,
    check_bounds: bool = True,
    block_d: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Weighted sum of looked-up rows: ``out[..., :] = sum_k weights[..., k] * values[indices[..., k]]``.

    Equal to ``F.embedding_bag(indices.reshape(-1, K), values,
    per_sample_weights=weights.reshape(-1, K), mode="sum")`` reshaped to ``(..., D)``,
    summed in float32 and returned in ``values.dtype``.

    Args:
        values: ``(N, D)`` float32, bfloat16 or float16 value table (float64 too
            on CPU, for gradcheck). Any ``D``.
        indices: ``(..., K)`` int32 or int64 rows to read, each in ``[0, N)``;
            ``K >= 1``; the leading dimensions may be empty (no queries).
        weights: ``(..., K)`` floating weights, same shape as ``indices``.
        backward: how the Triton path computes the gradient of ``values``:
            ``"deterministic"`` (default: sort the uses by row, then one program
            sums each row; no float atomics, so bit-identical from run to run,
            and no float32 staging table for bf16/fp16 values) or ``"atomic"``
            (scatter with float atomic adds: no sort, faster when rows rarely
            collide and ``D`` is small, but the summation order, and so the last
            bits, change between runs). The reference is always deterministic
            and ignores this argument.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``; see the module
            docstring for the rule.
        sparse_grad: if True, the gradient of ``values`` is a coalesced sparse
            COO tensor (like ``nn.Embedding(sparse=True)``) holding only the rows
            used: ``g = values.grad; g.indices()[0]`` are the rows and
            ``g.values()`` their ``(U, D)`` gradients. Use with
            ``torch.optim.SparseAdam`` or plain SGD.
        check_bounds: check every index is in ``[0, N)`` before any kernel runs
            (one min/max reduction over the indices and, on a GPU, one host sync).
        block_d, block_k: Triton path only: columns per program and rows gathered
            per step (powers of two; default min(next_pow2(D), 256) and
            min(next_pow2(K), 16)).

    Returns:
        ``(..., D)`` tensor in ``values.dtype``, differentiable w.r.t. ``values``
        and ``weights`` (first order).
    """
    if backward not in BACKWARD_ALGORITHMS:
        raise ValueError(f"backward must be one of {BACKWARD_ALGORITHMS}, got {backward!r}")
    for name, t in (("values", values), ("indices", indices), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    impl = resolve_backend(backend, values.device)
    if impl == "reference":
        return memory_lookup_reference(
            values, indices, weights, sparse_grad=sparse_grad, check_bounds=check_bounds
        )
    from .triton_lookup import memory_lookup_triton

    return memory_lookup_triton(
        values,
        indices,
        weights,
        backward=backward,
        sparse_grad=sparse_grad,
        check_bounds=check_bounds,
        interpret=(impl == "interpret"),
        block_d=block_d,
        block_k=block_k,
    )
