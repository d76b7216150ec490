"""The module import graph of graphlrp is acyclic, counting every import: top-level, inside
functions and under ``TYPE_CHECKING``."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import graphlrp

PACKAGE = Path(graphlrp.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module ``from <...> import`` names."""
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imported(module: str) -> set[str]:
    """The graphlrp modules that ``module`` imports anywhere in its source."""
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES and name != module)
    return found


def import_graph() -> nx.DiGraph:
    G = nx.DiGraph()
    G.add_nodes_from(MODULES)
    G.add_edges_from((module, other) for module in MODULES for other in imported(module))
    return G


def test_the_parser_sees_imports_inside_functions_and_under_type_checking():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .graph import Graph\n"
              "def f():\n    from .frontends.edges import graph_from_edges\n    from . import rules\n")
    tree = ast.parse(source)
    nodes = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    bases = [_base("graphlrp.layout", PACKAGE / "layout.py", node) for node in nodes]
    assert bases == ["graphlrp.graph", "graphlrp.frontends.edges", "graphlrp"]
    assert {"graphlrp.blocks", "graphlrp.graph", "graphlrp.rules"} <= imported("graphlrp.frontends.builder")


def test_every_module_is_parsed():
    assert {"graphlrp", "graphlrp.graph", "graphlrp.frontends", "graphlrp.frontends.fx",
            "graphlrp.blocks.base"} <= set(MODULES)


def test_the_module_import_graph_is_acyclic():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle + cycle[:1]) for cycle in cycles[:20])
