"""The tree's structure, checked from its imports and sizes (issue 15).

Run alone with ``python -m pytest tests/test_structure.py``: the import graph of ``app/``,
``tasks/`` and ``wsgi.py`` (module-level imports, ``TYPE_CHECKING`` ones left out) has no
cycle and no arrow from a lower layer to a higher one; no module of ``app/`` is over 400 lines,
no function over 80 outside the OpenAPI data; every Redis key name is built in
``app/cache/keys.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "app").rglob("*.py")), *sorted((ROOT / "tasks").rglob("*.py")), ROOT / "wsgi.py"]

# Lowest first. A module may import from its own layer or a lower one, never a higher one.
LAYERS = [
    # infrastructure: settings, errors, clients, metrics
    {"app.timeutil", "app.config", "app.logging", "app.errors", "app.validation", "app.extensions", "app.db",
     "app.redis_topology", "app.metrics", "app.celery_app", "app.openapi"},
    {"app.cache"},  # the shared cache: knows no feature
    {"app.auth", "app.devices", "app.keys", "app.users", "app.readings", "app.compat"},  # the features
    {"app.cache_admin", "app.monitoring", "app.health", "app.docs", "app.cli", "app.cors"},  # above the features
    {"app", "tasks", "wsgi"},  # the factory and the entry points
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, layer in enumerate(LAYERS):
        for name in layer:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), index
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a module imports at its top level (not under ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from app import metrics`` imports the module app.metrics (and runs app/__init__.py,
            # which is no edge of ours: the package body is the factory)
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [sub for sub in subs if sub in known] or [node.module]
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    known = {module_name(path) for path in SOURCES}
    return {module_name(path): imports(path, known) - {module_name(path)} for path in SOURCES}


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module) and not module.startswith(target + ".")
    ]
    assert wrong == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # A package imports its own modules from __init__ only for re-export: no such edges here.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_module_of_app_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "app").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_no_function_is_over_80_lines_outside_the_openapi_data():
    long = []
    for folder in ("app", "tasks", "bench", "devstack"):
        for path in (ROOT / folder).rglob("*.py"):
            if "openapi" in path.name or path.name.endswith("_paths.py"):
                continue  # the OpenAPI document's data, written as literals
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)")
    assert long == []


KEY_LITERAL = re.compile(r"""["'](?:meta:|lock:|device:|user:|query:|stats:|hot:|seen:)""")


def test_every_key_name_is_built_in_app_cache_keys():
    """A literal that starts a Redis key name lives in ``app/cache/keys.py`` only."""
    owner = ROOT / "app" / "cache" / "keys.py"
    found = []
    for path in SOURCES:
        if path == owner or path.name.endswith("_paths.py"):
            continue  # the OpenAPI document's examples are not keys
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if KEY_LITERAL.search(code) and "redis.call" not in code:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
