"""House rules for lessons (../shared/LESSON_GUIDE.md, CONTRIBUTING.md): clean, parametrised, the real recipe first,
the same skeleton everywhere."""

from __future__ import annotations

import ast
import json
import re

import pytest

from course_utils.runner import run

ROOT = run.NOTEBOOKS.parent
LESSONS = run.discover()
IDS = [p.stem for p in LESSONS]
REQUIRED_HEADINGS = ("Setup", "If it runs out of memory", "Results", "Exercises", "Summary")
CALLOUT = "> **Smoke mode.**"
#: The course path (README, COURSE_NOTES' paths A and B): lesson number -> week. Lessons not on the path are
#: electives: titled "# Elective · …", with metadata.course.elective true and no week.
WEEKS = {"00": 0, "01": 1, "02": 2, "03": 2, "04": 3, "05": 4, "06": 4, "07": 5, "08": 6, "09": 7, "10": 8, "11": 8,
         "12": 9, "13": 10}
TITLE = re.compile(r"# (?:Week (\d+)|Elective) · ")


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell) -> str:
    return "".join(cell["source"])


def parse(cell) -> ast.Module:
    """A code cell as Python (IPython magics and shell lines blanked out)."""
    text = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source(cell).splitlines())
    return ast.parse(text)


def parameters_index(all_cells) -> int:
    tagged = [i for i, c in enumerate(all_cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "needs exactly one cell tagged 'parameters'"
    return tagged[0]


def test_there_are_lessons():
    assert LESSONS, "no notebooks/NN_*.ipynb found"
    assert LESSONS[0].stem.startswith("00_"), "lesson 00 (setup and GPU check) must come first"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_parameters_cell_is_the_full_recipe_then_one_smoke_block(path):
    all_cells = cells(path)
    cell = all_cells[parameters_index(all_cells)]
    text = source(cell)
    assert re.search(r"SMOKE\s*=.*os\.environ", text), f"{path.name}: SMOKE's default must come from the environment"
    body = parse(cell).body
    smoke_blocks = [s for s in body if isinstance(s, ast.If) and isinstance(s.test, ast.Name) and s.test.id == "SMOKE"]
    assert len(smoke_blocks) == 1 and body[-1] is smoke_blocks[0], \
        f"{path.name}: the parameters cell must end with exactly one `if SMOKE:` block (the full recipe comes first)"
    assert not smoke_blocks[0].orelse, f"{path.name}: `if SMOKE:` takes no `else:`; the full values come before it"
    for node in ast.walk(ast.Module(body=body[:-1], type_ignores=[])):
        if isinstance(node, ast.Name) and node.id == "SMOKE" and isinstance(node.ctx, ast.Load):
            pytest.fail(f"{path.name}: the parameters cell derives a value from SMOKE before its `if SMOKE:` block "
                        f"(line {node.lineno}); write the full value, and override it in the block")
    assigned = {t.id for s in body[:-1] if isinstance(s, (ast.Assign, ast.AnnAssign))
                for t in (s.targets if isinstance(s, ast.Assign) else [s.target]) if isinstance(t, ast.Name)}
    for node in ast.walk(smoke_blocks[0]):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assert node.id in assigned, (f"{path.name}: `if SMOKE:` sets {node.id}, which the full recipe above "
                                         f"does not define; give its full-mode value first")
    assert not re.search(r"\bif SMOKE else\b|\bnot SMOKE\b", text), f"{path.name}: no ternaries or `not SMOKE`"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_smoke_is_used_only_to_choose_what_loaders_load(path):
    """Outside the parameters cell SMOKE may only be passed to a course_utils loader (``load_x(smoke=SMOKE)``)."""
    all_cells = cells(path)
    params = parameters_index(all_cells)
    for i, cell in enumerate(all_cells):
        if cell["cell_type"] != "code" or i == params:
            continue
        tree = parse(cell)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "SMOKE":
                parent = parents.get(node)
                ok = isinstance(parent, (ast.keyword, ast.FormattedValue)) or (
                    isinstance(parent, ast.Call) and node in parent.args)
                assert ok, (f"{path.name}, cell {i}: SMOKE is used in an expression (line {node.lineno}); "
                            "mode differences belong in the parameters cell or a course_utils loader")


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_one_smoke_callout_after_the_parameters(path):
    all_cells = cells(path)
    params = parameters_index(all_cells)
    callouts = [i for i, c in enumerate(all_cells) if c["cell_type"] == "markdown" and source(c).startswith(CALLOUT)]
    assert callouts == [params + 1], (f"{path.name}: needs exactly one markdown cell starting {CALLOUT!r}, right after "
                                      f"the parameters cell (found at {callouts})")
    woven = [i for i, c in enumerate(all_cells) if c["cell_type"] == "markdown" and i != params + 1
             and re.search(r"smoke[ -]mode|\bin smoke\b", source(c), re.I)]
    assert not woven, f"{path.name}: cells {woven} talk about smoke mode; say it once, in the callout"


def _top_level_asserts(tree: ast.Module) -> bool:
    def walk(nodes):
        for node in nodes:
            if isinstance(node, ast.Assert):
                return True
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if walk(ast.iter_child_nodes(node)):
                return True
        return False

    return walk(tree.body)


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_check_cells_are_marked(path):
    all_cells = cells(path)
    checks = 0
    for i, cell in enumerate(all_cells):
        if cell["cell_type"] != "code":
            continue
        marked = source(cell).lstrip().startswith("# check")
        asserts = _top_level_asserts(parse(cell))
        assert not asserts or marked, f"{path.name}, cell {i}: a cell that asserts starts with '# check: <what>'"
        assert not marked or asserts, f"{path.name}, cell {i}: a '# check' cell must assert something"
        checks += marked
    assert checks >= 2, f"{path.name}: needs check cells that assert what the learner just did"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_imports_live_in_setup(path):
    all_cells = cells(path)
    params = parameters_index(all_cells)
    code = [i for i, c in enumerate(all_cells) if c["cell_type"] == "code" and i != params
            and "cloud-setup" not in c.get("metadata", {}).get("tags", [])]  # Colab/Kaggle's installer: see cloud.py
    setup = code[0]
    assert any(source(all_cells[j]).startswith("## Setup") for j in range(params, setup) if
               all_cells[j]["cell_type"] == "markdown"), f"{path.name}: the first code cell after the parameters is Setup"
    late = [i for i in code[1:] if any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in parse(all_cells[i]).body)]
    assert not late, f"{path.name}: cells {late} import at top level; imports go in the Setup cell"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_skeleton(path):
    all_cells = cells(path)
    title = source(all_cells[0])
    assert all_cells[0]["cell_type"] == "markdown" and TITLE.match(title), \
        f"{path.name}: first cell must be '# Week N · Title' (or '# Elective · Title' for an elective)"
    assert "VRAM" in title and "prerequisites" in title.lower(), f"{path.name}: title cell needs the objectives/prerequisites/time/VRAM table"
    headings = [line.lstrip("#").strip() for c in all_cells if c["cell_type"] == "markdown"
                for line in source(c).splitlines() if line.startswith("## ")]
    for heading in REQUIRED_HEADINGS:
        assert any(h.startswith(heading) for h in headings), f"{path.name}: missing the '## {heading}' section"
    code = "\n".join(source(c) for c in all_cells if c["cell_type"] == "code")
    assert "record(" in code, f"{path.name}: must record its results with course_utils record()"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_week_agrees_with_the_course_path(path):
    number = path.stem[:2]
    week = TITLE.match(source(cells(path)[0])).group(1)
    meta = run.lesson_meta(path)
    if number in WEEKS:
        assert week is not None and int(week) == WEEKS[number], \
            f"{path.name}: the course path puts it in week {WEEKS[number]}, not {week}"
        assert meta.get("week") == int(week) and not meta.get("elective"), \
            f"{path.name}: metadata.course.week {meta.get('week')} != title's week {week}"
    else:
        assert week is None and meta.get("elective") is True and meta.get("week") is None, (
            f"{path.name}: a lesson off the course path (WEEKS) is an elective: title '# Elective · …', "
            f"metadata.course.elective true and week null")


def _section(all_cells, heading: str) -> str:
    out, inside = [], False
    for c in all_cells:
        text = source(c)
        if c["cell_type"] == "markdown" and text.startswith("## "):
            inside = text.startswith(f"## {heading}")
        if inside:
            out.append(text)
    return "\n".join(out)


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_exercises_link_their_solutions_and_summary_points_on(path):
    all_cells = cells(path)
    exercises, summary = _section(all_cells, "Exercises"), _section(all_cells, "Summary")
    links = re.findall(r"\]\((solutions/[^)]+\.md)\)", exercises)
    assert links, f"{path.name}: the Exercises section links its solutions as [solutions](solutions/{path.stem}.md)"
    for link in links:
        assert (path.parent / link).exists(), f"{path.name}: {link} does not exist"
    nxt = [line for line in summary.splitlines() if "Next:" in line]
    assert nxt, f"{path.name}: the Summary ends with a 'Next:' line"
    for target in re.findall(r"\]\(([^)#]+)\)", nxt[-1]):
        if not target.startswith("http"):
            assert (path.parent / target).exists(), f"{path.name}: 'Next:' links {target}, which does not exist"
    for number in re.findall(r"\blesson (\d\d)\b", nxt[-1], re.I):
        assert list(path.parent.glob(f"{number}_*.ipynb")), f"{path.name}: 'Next:' names lesson {number}, which does not exist"


@pytest.mark.parametrize("path", [p for p in LESSONS if p.stem[:2] >= "02"], ids=[p.stem for p in LESSONS if p.stem[:2] >= "02"])
def test_summary_shows_the_take_home_recipe(path):
    summary = _section(cells(path), "Summary")
    recipes = re.findall(r"recipes/(\w+\.py)", summary)
    assert recipes, f"{path.name}: the Summary points to its recipe (recipes/<name>.py) and shows the command"
    for name in recipes:
        assert (ROOT / "recipes" / name).exists(), f"{path.name}: recipes/{name} does not exist"
    assert re.search(r"python [^\n`]*recipes/\w+\.py", summary), f"{path.name}: show the recipe's command line"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_declares_targets_for_both_modes(path):
    meta = run.lesson_meta(path)
    assert meta.get("title") and (isinstance(meta.get("week"), int) or meta.get("elective")), \
        f"{path.name}: metadata.course needs a title and a week (or elective: true)"
    assert "vram_gb" in meta and "needs_gpu" in meta, f"{path.name}: metadata.course needs vram_gb and needs_gpu"
    for mode in ("smoke", "full"):
        targets = meta.get("targets", {}).get(mode)
        assert targets, f"{path.name}: no {mode} targets"
        for metric, spec in targets.items():
            op, value = spec[0], spec[1]
            assert op in run.OPS and isinstance(value, (int, float)), f"{path.name}: bad target {metric}: {spec}"
            if mode == "full":
                assert len(spec) == 3 and spec[2] in ("estimate", "measured"), (
                    f"{path.name}: full target {metric} must say whether a run confirmed it: [op, value, "
                    f"'measured' | 'estimate']")
