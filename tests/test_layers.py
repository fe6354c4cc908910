"""Dependencies point one way: promotions may use registry_sync, never the reverse.

registry_sync (the MLflow gateway and the mirror) announces what changed through its signals;
a module of it that imported promotions, even inside a function, would make the lower layer
depend on the upper one again. Read from the source with `ast`, so no import is missed for
being hidden in a function or never run by a test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.common import ROOT

pytestmark = pytest.mark.once  # reads the source, not a database

LOWER, UPPER = "registry_sync", "promotions"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, wherever it stands, and for every
    importlib.import_module / __import__ call with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from x import y` may name a submodule; count it as an import of x.y as well.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def imports_of_app(app: str, *, target: str) -> list[str]:
    """Every import of `target` (or a module under it) in the app, as "path:line module"."""
    hits = []
    for path in sorted((ROOT / app).rglob("*.py")):
        for line, module in imported_modules(path):
            if module == target or module.startswith(f"{target}."):
                hits.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return sorted(set(hits))


def test_registry_sync_imports_nothing_from_promotions():
    hits = imports_of_app(LOWER, target=UPPER)
    assert hits == [], "registry_sync must not import promotions:\n" + "\n".join(hits)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in (LOWER, UPPER, "config"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name that is not a module: its package)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, module in imported_modules(path):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                edges.add(module)
        graph[name] = edges
    return graph


def test_no_import_chain_leads_from_registry_sync_back_to_promotions():
    # promotions builds on registry_sync; a chain back (through config, say) would close a circle.
    graph = import_graph()
    assert imports_of_app(UPPER, target=LOWER), "expected promotions to use registry_sync"
    for start in sorted(name for name in graph if name.startswith(LOWER)):
        chain = _chain_to(graph, start, prefix=UPPER)
        assert chain is None, "import circle between the apps: " + " -> ".join(chain or [])


def _chain_to(graph: dict[str, set[str]], start: str, *, prefix: str) -> list[str] | None:
    """The import chain from `start` to a module under `prefix`, breadth first, or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        name = queue.pop(0)
        if name == prefix or name.startswith(f"{prefix}."):
            chain = [name]
            while (previous := came_from[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for target in sorted(graph.get(name, ())):
            if target not in came_from:
                came_from[target] = name
                queue.append(target)
    return None


def test_it_finds_imports_hidden_in_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import importlib\n"
        "def f():\n"
        "    from promotions import audit\n"
        "    import promotions.models\n"
        "    return importlib.import_module('promotions.services')\n"
        "from . import sibling\n"
    )
    assert sorted(imported_modules(sample)) == [
        (1, "importlib"),
        (3, "promotions"),
        (3, "promotions.audit"),
        (4, "promotions.models"),
        (5, "promotions.services"),
    ]
