"""Where things live in pipeline/: Ray is imported only by pipeline/cluster/, and the build's
modules import no module that imports them back, not even for type hints."""
import ast
from pathlib import Path

from tests.test_imports import REPO, cycles

PIPELINE = REPO / "pipeline"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (under `if TYPE_CHECKING:` too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_only_the_cluster_package_imports_ray():
    outside = sorted(str(p.relative_to(REPO)) for p in PIPELINE.rglob("*.py")
                     if "cluster" not in p.relative_to(PIPELINE).parts[:1]
                     and any(m == "ray" or m.startswith("ray.") for m in _imports(p)))
    assert outside == []


def test_no_import_circles_even_for_type_hints():
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PIPELINE.rglob("*.py")}
    graph = {m: {n for n in _imports(p) if n in files and n != m and not m.startswith(n + ".")}
             for m, p in files.items()}
    assert cycles(graph) == []
