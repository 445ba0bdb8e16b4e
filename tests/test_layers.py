"""Imports only go down the layers (DESIGN.md, rule 10), and no modules import each other
in a circle. Every import counts, the ones inside functions too: a lazy import is still a
dependency."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom first. A module may import modules of its own layer or below; a module's layer is
# that of the longest pattern naming it ("bslrun.data" covers bslrun.data.*).
LAYERS = [
    ["bslrun.errors", "bslrun.version", "bslrun.clock", "bslrun.compilation"],
    ["bslrun.config"],  # the schemas
    [
        "bslrun.artifacts",
        "bslrun.seeding",
        "bslrun.metrics",
        "bslrun.registry",
        "bslrun.runs",
        "bslrun.lifecycle",
        "bslrun.loggers",
    ],  # fmt: skip
    ["bslrun.data", "bslrun.nets", "bslrun.plots"],
    ["bslrun.flows"],
    [
        "bslrun.models.family",
        "bslrun.models.batching",
        "bslrun.models.objectives",
        "bslrun.models.guides",
    ],  # fmt: skip
    ["bslrun.models"],  # the families
    ["bslrun.inference"],  # the engine
    ["bslrun.replicas"],  # jobs trained together, handed to their runs
    ["bslrun.run"],
    [
        "bslrun",
        "bslrun.__main__",
        "bslrun.cli",
        "bslrun.launcher",
        "bslrun.preflight",
        "bslrun.output_folder",
        "bslrun.report",
        "bslrun.summary",
        "bslrun.published",
        "bslrun.reopen",
        "bslrun.reopen_cli",
    ],  # fmt: skip
    ["hydra_plugins.bslrun_launcher"],  # Hydra's entry to bslrun.launcher
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str) -> set[str]:
    """bslrun modules that ``name`` imports (``from bslrun import x`` names module x)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bslrun"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bslrun":
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            names_only = len(submodules) < len(node.names)
            found |= submodules | ({node.module} if names_only else set())
    return found - {name}


def layer(name: str) -> int:
    matches = [
        (len(pattern), index)
        for index, patterns in enumerate(LAYERS)
        for pattern in patterns
        if name == pattern or name.startswith(pattern + ".")
    ]
    assert matches, f"{name} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_imports_only_go_down():
    upward = [
        f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
        for name in sorted(MODULES)
        for dep in sorted(imports(name))
        if layer(dep) > layer(name)
    ]
    assert upward == []


def test_no_import_cycles():
    graph = {name: imports(name) for name in MODULES}
    state: dict = {}  # name -> "open" while on the path, "done" after
    cycles = []

    def visit(name, path):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_checker_sees_an_upward_import():
    assert "bslrun.models.objectives" in imports("bslrun.inference.svi")
    assert layer("bslrun.inference.svi") > layer("bslrun.models.objectives")
    assert layer("bslrun.models.bnn") > layer("bslrun.models.family") > layer("bslrun.flows.made")
