"""Entry point: ``python -m lamini_lite.bench NAME [options]``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import lamini_lite.bench as _pkg


def available() -> list[str]:
    """Names of the benchmarks in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m lamini_lite.bench NAME [options]\n\nbenchmarks:")
        for n in names:
            doc = (importlib.import_module(f"lamini_lite.bench.{n}").__doc__ or "").strip()
            print(f"  {n:12s} {doc.splitlines()[0] if doc else ''}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"lamini_lite.bench.{name}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
