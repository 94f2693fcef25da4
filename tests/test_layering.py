"""The import layering of the project's packages, read statically from every module (imports inside functions
count): ``lorasmith`` (the runtime) imports none of ``train``, ``eval``, ``bench``; ``data_utils`` imports neither
``train`` nor ``eval``; ``eval`` never imports ``train``; ``train.embed``'s library modules (all but its
``__main__``) read no data files (no ``data_utils``); nothing imports ``bench``; and no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lorasmith", "data_utils", "eval", "train", "bench")

# (importer, imported): no module under the first may import a module under the second.
FORBIDDEN = [
    ("lorasmith", "train"),
    ("lorasmith", "eval"),
    ("lorasmith", "bench"),
    ("data_utils", "train"),
    ("data_utils", "eval"),
    ("data_utils", "bench"),
    ("eval", "train"),
    ("eval", "bench"),
    ("train", "bench"),
    ("train.embed", "data_utils"),
]
ENTRYPOINT_MODULES = {"train.embed.__main__"}  # the entrypoint reads the data; the library below it does not


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a.b import c`` counts ``a.b`` and, if a module, ``a.b.c``;
    a bare ``from . import x`` is resolved against the importer's package)."""
    paths = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                imported |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {module for module in imported if module in paths and module != name}
    return graph


GRAPH = import_graph()


def test_the_graph_sees_the_packages_and_their_imports():
    """The reader is not vacuous: it finds the entrypoints and imports the rules below constrain."""
    assert {"train.embed.__main__", "eval.sts", "lorasmith.encoder", "data_utils.loader"} <= set(GRAPH)
    assert "train.embed.config" in GRAPH["train.embed.__main__"]
    assert any(is_under(module, "lorasmith") for module in GRAPH["eval.sts"])
    assert any(is_under(module, "data_utils") for module in GRAPH["train.embed.__main__"])


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=[f"{a}-not-{b}" for a, b in FORBIDDEN])
def test_no_upward_import(importer, imported):
    breaks = sorted(
        f"{module} imports {dependency}"
        for module, dependencies in GRAPH.items()
        if is_under(module, importer) and module not in ENTRYPOINT_MODULES
        for dependency in dependencies
        if is_under(dependency, imported)
    )
    assert not breaks, "\n".join(breaks)


def test_no_import_circle():
    """Tarjan's strongly connected components of the module graph: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for dependency in GRAPH[module]:
            if dependency not in index:
                visit(dependency)
                low[module] = min(low[module], low[dependency])
            elif dependency in stack:
                low[module] = min(low[module], index[dependency])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, "\n".join(" <-> ".join(circle) for circle in circles)
