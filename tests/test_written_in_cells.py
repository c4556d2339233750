"""docs/written_in_cells.md: one row per lesson, and every name it says a lesson's cells write is defined (a def, a
class or a top-level assignment) in a code cell of that lesson; no lesson calls ``show_source`` (a row marked
"(in progress)" is skipped for that check only)."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "written_in_cells.md"
ROW = re.compile(r"^\| (?P<lesson>\d\d)(?P<progress> \(in progress\))? \| (?P<named_for>[^|]+) \| (?P<names>[^|]+) \|")
NAME = re.compile(r"`([A-Za-z_]\w*)`")


def rows(text: str) -> dict[str, dict]:
    """lesson number -> {"names": [...], "in_progress": bool}, from the table's rows (one per lesson)."""
    found: dict[str, dict] = {}
    for line in text.splitlines():
        if (match := ROW.match(line)) is None:
            continue
        assert match["lesson"] not in found, f"docs/written_in_cells.md has two rows for lesson {match['lesson']}"
        cell = match["names"].strip()
        names = NAME.findall(cell)
        assert names and NAME.sub("", cell).replace(",", "").strip() == "", \
            f"lesson {match['lesson']}: the third column lists `names` separated by commas, not {cell!r}"
        found[match["lesson"]] = {"names": names, "in_progress": bool(match["progress"])}
    return found


def _masked(code: str) -> str:
    """IPython's %magic and !shell lines as comments, so that a cell parses as Python."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in code.split("\n"))


def defined_names(notebook: dict) -> set[str]:
    """Names a notebook's code cells define at their top level: def, class, assignment (tuple targets too)."""
    names: set[str] = set()
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        for node in ast.parse(_masked("".join(source) if isinstance(source, list) else source)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


@functools.cache
def lessons() -> dict[str, tuple[Path, str]]:
    """lesson number -> (notebook, its JSON text)."""
    return {p.name[:2]: (p, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}


def problems(table: str, notebooks: dict[str, tuple[Path, str]]) -> list[str]:
    """One sentence per row whose name is not defined in its lesson's cells, missing row, or lesson with show_source."""
    listed, found = rows(table), []
    found += [f"docs/written_in_cells.md has no row for lesson {n} ({notebooks[n][0].name})"
              for n in sorted(set(notebooks) - set(listed))]
    found += [f"docs/written_in_cells.md has a row for lesson {n}, which has no notebook"
              for n in sorted(set(listed) - set(notebooks))]
    for number in sorted(set(listed) & set(notebooks)):
        path, text = notebooks[number]
        defined, shows_source = _read(text)
        found += [f"lesson {number}: docs/written_in_cells.md lists `{name}`, which no code cell of {path.name} "
                  "defines (a def, class or top-level assignment)" for name in listed[number]["names"]
                  if name not in defined]
        if not listed[number]["in_progress"] and shows_source:
            found.append(f"lesson {number}: {path.name} uses show_source: write the code in a cell instead")
    return found


@functools.lru_cache(maxsize=64)
def _read(text: str) -> tuple[frozenset[str], bool]:
    """A notebook's defined names, and whether any cell mentions show_source (each text is parsed once)."""
    notebook = json.loads(text)
    cells = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in notebook["cells"]]
    return frozenset(defined_names(notebook)), any("show_source" in cell for cell in cells)


def test_every_lesson_writes_in_its_cells_what_it_is_named_for():
    assert problems(TABLE.read_text(encoding="utf-8"), lessons()) == []


def test_a_missing_name_a_missing_row_or_show_source_is_named():
    table, notebooks = TABLE.read_text(encoding="utf-8"), lessons()
    in_progress = {n for n, row in rows(table).items() if row["in_progress"]}
    done = sorted(set(notebooks) - in_progress)
    assert len(done) >= 12, f"only lessons {done} are complete in docs/written_in_cells.md"
    for number in done:  # every listed name is checked: the last one renamed is named; show_source is caught
        row = next(line for line in table.splitlines() if line.startswith(f"| {number} |"))
        last = rows(table)[number]["names"][-1]
        renamed = table.replace(row, row.replace(f"`{last}`", f"`{last}_gone`"))
        assert problems(renamed, notebooks) == [
            f"lesson {number}: docs/written_in_cells.md lists `{last}_gone`, which no code cell of "
            f"{notebooks[number][0].name} defines (a def, class or top-level assignment)"]
        path, text = notebooks[number]
        shown = json.loads(text)
        shown["cells"].append({"cell_type": "code", "metadata": {}, "source": "show_source(resnet9)"})
        assert problems(table, {**notebooks, number: (path, json.dumps(shown))}) == [
            f"lesson {number}: {path.name} uses show_source: write the code in a cell instead"]
    without = "\n".join(line for line in table.splitlines() if not line.startswith(f"| {done[0]} |"))
    assert problems(without, notebooks) == [
        f"docs/written_in_cells.md has no row for lesson {done[0]} ({notebooks[done[0]][0].name})"]
