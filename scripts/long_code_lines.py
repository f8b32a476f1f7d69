"""List notebook code-cell source lines longer than a limit (default 88 characters).

usage: python scripts/long_code_lines.py [--max N] [NOTEBOOK ...]   (default: book/*.ipynb)

Prints one line per long source line (file, cell index, line number in the
cell, length) and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def long_lines(path: Path, limit: int) -> list[tuple[int, int, int]]:
    """(cell index, line number in the cell from 1, length) of each line over limit."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    found = []
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        for number, line in enumerate(text.splitlines(), start=1):
            if len(line) > limit:
                found.append((index, number, len(line)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=88, help="longest allowed line (default 88)")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((REPO / "book").glob("*.ipynb"))
    total = 0
    for nb in notebooks:
        for index, number, length in long_lines(nb, args.max):
            name = nb.resolve().relative_to(REPO) if nb.resolve().is_relative_to(REPO) else nb
            print(f"{name}: cell {index}, line {number}: {length} characters")
            total += 1
    if total:
        print(f"long code lines: {total} lines longer than {args.max} characters")
        return 1
    print(f"long code lines: none longer than {args.max} characters in {len(notebooks)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
