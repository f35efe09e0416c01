"""Layers only point down and no module imports one that imports it back (issue: import circles).

`jobs` -> `training` -> `pipeline`: nothing in pipeline/ imports training/ or jobs/, nothing in
training/ imports jobs/, and within pipeline/ only pipeline/cluster/ imports Ray. Read from the
source with `ast`, so every import statement counts wherever it stands: inside functions (circles
that only hide until runtime) and under `if TYPE_CHECKING:` (a circle there is still a circle in
the design, and the next refactor turns it into a runtime one).
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "training", "jobs")
# Which top-level packages each one must never import (the layers only point down).
FORBIDDEN = {"pipeline": {"training", "jobs"}, "training": {"jobs"}, "jobs": set()}
# The only part of pipeline/ that may import Ray: stages stay plain Python, testable without it.
RAY_OWNER = "pipeline.cluster"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, mod: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names, resolving relative levels against `mod`."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _nodes(tree: ast.AST, type_checking: bool):
    """Every node of `tree`; without `type_checking`, none inside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(root: Path = REPO, packages=PACKAGES, type_checking: bool = True) -> dict[str, set[str]]:
    """module -> every absolute name its import statements name (modules, and `module.attr` for
    `from module import attr`, since attr may itself be a module), project or third-party.
    `type_checking=False` leaves out the imports under `if TYPE_CHECKING:` (those that run)."""
    out: dict[str, set[str]] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            mod = _module_name(path, root)
            names: set[str] = set()
            for node in _nodes(ast.parse(path.read_text(), filename=str(path)), type_checking):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node, mod, path.name == "__init__.py")
                    names.add(base)
                    names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
            out[mod] = names
    return out


def import_graph(root: Path = REPO, packages=PACKAGES, type_checking: bool = True) -> dict[str, set[str]]:
    """module -> the project modules it imports. A module importing its own parent package is left
    out: Python runs the parent's __init__ first whatever the module does, so it is no edge."""
    names = imported_names(root, packages, type_checking)
    return {mod: {n for n in imported if n in names and n != mod and not mod.startswith(n + ".")}
            for mod, imported in names.items()}


def _outermost(names: set[str]) -> set[str]:
    """The names no other name of the set contains: `training.model` for {training.model, training.model.Net}."""
    return {n for n in names if not any(n.startswith(o + ".") for o in names)}


def layer_violations(names: dict[str, set[str]]) -> list[str]:
    """'module -> name' for every import of a package the module's layer must not import."""
    return sorted(f"{mod} -> {n}" for mod, imported in names.items() for n in _outermost(imported)
                  if n.split(".")[0] in FORBIDDEN.get(mod.split(".")[0], set()))


def ray_outside_cluster(names: dict[str, set[str]]) -> list[str]:
    """pipeline modules outside pipeline/cluster/ that import Ray."""
    return sorted(mod for mod, imported in names.items()
                  if mod.split(".")[0] == "pipeline" and mod != RAY_OWNER and not mod.startswith(RAY_OWNER + ".")
                  and any(n.split(".")[0] == "ray" for n in imported))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


@pytest.fixture(scope="module")
def names():
    return imported_names()


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checks_catch_planted_violations(tmp_path):
    """A tree with one of each violation, hidden where a naive scan would miss it: an upward import
    inside a function, a circle closed only under TYPE_CHECKING and through a relative import,
    Ray imported by a stage as `from ray import ...`."""
    root = _plant(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/stage.py": "def f():\n    from training.model import Net\n    return Net\n",
        "pipeline/a.py": "from pipeline import b\n",
        "pipeline/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n",
        "pipeline/io.py": "from ray import remote\n",
        "pipeline/cluster/__init__.py": "",
        "pipeline/cluster/tasks.py": "import ray\n",
        "training/__init__.py": "",
        "training/model.py": "import jobs.cli\nfrom pipeline import a\n",
        "jobs/__init__.py": "",
        "jobs/cli.py": "from training import model\nfrom pipeline.cluster import tasks\n",
    })
    names = imported_names(root)
    assert layer_violations(names) == ["pipeline.stage -> training.model", "training.model -> jobs.cli"]
    assert ray_outside_cluster(names) == ["pipeline.io"]
    assert cycles(import_graph(root)) == [["jobs.cli", "training.model"], ["pipeline.a", "pipeline.b"]]
    assert cycles(import_graph(root, type_checking=False)) == [["jobs.cli", "training.model"]]


def test_relative_imports_resolve_against_the_importing_module(tmp_path):
    root = _plant(tmp_path, {
        "pipeline/__init__.py": "from . import flow\n",
        "pipeline/flow/__init__.py": "from .core import estimate\n",
        "pipeline/flow/core.py": "from ..records import Ref\nfrom . import params\n",
        "pipeline/flow/params.py": "",
        "pipeline/records.py": "",
    })
    assert import_graph(root, ("pipeline",)) == {
        "pipeline": {"pipeline.flow"}, "pipeline.flow": {"pipeline.flow.core"},
        "pipeline.flow.core": {"pipeline.records", "pipeline.flow.params"},
        "pipeline.flow.params": set(), "pipeline.records": set()}


def test_the_scan_sees_every_package(names):
    """A wrong root or a parse that misses imports would find nothing to object to and pass."""
    tops = {mod.split(".")[0] for mod in names}
    assert tops == set(PACKAGES) and len(names) > 50
    assert sum(map(len, import_graph().values())) > 200
    assert ray_outside_cluster({"pipeline.x": names["pipeline.cluster.startup"]}) == ["pipeline.x"]


def test_layers_only_point_down(names):
    assert layer_violations(names) == []


def test_only_pipeline_cluster_imports_ray(names):
    assert ray_outside_cluster(names) == []


def test_no_import_circles_at_runtime():
    assert cycles(import_graph(type_checking=False)) == []


def test_no_import_circles_even_under_type_checking():
    assert cycles(import_graph()) == []
