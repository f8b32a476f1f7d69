"""Triton kernels for the memory lookup ``out[b] = sum_k w[b, k] * values[idx[b, k]]``.

Read top to bottom, in the order of Triton's tutorials:

1. the ``@triton.jit`` kernels -- forward, gradient of the weights, and two
   algorithms for the gradient of the value table (atomic scatter and a
   deterministic sort-then-reduce);
2. the host wrappers, which check inputs, allocate outputs and compute grids;
3. the ``torch.autograd.Function`` tying them together;
4. the functional entry point :func:`memory_lookup_triton`.

Every kernel works on flattened inputs: ``B`` queries, ``K`` rows each, rows of
width ``D`` (any ``D``: the last column block is masked). Sums run in
``ACC_DTYPE`` (float32; float64 only for float64 inputs under the interpreter).

Compiled or interpreted: the kernels below are decorated once, at import. The
host wrappers take ``interpret=``: ``False`` launches the compiled kernel (CUDA
tensors), ``True`` wraps the same Python function in Triton's interpreter and
runs it on CPU tensors, whatever ``TRITON_INTERPRET`` was when this module was
imported. Nothing runs on import.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .reference import accumulation_dtype, check_lookup_inputs, sparse_rows_to_coo

# ---------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------


@triton.jit
def lookup_fwd_kernel(
    values_ptr,  # (N, D) value table; row stride stride_vn, unit column stride
    indices_ptr,  # (B, K) int32 or int64 rows to read, contiguous
    weights_ptr,  # (B, K) weight of each read row, contiguous
    out_ptr,  # (B, D) output in the values' dtype, contiguous
    D,  # row width
    K,  # rows read per query
    stride_vn,  # elements between two rows of values
    BLOCK_K: tl.constexpr,  # rows gathered at once (a power of two)
    BLOCK_D: tl.constexpr,  # columns per program (a power of two)
    ACC_DTYPE: tl.constexpr,  # tl.float32 (tl.float64 for float64 inputs)
):
    """One program = one query ``b`` x one block of ``BLOCK_D`` columns."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_D,), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        mask_k = offs_k < K
        idx = tl.load(indices_ptr + pid_b * K + offs_k, mask=mask_k, other=0).to(tl.int64)
        w = tl.load(weights_ptr + pid_b * K + offs_k, mask=mask_k, other=0.0).to(ACC_DTYPE)
        # Gather a (BLOCK_K, BLOCK_D) tile: BLOCK_K independent row reads in flight.
        ptrs = values_ptr + idx[:, None] * stride_vn + offs_d[None, :]
        rows = tl.load(ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        acc += tl.sum(rows.to(ACC_DTYPE) * w[:, None], axis=0)
    tl.store(out_ptr + pid_b * D + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def lookup_bwd_weights_kernel(
    values_ptr,  # (N, D) value table; row stride stride_vn
    indices_ptr,  # (B, K) int32 or int64 rows read in the forward pass
    grad_out_ptr,  # (B, D) gradient of the output, contiguous
    grad_w_ptr,  # (B, K) gradient of the weights (output), contiguous
    D,
    K,
    stride_vn,
    BLOCK_K: tl.constexpr,  # weights per program
    BLOCK_D: tl.constexpr,  # columns per loop step
    ACC_DTYPE: tl.constexpr,
):
    """``grad_w[b, k] = <grad_out[b], values[idx[b, k]]>``; one program = one query x BLOCK_K rows."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    idx = tl.load(indices_ptr + pid_b * K + offs_k, mask=mask_k, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_K,), dtype=ACC_DTYPE)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        go = tl.load(grad_out_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC_DTYPE)
        ptrs = values_ptr + idx[:, None] * stride_vn + offs_d[None, :]
        rows = tl.load(ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        acc += tl.sum(rows.to(ACC_DTYPE) * go[None, :], axis=1)
    tl.store(grad_w_ptr + pid_b * K + offs_k, acc.to(grad_w_ptr.dtype.element_ty), mask=mask_k)


@triton.jit
def lookup_bwd_values_atomic_kernel(
    targets_ptr,  # (B, K) int32 or int64 row of grad_acc each use adds into
    weights_ptr,  # (B, K) weights of the forward pass
    grad_out_ptr,  # (B, D) gradient of the output, contiguous
    grad_acc_ptr,  # (R, D) float32 (float64) accumulator, zero-filled, contiguous
    D,
    K,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """Scatter ``w[b, k] * grad_out[b]`` into row ``targets[b, k]`` with atomic adds.

    Preferable when rows rarely collide (few uses per row) and sorting the
    ``B*K`` indices would cost as much as the scatter itself (small ``D``), and
    when run-to-run bit reproducibility does not matter: the order in which
    colliding atomics land changes from run to run, and float addition is not
    associative, so the last bits of the gradient change too. Rows used by many
    queries serialise on their atomics.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    go = tl.load(grad_out_ptr + pid_b * D + offs_d, mask=mask_d, other=0.0).to(ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        tgt = tl.load(targets_ptr + pid_b * K + offs_k, mask=mask_k, other=0).to(tl.int64)
        w = tl.load(weights_ptr + pid_b * K + offs_k, mask=mask_k, other=0.0).to(ACC_DTYPE)
        contrib = w[:, None] * go[None, :]  # (BLOCK_K, BLOCK_D)
        ptrs = grad_acc_ptr + tgt[:, None] * D + offs_d[None, :]
        tl.atomic_add(ptrs, contrib, mask=mask_k[:, None] & mask_d[None, :])


@triton.jit
def lookup_bwd_values_sorted_kernel(
    order_ptr,  # (B*K,) int64 reverse index: flat use ids b*K+k grouped by row
    seg_start_ptr,  # (U,) int64 where each used row's uses start in order (prefix sum)
    seg_count_ptr,  # (U,) int64 uses of each used row
    seg_dest_ptr,  # (U,) int64 row of grad_ptr each used row's sum is written to
    seg_order_ptr,  # (U,) int64 used rows by decreasing use count (load balance)
    weights_ptr,  # (B*K,) weights of the forward pass
    grad_out_ptr,  # (B, D) gradient of the output, contiguous
    grad_ptr,  # (R, D) gradient rows (output, values' dtype), contiguous
    D,
    K,
    BLOCK_M: tl.constexpr,  # uses summed per loop step
    BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """Deterministic gradient rows: one program sums all uses of one row, in a fixed order.

    Preferable by default: no float atomics, so the result is bit-identical
    from run to run; each gradient row is written once, already in the values'
    dtype (no float32 staging table for bf16/fp16), and the same kernel emits
    the compact ``(U, D)`` rows a sparse gradient needs. It costs a sort of the
    ``B*K`` indices. Programs are issued heaviest row first, so a row used by
    thousands of queries starts early instead of finishing last.
    """
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    seg = tl.load(seg_order_ptr + pid)
    start = tl.load(seg_start_ptr + seg)
    count = tl.load(seg_count_ptr + seg)
    dest = tl.load(seg_dest_ptr + seg)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_D,), dtype=ACC_DTYPE)
    for m0 in range(0, count, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < count
        use = tl.load(order_ptr + start + offs_m, mask=mask_m, other=0)  # flat b*K+k
        w = tl.load(weights_ptr + use, mask=mask_m, other=0.0).to(ACC_DTYPE)
        b = use // K
        ptrs = grad_out_ptr + b[:, None] * D + offs_d[None, :]
        go = tl.load(ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        acc += tl.sum(go.to(ACC_DTYPE) * w[:, None], axis=0)
    tl.store(grad_ptr + dest * D + offs_d, acc.to(grad_ptr.dtype.element_ty), mask=mask_d)


KERNELS = {
    "forward": lookup_fwd_kernel,
    "weights_grad": lookup_bwd_weights_kernel,
    "values_grad_atomic": lookup_bwd_values_atomic_kernel,
    "values_grad_sorted": lookup_bwd_values_sorted_kernel,
}

# ---------------------------------------------------------------------------
# 2. Host wrappers
# ---------------------------------------------------------------------------

# Block sizes. BLOCK_K=16 keeps 16 row reads in flight per program (enough to
# cover memory latency at K=32..128) while a (16, 256) fp32 tile costs 32
# registers per thread at 4 warps. BLOCK_D=256 columns = 512 B of a bf16 row,
# a few full 128-byte transactions per row read.
DEFAULT_BLOCK_K = 16
DEFAULT_BLOCK_D = 256


@functools.lru_cache(maxsize=None)
def _interpreted(fn):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


@contextlib.contextmanager
def _interpreter_mode():
    """Let Triton's interpreter run in a process whose ``triton.language`` was compiled-mode.

    Triton decides at decoration time whether a ``@triton.jit`` function is
    compiled or interpreted, and that includes its own standard library
    (``tl.sum``, ``tl.zeros``, ...), decorated when ``triton.language`` is first
    imported. To interpret a kernel in a process that imported Triton without
    ``TRITON_INTERPRET=1``, calls to those library functions are routed to the
    interpreter for the duration of the launch, and restored afterwards.
    """
    jit_cls = triton.runtime.jit.JITFunction
    saved_call = jit_cls.__call__
    runtime = triton.knobs.runtime
    had_knob = "interpret" in runtime.__dict__
    saved_knob = runtime.__dict__.get("interpret")

    def interpreted_call(self, *args, **kwargs):
        return _interpreted(self.fn)(*args, **kwargs)

    jit_cls.__call__ = interpreted_call
    runtime.__dict__["interpret"] = True  # without touching os.environ
    saved_lang = _snapshot_lang()
    try:
        yield
    finally:
        jit_cls.__call__ = saved_call
        if had_knob:
            runtime.__dict__["interpret"] = saved_knob
        else:
            runtime.__dict__.pop("interpret", None)
        _restore_lang(saved_lang)


def _lang_objects() -> list:
    """What Triton's interpreter patches: the language modules and its tensor classes."""
    objs = [tl, tl.core, tl.math, tl.core.tensor]
    base = getattr(tl.core, "tensor_descriptor_base", None)
    return objs + ([base] if base is not None else [])


def _snapshot_lang() -> list[tuple[object, dict]]:
    return [(obj, dict(vars(obj))) for obj in _lang_objects()]


def _restore_lang(snapshot: list[tuple[object, dict]]) -> None:
    """Undo attribute changes made since ``snapshot``.

    The interpreter patches ``triton.language`` (its builtins and ``tl.tensor``'s
    methods) when a jitted library function such as ``tl.sum`` is called from an
    interpreted kernel, and does not restore them; left in place, they break
    every later compilation in the same process (e.g. the ahead-of-time builds).
    Submodules imported meanwhile stay.
    """
    import types

    for obj, saved in snapshot:
        now = dict(vars(obj))
        for name, value in now.items():
            if name not in saved:
                if not isinstance(value, types.ModuleType):
                    delattr(obj, name)
            elif value is not saved[name]:
                setattr(obj, name, saved[name])
        for name, value in saved.items():
            if name not in now:
                setattr(obj, name, value)


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return triton.runtime.jit.JITFunction(fn)


def runnable(kernel, interpret: bool):
    """``kernel`` as Triton's interpreter (``interpret=True``) or as a compiled JIT function.

    Works whichever way ``kernel`` was decorated (with or without
    ``TRITON_INTERPRET=1`` at import time).
    """
    fn = getattr(kernel, "fn", kernel)
    if interpret:
        return _interpreted(fn)
    if isinstance(kernel, triton.runtime.jit.JITFunction):
        return kernel
    return _compiled(fn)


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


def _blocks(D: int, K: int, block_d: int | None, block_k: int | None) -> tuple[int, int]:
    bd = block_d or min(triton.next_power_of_2(D), DEFAULT_BLOCK_D)
    bk = block_k or min(triton.next_power_of_2(K), DEFAULT_BLOCK_K)
    for name, v in (("block_d", bd), ("block_k", bk)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v}")
    return bd, bk


def _launch_ctx(t: torch.Tensor, interpret: bool):
    if interpret:
        return _interpreter_mode()
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def lookup_forward(values, indices, weights, *, interpret=False, block_d=None, block_k=None):
    """Forward: ``values`` (N, D), ``indices``/``weights`` (B, K) -> (B, D) in values' dtype."""
    B, K = indices.shape
    D = values.shape[1]
    out = torch.empty((B, D), dtype=values.dtype, device=values.device)
    if B == 0 or D == 0:
        return out.zero_()
    bd, bk = _blocks(D, K, block_d, block_k)
    grid = (B, triton.cdiv(D, bd))
    with _launch_ctx(values, interpret):
        runnable(lookup_fwd_kernel, interpret)[grid](
            values, indices, weights, out, D, K, values.stride(0),
            BLOCK_K=bk, BLOCK_D=bd, ACC_DTYPE=_tl_acc(values.dtype),
        )
    return out


def lookup_weights_grad(values, indices, grad_out, weights_dtype, *, interpret=False,
                        block_d=None, block_k=None):
    """Gradient of the weights (B, K) in ``weights_dtype``."""
    B, K = indices.shape
    D = values.shape[1]
    grad_w = torch.empty((B, K), dtype=weights_dtype, device=values.device)
    if B == 0 or D == 0:
        return grad_w.zero_()
    bd, bk = _blocks(D, K, block_d, block_k)
    grid = (B, triton.cdiv(K, bk))
    with _launch_ctx(values, interpret):
        runnable(lookup_bwd_weights_kernel, interpret)[grid](
            values, indices, grad_out, grad_w, D, K, values.stride(0),
            BLOCK_K=bk, BLOCK_D=bd, ACC_DTYPE=_tl_acc(values.dtype),
        )
    return grad_w


def lookup_values_grad(values, indices, weights, grad_out, *, algorithm="deterministic",
                       sparse=False, interpret=False, block_d=None, block_k=None):
    """Gradient of the value table.

    Returns a dense ``(N, D)`` tensor in the values' dtype, or, with
    ``sparse=True``, ``(rows, row_grads)``: the sorted unique rows used (U,) and
    their gradients (U, D).
    """
    B, K = indices.shape
    N, D = values.shape
    dev, acc = values.device, accumulation_dtype(values.dtype)
    flat = indices.reshape(-1)
    bd, bk = _blocks(max(D, 1), K, block_d, block_k)
    if algorithm == "atomic":
        if sparse:
            rows, targets = torch.unique(flat, return_inverse=True)  # (U,), (B*K,)
            targets = targets.reshape(B, K)
        else:
            rows, targets = None, indices
        R = N if rows is None else rows.numel()
        grad_acc = torch.zeros((R, D), dtype=acc, device=dev)
        if B > 0 and D > 0:
            with _launch_ctx(values, interpret):
                runnable(lookup_bwd_values_atomic_kernel, interpret)[(B, triton.cdiv(D, bd))](
                    targets, weights, grad_out, grad_acc, D, K,
                    BLOCK_K=bk, BLOCK_D=bd, ACC_DTYPE=_tl_acc(values.dtype),
                )
        grad = grad_acc.to(values.dtype)
        return (rows, grad) if sparse else grad
    if algorithm != "deterministic":
        raise ValueError(f"algorithm must be 'deterministic' or 'atomic', got {algorithm!r}")
    # Counting-sort bookkeeping, all on the device:
    #   reverse index   order[j]  = flat use ids (b*K+k) grouped by row (a stable
    #                               sort, so uses of a row keep their query order);
    #   uses per row    counts[u] for each used row rows[u];
    #   prefix sum      starts[u] = where row u's uses begin in order;
    #   load balance    seg_order = used rows, most-used first.
    sorted_rows, order = torch.sort(flat.long(), stable=True)
    rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    seg_order = torch.argsort(counts, descending=True, stable=True)
    U = rows.numel()
    if sparse:
        dest = torch.arange(U, device=dev)
        grad = torch.empty((U, D), dtype=values.dtype, device=dev)
    else:
        dest = rows
        grad = torch.zeros((N, D), dtype=values.dtype, device=dev)
    if U > 0 and D > 0:
        with _launch_ctx(values, interpret):
            runnable(lookup_bwd_values_sorted_kernel, interpret)[(U, triton.cdiv(D, bd))](
                order, starts, counts, dest, seg_order, weights, grad_out, grad, D, K,
                BLOCK_M=bk, BLOCK_D=bd, ACC_DTYPE=_tl_acc(values.dtype),
            )
    return (rows, grad) if sparse else grad


# ---------------------------------------------------------------------------
# 3. Autograd
# ---------------------------------------------------------------------------


class TritonLookup(torch.autograd.Function):
    """Forward and first-order backward of the lookup with the Triton kernels."""

    @staticmethod
    def forward(ctx, values, indices, weights, algorithm, sparse_grad, interpret, block_d,
                block_k):
        # values (N, D); indices, weights (B, K) contiguous
        ctx.save_for_backward(values, indices, weights)
        ctx.opts = (algorithm, sparse_grad, interpret, block_d, block_k)
        return lookup_forward(values, indices, weights, interpret=interpret,
                              block_d=block_d, block_k=block_k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        values, indices, weights = ctx.saved_tensors
        algorithm, sparse_grad, interpret, block_d, block_k = ctx.opts
        grad_out = grad_out.contiguous()  # (B, D)
        blocks = dict(interpret=interpret, block_d=block_d, block_k=block_k)
        grad_values = grad_weights = None
        if ctx.needs_input_grad[0]:
            res = lookup_values_grad(values, indices, weights, grad_out, algorithm=algorithm,
                                     sparse=sparse_grad, **blocks)
            grad_values = (sparse_rows_to_coo(res[0], res[1], tuple(values.shape))
                           if sparse_grad else res)
        if ctx.needs_input_grad[2]:
            grad_weights = lookup_weights_grad(values, indices, grad_out, weights.dtype,
                                               **blocks)
        return grad_values, None, grad_weights, None, None, None, None, None


# ---------------------------------------------------------------------------
# 4. Functional entry point
# ---------------------------------------------------------------------------


def memory_lookup_triton(
    values: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    *,
    backward: str = "deterministic",
    sparse_grad: bool = False,
    check_bounds: bool = True,
    interpret: bool | None = None,
    block_d: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """The lookup with the Triton kernels: ``(N, D), (..., K), (..., K) -> (..., D)``.

    ``interpret=None`` picks Triton's interpreter for CPU tensors and the
    compiled kernels for CUDA tensors. ``block_d``/``block_k`` (powers of two)
    override the block sizes (tests use small ones to cover several masked
    blocks with tiny shapes). Float64 inputs are accepted only by the
    interpreter (for gradcheck). See :func:`lamini_lite.kernels.memory_lookup`
    for the other arguments.
    """
    if backward not in ("deterministic", "atomic"):
        raise ValueError(f"backward must be 'deterministic' or 'atomic', got {backward!r}")
    if interpret is None:
        interpret = not values.is_cuda
    if not interpret and not values.is_cuda:
        raise ValueError(f"compiled Triton kernels need CUDA tensors, got {values.device}")
    check_lookup_inputs(values, indices, weights, allow_float64=bool(interpret),
                        check_bounds=check_bounds)
    if values.stride(1) != 1:
        values = values.contiguous()
    lead, K = indices.shape[:-1], indices.shape[-1]
    out = TritonLookup.apply(
        values, indices.reshape(-1, K).contiguous(), weights.reshape(-1, K).contiguous(),
        backward, bool(sparse_grad), bool(interpret), block_d, block_k,
    )
    return out.reshape(*lead, values.shape[1])
