"""Every lesson in notebooks/ runs in smoke mode through the course runner and meets its smoke targets.

New lessons are picked up automatically.
"""

from __future__ import annotations

import json

import pytest

from course_utils.core import ledger
from course_utils.runner import run

LESSONS = run.discover()


@pytest.mark.notebook
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_smoke_mode(path, tmp_path):
    result = run.run_lesson(path, tmp_path, "smoke", {}, progress=False)
    assert result.status == "passed", f"{path.stem}: {result.status} — {result.error} (executed notebook: {result.output})"
    targets = run.lesson_meta(path).get("targets", {}).get("smoke", {})
    assert targets, f"{path.stem} declares no smoke targets in its metadata (metadata.course.targets.smoke)"
    assert all(t.met for t in result.targets)
    ledger.check_smoke_ledger(tmp_path, path)  # the full-mode models alive after each cell fit the card
    executed = json.loads((tmp_path / path.name).read_text())
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code"), "the executed notebook has no output"
    print(f"{path.stem}: {result.seconds:.1f} s, metrics {result.metrics}")
