"""The package's import graph: every import of a package module, at the top of a file or inside a
function, and no cycle among them (user errors live in ``internalrl.errors``, which imports nothing)."""
import ast
from pathlib import Path

import internalrl
from internalrl import errors

PACKAGE = Path(internalrl.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """``{module: the package modules it imports}``, from the source, with relative imports resolved."""
    files = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        # a module's own package (its __init__) is not a dependency between modules
        graph[name] = {t for t in targets if t in files and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "internalrl.cli" in graph and "internalrl.pipeline" in graph["internalrl.cli"]
    assert cycles(graph) == []


def test_errors_imports_nothing_of_the_package_and_every_layer_raises_its_classes():
    graph = import_graph()
    assert graph["internalrl.errors"] == set()
    from internalrl.atomic import StorageError
    from internalrl.config import ConfigError
    from internalrl.envs.tasks import TaskError
    from internalrl.train import CheckpointError

    for cls in (StorageError, ConfigError, TaskError, CheckpointError):
        assert issubclass(cls, errors.USER_ERRORS)
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.TrainingDiverged, errors.CheckpointError)


def test_import_internalrl_registers_the_gymnasium_ids():
    import subprocess
    import sys

    code = ("import gymnasium, internalrl; ids = [k for k in gymnasium.registry if k.startswith('internalrl/')]; "
            "env = gymnasium.make('internalrl/GridPinpad-v0'); env.reset(seed=0); print(sorted(ids))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['internalrl/AntPinpad-v0', 'internalrl/GridPinpad-v0']"
