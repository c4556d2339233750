"""Marked copies: code written once and copied where it cannot be imported, held to its source by one checker.

A lesson's cells are the source of the algorithm it teaches; a recipe (standalone: it never imports course_utils)
and a course_utils module that needs the same code hold *copies*, each under a marker comment naming its source.
The marker is a comment line, alone on its line, right above the copy::

    # Copied from course_utils/core/gpu.py:bf16_native
    # Copied from course_utils/demo/app.py:FailedLogins with MAX_FAILED_LOGINS->LIMIT
    # Copied from notebooks/04_gpt_from_scratch.ipynb#attention-cell:CausalSelfAttention
    # Copied from notebooks/04_gpt_from_scratch.ipynb#sampling-cell
    ...the whole cell's code...
    # End copy

(only real comments count: these lines, inside a docstring, are no markers). The source is, relative to the repository root:

* ``<file>.py:<name>``: the function, class or assignment ``name`` of that file (``Class.method`` for a method);
* ``<file>.ipynb#<cell-id>:<name>``: the same, defined in that notebook cell (cells are named by their ids);
* ``<file>.ipynb#<cell-id>``: the cell's whole code. The copy ends at an ``# End copy`` line of the marker's
  indentation.

A named copy is the def, class or assignment that starts on the line right below the marker (decorators included),
to where Python's parser says it ends. ``with A->B, C->D`` after the source replaces ``A`` by ``B`` (then ``C`` by
``D``) in the source's text first, for a copy that renames (as in transformers' ``utils/check_copies.py``, the design
this follows). The copy must then be the source's text exactly, docstrings and comments included, re-indented to the
marker's indentation.

Every recipe holds at least one marked copy, or is listed in ``NO_SHARED_CODE`` below with the one-line reason it
shares no code; ``check`` names a recipe that is neither (and a listed one that has copies after all).

    python -m course_utils.runner.copies check   # exit 1 naming each copy that differs (file:line, first difference)
    python -m course_utils.runner.copies fix     # rewrite each copy that differs from its source

``make check-copies`` and ``make fix-copies`` run the two; ``make test`` runs the check. ``tests/test_copies.py``
mutates every copy and sees the check fail.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.core.paths import REPO_ROOT, atomic_write

#: The folders searched for markers (every ``*.py`` below them).
SEARCHED = ("recipes", "course_utils", "benchmarks")
MARKER = re.compile(r"#\s*copied from\b\s*(?P<rest>.*)$", re.IGNORECASE)
END = "# End copy"
SOURCE = re.compile(r"(?P<path>[\w./-]+\.py):(?P<name>[A-Za-z_][\w.]*)"
                    r"|(?P<notebook>[\w./-]+\.ipynb)#(?P<cell>[\w-]+)(?::(?P<cell_name>[A-Za-z_][\w.]*))?")
RULE = re.compile(r"([^\s,]+?)->([^\s,]+)")  # `with A->B, C->D`: a name never holds a space or comma
NAMED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
FORMS = "<file>.py:<name>, <file>.ipynb#<cell-id> or <file>.ipynb#<cell-id>:<name>"
#: Every recipe holds at least one marked copy (the code it shares with its lesson or with course_utils), or is
#: listed here with the reason it shares none: ``check`` fails on a recipe that is neither, or listed but has copies.
NO_SHARED_CODE: dict[str, str] = {}


class CopyError(ValueError):
    """A marker that cannot be checked (a missing source, an unreadable marker): one sentence, with file:line."""


@dataclass
class Copy:
    """One marked copy: where it is (``start``/``end``: 0-based line indices of the copied lines, end exclusive)."""

    file: str  # relative to the root, with /
    line: int  # the marker's line, 1-based
    source: str  # as the marker writes it
    indent: str
    rules: list[tuple[str, str]] = field(default_factory=list)
    start: int = 0
    end: int = 0
    expected: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# --- reading sources ----------------------------------------------------------------------------------------------
def _statement_start(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


@functools.lru_cache(maxsize=128)
def _parse(text: str) -> ast.Module:
    """The syntax tree of a text (cached: a source is read once per copy, a tree is never changed)."""
    return ast.parse(text)


def _named_block(text: str, name: str, what: str, parsed: str | None = None) -> list[str]:
    """The lines of ``name`` (dotted for a nested one) in ``text``, dedented to column 0. ``parsed``: the text to
    parse instead, line for line the same (a cell with its magics masked)."""
    try:
        tree = _parse(text if parsed is None else parsed)
    except SyntaxError as err:
        raise CopyError(f"{what} does not parse (line {err.lineno}: {err.msg})") from None
    body, node = tree.body, None
    for part in name.split("."):
        node = next((n for n in body if _defines(n, part)), None)
        if node is None:
            raise CopyError(f"{what} defines no {name} (no def, class or assignment named {part})")
        body = getattr(node, "body", [])
    lines = text.split("\n")[_statement_start(node) - 1:node.end_lineno]
    return _dedent(lines, node.col_offset)


def _dedent(lines: list[str], width: int) -> list[str]:
    return [line[width:] if line[:width].strip() == "" else line for line in lines]


@functools.lru_cache(maxsize=32)
def _cells(text: str) -> list[dict]:
    return json.loads(text)["cells"]


def _cell_code(notebook: Path, cell_id: str, shown: str) -> str:
    try:
        cells = _cells(notebook.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as err:
        raise CopyError(f"{shown} cannot be read as a notebook ({err})") from None
    cell = next((c for c in cells if c.get("id") == cell_id), None)
    if cell is None and not any("id" in c for c in cells):
        raise CopyError(f"{shown} has no cell ids (nbformat 4.4): upgrade it to nbformat 4.5, whose cells have ids, "
                        "to mark a copy of one of its cells")
    if cell is None:
        raise CopyError(f"{shown} has no cell with the id {cell_id}")
    if cell.get("cell_type") != "code":
        raise CopyError(f"{shown}'s cell {cell_id} is a {cell.get('cell_type')} cell, not code")
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _without_magics(code: str) -> str:
    """IPython's ``%magic`` and ``!shell`` lines as comments, so that a cell parses as Python (same line numbers)."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in code.split("\n"))


def source_lines(root: Path, source: str) -> list[str]:
    """The source's lines, dedented to column 0 (before any ``with`` rule)."""
    match = SOURCE.fullmatch(source)
    if match is None:
        raise CopyError(f"the marker's source {source!r} is not of the form {FORMS}")
    relative = match["path"] or match["notebook"]
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise CopyError(f"the marker names {relative}, which is not a file of the repository")
    if match["path"]:
        return _named_block(path.read_text(encoding="utf-8"), match["name"], relative)
    code = _cell_code(path, match["cell"], relative)
    if match["cell_name"]:
        return _named_block(code, match["cell_name"], f"{relative}#{match['cell']}", _without_magics(code))
    return _trim(code.split("\n"))


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


# --- finding copies -----------------------------------------------------------------------------------------------
def _comments(text: str, tree: ast.Module | None) -> list[tuple[int, int, str]]:
    """(line, column, comment) of every line that is a comment alone (never a line of a multi-line string)."""
    inside: set[int] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno > node.lineno:
            inside.update(range(node.lineno + 1, node.end_lineno + 1))
    return [(number, len(line) - len(line.lstrip()), line.strip()) for number, line in enumerate(text.split("\n"), 1)
            if line.lstrip().startswith("#") and number not in inside]


def copies_in(root: Path, relative: str, text: str) -> tuple[list[Copy], list[str]]:
    """The copies marked in one file, each with its extent and expected lines, and the problems found."""
    if "copied from" not in text.lower():
        return [], []
    try:
        tree, unparsed = ast.parse(text), None
    except SyntaxError as err:
        tree, unparsed = None, f"{relative} does not parse (line {err.lineno}: {err.msg}), so its copy cannot be found"
    comments = _comments(text, tree)
    lines = text.split("\n")
    found, problems = [], []
    for number, column, comment in comments:
        match = MARKER.fullmatch(comment)
        if match is None:
            continue
        copy = Copy(relative, number, "", lines[number - 1][:column])
        try:
            source, _, rules = match["rest"].strip().partition(" ")
            copy.source = source
            if rules.strip():
                rules = rules.strip()
                if not rules.startswith("with "):
                    raise CopyError(f"after the source the marker may only say `with A->B, C->D`, not {rules!r}")
                copy.rules = RULE.findall(rules[5:])
                if not copy.rules or RULE.sub("", rules[5:]).replace(",", "").strip():
                    raise CopyError(f"the renaming rule {rules!r} is not of the form `with A->B, C->D`")
            expected = source_lines(root, source)
            text_block = "\n".join(expected)
            for old, new in copy.rules:
                text_block = text_block.replace(old, new)
            copy.expected = [copy.indent + line if line.strip() else "" for line in text_block.split("\n")]
            is_cell = SOURCE.fullmatch(source)["notebook"] and not SOURCE.fullmatch(source)["cell_name"]
            if is_cell:
                end = next((n for n, c, s in comments if n > number and c == column and s.strip() == END), None)
                if end is None:
                    raise CopyError(f"a copy of a whole cell ends at a line `{END}` of the marker's indentation; "
                                    "there is none below it")
                copy.start, copy.end = number, end - 1
                while copy.end > copy.start and not lines[copy.end - 1].strip():
                    copy.end -= 1  # blank lines before the end marker are not part of the copy
            else:
                if tree is None:
                    raise CopyError(unparsed)
                node = next((n for n in ast.walk(tree) if isinstance(n, ast.stmt) and _statement_start(n) == number + 1),
                            None)
                if not isinstance(node, NAMED):
                    raise CopyError("the line below the marker must start the def, class or assignment it copies")
                copy.start, copy.end = number, node.end_lineno
            found.append(copy)
        except CopyError as err:
            problems.append(f"{copy.where}: {err}.")
    return found, problems


def scan(root: Path = REPO_ROOT) -> tuple[list[Copy], list[str]]:
    """Every marked copy under the searched folders, and every marker that cannot be checked."""
    root = Path(root)
    copies, problems = [], []
    for folder in SEARCHED:
        for path in sorted((root / folder).rglob("*.py")):
            found, bad = copies_in(root, path.relative_to(root).as_posix(), path.read_text(encoding="utf-8"))
            copies += found
            problems += bad
    return copies, problems


def difference(copy: Copy, lines: list[str]) -> str | None:
    """None if the copy is its source's text; else one sentence naming the first line that differs."""
    have = lines[copy.start:copy.end]
    if have == copy.expected:
        return None
    i = next((i for i, (a, b) in enumerate(zip(have, copy.expected)) if a != b), min(len(have), len(copy.expected)))
    found = repr(have[i]) if i < len(have) else "nothing (the copy ends)"
    wanted = repr(copy.expected[i]) if i < len(copy.expected) else "nothing (the source ends)"
    return (f"{copy.file}:{copy.start + i + 1}: the copy of {copy.source} (marker at line {copy.line}) differs from "
            f"its source: it has {found} where the source has {wanted}")


# --- check and fix ------------------------------------------------------------------------------------------------
def uncovered(root: Path, copies: list[Copy], listed: dict[str, str] | None = None) -> list[str]:
    """One sentence per recipe that holds no marked copy and is not in ``NO_SHARED_CODE``, or is listed there but
    holds copies (a stale entry)."""
    listed = NO_SHARED_CODE if listed is None else listed
    recipes = {p.relative_to(root).as_posix() for p in Path(root).glob("recipes/*.py")}
    held = {c.file for c in copies}
    return ([f"{r}: holds no marked copy; mark the code it shares with its lesson or course_utils, or list it in "
             f"course_utils/runner/copies.py's NO_SHARED_CODE with the reason it shares none." for r in
             sorted(recipes - held - set(listed))]
            + [f"{r}: is listed in NO_SHARED_CODE ({listed[r]}) but holds marked copies: remove it from the list."
               for r in sorted(set(listed) & held)])


def check(root: Path = REPO_ROOT) -> tuple[list[Copy], list[str]]:
    """The copies, and one sentence per copy that differs, marker that cannot be checked or recipe with no copy."""
    root = Path(root)
    copies, problems = scan(root)
    problems += uncovered(root, copies)
    texts: dict[str, list[str]] = {}
    for copy in copies:
        lines = texts.setdefault(copy.file, (root / copy.file).read_text(encoding="utf-8").split("\n"))
        if (why := difference(copy, lines)) is not None:
            problems.append(why)
    return copies, problems


def fix(root: Path = REPO_ROOT) -> tuple[list[str], list[str]]:
    """Rewrite each copy that differs from its source; returns the copies rewritten and what cannot be fixed.

    A copy of a copy follows its source once that is rewritten: the rewrite repeats until nothing changes."""
    root = Path(root)
    rewritten: list[str] = []
    for _ in range(10):
        copies, problems = scan(root)
        changed = False
        by_file: dict[str, list[Copy]] = {}
        for copy in copies:
            by_file.setdefault(copy.file, []).append(copy)
        for relative, file_copies in by_file.items():
            lines = (root / relative).read_text(encoding="utf-8").split("\n")
            stale = [c for c in file_copies if difference(c, lines) is not None]
            for copy in sorted(stale, key=lambda c: c.start, reverse=True):
                lines[copy.start:copy.end] = copy.expected
                rewritten.append(f"{copy.where} ({copy.source})")
            if stale:
                mode = (root / relative).stat().st_mode
                with atomic_write(root / relative, "w") as handle:
                    handle.write("\n".join(lines))
                (root / relative).chmod(mode)  # atomic_write's temporary file is private (0600)
                changed = True
        if not changed:
            return rewritten, problems
    return rewritten, problems + ["copies: the copies still change after 10 rewrites (a copy of itself?)."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.runner.copies",
                                     description="Check (or rewrite) every marked copy against its source.")
    parser.add_argument("command", choices=("check", "fix"), help="check: exit 1 naming each copy that differs; "
                        "fix: rewrite each copy from its source")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    if args.command == "check":
        copies, problems = check(args.root)
        for problem in problems:
            print(problem)
        stale = sum(" differs from its source: " in p for p in problems)
        if problems:
            print(f"copies: {stale} of {len(copies)} copies differ from their sources (`make fix-copies` rewrites "
                  f"them); {len(problems) - stale} other problem(s) (markers that cannot be checked, recipes with no "
                  "copy).")
            return 1
        print(f"copies: {len(copies)} marked copies in {len({c.file for c in copies})} files match their sources.")
        return 0
    rewritten, problems = fix(args.root)
    for line in rewritten:
        print(f"rewrote {line}")
    for problem in problems:
        print(problem)
    print(f"copies: {len(rewritten)} rewritten" + (f", {len(problems)} marker(s) to repair by hand." if problems
                                                    else "."))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
