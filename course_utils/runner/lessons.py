"""The lessons the runner and the records know: the numbered notebooks, in order, and their course metadata."""

from __future__ import annotations

import json
from pathlib import Path

from course_utils.core.paths import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def discover(selection: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Lessons in order; ``selection`` items may be numbers ("02"), stems or paths."""
    lessons = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return lessons
    chosen = []
    for item in selection:
        path = Path(item)
        if path.suffix == ".ipynb" and path.exists():
            chosen.append(path)
            continue
        matches = [p for p in lessons if p.stem == item or p.stem.split("_")[0] == item.zfill(2)]
        if not matches:
            names = ", ".join(p.stem for p in lessons)
            raise SystemExit(f"course-run: no lesson called {item!r}. Lessons: {names}")
        chosen.extend(matches)
    return chosen


def lesson_meta(path: Path) -> dict:
    return json.loads(path.read_text()).get("metadata", {}).get("course", {})
