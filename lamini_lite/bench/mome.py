"""MoME vs fine-tuning at equal recall (cost per fact), lookup scaling, and the editing triangle.

Usage::

    python -m lamini_lite.bench mome [--facts 16] [--n-keys 1024] [--answer-chars 32]
                                     [--methods mome,top2,lora] [--scale] [--seed 0]
    python -m lamini_lite.bench mome --triangle [--facts 24] [--gates match,written,none]
                                     [--batches 1] [--paraphrases] [--keep-stored]
                                     [--seed 0]

Each method runs in its own process (so peak RSS is its own) on SmolLM2-135M:
memorize the same random-answer facts until greedy recall is 100% (or the
budget ends) and report what it cost: parameters trained, model weights
changed (LoRA merged: its dense change of every adapted matrix), wall time
and peak RSS. ``--scale`` prints selection + lookup
time per token and the memory footprint as the expert count grows.

``--triangle`` scores MoME (one run per gate) in the model-editing literature's
terms with :mod:`lamini_lite.editing`: invented facts (made-up subjects, random
codes) stored in ``--batches`` sequential batches, then reliability (the stored
wording), generality (3 held-out wordings each) and locality (the stored wording
about other made-up subjects, unrelated questions, facts SmolLM2 answers right,
text loss), every answer greedy-decoded to the end of its line, 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from ..editing import (QA_EXEMPLARS, WORDINGS, Probes, TriangleScores, invented_edits,
                       measure_baseline, sequential_edits)
from ..experiments.ch05_mome import (HELD_OUT_TEXT, UNRELATED_QUESTIONS, finetune_to_recall,
                                     lookup_scaling, weights_changed)
from ..facts import exact_match, qa_prompt
from ..facts.synthetic import random_code_facts
from ..lm import fact_recall
from ..models import load_smollm2
from ..mome import MoMEConfig, add_memory_experts, memorize

__all__ = ["main", "run_method", "triangle_bench", "KNOWN_CANDIDATES"]

# Well-known facts; the triangle keeps those SmolLM2 answers right as "facts it knew".
KNOWN_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of China?", ("Beijing",)),
    ("Which continent is Kenya located in?", ("Africa",)),
    ("Which continent is Germany located in?", ("Europe",)),
    ("Which continent is Japan located in?", ("Asia",)),
    ("Which country is Munich located in?", ("Germany",)),
    ("Which country is Osaka located in?", ("Japan",)),
    ("Which country is Chicago located in?", ("United States", "USA")),
)


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


def _triangle_probes(model, tok, neighbours, n_unrelated: int) -> Probes:
    """The locality probes: ``neighbours`` (prompts), unrelated questions, known facts."""
    known = [(qa_prompt(q, QA_EXEMPLARS), list(a)) for q, a in KNOWN_CANDIDATES]
    said = measure_baseline(model, tok, Probes([], [], [p for p, _ in known],
                                               [a for _, a in known])).known
    known = [(p, a) for (p, a), s in zip(known, said) if exact_match(s, a)]
    return Probes(list(neighbours), [f"Q: {q}\nA:" for q in UNRELATED_QUESTIONS[:n_unrelated]],
                  [p for p, _ in known], [a for _, a in known], list(HELD_OUT_TEXT))


def triangle_bench(n_facts: int = 24, gates: tuple[str, ...] = ("match", "written", "none"), *,
                   n_batches: int = 1, answer_chars: int = 8, n_neighbours: int = 24,
                   n_unrelated: int = 30, paraphrases: bool = False,
                   keep_stored: bool = False, seed: int = 0) -> dict[str, list[TriangleScores]]:
    """For each gate: store ``n_facts`` invented facts in MoME (book preset) in ``n_batches``
    sequential batches and score the triangle after each batch.

    With ``paraphrases`` every fact is also trained in its relation's trainable
    paraphrases (:data:`lamini_lite.editing.WORDINGS`; never the held-out ones);
    ``keep_stored`` is :class:`lamini_lite.mome.MemorizeConfig`'s.
    """
    edits = invented_edits(n_facts + n_neighbours, answer_chars=answer_chars, seed=seed)
    stored, others = edits[:n_facts], edits[n_facts:]
    model, tok = load_smollm2()
    probes = _triangle_probes(model, tok, [e.prompt() for e in others], n_unrelated)
    baseline = measure_baseline(model, tok, probes)

    def apply(m, t, batch):
        wordings = [None, *(WORDINGS["access_code"].paraphrases if paraphrases else ())]
        pairs = [(e.prompt(w), e.answer) for e in batch for w in wordings]
        memorize(m, t, [p for p, _ in pairs], [a for _, a in pairs], seed=seed, progress=False,
                 keep_stored=keep_stored)

    out = {}
    for gate in gates:
        model, tok = load_smollm2()
        add_memory_experts(model, MoMEConfig.preset("book", gate=gate), tokenizer=tok)
        out[gate] = sequential_edits(model, tok, stored, apply, probes, n_batches=n_batches,
                                     baseline=baseline, seed=seed)
    return out


def _print_triangle(results: dict[str, list[TriangleScores]]) -> None:
    """One row per (gate, batch): each share with its 95% interval."""
    cols = ["reliability", "generality", "neighbours_unchanged", "unrelated_unchanged",
            "known_unchanged"]
    print(f"{'gate':8s} {'edits':>5s} " + " ".join(f"{c:>22s}" for c in cols)
          + f" {'text loss delta':>16s}")
    for gate, rows in results.items():
        for r in rows:
            cells = [getattr(r, c) for c in cols]
            delta = r.text_loss_delta if r.text_loss_delta is not None else float("nan")
            print(f"{gate:8s} {r.n_edits:5d} "
                  + " ".join(f"{c.estimate:6.1%} [{c.low:5.1%}, {c.high:5.1%}]"
                             for c in cells) + f" {delta:16.4f}")
        last = rows[-1].details["reliable"]
        if len(rows) > 1:  # reliability at the end, by the batch each fact was stored in
            bounds = [r.n_edits for r in rows]
            shares = [sum(last[lo:hi]) / (hi - lo) for lo, hi in zip([0] + bounds[:-1], bounds)]
            print(f"{gate:8s} reliability at the end by batch stored: "
                  + " ".join(f"{x:.0%}" for x in shares))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lamini_lite.bench mome", description=__doc__)
    ap.add_argument("--facts", type=int, default=None,
                    help="facts to memorize (default 16; 24 with --triangle)")
    ap.add_argument("--n-keys", type=int, default=1024, help="sqrt of the expert count")
    ap.add_argument("--answer-chars", type=int, default=32)
    ap.add_argument("--methods", default="mome,top2")
    ap.add_argument("--budget-s", type=float, default=420.0, help="per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", action="store_true", help="also run the lookup scaling table")
    ap.add_argument("--triangle", action="store_true",
                    help="score reliability / generality / locality of MoME per gate")
    ap.add_argument("--gates", default="match,written,none", help="with --triangle")
    ap.add_argument("--batches", type=int, default=1, help="with --triangle: sequential batches")
    ap.add_argument("--paraphrases", action="store_true",
                    help="with --triangle: also train each fact in the trainable paraphrases")
    ap.add_argument("--keep-stored", action="store_true",
                    help="with --triangle: freeze the rows of facts stored by earlier batches")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.facts is None:
        a.facts = 24 if a.triangle else 16
    if a.facts < 1:
        ap.error(f"--facts must be >= 1, got {a.facts}")
    if a.triangle:
        gates = tuple(g.strip() for g in a.gates.split(",") if g.strip())
        _print_triangle(triangle_bench(a.facts, gates, n_batches=a.batches,
                                       paraphrases=a.paraphrases,
                                       keep_stored=a.keep_stored, seed=a.seed))
        return 0
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
