"""SliCK estimator vs a plain generate() loop: facts per minute on SmolLM2.

Runs SliCK's full protocol (10 prompts x (1 greedy + 16 samples)) on the same
real facts twice: with :func:`lamini_lite.slick.categorize` (shared prompt
runs, tree decoding from the KV cache) and with a plain loop that calls
``model.generate`` once per prompt and per answer. Checks that both give the
same greedy answers (hence the same P(T=0)) and prints facts per minute for
each and the speed-up. Usage::

    python -m lamini_lite.bench slick [--facts N] [--threads T] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig

from ..models import load_smollm2
from ..profiles import sizes
from ..experiments import common as _common  # noqa: F401  (registers the "slick" sizes)
from ..facts.real import load_real_facts
from ..slick import SliCKProtocol, answer_stop_ids, answer_text, build_prompts, categorize


def plain_loop(model, tokenizer, prompts, protocol: SliCKProtocol, seed: int = 0):
    """The straightforward way: one ``generate`` call per prompt and per answer."""
    stop = sorted(answer_stop_ids(tokenizer).tolist())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    common = dict(max_new_tokens=protocol.max_new_tokens, eos_token_id=stop, pad_token_id=pad)
    greedy_cfg = GenerationConfig(do_sample=False, **common)
    sample_cfg = GenerationConfig(do_sample=True, temperature=protocol.temperature,
                                  top_k=protocol.top_k, top_p=1.0, **common)
    torch.manual_seed(seed)
    greedy, samples = [], []
    with torch.no_grad():
        for fp in prompts:
            g_row, s_row = [], []
            for block, tail in fp:
                ids = tokenizer(block + tail, add_special_tokens=False,
                                return_tensors="pt")["input_ids"]
                mask = torch.ones_like(ids)
                out = model.generate(ids, attention_mask=mask, generation_config=greedy_cfg)
                g_row.append(answer_text(tokenizer, out[0, ids.shape[1]:].tolist()))
                s = []
                for _ in range(protocol.n_samples):
                    out = model.generate(ids, attention_mask=mask, generation_config=sample_cfg)
                    s.append(answer_text(tokenizer, out[0, ids.shape[1]:].tolist()))
                s_row.append(s)
            greedy.append(g_row)
            samples.append(s_row)
    return greedy, samples


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 if the greedy answers agree, 1 otherwise."""
    ap = argparse.ArgumentParser(prog="python -m lamini_lite.bench slick", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=None,
                    help="facts to categorize (default: the profile's bench_facts)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exemplar-sets", type=int, default=50,
                    help="also time the estimator with this many shared exemplar sets per "
                         "relation (0: skip)")
    args = ap.parse_args(argv)
    n = args.facts if args.facts is not None else sizes("slick").bench_facts
    if n < 1:
        ap.error(f"--facts must be >= 1, got {n}")
    if args.threads:
        torch.set_num_threads(args.threads)

    pool = load_real_facts("capital", per_relation=max(60, n + 10), seed=args.seed)
    facts = pool[:: max(1, len(pool) // n)][:n]
    model, tok = load_smollm2()
    proto = SliCKProtocol()
    print(f"SliCK benchmark: {n} facts x {proto.n_prompts} prompts x (1 greedy + "
          f"{proto.n_samples} samples), SmolLM2-135M, {torch.get_num_threads()} threads",
          flush=True)

    t = time.perf_counter()
    res = categorize(model, tok, facts, proto, exemplars=pool, seed=args.seed, cache=False,
                     progress=False, model_fingerprint="bench")
    t_est = time.perf_counter() - t
    print(f"  slick.categorize    : {t_est:8.1f} s  {60 * n / t_est:8.2f} facts/min", flush=True)
    prompts = build_prompts(facts, proto, exemplars=pool, seed=args.seed)
    t = time.perf_counter()
    greedy, samples = plain_loop(model, tok, prompts, proto, seed=args.seed)
    t_plain = time.perf_counter() - t

    same_greedy = sum(a == b for x, y in zip(res.greedy, greedy) for a, b in zip(x, y))
    total = n * proto.n_prompts
    p0_plain = [sum(f.is_correct(a) for a in g) / proto.n_prompts for f, g in zip(facts, greedy)]
    same_p0 = sum(abs(a - b) < 1e-12 for a, b in zip(res.p_greedy, p0_plain))
    print(f"  plain generate loop : {t_plain:8.1f} s  {60 * n / t_plain:8.2f} facts/min")
    print(f"  speed-up of slick.categorize over the plain loop: x{t_plain / t_est:.1f}",
          flush=True)
    if args.exemplar_sets:
        shared = SliCKProtocol(exemplar_sets=args.exemplar_sets)
        t = time.perf_counter()
        categorize(model, tok, facts, shared, exemplars=pool, seed=args.seed, cache=False,
                   progress=False, model_fingerprint="bench")
        t_sh = time.perf_counter() - t
        print(f"  ... exemplar_sets={args.exemplar_sets:<3d}: {t_sh:8.1f} s  "
              f"{60 * n / t_sh:8.2f} facts/min   speed-up x{t_plain / t_sh:.1f}")
    print(f"  greedy answers identical: {same_greedy}/{total};  P(T=0) identical: "
          f"{same_p0}/{n};  categories: {res.categories}")
    return 0 if same_greedy == total else 1
