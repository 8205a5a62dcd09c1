"""The docs stay true: every relative link (and #anchor) resolves, every command shown in a
code block parses with the real CLI parser, the README stays short and says what it must."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def doc_files() -> list[Path]:
    """Every page the checks cover: the README, docs/*.md and bench/README.md."""
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------- reading markdown

FENCE = re.compile(r"^\s*(```|~~~)")


def split_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block) for every line; fence lines count as
    inside."""
    out, inside = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            out.append((n, line, True))
            inside = not inside
            continue
        out.append((n, line, inside))
    return out


def code_blocks(text: str) -> list[list[tuple[int, str]]]:
    """The fenced code blocks, each as (line number, line) without its fences."""
    blocks, current = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append((n, line))
    return blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, every character but
    letters, digits, '_', '-' and spaces dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2, ... for repeated ones."""
    seen: dict[str, int] = {}
    out = set()
    for _, line, inside in split_lines(path.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if inside or not m:
            continue
        slug = github_slug(m.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)")


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code."""
    out = []
    for n, line, inside in split_lines(path.read_text()):
        if inside:
            continue
        prose = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        out += [(n, m.group(1)) for m in LINK.finditer(prose)]
        if m := REF_DEF.match(prose):
            out.append((n, m.group(1)))
    return out


def link_problem(page: Path, target: str) -> str | None:
    """Why a link from ``page`` to ``target`` is broken, or None (external links: None)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
        return None
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    if not dest.exists():
        return f"{path_part} does not exist"
    if ROOT not in dest.parents and dest != ROOT:
        return f"{path_part} is outside the repository"
    if anchor:
        if dest.suffix != ".md":
            return f"#{anchor} into a file that is not Markdown"
        if anchor not in anchors(dest):
            return f"no heading with anchor #{anchor} in {rel(dest)}"
    return None


# ---------------------------------------------------------------- commands in code blocks

SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(block: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """(line number, words) of every simple command in a shell code block: continuation
    lines joined, comments dropped, split at ; && || | &, leading VAR=value assignments and a
    `$ ` prompt dropped. A line shlex cannot split (Python, YAML) is skipped."""
    out = []
    pending, start = "", 0
    for n, line in block:
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        text = re.sub(r"^\s*\$\s+", "", text)
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        words: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SEPARATORS:
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words:
                    out.append((start, words))
                words = []
            else:
                words.append(tok)
    return out


def visionflows_commands() -> list[tuple[str, list[str]]]:
    """('file:line', words) of every `visionflows ...` and `python -m ...` command shown in a
    code block of the docs."""
    found = []
    for page in doc_files():
        for block in code_blocks(page.read_text()):
            for n, words in shell_commands(block):
                if words[0] == "visionflows" or (
                        words[0] in ("python", "python3") and "-m" in words[1:2]):
                    found.append((f"{rel(page)}:{n}", words))
    return found


COMMANDS = visionflows_commands()


def parse_cli(words: list[str], where: str) -> None:
    """Parse ``visionflows`` arguments with the CLI's own parser; a usage error fails the test
    naming the page and line."""
    from flows.cli import build_parser

    args = words[1:]
    if args and args[-1] == "...":  # "and other options", shown as a trailing ...
        args = args[:-1]
    redirects = [w for w in args if set(w) <= set("<>&0123456789") and ("<" in w or ">" in w)]
    if redirects:
        pytest.fail(f"{where}: `{shlex.join(words)}` has {redirects[0]!r}: write placeholders "
                    "as plain words (RUN_ID), not <run-id>")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = build_parser().parse_args(args)
            if ns.command == "submit" and ns.flow:  # submit's run options: run's parser
                ns.run_parser.parse_args([ns.flow, *ns.run_args])
    except SystemExit as exc:
        message = err.getvalue().strip().splitlines()[-1:] or [f"exit {exc.code}"]
        pytest.fail(f"{where}: `{shlex.join(words)}` does not parse: {message[0]}")


def test_the_docs_show_commands():
    """The command check below is not vacuous: the docs show every subcommand."""
    shown = {words[1] for _, words in COMMANDS if words[0] == "visionflows" and len(words) > 1}
    assert {"run", "report", "serve", "mirror", "compare", "verify", "doctor",
            "submit"} <= shown, shown


@pytest.mark.parametrize(("where", "words"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_in_the_docs_parses(where, words):
    if words[0] == "visionflows":
        parse_cli(words, where)
        return
    module = words[words.index("-m") + 1]
    if module == "flows.cli":
        parse_cli(["visionflows", *words[words.index("-m") + 2:]], where)
        return
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    assert spec is not None, f"{where}: `{shlex.join(words)}`: no module {module}"


def test_a_bad_flag_or_placeholder_in_a_doc_fails(tmp_path, monkeypatch):
    """The checks above fail where they should (a typo'd flag, an <angle> placeholder)."""
    with pytest.raises(pytest.fail.Exception, match=r"page.md:3: .*unrecognized arguments"):
        parse_cli(["visionflows", "run", "q1-mlp", "--profiles", "full"], "page.md:3")
    with pytest.raises(pytest.fail.Exception, match=r"plain words"):
        parse_cli(["visionflows", "verify", "q1-mlp", "<", "run-id", ">"], "page.md:4")
    block = [(1, "visionflows compare A B \\"), (2, "    --tolerance x  # a comment"),
             (3, "VF_OFFLINE=1 visionflows doctor && prefect deployment ls")]
    assert shell_commands(block) == [
        (1, ["visionflows", "compare", "A", "B", "--tolerance", "x"]),
        (3, ["visionflows", "doctor"]), (3, ["prefect", "deployment", "ls"])]
    with pytest.raises(pytest.fail.Exception, match="invalid float value"):
        parse_cli(shell_commands(block)[0][1], "page.md:1")


# ---------------------------------------------------------------- links

LINKS = [(page, n, target) for page in doc_files() for n, target in links(page)]


def test_the_docs_have_relative_links():
    relative = [t for _, _, t in LINKS if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]
    assert len(relative) >= 20 and any("#" in t for t in relative)


@pytest.mark.parametrize(("page", "line", "target"), LINKS,
                         ids=[f"{rel(p)}:{n}:{t}" for p, n, t in LINKS])
def test_every_relative_link_resolves(page, line, target):
    problem = link_problem(page, target)
    assert problem is None, f"{rel(page)}:{line}: link ({target}): {problem}"


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    assert link_problem(README, "docs/no-such-page.md") == "docs/no-such-page.md does not exist"
    assert "no heading with anchor #nowhere" in link_problem(README, "docs/README.md#nowhere")
    assert link_problem(README, "https://example.org/x") is None
    page = tmp_path / "p.md"
    page.write_text("# Runs: `compare` & trend\n## Q1 — MLP (flow `q1-mlp`)\n## Again\n"
                    "## Again\n```\n# not a heading\n```\n")
    assert anchors(page) == {"runs-compare--trend", "q1--mlp-flow-q1-mlp", "again", "again-1"}


def test_every_docs_page_is_in_the_index():
    index = DOCS / "README.md"
    listed = {(DOCS / t.partition("#")[0]).resolve() for _, t in links(index)}
    missing = [p.name for p in DOCS.glob("*.md") if p != index and p.resolve() not in listed]
    assert not missing, f"docs/README.md lists no line for {missing}: add one per page"


# ---------------------------------------------------------------- the README itself

def test_readme_is_short_and_names_python_311():
    text = README.read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/")
    assert re.search(r"Python (≥|>=) ?3\.11", text), "README.md must say Python >= 3.11"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in pyproject  # the README says what pip enforces


def test_readme_quick_start_is_what_make_and_ci_run():
    """`make run` and `make test` are the README's two commands; the Makefile has both
    targets and .ci/run runs the README's test command."""
    shown = {shlex.join(words) for block in code_blocks(README.read_text())
             for _, words in shell_commands(block)}
    assert {"make run", "make test"} <= shown, shown
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), ".ci/run must run the README's `make test`"
