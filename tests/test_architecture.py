"""The import graph of ``src/stimulative`` follows docs/architecture.md: every import points down, no cycles.

The graph is read from the source (AST), so imports inside functions and under ``TYPE_CHECKING`` count as much
as module-level ones. Layers, bottom to top (a module may import its own folder and any lower layer; two
folders of the same layer never import each other):

    io.py, _extras.py, provenance.py  <  core/  <  models.py, hf.py | data/  <  train/  <  lm/  <  runs.py
    <  analysis/ | deploy/  <  stimulative (the facade __init__)  <  integrations/  <  commands/  <  cli.py, __main__.py

``core/`` imports nothing of stimulative outside ``core/``; ``commands/`` import only ``commands/options`` of
their folder, and nothing imports ``commands/`` but ``cli.py`` (which loads the commands by name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "stimulative"

# (layer, the group's module prefixes): a module belongs to the group of its longest matching prefix
GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "io": (0, ("stimulative.io", "stimulative._extras", "stimulative._version", "stimulative.provenance")),
    "core": (1, ("stimulative.core",)),
    "models": (2, ("stimulative.models", "stimulative.hf")),
    "data": (2, ("stimulative.data",)),
    "train": (3, ("stimulative.train",)),
    "lm": (4, ("stimulative.lm",)),
    "runs": (5, ("stimulative.runs",)),
    "analysis": (6, ("stimulative.analysis",)),
    "deploy": (6, ("stimulative.deploy",)),
    "facade": (7, ("stimulative",)),
    "integrations": (8, ("stimulative.integrations",)),
    "commands": (9, ("stimulative.commands",)),
    "cli": (10, ("stimulative.cli", "stimulative.__main__")),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def group_of(module: str) -> str:
    best, length = "", -1
    for group, (_, prefixes) in GROUPS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = group, len(prefix)
    return best


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The stimulative modules ``module`` imports anywhere in its source (``from pkg import sub`` -> pkg.sub)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(target)
    return {m for m in found if m in modules and m != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if not group_of(m)] == []


def test_imports_point_down(graph):
    wrong = []
    for module, targets in graph.items():
        group = group_of(module)
        layer = GROUPS[group][0]
        for target in targets:
            tgroup = group_of(target)
            if tgroup == group:
                continue
            if GROUPS[tgroup][0] >= layer:
                wrong.append(f"{module} ({group}) imports {target} ({tgroup})")
    assert not wrong, "\n".join(sorted(wrong))


def test_core_imports_only_core(graph):
    assert {m: sorted(t for t in ts if group_of(t) != "core")
            for m, ts in graph.items() if group_of(m) == "core" and any(group_of(t) != "core" for t in ts)} == {}


def test_commands_stay_apart(graph):
    wrong = [f"{m} imports {t}" for m, ts in graph.items() for t in ts
             if group_of(t) == "commands" and t != "stimulative.commands.options" and group_of(m) != "cli"]
    wrong += [f"{m} imports {t}" for m, ts in graph.items() if group_of(m) == "commands"
              for t in ts if t == "stimulative.cli"]
    assert wrong == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle(graph):
    assert find_cycle(graph) is None


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
    """The checks above would fail on a lazy upward import and on a two-module cycle."""
    pkg = tmp_path / "stimulative"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..train import x\n    from . import b\n")
    (pkg / "core" / "b.py").write_text("from .a import f\n")
    (pkg / "train.py").write_text("x = 1\n")
    modules = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = p
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert graph["stimulative.core.a"] == {"stimulative.train", "stimulative.core.b"}
    assert find_cycle(graph) == ["stimulative.core.a", "stimulative.core.b", "stimulative.core.a"]
