"""Every third-party package the code imports is declared in pyproject.toml where its process gets it:
the gateway and workers install the core and ``[serve]``, the trainer pod ``[train]``, Airflow
``[airflow]`` (checked on every import statement, module level and inside functions alike)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"cli", "lifecycle", "runtime", "training", "serving", "plugins", "dags", "tests"}
#: The extras each part of the tree runs under (besides the core dependencies).
RUNS_WITH = {
    "cli": ("all",),  # `lifecycle up` starts the whole local stack
    "lifecycle": (),
    "runtime": ("train",),  # the torch-side policy the trainer and the worker share
    "training": ("train",),
    "serving": ("serve",),
    "plugins": ("airflow",),
    "dags": ("airflow",),
}
EXCEPTIONS = {"lifecycle/protogen.py": {"grpc_tools"}}  # a developer's tool: [dev]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared(extras: tuple[str, ...]) -> set[str]:
    """Distribution names of the core and ``extras``, following self-references (llm-lifecycle[train])."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names, todo, seen = {_name(r) for r in project["dependencies"]}, list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            if _name(req) == "llm-lifecycle":
                todo += re.search(r"\[(.*)\]", req).group(1).split(",")  # type: ignore[union-attr]
            else:
                names.add(_name(req))
    return names


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS and m != "__future__"}


def test_every_imported_package_is_declared_for_the_process_that_imports_it() -> None:
    providers = packages_distributions()
    missing = []
    for part, extras in RUNS_WITH.items():
        allowed = declared(extras)
        for path in sorted((REPO / part).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel.startswith("lifecycle/v1/") and not rel.endswith("_pb2.py"):
                continue
            for module in imports(path) - EXCEPTIONS.get(rel, set()):
                dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
                if not dists & allowed:
                    missing.append(f"{rel} imports {module} (from {sorted(dists) or 'nothing installed'})")
    assert not missing, "\n".join(missing)


def test_the_check_sees_an_undeclared_import(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("import yaml\nfrom torch import nn\n\ndef f():\n    import numpy\n")
    assert imports(tmp_path / "x.py") == {"yaml", "torch", "numpy"}
    assert "torch" not in declared(()) and {"torch", "fastapi"} <= declared(("serve",))
    assert "apache-airflow" in declared(("all",)) and "torch" in declared(("airflow",))


def test_no_extra_names_the_project_itself() -> None:
    """pip's resolver backtracked for over 10 minutes on a fresh venv when [dev] named llm-lifecycle[all]."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [r for reqs in extras.values() for r in reqs if _name(r) == "llm-lifecycle"]
