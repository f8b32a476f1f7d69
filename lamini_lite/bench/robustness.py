"""Every chapter's claims on several seeds: does each hold on all of them, and by how much?

Executes each chapter notebook in the ``ci`` profile once per seed, with
``LAMINI_LITE_SEED`` set (the seed changes the synthetic world, its
pretraining, the fact draws and the sampling: what another machine could
perturb) and the claims recorded instead of raised, so that one run of a
notebook measures all of its claims. Prints one row per claim: the value per
seed, the threshold and the worst margin. Exits 1 if any claim fails on any
seed (or a notebook stops with an error), and ends with the line
``robustness: N of M claims hold on every seed``. Usage::

    python -m lamini_lite.bench robustness --seeds 0,1,2,3,4 [--chapters 01,03] [--jobs 2]

The notebooks check the very same claims (``lamini_lite.claims.check``), so
the command and the book cannot disagree about what a claim is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..claims import LOG_ENV, MODE_ENV
from ..seeding import SEED_ENV

BOOK = Path(__file__).resolve().parents[2] / "book"


def _notebooks(chapters: list[str] | None, book: Path) -> list[Path]:
    found = sorted(book.glob("*.ipynb"))
    if not found:
        raise SystemExit(f"--book {book}: expected a folder with the chapter notebooks")
    if not chapters:
        return found
    picked = []
    for c in chapters:
        hits = [p for p in found if p.stem.startswith(c)]
        if not hits:
            raise SystemExit(f"--chapters: no notebook in {book} starts with {c!r}; "
                             f"notebooks: {', '.join(p.stem for p in found)}")
        picked += [h for h in hits if h not in picked]
    return picked


def _execute(nb: Path, seed: int, log: Path, timeout: int,
             notebook_timeout: int = 1200) -> tuple[str, int, float, str]:
    """Run one notebook for one seed in a fresh kernel; return (name, seed, seconds, error).

    A run that takes longer than ``notebook_timeout`` seconds in all is stopped and
    run once more from the start (its claim log emptied first). Rarely, the client
    and an idle kernel both wait for a message that never comes, after the notebook's
    work is done; the error names the run that was retried, and a second time-out is a
    failure.
    """
    env = dict(os.environ, LAMINI_LITE_PROFILE="ci", **{SEED_ENV: str(seed), LOG_ENV: str(log),
                                                        MODE_ENV: "record"},
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    code = ("import sys, nbformat\n"
            "from nbclient import NotebookClient\n"
            "nb = nbformat.read(sys.argv[1], as_version=4)\n"
            "NotebookClient(nb, timeout=int(sys.argv[2]), kernel_name='python3',\n"
            "               resources={'metadata': {'path': sys.argv[3]}}).execute()\n")
    t0 = time.time()
    for attempt in (1, 2):
        log.unlink(missing_ok=True)
        # its own process group, so that a stopped run takes its kernel with it
        proc = subprocess.Popen([sys.executable, "-c", code, str(nb), str(timeout),
                                 str(nb.parent)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=notebook_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            print(f"  {nb.stem} seed {seed}: no end after {notebook_timeout} s "
                  f"(attempt {attempt} of 2)", flush=True)
            continue
        err = ""
        if proc.returncode != 0:
            lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
            err = " | ".join(lines[-3:])[-400:] or f"exit {proc.returncode}"
        return nb.stem, seed, time.time() - t0, err
    return nb.stem, seed, time.time() - t0, f"timed out twice ({notebook_timeout} s each)"


def _pretrain(seed: int) -> str:
    """Pretrain (or load) the ci synthetic backbone of ``seed`` once, before the notebooks
    that share it run side by side; returns an error line or ''."""
    env = dict(os.environ, LAMINI_LITE_PROFILE="ci", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = ("import sys; from lamini_lite.experiments.common import load_backbone; "
            "load_backbone(seed=int(sys.argv[1]), progress=False)")
    proc = subprocess.run([sys.executable, "-c", code, str(seed)], env=env,
                          capture_output=True, text=True)
    return "" if proc.returncode == 0 else (proc.stderr or "").strip()[-400:]


def _read(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _table(rows: dict, seeds: list[int]) -> tuple[list[list[str]], int, int]:
    """Rows (chapter, claim, value per seed, threshold, worst margin, ok) and counts."""
    out, n_ok = [], 0
    for (chapter, claim), per_seed in sorted(rows.items()):
        checks = [c for s in seeds for c in per_seed.get(s, [])]
        missing = [s for s in seeds if not per_seed.get(s)]
        ok = not missing and all(c["holds"] for c in checks)
        n_ok += ok
        first = checks[0] if checks else {}
        unit = first.get("unit", "")

        def cell(s):
            cs = per_seed.get(s, [])
            if not cs:
                return "missing"
            worst = min(cs, key=lambda c: c["margin"])
            mark = "" if all(c["holds"] for c in cs) else "!"
            return f"{worst['tested']:.4g}{mark}"

        worst = min((c["margin"] for c in checks), default=float("nan"))
        thr = f"{first.get('op', '')} {first.get('threshold', float('nan')):g}{unit and ' ' + unit}"
        out.append([chapter, claim, *[cell(s) for s in seeds], thr, f"{worst:.3g}",
                    "yes" if ok else "NO"])
    return out, n_ok, len(rows)


def _print_table(header: list[str], body: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lamini_lite.bench robustness",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated run seeds")
    ap.add_argument("--chapters", default="",
                    help="comma-separated notebook name prefixes (default: every notebook)")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks executed at once")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per notebook cell")
    ap.add_argument("--notebook-timeout", type=int, default=1200,
                    help="seconds per notebook run; a run past it is stopped and retried once")
    ap.add_argument("--book", type=Path, default=BOOK, help="folder of the chapter notebooks")
    ap.add_argument("--logs", type=Path, default=None,
                    help="folder for the per-run claim logs (default: a temporary folder)")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated non-negative integers, got {args.seeds!r}")
    if not seeds or any(s < 0 for s in seeds):
        ap.error(f"--seeds: expected comma-separated non-negative integers, got {args.seeds!r}")
    if args.jobs < 1:
        ap.error(f"--jobs: expected a positive integer, got {args.jobs}")
    if args.timeout < 1 or args.notebook_timeout < 1:
        ap.error(f"--timeout and --notebook-timeout: expected positive seconds, got "
                 f"{args.timeout} and {args.notebook_timeout}")
    chapters = [c.strip() for c in args.chapters.split(",") if c.strip()]
    notebooks = _notebooks(chapters, args.book)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="lamini-lite-robustness-"))
    logs.mkdir(parents=True, exist_ok=True)
    runs = [(nb, s, logs / f"{nb.stem}.seed{s}.jsonl") for s in seeds for nb in notebooks]
    for _, _, log in runs:
        log.unlink(missing_ok=True)
    print(f"robustness: {len(notebooks)} notebooks x {len(seeds)} seeds in the ci profile, "
          f"{args.jobs} at a time; claim logs in {logs}", flush=True)
    errors = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for s, err in zip(seeds, pool.map(_pretrain, seeds)):
            if err:
                errors.append(f"pretraining the backbone of seed {s}: {err}")
        futures = [pool.submit(_execute, nb, s, log, args.timeout, args.notebook_timeout)
                   for nb, s, log in runs]
        for f in futures:
            name, s, secs, err = f.result()
            print(f"  {name} seed {s}: {secs:.0f} s{'  ERROR: ' + err if err else ''}", flush=True)
            if err:
                errors.append(f"{name} seed {s}: {err}")
    rows: dict = {}
    for nb, s, log in runs:
        for c in _read(log):
            rows.setdefault((c["claim"].split(".")[0], c["claim"]), {}).setdefault(s, []).append(c)
    body, n_ok, n = _table(rows, seeds)
    print()
    _print_table(["chapter", "claim", *[f"seed {s}" for s in seeds], "threshold",
                  "worst margin", "holds"], body)
    print("\n(value per seed: the tested number, worst over the claim's instances; "
          "'!' marks a failure)")
    for e in errors:
        print(f"notebook error: {e}")
    print(f"robustness: {n_ok} of {n} claims hold on every seed")
    return 0 if n_ok == n and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
