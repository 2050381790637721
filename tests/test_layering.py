"""The house's shape, checked on every import statement (module level, inside functions and under
TYPE_CHECKING alike): dependency arrows point one way, ``cli -> dags | plugins -> training | serving
-> runtime -> lifecycle`` (``runtime`` holds the torch-side policy the trainer and the worker share;
the gateway never imports it), with no exception; no import cycle between modules; no module over the size limit."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "lifecycle", "runtime", "training", "serving", "plugins", "dags")
GENERATED = ("lifecycle/v1/",)
MAX_LINES = 400

# What each layer must never import (top-level package names).
FORBIDDEN: dict[str, set[str]] = {
    "lifecycle": {
        "cli",
        "runtime",
        "training",
        "serving",
        "plugins",
        "dags",
        "airflow",
        "torch",
        "transformers",
        "peft",
    },
    "runtime": {"cli", "training", "serving", "plugins", "dags", "airflow", "fastapi", "grpc"},
    "training": {"cli", "serving", "plugins", "dags", "airflow"},
    "serving": {"cli", "training", "plugins", "dags", "airflow"},
    "plugins": {"cli", "dags"},
    "dags": {"cli"},
    "cli": set(),
}
# Finer rules inside serving: the gateway never imports torch nor the worker; the worker never imports
# the gateway or an HTTP framework; the batching engine knows no transport at all. Keys are path
# prefixes; values are module-name prefixes.
FORBIDDEN_IN: dict[str, tuple[str, ...]] = {
    "serving/gateway/": ("torch", "transformers", "peft", "serving.worker", "runtime"),
    "serving/worker/": ("fastapi", "starlette", "uvicorn", "serving.gateway"),
    "serving/worker/engine.py": ("grpc", "lifecycle.v1"),
}


def imports(source: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every absolute import in ``source``; ``names`` are what a
    ``from module import a, b`` takes (empty for ``import module``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def rel(path: Path) -> str:
    return (path.relative_to(REPO) if path.is_absolute() else path).as_posix()


def violations(path: Path, source: str) -> list[str]:
    where = rel(path)
    layer = where.split("/")[0]
    banned = [b for prefix, mods in FORBIDDEN_IN.items() if where.startswith(prefix) for b in mods]
    out = []
    for line, module, _ in imports(source):
        if module.split(".")[0] in FORBIDDEN.get(layer, set()):
            out.append(f"{where}:{line}: {layer} imports {module.split('.')[0]}")
        elif any(module == b or module.startswith(b + ".") for b in banned):
            out.append(f"{where}:{line}: imports {module}")
    return out


def project_files() -> list[Path]:
    return [p for layer in LAYERS for p in (REPO / layer).rglob("*.py") if not rel(p).startswith(GENERATED)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import mod`` is an edge to ``pkg.mod``)."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, source in files.items():
        for _, module, names in imports(source):
            for target in [f"{module}.{n}" for n in names if f"{module}.{n}" in files] or [module]:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_checker_catches_a_wrong_arrow() -> None:
    src = "import os\n\ndef f():\n    from airflow.sdk import dag\n"
    assert violations(Path("training/x.py"), src) == ["training/x.py:4: training imports airflow"]
    assert violations(Path("lifecycle/x.py"), "def f():\n    import training\n") == [
        "lifecycle/x.py:2: lifecycle imports training"
    ]
    assert violations(Path("dags/d.py"), "import cli\n") == ["dags/d.py:1: dags imports cli"]
    assert violations(Path("serving/gateway/x.py"), "def f():\n    import torch\n") == [
        "serving/gateway/x.py:2: imports torch"
    ]
    assert violations(Path("serving/worker/engine.py"), "from fastapi import FastAPI\n") == [
        "serving/worker/engine.py:1: imports fastapi"
    ]
    assert violations(Path("cli/x.py"), "import training, serving, plugins, dags\n") == []


def test_no_import_goes_against_the_arrows() -> None:
    files = project_files()
    assert len(files) > 10, "layers not found"
    assert [v for p in files for v in violations(p, p.read_text())] == []


def test_checker_finds_a_cycle_through_a_type_checking_import() -> None:
    files = {
        "pkg": "",
        "pkg.a": "from pkg.b import B\n",
        "pkg.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n",
        "pkg.c": "def f():\n    import pkg.a\n",
        "pkg.d": "from pkg import a\n",
    }
    assert cycles(import_graph(files)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_module_imports_itself_back_through_others() -> None:
    files = {module_name(p): p.read_text() for p in project_files()}
    assert cycles(import_graph(files)) == []


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {rel(p): len(p.read_text().splitlines()) for p in project_files()}
    sizes |= {
        rel(p): len(p.read_text().splitlines()) for folder in ("tests", "bench") for p in (REPO / folder).rglob("*.py")
    }
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
