"""Names that explain themselves (issue 29): no two modules of one name in different roles,
and nothing private imported from another module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows", "bench")
# One role each, wherever they appear: a package, a question's parts (tasks/q<N>/), a layer's
# name registry (tasks/registry.py: tasks; flows/registry.py: flows).
# (bench/ is left out of this one: a benchmark is named after what it measures.)
SAME_ROLE = {"__init__.py", "__main__.py", "question.py", "plan.py", "report.py", "comparer.py",
             "reference.py", "data.py", "options.py", "registry.py"}


def modules(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_a_module_name_means_one_thing():
    by_name: dict[str, list[str]] = defaultdict(list)
    for p in modules(("tasks", "flows")):
        by_name[p.name].append(str(p.relative_to(ROOT)))
    clashes = {n: ps for n, ps in by_name.items() if len(ps) > 1 and n not in SAME_ROLE}
    assert not clashes, f"modules of one name in different roles: {clashes}; rename one"
    # the question parts are where they belong: only in question packages (and the shared
    # report/registry/common layers named above)
    for name in ("question.py", "plan.py", "comparer.py", "reference.py", "options.py"):
        for path in by_name.get(name, []):
            assert path.startswith("tasks/q"), f"{path}: {name} is a question's part"


def test_nothing_private_is_imported_from_another_module():
    found = []
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__")]
                if private and (node.module or "").startswith(PACKAGES):
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.module} "
                                 f"{', '.join(private)}")
    assert not found, "private names imported across modules (make them public):\n" + \
        "\n".join(found)
