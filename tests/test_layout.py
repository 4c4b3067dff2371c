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


def top_level_names(path: pathlib.Path) -> set[str] | None:
    """Names a module defines at its top level (None when it answers any name through `__getattr__`)."""
    names: set[str] = set()
    todo = list(ast.parse(path.read_text(), str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    return None if "__getattr__" in names else names


# Not the benchmarks' own virtual environments (`benchmarks/.venv-torch`): other people's code.
SCRIPTS = sorted(p for folder in ("benchmarks", "examples", "tests", "audionet_tf")
                 for p in (PACKAGE.parent / folder).rglob("*.py")
                 if not any(part.startswith(".venv") for part in p.parts))  # benchmarks/.venv-torch: torch's own


def test_every_project_import_names_something_that_exists():
    # A benchmark whose import went stale in a move fails only when someone runs it, inside its main().
    missing = []
    for script in SCRIPTS:
        where = script.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audionet_tf")):
                continue
            base = PACKAGE.parent / node.module.replace(".", "/")
            module_file = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if not module_file.exists():
                missing.append(f"{where}:{node.lineno}: no module {node.module}")
                continue
            defined = top_level_names(module_file)
            for alias in node.names:
                is_module = (base / alias.name).is_dir() or (base / f"{alias.name}.py").exists()
                if not is_module and defined is not None and alias.name not in defined:
                    missing.append(f"{where}:{node.lineno}: {node.module} has no {alias.name}")
    assert len(SCRIPTS) > 100 and not missing, missing
