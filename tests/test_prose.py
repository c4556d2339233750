"""Lessons read like the best courses: short prose cells, a diagram, and questions that make the learner predict.

Per lesson (``python -m course_utils.runner.prose`` prints the table): the median prose cell is at most 50 words and
none is over 150 (table rows aside); at least one diagram from ``docs/figures/`` is embedded, legible (a viewBox of at
most 760 x 420, a white background, text of at least 13 units, nothing external) and, when it holds words, drawn once
per language, each translation embedding its own; three to five "Predict, then run" questions, each a question, a
code cell that shows the answer and a short "Why".
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from course_utils.i18n.catalog import LANGUAGES, catalogue_path
from course_utils.runner import prose

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem[:2] for p in LESSONS]
SVG = "{http://www.w3.org/2000/svg}"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_words_are_counted_as_the_issue_counts_them():
    assert prose.words("Run `make test` now.\n\n| a | b |\n|---|---|\n| 1 2 3 | 4 |") == 3
    assert prose.words("![a picture](../docs/figures/04-block.svg)") == 2


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_one_idea_per_prose_cell(path):
    s = prose.stats(path)
    assert s["median"] <= prose.MEDIAN_MAX and s["longest"] <= prose.LONGEST_MAX, (
        f"{path.name}: prose cells have a median of {s['median']:g} words and the longest {s['longest']} "
        f"(at most {prose.MEDIAN_MAX} and {prose.LONGEST_MAX}): split or cut")


def svg_problems(path: Path) -> list[str]:
    """What makes a course figure illegible or fragile, one phrase each."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, FileNotFoundError) as err:
        return [f"not a readable SVG ({err})"]
    found = []
    if root.tag != f"{SVG}svg":
        found.append("the root is not an <svg> in the SVG namespace")
    box = [float(v) for v in root.get("viewBox", "").replace(",", " ").split()]
    if len(box) != 4 or box[2] > 760 or box[3] > 420:
        found.append(f"needs a viewBox of at most 760 x 420, not {root.get('viewBox')!r}")
    first = next((e for e in root if e.tag == f"{SVG}rect"), None)
    if first is None or first.get("fill", "").lower() not in ("white", "#fff", "#ffffff") or \
            first.get("width") not in ("100%", str(int(box[2])) if len(box) == 4 else None, str(box[2]) if box else None):
        found.append("the first element must be a white <rect> filling the view (legible on dark themes)")
    for element in root.iter():
        tag = element.tag.removeprefix(SVG)
        if tag in ("script", "image", "foreignObject"):
            found.append(f"holds a <{tag}>")
        href = element.get("href") or element.get("{http://www.w3.org/1999/xlink}href") or ""
        if href and not href.startswith("#"):
            found.append(f"references {href!r}")
        size = element.get("font-size")
        if size and float(re.sub(r"px$", "", size)) < 13:
            found.append(f"text of size {size} (at least 13)")
    return found


def _texts(path: Path) -> list[ET.Element]:
    return [e for e in ET.parse(path).getroot().iter(f"{SVG}text")]


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_a_diagram_legible_in_every_language(path):
    figures = prose.stats(path)["figures"]
    assert figures, f"{path.name}: embed a diagram from docs/figures/ (![...](../docs/figures/{path.stem[:2]}-x.svg))"
    cells = {c.get("id"): _source(c) for c in _cells(path) if c["cell_type"] == "markdown"}
    for name in figures:
        svg = prose.FIGURES / name
        assert not svg_problems(svg), f"{name}: {svg_problems(svg)}"
        if not _texts(svg):
            continue
        for lang in LANGUAGES:
            local = svg.with_name(f"{svg.stem}.{lang}.svg")
            assert local.exists(), f"{name} has words: draw docs/figures/{local.name} with them translated"
            assert not svg_problems(local), f"{local.name}: {svg_problems(local)}"
            assert len(_texts(local)) == len(_texts(svg)), f"{local.name}: not the same drawing as {name}"
            catalogue = json.loads(catalogue_path(lang, path).read_text())["cells"]
            for key, text in cells.items():
                if f"figures/{name})" in text:
                    assert f"figures/{local.name})" in catalogue[key]["text"], \
                        f"{lang} {path.stem}, cell {key}: embed {local.name}, the {lang} drawing"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_predict_then_run_questions(path):
    cells = _cells(path)
    headings = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _source(c).startswith("## ")]
    section = next((i for i in headings if _source(cells[i]).startswith("## Predict, then run")), None)
    assert section is not None, f"{path.name}: needs a '## Predict, then run' section"
    following = [i for i in headings if i > section]
    assert following and _source(cells[following[0]]).startswith("## Exercises"), \
        f"{path.name}: 'Predict, then run' comes right before '## Exercises'"
    questions = [i for i in range(section, following[0]) if cells[i]["cell_type"] == "markdown"
                 and _source(cells[i]).startswith(prose.QUESTION)]
    assert 3 <= len(questions) <= 5, f"{path.name}: {len(questions)} questions (three to five)"
    for i in questions:
        answer, why = cells[i + 1], cells[i + 2]
        assert answer["cell_type"] == "code" and _source(answer).startswith("# answer:"), \
            f"{path.name}, cell {i + 1}: a question is followed by the code cell that shows its answer ('# answer:')"
        assert why["cell_type"] == "markdown" and _source(why).startswith("**Why:**"), \
            f"{path.name}, cell {i + 2}: then a '**Why:**' cell explains it"
        assert prose.words(_source(why)) <= 60, f"{path.name}, cell {i + 2}: a short 'Why' (at most 60 words)"


def test_the_figure_rules_catch_what_they_promise(tmp_path):
    good = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 300"><rect width="600" height="300" '
            'fill="white"/><text x="10" y="20" font-size="14">W</text></svg>')
    (tmp_path / "ok.svg").write_text(good)
    assert svg_problems(tmp_path / "ok.svg") == []
    for bad, phrase in [(good.replace('viewBox="0 0 600 300"', 'viewBox="0 0 1600 300"'), "viewBox"),
                        (good.replace('fill="white"', 'fill="none"'), "white <rect>"),
                        (good.replace('font-size="14"', 'font-size="9"'), "size 9"),
                        (good.replace("</svg>", '<image href="x.png"/></svg>'), "<image>")]:
        (tmp_path / "bad.svg").write_text(bad)
        assert any(phrase in p for p in svg_problems(tmp_path / "bad.svg")), phrase
