"""MoME vs fine-tuning at equal recall (cost per fact), and lookup scaling.

Usage::

    python -m lamini_lite.bench mome [--facts 16] [--n-keys 1024] [--answer-chars 32]
                                     [--methods mome,top2,lora] [--scale] [--seed 0]

Each method runs in its own process (so peak RSS is its own) on SmolLM2-135M:
memorize the same random-answer facts until greedy recall is 100% (or the
budget ends) and report what it cost: parameters trained, model weights
changed (LoRA merged: its dense change of every adapted matrix), wall time
and peak RSS. ``--scale`` prints selection + lookup
time per token and the memory footprint as the expert count grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from ..experiments.ch05_mome import finetune_to_recall, lookup_scaling, weights_changed
from ..facts.synthetic import random_code_facts
from ..lm import fact_recall
from ..models import load_smollm2
from ..mome import MoMEConfig, add_memory_experts, memorize

__all__ = ["main", "run_method"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Fine-tuning baselines: method -> (finetune_qa trainable spec, learning rate).
BASELINES = {"top2": ("top:2", 1e-3), "lora": ("lora:8", 3e-3), "full": ("all", 3e-5)}


def run_method(method: str, n_facts: int, n_keys: int, answer_chars: int, seed: int,
               budget_s: float) -> dict:
    """Memorize ``n_facts`` random facts with ``method`` ("mome" or a key of :data:`BASELINES`).

    Every method stops on the same rule, at the first epoch after which every
    fact is recalled (teacher-forced) with every answer token below ln 2
    (:func:`lamini_lite.experiments.ch05_mome.finetune_to_recall` for fine-tuning), or when
    ``budget_s`` is spent; the final recall is measured by greedy decoding.
    """
    prompts, answers, _ = random_code_facts(n_facts, answer_chars=answer_chars, seed=seed)
    if method == "mome":
        model, tok = load_smollm2()
        t0 = time.perf_counter()
        add_memory_experts(model, MoMEConfig.preset("scale", n_keys=n_keys), tokenizer=tok)
        res = memorize(model, tok, prompts, answers, max_epochs=100, max_seconds=budget_s,
                       progress=False, seed=seed)  # ends with a greedy check of every fact
        recall, updated, epochs = res.recall, res.params_updated, res.epochs
        wall = time.perf_counter() - t0
    elif method in BASELINES:
        trainable, lr = BASELINES[method]
        model, tok, info = finetune_to_recall({"prompts": prompts, "answers": answers},
                                              trainable, lr=lr, max_epochs=200, seed=seed,
                                              max_seconds=budget_s, progress=False)
        t1 = time.perf_counter()  # the same final greedy check as memorize's
        recall = sum(fact_recall(model, tok, prompts, answers)) / len(prompts)
        epochs, updated = info["epochs"], info["params_updated"]
        wall = info["seconds"] + time.perf_counter() - t1
    else:
        raise ValueError(f"unknown method {method!r}; expected mome or one of "
                         f"{sorted(BASELINES)}")
    peak = round(_peak_rss_mb())  # before weights_changed loads a reference copy
    return {"method": method, "facts": n_facts, "recall": recall, "epochs": epochs,
            "params_updated": int(updated), "weights_changed": weights_changed(model),
            "wall_s": round(wall, 1), "peak_rss_mb": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lamini_lite.bench mome", description=__doc__)
    ap.add_argument("--facts", type=int, default=16)
    ap.add_argument("--n-keys", type=int, default=1024, help="sqrt of the expert count")
    ap.add_argument("--answer-chars", type=int, default=32)
    ap.add_argument("--methods", default="mome,top2")
    ap.add_argument("--budget-s", type=float, default=420.0, help="per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", action="store_true", help="also run the lookup scaling table")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(run_method(a.worker, a.facts, a.n_keys, a.answer_chars,
                                                a.seed, a.budget_s)), flush=True)
        return 0
    rows = []
    for m in [m.strip() for m in a.methods.split(",") if m.strip()]:
        cmd = [sys.executable, "-m", "lamini_lite.bench", "mome", "--worker", m,
               "--facts", str(a.facts), "--n-keys", str(a.n_keys), "--answer-chars",
               str(a.answer_chars), "--seed", str(a.seed), "--budget-s", str(a.budget_s)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{m}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'method':8s} {'recall':>7s} {'params trained':>15s} {'weights changed':>16s} "
          f"{'wall s':>8s} {'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['method']:8s} {r['recall']:7.2f} {r['params_updated']:15,d} "
              f"{r['weights_changed']:16,d} {r['wall_s']:8.1f} {r['peak_rss_mb']:12,d}")
    if a.scale:
        print(f"\n{'experts':>10s} {'us/token':>9s} {'selector MB':>12s} {'store MB':>9s} "
              f"{'dense MB':>9s}")
        for r in lookup_scaling([10, 12, 14, 16, 18, 20]):
            print(f"{r['experts']:10,d} {r['us_per_token']:9.1f} {r['selector_mb']:12.1f} "
                  f"{r['store_mb']:9.1f} {r['dense_values_mb']:9.0f}")
    return 0
