"""Memory-lookup kernels: GB/s and fraction of peak bandwidth vs embedding_bag and gather+einsum.

Usage: ``python -m lamini_lite.bench kernels [--quick] [--peak-gbs X] [--cpu]``.
Needs a CUDA GPU for the Triton numbers; without one it says so and exits 0
(``--cpu`` then times the PyTorch reference against embedding_bag on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

# Peak HBM bandwidth in bytes/s of GPUs the book talks about (vendor figures).
PEAK_BANDWIDTH = {
    "H100-SXM": 3.35e12,  # HBM3
    "H100-PCIe": 2.0e12,  # HBM2e
    "H200": 4.8e12,  # HBM3e
    "A100-80GB": 2.039e12,  # HBM2e (SXM)
    "A100-40GB": 1.555e12,
    "L4": 0.3e12,  # GDDR6
}
# Dense bf16 tensor-core peak in FLOP/s (no sparsity), for the roofline ridge point.
PEAK_FLOPS_BF16 = {"H100-SXM": 989e12, "H100-PCIe": 756e12, "H200": 989e12,
                   "A100-80GB": 312e12, "A100-40GB": 312e12, "L4": 121e12}

_ELEMENT_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}


def _elt(dtype) -> int:
    if isinstance(dtype, int):
        return dtype
    if dtype not in _ELEMENT_BYTES:
        raise ValueError(f"dtype must be a float torch dtype or a byte count, got {dtype!r}")
    return _ELEMENT_BYTES[dtype]


def lookup_bytes(n_tokens: int, K: int, D: int, dtype=torch.bfloat16, *, pass_: str = "forward",
                 index_bytes: int = 8, weight_bytes: int = 4, gpu: str = "H100-SXM",
                 n_rows: int | None = None) -> dict:
    """Bytes one lookup must move through HBM, and the bandwidth-bound ideal time on ``gpu``.

    ``pass_="forward"``: read ``K`` value rows, ``K`` indices and weights per token,
    write one output row. ``pass_="backward"``: the weight gradient re-reads the
    ``K`` rows and the output gradient and writes ``K`` weights; the value
    gradient reads the output-gradient row once per use and writes at most
    ``K`` gradient rows per token (sparse gradient). With ``n_rows`` given, a
    dense gradient also zero-fills the ``(n_rows, D)`` table.
    Assumes no reuse through the cache (distinct rows), an upper bound on traffic
    only in that sense.

    Returns a dict: ``bytes``, ``flops`` (2 per multiply-add), ``intensity``
    (FLOP/byte), ``ideal_s`` (bytes / peak bandwidth), ``ridge`` (the FLOP/byte
    at which ``gpu`` stops being bandwidth bound) and ``peak_bytes_per_s``.
    """
    if gpu not in PEAK_BANDWIDTH:
        raise ValueError(f"gpu must be one of {sorted(PEAK_BANDWIDTH)}, got {gpu!r}")
    for name, v in (("n_tokens", n_tokens), ("K", K), ("D", D)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    e = _elt(dtype)
    uses = n_tokens * K
    if pass_ == "forward":
        nbytes = uses * (D * e + index_bytes + weight_bytes) + n_tokens * D * e
        flops = 2 * uses * D
    elif pass_ == "backward":
        weights_grad = uses * (D * e + index_bytes + weight_bytes) + n_tokens * D * e
        values_grad = uses * (D * e + index_bytes + weight_bytes) + uses * D * e
        nbytes = weights_grad + values_grad + (n_rows * D * e if n_rows else 0)
        flops = 4 * uses * D
    else:
        raise ValueError(f"pass_ must be 'forward' or 'backward', got {pass_!r}")
    peak = PEAK_BANDWIDTH[gpu]
    return {
        "bytes": nbytes,
        "flops": flops,
        "intensity": flops / max(nbytes, 1),
        "ideal_s": nbytes / peak,
        "ridge": PEAK_FLOPS_BF16[gpu] / peak,
        "peak_bytes_per_s": peak,
    }


@dataclasses.dataclass
class BenchConfig:
    """One benchmark size."""

    n_rows: int = 2**20  # rows N of the value table
    D: int = 1024  # row width
    K: int = 32  # rows read per token
    n_tokens: int = 4096  # queries per call
    dtype: torch.dtype = torch.bfloat16  # value dtype (weights are float32)


def default_configs(quick: bool = False) -> list[BenchConfig]:
    """N = 2^20 rows, D = 1024..4096, K = 32..128 (``quick``: a 3-size subset)."""
    if quick:
        return [BenchConfig(D=1024, K=32), BenchConfig(D=4096, K=32), BenchConfig(D=1024, K=128)]
    return [BenchConfig(D=d, K=k) for d in (1024, 2048, 4096) for k in (32, 128)]


def _gpu_name() -> str | None:
    name = torch.cuda.get_device_name()
    for key, label in (("H200", "H200"), ("H100 PCIe", "H100-PCIe"), ("H100", "H100-SXM"),
                       ("A100-SXM4-40GB", "A100-40GB"), ("A100", "A100-80GB"), ("L4", "L4")):
        if key in name:
            return label
    return None


def _baselines(values, indices, weights):
    import torch.nn.functional as F

    from lamini_lite.kernels import memory_lookup

    def ebag(v, i, w):
        return F.embedding_bag(i, v, per_sample_weights=w.to(v.dtype), mode="sum")

    def einsum(v, i, w):
        return torch.einsum("bk,bkd->bd", w.to(v.dtype), v[i])

    return {
        "triton": lambda v, i, w: memory_lookup(v, i, w, check_bounds=False),
        "triton-atomic": lambda v, i, w: memory_lookup(v, i, w, backward="atomic",
                                                       check_bounds=False),
        "embedding_bag": ebag,
        "gather+einsum": einsum,
    }


def run_gpu_benchmark(configs: list[BenchConfig], peak_bytes_per_s: float | None = None,
                      seed: int = 0) -> list[dict]:
    """Time forward and forward+backward of each method on the current CUDA GPU.

    Returns one dict per (config, method, pass) with ``ms``, ``GB/s`` (ideal bytes
    from :func:`lookup_bytes` / measured time) and ``frac_peak``.
    """
    import triton.testing
    from tqdm.auto import tqdm

    label = _gpu_name()
    peak = peak_bytes_per_s or (PEAK_BANDWIDTH[label] if label else None)
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for cfg in tqdm(configs, desc="lookup benchmark"):
        values = torch.randn(cfg.n_rows, cfg.D, device="cuda", dtype=cfg.dtype, generator=gen)
        indices = torch.randint(0, cfg.n_rows, (cfg.n_tokens, cfg.K), device="cuda",
                                generator=gen)
        weights = torch.randn(cfg.n_tokens, cfg.K, device="cuda", generator=gen)
        grad = torch.randn(cfg.n_tokens, cfg.D, device="cuda", dtype=cfg.dtype, generator=gen)
        values.requires_grad_(True)
        weights.requires_grad_(True)
        for method, fn in _baselines(values, indices, weights).items():
            for pass_ in ("forward", "backward"):
                if method == "triton-atomic" and pass_ == "forward":
                    continue  # same forward kernel as "triton"
                if pass_ == "forward":
                    def step(fn=fn):
                        with torch.no_grad():
                            fn(values, indices, weights)
                else:
                    out = fn(values, indices, weights)

                    def step(out=out):
                        values.grad = weights.grad = None
                        out.backward(grad, retain_graph=True)
                try:
                    ms = triton.testing.do_bench(step, warmup=10, rep=50)
                except torch.OutOfMemoryError:
                    ms = float("nan")
                # Sparse-gradient traffic plus the dense (N, D) gradient every method writes.
                nbytes = lookup_bytes(cfg.n_tokens, cfg.K, cfg.D, cfg.dtype, pass_=pass_,
                                      n_rows=cfg.n_rows if pass_ == "backward" else None
                                      )["bytes"]
                gbs = nbytes / (ms * 1e-3) / 1e9
                rows.append({"N": cfg.n_rows, "D": cfg.D, "K": cfg.K, "tokens": cfg.n_tokens,
                             "method": method, "pass": pass_, "ms": ms, "GB/s": gbs,
                             "frac_peak": gbs * 1e9 / peak if peak else float("nan")})
        del values, indices, weights, grad
        torch.cuda.empty_cache()
    return rows


def run_cpu_benchmark(n_tokens: int = 512, K: int = 32, D: int = 256, n_rows: int = 2**16,
                      repeats: int = 5, seed: int = 0) -> list[dict]:
    """Median forward time on CPU: the PyTorch reference vs embedding_bag vs gather+einsum."""
    import torch.nn.functional as F

    from lamini_lite.kernels import memory_lookup

    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n_rows, D, generator=g)
    indices = torch.randint(0, n_rows, (n_tokens, K), generator=g)
    weights = torch.randn(n_tokens, K, generator=g)
    fns = {
        "reference": lambda: memory_lookup(values, indices, weights),
        "embedding_bag": lambda: F.embedding_bag(indices, values, per_sample_weights=weights,
                                                 mode="sum"),
        "gather+einsum": lambda: torch.einsum("bk,bkd->bd", weights, values[indices]),
    }
    rows = []
    for name, fn in fns.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        ms = sorted(times)[len(times) // 2] * 1e3
        nbytes = lookup_bytes(n_tokens, K, D, torch.float32)["bytes"]
        rows.append({"method": name, "ms": ms, "GB/s": nbytes / (ms * 1e-3) / 1e9})
    return rows


def _print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    print("  ".join(f"{k:>13s}" for k in keys))
    for r in rows:
        print("  ".join(f"{v:>13.3f}" if isinstance(v, float) else f"{str(v):>13s}"
                        for v in r.values()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns an exit code."""
    p = argparse.ArgumentParser(prog="python -m lamini_lite.bench kernels",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 sizes instead of 6")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="peak bandwidth in GB/s (default: from the GPU's name)")
    p.add_argument("--cpu", action="store_true",
                   help="without a GPU, time the CPU reference vs embedding_bag")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU: the Triton kernels cannot be timed here (skipping).")
        if args.cpu:
            print("CPU forward, fp32, 512 tokens x K=32 x D=256, N=65536 "
                  "(timings include any load from other processes):")
            _print_rows(run_cpu_benchmark())
        return 0
    peak = args.peak_gbs * 1e9 if args.peak_gbs else None
    print(f"GPU: {torch.cuda.get_device_name()}")
    _print_rows(run_gpu_benchmark(default_configs(args.quick), peak))
    return 0


def summation_orders(n_terms: int, n_orders: int, seed: int = 0) -> torch.Tensor:
    """Sum the same float32 terms in ``n_orders`` random orders, one term at a time.

    This is what colliding atomic adds do: each order in which the adds land is
    a different sequence of float32 roundings. Terms are products of two
    normals (like ``w * grad_out``) spread over a few orders of magnitude.
    Returns the ``n_orders`` float32 sums.
    """
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    terms = torch.randn(n_terms, generator=g) * torch.exp(2 * torch.randn(n_terms, generator=g))
    sums = []
    for _ in range(n_orders):
        perm = torch.randperm(n_terms, generator=g)
        # numpy's add.accumulate adds left to right in float32 (torch's CPU cumsum
        # would accumulate in float64).
        sums.append(np.add.accumulate(terms[perm].numpy().astype(np.float32))[-1])
    return torch.from_numpy(np.array(sums, dtype=np.float32))
