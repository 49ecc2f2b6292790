"""The package's structure: modules small enough to read (at most 400 lines), no import cycles
(imports inside functions and under TYPE_CHECKING included: an import moved into a function
hides a cycle from Python, not from the reader), and layers that only import downwards.

Read from the source with `ast`; nothing is imported, so this runs in milliseconds.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "thinkrl"
MAX_LINES = 400

# Lowest first. A module may import its own layer and those below it, never one above.
# Patterns are fnmatch patterns over dotted module names; every module matches exactly one layer.
LAYERS: list[tuple[str, list[str]]] = [
    ("utilities", ["thinkrl", "thinkrl.checks", "thinkrl.template", "thinkrl.progress", "thinkrl.metrics",
                   "thinkrl.rundir", "thinkrl.distributed", "thinkrl.checkpoint", "thinkrl.data",
                   "thinkrl.data_sources",
                   "thinkrl.task", "thinkrl.task.arithmetic", "thinkrl.task.general", "thinkrl.plots",
                   "thinkrl.sections", "thinkrl.ray_cluster"]),
    ("sandbox", ["thinkrl.sandbox", "thinkrl.sandbox.*"]),
    ("policy and objective", ["thinkrl.policy", "thinkrl.objective", "thinkrl.adapters", "thinkrl.sharding"]),
    ("rollout", ["thinkrl.rollout", "thinkrl.rollout.*"]),
    ("rewards", ["thinkrl.rewards", "thinkrl.rewards.*", "thinkrl.task.steps"]),
    ("config", ["thinkrl.config", "thinkrl.config_io"]),
    ("evaluation", ["thinkrl.evaluation", "thinkrl.evaluation.*"]),
    ("training loops", ["thinkrl.train", "thinkrl.train.*", "thinkrl.distill", "thinkrl.distill.*",
                        "thinkrl.task.build"]),
    ("pipeline", ["thinkrl.pipeline", "thinkrl.pipeline.*"]),
    ("cli", ["thinkrl.cli"]),
]


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / PACKAGE).rglob("*.py")):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of a thinkrl module, wherever it stands."""
    return _imports(tuple(mods.items()))


@lru_cache(maxsize=1)
def _imports(items: tuple[tuple[str, Path], ...]) -> list[tuple[str, str, int]]:
    mods = dict(items)
    edges = []
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = name.split(".")
                    base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                wanted = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            for target in set(wanted):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # a module inside a package runs the package's __init__ first anyway
                if target and target != name and not name.startswith(target + "."):
                    edges.append((name, target, node.lineno))
    return edges


@lru_cache(maxsize=None)
def layer_of(name: str) -> int:
    found = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch(name, p) for p in patterns)]
    assert len(found) == 1, f"{name} must belong to exactly one layer in tests/test_structure.py, not {found}"
    return found[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def mods():
    return modules()


def test_no_module_over_400_lines(mods):
    big = {name: n for name, p in mods.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them into cohesive modules): {big}"


def test_no_import_cycles(mods):
    graph: dict[str, set[str]] = {}
    for a, b, _ in imports(mods):
        graph.setdefault(a, set()).add(b)
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer(mods):
    for name in mods:
        layer_of(name)


def test_no_upward_imports(mods):
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]}) at line {line}"
              for a, b, line in imports(mods) if layer_of(a) < layer_of(b)]
    assert not upward, "imports of a layer above:\n" + "\n".join(upward)


def test_the_checks_see_what_they_check():
    """The graph is not empty and the checks find a planted cycle and an upward import."""
    mods = modules()
    edges = imports(mods)
    assert len(edges) > 100 and ("thinkrl.train.grpo_batch", "thinkrl.rewards.combine") in {(a, b) for a, b, _ in edges}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("thinkrl.rewards.math") < layer_of("thinkrl.train.grpo") < layer_of("thinkrl.cli")


def engine_constructions(mods: dict[str, Path]) -> list[str]:
    """`HFEngine(...)` calls (by name or attribute) in modules outside thinkrl.rollout."""
    found = []
    for name, path in mods.items():
        if name == f"{PACKAGE}.rollout" or name.startswith(f"{PACKAGE}.rollout."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if called == "HFEngine":
                    found.append(f"{name}:{node.lineno}")
    return found


def test_engines_are_built_only_in_rollout(mods):
    """Every sampler gets its engine from `rollout.make_engine`, so another engine (vLLM, Ray)
    is one change in rollout/, not one in each caller."""
    built = engine_constructions(mods)
    assert not built, "HFEngine(...) built outside thinkrl.rollout (use rollout.make_engine): " + ", ".join(built)
