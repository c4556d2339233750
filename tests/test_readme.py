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


# --- measured figures: one number in one place (benchmarks/measured/) ----------------------------------------
from course_utils.runner import records  # noqa: E402

APPLY = ("`MODE=smoke make course`, then `python -m course_utils.runner.records smoke-times runs/<time>/report.json "
         "--apply` (writes benchmarks/measured/smoke_times.json and rewrites the README column, time_smoke and the "
         "title tables from it)")


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_smoke_time_is_the_recorded_one_everywhere(path):
    """The README's smoke column, the lesson's metadata ``time_smoke`` and its title table all show the time of the
    recorded smoke run (benchmarks/measured/smoke_times.json), rounded up to a multiple of 5 s."""
    recorded = records.load_smoke_times().get("seconds", {})
    assert path.stem in recorded, f"no recorded smoke time for {path.stem}: run {APPLY}"
    shown = records.shown_seconds(recorded[path.stem])
    meta = run.lesson_meta(path)
    title = "".join(json.loads(path.read_text())["cells"][0]["source"])
    readme = records.readme_smoke_cells((ROOT / "README.md").read_text())
    seen = {"README": records.smoke_part(readme[path.stem][1]) if path.stem in readme else None,
            "time_smoke": records.smoke_part("/ " + meta.get("time_smoke", "")),
            "title table": records.smoke_part(records.title_time_cell(title) or "")}
    wrong = {where: value for where, value in seen.items() if value != shown}
    assert not wrong, (f"{path.stem} ran its smoke mode in {recorded[path.stem]} s (shown as {shown} s), but "
                       f"{wrong} say otherwise: run {APPLY}")


def test_readme_cartpole_figure_is_the_recorded_one():
    """"a PPO agent that solves CartPole (500 ± 0 on 50 held-out seeds, measured on a CPU)" in the README is lesson 15's
    record, for every agent the sentence names, machine included."""
    readme = (ROOT / "README.md").read_text()
    claim = re.search(r"((?:REINFORCE|PPO|DQN)(?: and (?:REINFORCE|PPO|DQN))*) agents? that solves? CartPole \((\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?) on (\d+) "
                      r"held-out seeds, measured on an? (CPU|GPU)\)", readme)
    assert claim, ("README's electives table should state lesson 15's CartPole figure as 'a PPO agent that solves CartPole "
                   "(N ± S on K held-out seeds, measured on a CPU)'")
    algos = claim.group(1).lower().split(" and ")
    entries = records.load("15_rl_stable_baselines3")
    needed = [f"{algo}_test_return{part}" for algo in algos for part in ("", "_std")] + ["test_episodes"]
    assert all(name in entries for name in needed), (
        f"README claims lesson 15's CartPole figure, but benchmarks/measured/15_rl_stable_baselines3.json does not "
        f"hold {', '.join(n for n in needed if n not in entries)}: run the lesson's Results cell's command and record it "
        "(python -m course_utils.runner.records write ... --lesson 15), or drop the figure from README")
    for algo in algos:
        mean, std = entries[f"{algo}_test_return"], entries[f"{algo}_test_return_std"]
        assert f"{mean['value']:g}" == claim.group(2) and f"{std['value']:g}" == claim.group(3), (
            f"README says {claim.group(2)} ± {claim.group(3)}; lesson 15's record of {algo.upper()} says "
            f"{mean['value']:g} ± {std['value']:g}")
    assert (claim.group(5) == "GPU") == all(entries[n]["machine"]["gpu"] is not None for n in needed), (
        f"README says measured on a {claim.group(5)}; the record's machine says otherwise")
    assert int(claim.group(4)) == entries["test_episodes"]["value"]
