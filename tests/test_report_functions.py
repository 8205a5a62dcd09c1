"""The report renderers are built from section functions (issue 29): no function in a
question's report (tasks/q<N>/report.py), the final report or the comparison report is over
60 lines, so a renderer stays a short list of calls and each section can be read alone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 60


def renderers() -> list[Path]:
    found = sorted((ROOT / "tasks").glob("*/report.py"))
    return found + [ROOT / "tasks/reporting/final.py", ROOT / "tasks/reporting/compare.py"]


def long_functions(path: Path, limit: int = LIMIT) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function in ``path`` longer than ``limit`` lines,
    decorators left out (ast: end_lineno - lineno + 1), nested functions and methods
    included."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        out.append((name[:-1], length))
            visit(child, name)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def test_the_renderers_are_all_found():
    paths = renderers()
    questions = {p.parent.name for p in paths if p.name == "report.py"}
    assert {"q1", "q2", "q3", "q4"} <= questions, questions
    assert all(p.is_file() for p in paths)


def test_no_report_function_is_over_60_lines():
    over = {f"{p.relative_to(ROOT)}:{name}": n for p in renderers()
            for name, n in long_functions(p)}
    assert not over, (f"functions over {LIMIT} lines: {over}; split each into section "
                      "functions (one per report section, table or figure group)")


def test_the_check_measures_what_it_claims(tmp_path):
    def body(indent: str, n: int) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    src = tmp_path / "m.py"
    # short: def + 59 = 60 lines (allowed); C.long: def + 61 = 62; C.long.inner: def + 1 = 2
    src.write_text("def short():\n" + body("    ", LIMIT - 1)
                   + "\n\nclass C:\n    def long(self):\n" + body("        ", LIMIT - 1)
                   + "        def inner():\n            return 1\n")
    assert long_functions(src) == [("C.long", LIMIT + 2)]
    assert long_functions(src, limit=LIMIT - 1) == [("short", LIMIT), ("C.long", LIMIT + 2)]
