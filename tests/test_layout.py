"""The package's folders are the stages of the data flow, and imports only go down them: no module imports
from a later stage or from the package's top level, and no two modules import each other, even through
imports inside functions (read from the source with `ast`, so a lazy import counts as much as a top one)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "audionet_tf"
# Lowest first: a module may import its own stage (without a circle) and the stages before it.
STAGES = ["core", "dataset", "model", "preparation", "training", "serving", "evaluation", "commands"]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Every audionet_tf module `path` imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("audionet_tf")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audionet_tf"):
            for alias in node.names:
                # `from audionet_tf.dataset import records` imports a module; `from x.y import name` imports x.y
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                          else node.module)
    return found


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else len(STAGES)


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_stage_folder():
    loose = sorted(m for m in GRAPH if stage(m) == len(STAGES) and m.count(".") > 1)
    assert not loose, f"modules outside the stage folders: {loose}"
    assert set(STAGES) <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if stage(m) < len(STAGES)))
def test_imports_only_go_down_the_stages(module):
    upward = sorted(i for i in GRAPH[module] if stage(i) > stage(module))
    assert not upward, f"{module} ({STAGES[stage(module)]}) imports from later stages: {upward}"


def test_no_import_circles():
    def reach(start: str) -> set[str]:
        seen, todo = set(), list(GRAPH.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(GRAPH.get(m, ()))
        return seen

    circles = sorted({tuple(sorted((a, b))) for a in GRAPH for b in GRAPH[a] if b != a and a in reach(b)
                      and stage(a) < len(STAGES)})
    assert not circles, f"modules that import each other (directly or through others): {circles}"
