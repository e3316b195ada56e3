"""The package's structure, checked so it cannot drift back: no import cycle among
mta's modules (imports inside functions count; `if TYPE_CHECKING:` ones do not),
no module taking another module's `_private` names, and module docstrings short."""

from __future__ import annotations

import ast
import os

import mta

ROOT = os.path.dirname(os.path.abspath(mta.__file__))


def _modules() -> dict[str, str]:
    """Module name -> file, for every .py file of the package."""
    found = {}
    for folder, _dirs, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = os.path.join(folder, name)
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].endswith("__init__.py")
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported module, names taken from it, module aliases bound) for one module."""
    tree = ast.parse(open(MODULES[module]).read())
    edges: set[str] = set()
    taken: list[tuple[str, str]] = []  # (from module, name)
    aliases: dict[str, str] = {}  # local name -> mta module
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mta":
                    edges.add(a.name)
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if source.split(".")[0] != "mta":
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in MODULES or sub == "mta._native":
                    edges.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    edges.add(source)
                    taken.append((source, a.name))
    return edges, taken, aliases, tree


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_import_cycles():
    graph = {m: {e for e in _imports(m)[0] if e in MODULES and e != m} for m in MODULES}
    # Tarjan's strongly connected components: any of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


def _stage(module: str) -> str:
    """The stage a module belongs to: its package under mta (mta.queue, mta.smtp, ...), or
    the module itself for the bottom ones (mta.errors, mta.log, mta.procs)."""
    return ".".join(module.split(".")[:2])


def test_stages_import_downward_only():
    """Packages as well as modules form no cycle: a stage imports only stages below it."""
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        for e in _imports(m)[0]:
            if e in MODULES and _stage(e) != _stage(m) and _stage(m) != "mta":
                graph.setdefault(_stage(m), set()).add(_stage(e))
    up = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert up == [], f"stages importing each other: {up}"
    # No longer cycle either: repeatedly drop the stages nothing left imports.
    left = {k: set(v) for k, v in graph.items()}
    while left:
        sinks = [k for k in left if not (left[k] & left.keys())]
        if not sinks:
            raise AssertionError(f"a cycle among the stages {sorted(left)}")
        for k in sinks:
            del left[k]


def test_no_private_names_across_modules():
    offences = []
    for module in sorted(MODULES):
        _edges, taken, aliases, tree = _imports(module)
        for source, name in taken:
            if _private(name) and source != module:
                offences.append(f"{module}: from {source} import {name}")
        for node in _runtime_nodes(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != module):
                offences.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offences == []


def test_module_docstrings_are_short():
    """The job and the invariant in a few lines; history belongs in docs/ and commits."""
    long = []
    for module, path in sorted(MODULES.items()):
        doc = ast.get_docstring(ast.parse(open(path).read()), clean=False)
        if doc is None:
            if os.path.getsize(path) > 0 and not module.endswith("__main__"):
                long.append(f"{module}: no docstring")
            continue
        if len(doc.strip().splitlines()) > 3:
            long.append(f"{module}: {len(doc.strip().splitlines())} lines")
    assert long == []


def test_the_checker_sees_what_it_must():
    """The walk finds the package and real edges, so an empty answer above means something."""
    assert "mta.app.server" in MODULES and "mta.queue.manager" in MODULES
    edges, _taken, _aliases, _tree = _imports("mta.app.cli")
    assert "mta.config.schema" in edges
