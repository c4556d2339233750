"""The full-mode run plan: how long the runner lets each cell of a lesson run, from what the cell says it needs.

A cell that runs long in full mode says so in its metadata, in what it does rather than in a limit::

    "metadata": {"course": {"download_gb": 16.1, "time_s": 5400}}

``download_gb``: what a first run downloads in this cell (weights, data) when nothing is cached yet — lesson 14 may be
the first to fetch the 8B if lesson 05 never ran; ``time_s``: how long the cell computes in full mode on the 12 GB
reference card, downloads left out. The runner's limit for that cell is then the default limit plus the download at
a slow connection (:data:`SLOW_MB_S`) plus the time on a card :data:`SLOWER_CARD` times slower: a cell is stopped only
when it hangs, never because it does what it was written to do. A cell that declares nothing gets the default
(:data:`DEFAULT_CELL_S`). ``tests/test_run_plan.py`` holds every lesson to it.

    python -m course_utils.runner.plan 15      # each declared cell's need and limit, full mode
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path

from course_utils.core.errors import BadParameter

#: Seconds a cell that declares nothing may run (``course-run --timeout`` changes it; 0: no limit at all).
DEFAULT_CELL_S = {"full": 1800, "smoke": 300}
#: The slow connection a first download must survive, in MB/s (40 Mbit/s).
SLOW_MB_S = 5.0
#: A declared ``time_s`` is measured or estimated on the 12 GB reference card; a slower card may take this many times as long.
SLOWER_CARD = 2.0
#: The keys a cell may declare under ``metadata.course``.
NEEDS = ("download_gb", "time_s")


class BadPlan(BadParameter):
    """A cell's declared needs are not numbers the runner can use."""


@dataclass(frozen=True)
class CellNeeds:
    download_gb: float = 0.0
    time_s: float = 0.0

    @property
    def seconds(self) -> float:
        """What the cell needs on the reference card at a slow connection: the download, then the work."""
        return self.download_gb * 1000 / SLOW_MB_S + self.time_s


def cell_needs(cell: dict, where: str = "a cell") -> CellNeeds:
    """The needs a cell declares in ``metadata.course`` (none: zero). A value that is not a number >= 0 (or an
    unknown key) is a :class:`BadPlan` naming the cell."""
    declared = (cell.get("metadata") or {}).get("course") or {}
    if not isinstance(declared, dict):
        raise BadPlan(f"{where}: metadata.course must be a mapping like {{\"time_s\": 5400}}, not {declared!r}.")
    unknown = sorted(set(declared) - set(NEEDS))
    if unknown:
        raise BadPlan(f"{where}: metadata.course has {', '.join(unknown)}; a cell may declare only {', '.join(NEEDS)}.")
    values = {}
    for key in NEEDS:
        value = declared.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise BadPlan(f"{where}: metadata.course.{key} must be a number >= 0, not {value!r}.")
        values[key] = float(value)
    return CellNeeds(**values)


def cell_limit_s(needs: CellNeeds, mode: str, default: int | None = None) -> int | None:
    """Seconds the runner lets a cell with ``needs`` run (None: no limit). ``default``: the limit of a cell that
    declares nothing (:data:`DEFAULT_CELL_S` of the mode unless the instructor passed ``--timeout``; 0: no limit).
    Smoke mode downloads nothing and runs small: every cell gets the default there."""
    base = DEFAULT_CELL_S[mode] if default is None else default
    if not base:
        return None
    if mode != "full":
        return base
    return base + math.ceil(needs.download_gb * 1000 / SLOW_MB_S + SLOWER_CARD * needs.time_s)


def check_lesson(nb: dict, name: str) -> list[CellNeeds]:
    """Every code cell's declared needs, in order (a :class:`BadPlan` for the first bad declaration)."""
    return [cell_needs(cell, f"{name}, cell {i}") if cell.get("cell_type") == "code" else CellNeeds()
            for i, cell in enumerate(nb.get("cells", []))]


def timeout_func(mode: str, default: int | None = None, name: str = "the lesson"):
    """What nbclient calls before each cell (its ``timeout_func``): that cell's limit in seconds, or None."""

    def limit(cell) -> int | None:
        return cell_limit_s(cell_needs(cell, name), mode, default)

    return limit


def main(argv: list[str] | None = None) -> int:
    import json

    from course_utils.runner.lessons import discover

    args = sys.argv[1:] if argv is None else argv
    for path in discover(args):
        nb = json.loads(Path(path).read_text())
        try:
            needs = check_lesson(nb, path.stem)
        except BadPlan as err:
            print(f"plan: {err}", file=sys.stderr)
            return 2
        declared = [(i, n) for i, n in enumerate(needs) if n != CellNeeds()]
        print(f"{path.stem}: {len(declared)} cell(s) declare what they need; the others get "
              f"{DEFAULT_CELL_S['full']} s")
        for i, n in declared:
            print(f"  cell {i}: {n.download_gb:g} GB to download at {SLOW_MB_S:g} MB/s + {n.time_s:g} s of work "
                  f"= {n.seconds:.0f} s; limit {cell_limit_s(n, 'full')} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
