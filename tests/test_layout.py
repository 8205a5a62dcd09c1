"""The layout's rules, checked on the import graph of ``tasks/`` and ``flows/`` (read with
``ast``, every import statement, including those inside functions):

- no import cycles;
- questions never import each other (``tasks.q1`` .. ``tasks.q4``);
- the core imports nothing above it; shared pieces import no question, nor the catalog,
  plans or registry that sit on top; ``tasks`` never imports ``flows``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows")
QUESTIONS = ("tasks.q1", "tasks.q2", "tasks.q3", "tasks.q4")
SHARED = ("tasks.core", "tasks.ml", "tasks.inputs", "tasks.reporting")
TOP = ("tasks.catalog", "tasks.plans", "tasks.registry", "tasks.comparers",
       "tasks.selftest", "tasks.__main__")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (a ``from pkg import mod`` counts as ``pkg.mod``
    when that is a module; package ``__init__`` files imported on the way are not edges)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import tasks.core.cache.x` -> module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _package_imports(graph, pkg: str, is_package: bool = True) -> set[str]:
    """Every module ``pkg`` imports (``pkg`` a package, or a single module)."""
    return set().union(*(deps for mod, deps in graph.items()
                         if (mod == pkg or (is_package and mod.startswith(pkg + ".")))))


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_questions_never_import_each_other(graph):
    for q in QUESTIONS:
        others = tuple(o for o in QUESTIONS if o != q)
        bad = sorted(d for d in _package_imports(graph, q) if _within(d, others))
        assert bad == [], f"{q} imports another question's code: {bad}"


def test_shared_pieces_import_no_question_and_nothing_above(graph):
    for pkg in SHARED:
        bad = sorted(d for d in _package_imports(graph, pkg)
                     if _within(d, QUESTIONS + TOP + ("flows",)))
        assert bad == [], f"{pkg} imports {bad}"
    core = sorted(d for d in _package_imports(graph, "tasks.core")
                  if not _within(d, ("tasks.core",)))
    assert core == [], f"the core imports {core}"


def test_tasks_never_import_flows(graph):
    bad = sorted((m, d) for m, deps in graph.items() if _within(m, ("tasks",))
                 for d in deps if _within(d, ("flows",)))
    assert bad == []


def test_every_question_has_its_home(graph):
    for q in QUESTIONS:
        names = {m.rsplit(".", 1)[-1] for m in graph if m.startswith(q + ".")}
        assert {"plan", "report"} <= names, f"{q} lacks a plan or report module: {names}"
