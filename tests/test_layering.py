"""The engine's layering: no import cycle in src/optspec, and every import points down.

The layers, bottom to top (the developer guide): expression language -> spec -> reference ->
error model -> golden -> conformance and checking -> commands. Every ``import`` counts, lazy
ones inside functions too; only imports under ``if TYPE_CHECKING:`` are left out (they never
run). The graph is read from the source with :mod:`ast`, so a cycle is caught even where no
test happens to import the modules in the order that would fail.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "optspec"

#: Layer of each module (higher imports lower, never the reverse; equal layers may import each
#: other as long as there is no cycle). A module missing here fails test_every_module_has_a_layer.
LAYERS: Mapping[str, int] = {
    "optspec": 0,
    "optspec.errors": 0,
    "optspec.expr": 0,
    "optspec.progress": 0,
    "optspec.declarations": 1,
    "optspec.schedule_spec": 1,
    "optspec.spec": 1,
    "optspec.reference": 2,
    "optspec.schedule_reference": 2,
    "optspec.traffic": 2,
    "optspec.cases": 2,
    "optspec.mca": 3,
    "optspec.tolerance": 3,
    "optspec.golden_format": 4,
    "optspec.schedule_golden": 4,
    "optspec.golden": 4,
    "optspec.conformance": 5,
    "optspec.schedules": 5,
    "optspec.checking": 5,
    "optspec.report": 5,
    "optspec.check_page": 5,
    "optspec.matrix_workers": 5,
    "optspec.testing": 6,
    "optspec.pytest_plugin": 6,
    "optspec.bench_suite": 6,
    "optspec.commands": 6,
    "optspec.cli": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def _imports(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (a package's own
    ``__init__`` left out for its submodules: importing it from inside is a re-export face)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(base[: len(base) - node.level + 1] + ([module] if module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not (known[target].name == "__init__.py" and name.startswith(target + ".")):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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


def test_the_check_finds_a_cycle_it_is_shown() -> None:
    """The cycle finder itself: a lazy import back (b -> a inside a function) is a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]], f"a -> b -> c -> a must be one cycle, got {_cycles(graph)}"
    assert _cycles({"a": {"b"}, "b": set()}) == [], "a chain is not a cycle"


def test_lazy_imports_count(tmp_path: Path) -> None:
    """An import inside a function is an edge; one under ``if TYPE_CHECKING:`` is not."""
    (tmp_path / "m.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from optspec import b\ndef f():\n    from optspec.a import x\n"
    )
    known = {"optspec.a": tmp_path / "a.py", "optspec.b": tmp_path / "b.py", "optspec.m": tmp_path / "m.py"}
    assert _imports("optspec.m", tmp_path / "m.py", known) == {"optspec.a"}, "the lazy import counts, the TYPE_CHECKING one not"


def test_no_import_cycle_in_src_optspec() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles in src/optspec (lazy imports count): " + "; ".join(" <-> ".join(c) for c in cycles)


def _layer(module: str) -> int | None:
    """A module's layer; a subpackage's modules take the subpackage's (commands.golden is a command)."""
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    while module and module != PACKAGE:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def _upward(graph: Mapping[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = _layer(module), _layer(target)
            if low is not None and high is not None and high > low:
                out.append(f"{module} (layer {low}) imports {target} (layer {high})")
    return out


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {"optspec.spec": {"optspec.golden"}, "optspec.commands.golden": {"optspec.spec"}}
    assert _upward(graph) == ["optspec.spec (layer 1) imports optspec.golden (layer 4)"], f"got {_upward(graph)}"
    assert _layer("optspec.commands.golden") == LAYERS["optspec.commands"], "a command module is in the commands layer"
    assert _layer("optspec.brand_new") is None, "a module missing from LAYERS is only checked for cycles"


def test_layers_import_only_downward() -> None:
    upward = _upward(_graph())
    assert not upward, (
        "imports that point up the layers (expr -> spec -> reference -> error model -> golden -> checking -> commands): "
        + "; ".join(upward)
    )


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(module for module in _modules() if _layer(module) is None)
    assert not unplaced, f"modules of src/optspec with no layer in LAYERS (add each where it belongs): {unplaced}"
