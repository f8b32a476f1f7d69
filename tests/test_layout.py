"""The package's house rules, checked on its source: a reusable library apart from the
book's experiments, no import circles, no private names shared, short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lamini_lite"
KERNELS = ROOT / "kernels"  # installed as lamini_lite.kernels

# Functions allowed a body over MAX_BODY lines (at most three), each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}
MAX_BODY = 60


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    out = {}
    for base, name in ((PACKAGE, "lamini_lite"), (KERNELS, "lamini_lite.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(module: str) -> set[str]:
    """The package modules ``module`` imports when it is imported (top-level statements)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # submodules
        elif isinstance(node, ast.Try):  # optional imports
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    found.add(_resolve(module, sub))
    return {m for m in found if m in MODULES and m != module}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: _top_level_imports(m) for m in MODULES}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_module_list_is_complete():
    assert {"lamini_lite.mome.model", "lamini_lite.facts.real", "lamini_lite.training.qa",
            "lamini_lite.experiments.ch05_mome", "lamini_lite.kernels"} <= set(MODULES)


def test_no_import_circles():
    assert _cycles() == []


def test_only_experiments_register_sizes():
    calls = []
    for name, path in MODULES.items():
        if name.startswith("lamini_lite.experiments"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                    node.func, "attr", None)) == "register_sizes"):
                calls.append(f"{name}:{node.lineno}")
    assert calls == []


def test_library_never_imports_an_experiment():
    bad = [f"{name} imports {m}" for name in MODULES
           if not name.startswith(("lamini_lite.experiments", "lamini_lite.bench"))
           for m in _top_level_imports(name) if m.startswith("lamini_lite.experiments")]
    assert bad == []


@pytest.mark.parametrize("module", ["lamini_lite.mome", "lamini_lite", "lamini_lite.training",
                                    "lamini_lite.retrieval", "lamini_lite.facts"])
def test_importing_the_library_loads_no_experiment(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith('lamini_lite.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_no_private_name_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                bad += [f"{name}: {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]  # the docstring
    return fn.end_lineno - body[0].lineno + 1 if body else 0


def test_functions_are_short():
    long = {}
    for name, path in MODULES.items():
        if name.startswith("lamini_lite.bench"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_BODY:
                    long[f"{name}.{node.name}"] = n
    assert set(long) <= set(LONG_FUNCTIONS), long
    assert len(LONG_FUNCTIONS) <= 3
