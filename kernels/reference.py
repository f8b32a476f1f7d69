"""Pure-PyTorch reference for the memory lookup (the CPU path and the tests' oracle).

The lookup reads ``K`` rows of a value table for every query and returns their
weighted sum::

    out[b, :] = sum_k weights[b, k] * values[indices[b, k], :]

which is ``torch.nn.functional.embedding_bag(indices, values,
per_sample_weights=weights, mode="sum")``. This module holds the input checks
shared by every backend, the reference forward and backward (fp32
accumulation, fp64 for fp64 inputs) and an autograd ``Function`` around them.
It needs only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Dtypes the value table may have. float64 is accepted by the reference (and by
# the Triton interpreter) so that torch.autograd.gradcheck can run; the compiled
# GPU kernels reject it.
VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_lookup_inputs(
    values: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    *,
    allow_float64: bool = True,
    check_bounds: bool = True,
) -> None:
    """Raise a clear error if ``(values, indices, weights)`` is not a valid lookup.

    Checks, in order: types, ``values`` is 2-D floating, ``indices`` is int32
    or int64 with at least one dimension and ``K >= 1``, ``weights`` is
    floating with the shape of ``indices``, all three on one device, float64
    only if ``allow_float64``, and (if ``check_bounds``) every index in
    ``[0, N)``. The bounds check is one min/max reduction over the indices:
    it reads ``B*K`` integers (``1/D`` of what the lookup itself reads), but on
    a GPU it forces one device-to-host synchronisation (~10 us, and it cannot
    be captured in a CUDA graph); pass ``check_bounds=False`` to skip it.
    """
    for name, t in (("values", values), ("indices", indices), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D (N, D), got shape {tuple(values.shape)}")
    if values.dtype not in VALUE_DTYPES:
        raise TypeError(
            f"values must be float32, bfloat16 or float16, got {values.dtype}"
        )
    if values.dtype == torch.float64 and not allow_float64:
        raise TypeError(
            "values must be float32, bfloat16 or float16 for the compiled Triton "
            "kernels, got torch.float64 (float64 is accepted only by the CPU "
            "reference and the interpreter, for gradcheck)"
        )
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.dim() < 1:
        raise ValueError("indices must have shape (..., K) with at least one dimension")
    if indices.shape[-1] < 1:
        raise ValueError(f"indices must have K >= 1 in its last dimension, got shape "
                         f"{tuple(indices.shape)}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
    if weights.dtype == torch.float64 and not allow_float64:
        raise TypeError("weights must be float32, bfloat16 or float16 for the compiled "
                        "Triton kernels, got torch.float64")
    if weights.shape != indices.shape:
        raise ValueError(
            f"weights must have the shape of indices {tuple(indices.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    if not (values.device == indices.device == weights.device):
        raise ValueError(
            "values, indices and weights must be on one device, got "
            f"{values.device}, {indices.device} and {weights.device}"
        )
    if check_bounds and indices.numel() > 0:
        lo, hi = torch.aminmax(indices)
        lo, hi = int(lo), int(hi)  # the one host synchronisation
        if lo < 0 or hi >= values.shape[0]:
            raise IndexError(
                f"indices must lie in [0, {values.shape[0]}) (the rows of values), "
                f"found values in [{lo}, {hi}]"
            )


def lookup_forward_reference(
    values: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Forward on flattened inputs: ``indices, weights`` (B, K) -> (B, D) in values' dtype."""
    B, K = indices.shape
    D = values.shape[1]
    acc = accumulation_dtype(values.dtype)
    if B == 0:
        return values.new_zeros((0, D))
    if values.dtype == acc:
        # embedding_bag is the fused CPU kernel: no (B, K, D) intermediate.
        return F.embedding_bag(indices, values, per_sample_weights=weights.to(acc), mode="sum")
    rows = values[indices].to(acc)  # (B, K, D)
    out = torch.bmm(weights.to(acc).unsqueeze(1), rows).squeeze(1)  # (B, D)
    return out.to(values.dtype)


def weights_grad_reference(
    values: torch.Tensor, indices: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """``grad_w[b, k] = <grad_out[b], values[indices[b, k]]>`` (B, K), accumulated in fp32."""
    acc = accumulation_dtype(values.dtype)
    rows = values[indices].to(acc)  # (B, K, D)
    return torch.bmm(rows, grad_out.to(acc).unsqueeze(-1)).squeeze(-1)  # (B, K)


def values_grad_reference(
    num_rows: int,
    indices: torch.Tensor,
    weights: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    acc_dtype: torch.dtype = torch.float32,
    sparse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradient for the value table, accumulated in ``acc_dtype``.

    Dense: ``(num_rows, D)`` with ``grad[n] = sum over (b, k) with indices[b, k] == n
    of weights[b, k] * grad_out[b]``. Sparse: ``(rows, row_grads)``, the sorted
    unique rows touched and their gradients ``(U, D)``.
    """
    D = grad_out.shape[-1]
    contrib = (weights.to(acc_dtype).unsqueeze(-1) * grad_out.to(acc_dtype).unsqueeze(1))
    contrib = contrib.reshape(-1, D)  # (B*K, D)
    flat = indices.reshape(-1).long()
    if sparse:
        rows, inverse = torch.unique(flat, return_inverse=True)
        row_grads = torch.zeros(rows.numel(), D, dtype=acc_dtype, device=grad_out.device)
        return rows, row_grads.index_add_(0, inverse, contrib)
    dense = torch.zeros(num_rows, D, dtype=acc_dtype, device=grad_out.device)
    return dense.index_add_(0, flat, contrib)


def sparse_rows_to_coo(
    rows: torch.Tensor, row_grads: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Pack sorted unique ``rows`` (U,) and their gradients (U, D) as a coalesced COO tensor.

    The result is what ``nn.Embedding(sparse=True)`` gives as a gradient: a sparse
    tensor of ``shape`` with ``sparse_dim=1`` whose ``.indices()[0]`` are the touched
    rows and ``.values()`` their (U, D) gradients, usable by ``torch.optim.SparseAdam``.
    """
    return torch.sparse_coo_tensor(
        rows.long().unsqueeze(0), row_grads, shape, is_coalesced=True, check_invariants=False
    )


class ReferenceLookup(torch.autograd.Function):
    """Autograd wrapper around the reference forward and backward (flattened inputs)."""

    @staticmethod
    def forward(ctx, values, indices, weights, sparse_grad):
        ctx.save_for_backward(values, indices, weights)
        ctx.sparse_grad = sparse_grad
        return lookup_forward_reference(values, indices, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        values, indices, weights = ctx.saved_tensors
        grad_values = grad_weights = None
        acc = accumulation_dtype(values.dtype)
        if ctx.needs_input_grad[0]:
            if ctx.sparse_grad:
                rows, row_grads = values_grad_reference(
                    values.shape[0], indices, weights, grad_out, acc_dtype=acc, sparse=True
                )
                grad_values = sparse_rows_to_coo(
                    rows, row_grads.to(values.dtype), tuple(values.shape)
                )
            else:
                grad_values = values_grad_reference(
                    values.shape[0], indices, weights, grad_out, acc_dtype=acc
                ).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_weights = weights_grad_reference(values, indices, grad_out).to(weights.dtype)
        return grad_values, None, grad_weights, None


def memory_lookup_reference(
    values: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    *,
    sparse_grad: bool = False,
    check_bounds: bool = True,
) -> torch.Tensor:
    """Reference memory lookup: ``(N, D), (..., K), (..., K) -> (..., D)``.

    Same contract as :func:`lamini_lite.kernels.memory_lookup` with
    ``backend="reference"``; differentiable w.r.t. ``values`` and ``weights``.
    With ``sparse_grad=True`` the gradient of ``values`` is a coalesced sparse
    COO tensor holding only the touched rows.
    """
    check_lookup_inputs(values, indices, weights, check_bounds=check_bounds)
    lead, K = indices.shape[:-1], indices.shape[-1]
    out = ReferenceLookup.apply(
        values, indices.reshape(-1, K), weights.reshape(-1, K), bool(sparse_grad)
    )
    return out.reshape(*lead, values.shape[1])
