"""The package's import structure: no cycles, and the layers import only downward.

The graph counts every import statement, at module level and inside functions (only ``if TYPE_CHECKING:`` blocks
are left out): an import placed inside a function to dodge a cycle is still a cycle. Folders map into the
``sharp_export`` namespace as pyproject.toml's ``package-dir`` says.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's); reads pyproject.toml's package-dir

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600  # a file a newcomer can read; longer ones are split by what they do


def _modules() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules: dict[str, Path] = {}
    for package, folder in config["tool"]["setuptools"]["package-dir"].items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement of ``module`` names (``from a import b`` gives a and a.b)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for statement in child.orelse:
                    visit(statement)
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


def _internal(name: str) -> str | None:
    """The project module a dotted name lands in (its longest known prefix), or None for third-party names."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_internal(name) for name in _imported_names(module, path)}
        # A module importing its own package (its __init__) is how Python loads it anyway: not an edge.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_imports_inside_functions():
    # export.py runs the export; its command module imports it inside the command (keeps --help light).
    assert "sharp_export.export" in GRAPH["sharp_export.commands.export"]
    assert "sharp_export.converters.onnx.precision" in GRAPH["sharp_export.converters.onnx.target"]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize(
    ("layer", "may_import"),
    [
        # The reference model stands alone: a user can read and run it without the toolkit around it.
        ("sharp_export.reference", ("sharp_export.reference", "sharp_export.errors")),
        # Runners run artifacts; which runner opens an artifact is the registry's choice, never runtime's.
        ("sharp_export.runtime", ("sharp_export.runtime", "sharp_export.reference", "sharp_export.errors",
                                  "sharp_export.artifact", "sharp_export.progress")),
    ],
)  # fmt: skip
def test_layers_import_only_downward(layer, may_import):
    for module, imports in GRAPH.items():
        if module == layer or module.startswith(layer + "."):
            for target in imports:
                assert target.startswith(may_import), f"{module} imports {target}"


@pytest.mark.parametrize(
    ("module", "may_import"),
    [
        ("sharp_export.contract", ()),  # the converter contract is a leaf
        ("sharp_export.parity.tolerances", ("sharp_export.errors",)),  # plain data keyed by profile name
        ("sharp_export.targets", ("sharp_export.contract", "sharp_export.parity.tolerances", "sharp_export.errors")),
    ],
)
def test_leaf_modules(module, may_import):
    assert GRAPH[module] <= set(may_import), GRAPH[module]


def test_no_file_in_the_package_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
