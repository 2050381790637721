"""Import direction: dags -> plugins -> training | serving -> lifecycle, and no Airflow below plugins.

Every import statement is checked, at module level or inside a function. The one exception is
``lifecycle/cli.py``, the command line, which reaches into training/serving inside its commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("lifecycle", "training", "serving", "plugins", "dags")

# What each layer must never import (top-level package names).
FORBIDDEN: dict[str, set[str]] = {
    "lifecycle": {"training", "serving", "plugins", "dags", "airflow", "torch", "transformers", "peft"},
    "training": {"serving", "plugins", "dags", "airflow"},
    "serving": {"training", "plugins", "dags", "airflow"},
    "plugins": {"dags"},
    "dags": set(),
}
# Finer rules inside serving: the gateway never imports torch (nor the modules that do); the batching
# engine never imports grpc or fastapi. Keys are path prefixes; values are module-name prefixes.
FORBIDDEN_IN: dict[str, tuple[str, ...]] = {
    "serving/gateway/": (
        "torch",
        "transformers",
        "peft",
        "serving.engine",
        "serving.loader",
        "serving.worker",
        "serving.jobs",
        "serving.swap",
    ),
    "serving/engine.py": ("grpc", "fastapi", "starlette", "uvicorn", "lifecycle.v1"),
    "serving/jobstore.py": ("torch", "transformers", "serving.engine"),
}
# Lazy imports the CLI may make to dispatch commands.
CLI_MAY_REACH = {"training", "serving"}


def imported_packages(source: str) -> list[tuple[int, str, bool]]:
    """(line, top-level package, is_module_level) for every absolute import in ``source``."""
    tree = ast.parse(source)
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            out.append((node.lineno, name.split(".")[0], id(node) in top_level))
    return out


def violations(path: Path, source: str) -> list[str]:
    rel = path.relative_to(REPO) if path.is_absolute() else path
    layer = rel.parts[0]
    bad = []
    for line, pkg, module_level in imported_packages(source):
        if pkg not in FORBIDDEN.get(layer, set()):
            continue
        if rel.as_posix() == "lifecycle/cli.py" and pkg in CLI_MAY_REACH and not module_level:
            continue
        bad.append(f"{rel}:{line}: {layer} imports {pkg}")
    return bad


def module_violations(path: Path, source: str) -> list[str]:
    rel = (path.relative_to(REPO) if path.is_absolute() else path).as_posix()
    banned = [b for prefix, mods in FORBIDDEN_IN.items() if rel.startswith(prefix) for b in mods]
    out = []
    for node in ast.walk(ast.parse(source)):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        )
        for name in names:
            if any(name == b or name.startswith(b + ".") for b in banned):
                out.append(f"{rel}:{node.lineno}: imports {name}")
    return out


def test_gateway_never_imports_torch_and_engine_never_imports_grpc() -> None:
    assert module_violations(Path("serving/gateway/x.py"), "def f():\n    import torch\n") == [
        "serving/gateway/x.py:2: imports torch"
    ]
    assert module_violations(Path("serving/engine.py"), "from fastapi import FastAPI\n") == [
        "serving/engine.py:1: imports fastapi"
    ]
    files = list((REPO / "serving").rglob("*.py"))
    assert [v for p in files for v in module_violations(p, p.read_text())] == []


def test_checker_catches_a_wrong_arrow() -> None:
    src = "import os\n\ndef f():\n    from airflow.sdk import dag\n"
    assert violations(Path("training/x.py"), src) == ["training/x.py:4: training imports airflow"]
    assert violations(Path("lifecycle/cli.py"), "import training.base_model\n") == [
        "lifecycle/cli.py:1: lifecycle imports training"
    ]
    assert violations(Path("lifecycle/cli.py"), "def f():\n    import training\n") == []
    assert violations(Path("dags/d.py"), "import airflow, training, plugins\n") == []


def test_no_import_goes_against_the_arrows() -> None:
    files = [p for layer in LAYERS for p in (REPO / layer).rglob("*.py")]
    assert len(files) > 10, "layers not found"
    found = [v for p in files for v in violations(p, p.read_text())]
    assert found == []
