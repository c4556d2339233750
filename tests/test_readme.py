"""The README's lesson table agrees with the lessons (weeks, recipes), and every recipe stands alone."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from course_utils.runner import run

ROOT = Path(__file__).resolve().parents[1]
LESSONS = run.discover()
RECIPES = sorted((ROOT / "recipes").glob("*.py"))


def table_rows() -> dict[str, list[str]]:
    """Rows of the README's lesson table (`| week | [lesson](…) | what | recipe | …`) and of its electives table
    (`| [lesson](…) | what | recipe | …`, read with week "—"), by lesson name."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| (?:(\d+) \| )?\[(\d\d_\w+)\.ipynb\]", line)
        if m:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[m.group(2)] = cells if m.group(1) else ["—", *cells]
    return rows


def summary_recipes(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    text, inside = [], False
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith("## "):
            inside = source.startswith("## Summary")
        if inside:
            text.append(source)
    return re.findall(r"recipes/(\w+\.py)", "\n".join(text))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_readme_row_matches_the_lesson(path):
    rows = table_rows()
    assert path.stem in rows, f"README's lesson table has no row for {path.name}"
    week, _, _, recipe = rows[path.stem][:4]
    meta = run.lesson_meta(path)
    if meta.get("elective"):
        assert week == "—", f"README lists elective {path.stem} in the week-by-week table; it belongs under Electives"
    else:
        assert week.isdigit() and int(week) == meta["week"], f"README puts {path.stem} in week {week}; the lesson says otherwise"
    named = summary_recipes(path)
    if named:
        assert f"recipes/{named[0]}" in recipe, f"README's recipe column for {path.stem} should be recipes/{named[0]}"
    else:
        assert "recipes/" not in recipe, f"README names a recipe for {path.stem} that its Summary does not"


def test_every_recipe_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in RECIPES if f"recipes/{p.name}" not in readme]
    assert RECIPES and not missing, f"recipes missing from README's table: {missing}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_stands_alone(path):
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "course_utils" not in imported, f"{path.name} imports course_utils; a recipe uses pip packages only"
    assert ast.get_docstring(tree), f"{path.name} needs a docstring saying what it does and how to run it"
    assert "argparse" in imported, f"{path.name} should take command-line flags (argparse)"
    assert re.search(r"if __name__ == .__main__.:", path.read_text()), f"{path.name} needs a __main__ guard"
