"""How a lesson reads: words per prose cell, diagrams, predict-then-run questions — the numbers issue 22 holds to.

A prose cell is a markdown cell; its words are counted with table rows left out and each code span counted as one
word (the measure of the repository's before-stop hook). A diagram is a picture from ``docs/figures/`` embedded in a
markdown cell (``![...](../docs/figures/<name>.svg)``). A question is a markdown cell starting ``**Predict:**`` in the
lesson's "Predict, then run" section, followed by the code cell that shows the answer.

    python -m course_utils.runner.prose          # a table: lesson, median and longest prose cell, diagrams, questions
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from course_utils.core.paths import REPO_ROOT

MEDIAN_MAX, LONGEST_MAX = 50, 150
FIGURES = REPO_ROOT / "docs" / "figures"
FIGURE = re.compile(r"!\[[^\]]*\]\((?:\.\./)?docs/figures/([\w.-]+\.svg)\)")
QUESTION = "**Predict:**"


def words(markdown: str) -> int:
    """Words in a prose cell: table rows aside, a code span counts as one word."""
    text = " ".join(line for line in markdown.splitlines() if not line.lstrip().startswith("|"))
    return len(re.sub(r"`[^`]*`", "x", text).split())


def _cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def stats(path: Path) -> dict:
    """Median and longest prose cell (words), the figures embedded and the predict-then-run questions of a lesson."""
    cells = _cells(path)
    counts = [words(_source(c)) for c in cells if c["cell_type"] == "markdown"]
    figures = [f for c in cells if c["cell_type"] == "markdown" for f in FIGURE.findall(_source(c))]
    questions = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _source(c).startswith(QUESTION)]
    return {"median": statistics.median(counts), "longest": max(counts), "figures": figures,
            "questions": len(questions)}


def main() -> int:
    print("| lesson | median words | longest | diagrams | questions |\n|---|---|---|---|---|")
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        s = stats(path)
        print(f"| {path.stem} | {s['median']:g} | {s['longest']} | {len(s['figures'])} | {s['questions']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
