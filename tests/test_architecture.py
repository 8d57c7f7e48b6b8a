"""The layers of docs/architecture.md hold: no upward import, no cycle, every unit placed.

The imports are read from the source (``ast``), those inside functions included, so a lazy
import that goes the wrong way is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "scidiff"
DOC = ROOT / "docs" / "architecture.md"


def _layers() -> dict[str, int]:
    """unit -> layer number, from the table of docs/architecture.md."""
    layers: dict[str, int] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.match(r"^\d+ ", cells[0]):
            continue
        level = int(cells[0].split()[0])
        for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[1]):
            assert name not in layers, f"{name} appears in two layers of {DOC.name}"
            layers[f"scidiff.{name}"] = level
    assert layers, f"no layer table found in {DOC}"
    return layers


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The scidiff modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "scidiff":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "scidiff")
    return found


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_unit_has_a_layer() -> None:
    layers = _layers()
    units = {_unit(m) for m in GRAPH if m != "scidiff"}
    missing = sorted(units - set(layers))
    assert not missing, f"units without a layer in docs/architecture.md: {missing}"
    stale = sorted(set(layers) - units)
    assert not stale, f"docs/architecture.md lists units that do not exist: {stale}"


def test_no_module_imports_upward() -> None:
    layers = _layers()
    bad = []
    for module, targets in sorted(GRAPH.items()):
        if module == "scidiff":
            continue  # the lazy namespace sits above every layer
        for target in sorted(targets):
            if target == "scidiff":
                bad.append(f"{module} imports the scidiff namespace (import the defining module instead)")
                continue
            src, dst = layers.get(_unit(module)), layers.get(_unit(target))
            if src is not None and dst is not None and dst > src:
                bad.append(f"{module} (layer {src}) imports {target} (layer {dst})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_units_import_each_other_in_one_direction_only() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        if module == "scidiff":
            continue
        for target in targets:
            if _unit(target) != _unit(module) and target != "scidiff":
                edges[_unit(module)].add(_unit(target))
    cycle = _find_cycle(edges)
    assert cycle is None, "units in a cycle: " + " -> ".join(cycle or [])


def test_no_module_cycle_inside_a_unit() -> None:
    # a package's __init__ gathers its modules, so edges into an __init__ are left out here
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    edges = {m: {t for t in ts if t not in packages and t != m} for m, ts in GRAPH.items() if m not in packages}
    cycle = _find_cycle(edges)
    assert cycle is None, "modules in a cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_lazy_imports() -> None:
    # runs.train imports the training loop at the top; the cli imports runs inside its commands
    assert "scidiff.runs" in GRAPH["scidiff.cli.sample"] or any(
        _unit(t) == "scidiff.runs" for t in GRAPH["scidiff.cli.sample"]
    )


@pytest.mark.parametrize("unit", ["scidiff.schedules", "scidiff.parameterisation", "scidiff.sde", "scidiff.ddpm"])
def test_the_mathematics_imports_no_network_data_training_or_cli(unit: str) -> None:
    forbidden = ("scidiff.nets", "scidiff.data", "scidiff.training", "scidiff.cli", "scidiff.runs", "scidiff.models")
    used = {t for m, ts in GRAPH.items() if _unit(m) == unit for t in ts}
    assert not {t for t in used if t.startswith(forbidden)}
