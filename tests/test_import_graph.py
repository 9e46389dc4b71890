"""The layering of the code base: dashboard -> training -> model_zoo, and no import cycle.

Every ``import`` of the three packages counts, also the lazy ones inside functions (they run
too, just later); only ``if TYPE_CHECKING:`` imports are left out (they never run). A cycle
means neither module can be read, tested or moved without the other; an upward import means
the library depends on its users.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("model_zoo", "training", "dashboard")  # each may import only itself and those before it


def module_files(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (``from pkg import sub`` names ``pkg.sub``)."""
    files = module_files(root, packages)

    def known(name: str) -> str | None:
        parts = name.split(".")
        while parts:  # ``from model_zoo.zoo import x`` -> model_zoo.zoo; ``import model_zoo`` -> model_zoo
            if ".".join(parts) in files:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(filter(None, (known(alias.name) for alias in node.names)))
                continue
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                targets.update(filter(None, [known(f"{base}.{alias.name}") or known(base)]))
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    rank = {package: i for i, package in enumerate(layers)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if rank[b.split(".")[0]] > rank[a.split(".")[0]])


# ----------------------------------------------------------------------------- the code base


def test_the_three_packages_import_no_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 50, "the walk found the modules"  # guards against a walk that sees nothing
    assert cycles(graph) == [], "import cycles (each group imports itself in a ring)"


def test_no_upward_import():
    """model_zoo imports neither training nor dashboard; training does not import dashboard."""
    assert upward_imports(import_graph(REPO)) == []


# ----------------------------------------------------------------------------- the checker itself


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_sees_lazy_relative_and_package_imports_but_not_type_checking(tmp_path):
    _write(tmp_path, "model_zoo/__init__.py")
    _write(tmp_path, "model_zoo/a.py", "def f():\n    from model_zoo import b\n")
    _write(tmp_path, "model_zoo/b.py", "from . import c\n")
    _write(tmp_path, "model_zoo/c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from model_zoo import a\n")
    _write(tmp_path, "training/__init__.py")
    _write(tmp_path, "training/t.py", "import model_zoo.c\n")
    _write(tmp_path, "dashboard/__init__.py")
    graph = import_graph(tmp_path)
    assert graph["model_zoo.a"] == {"model_zoo.b"} and graph["model_zoo.b"] == {"model_zoo.c"}
    assert graph["model_zoo.c"] == set() and graph["training.t"] == {"model_zoo.c"}
    assert cycles(graph) == [] and upward_imports(graph) == []


def test_checker_reports_a_cycle_and_an_upward_import(tmp_path):
    _write(tmp_path, "model_zoo/__init__.py")
    _write(tmp_path, "model_zoo/ensemble.py", "from model_zoo.localize import x\n")
    _write(tmp_path, "model_zoo/localize.py", "def g():\n    from model_zoo.ensemble import model_lock\n")
    _write(tmp_path, "model_zoo/card.py", "from training.fit import fit\n")
    _write(tmp_path, "training/__init__.py")
    _write(tmp_path, "training/fit.py", "from dashboard import common\n")
    _write(tmp_path, "dashboard/__init__.py")
    _write(tmp_path, "dashboard/common.py")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["model_zoo.ensemble", "model_zoo.localize"]]
    assert upward_imports(graph) == ["model_zoo.card -> training.fit", "training.fit -> dashboard.common"]
