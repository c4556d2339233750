"""The course's own errors: one readable sentence that says what is wrong and what to do.

In Jupyter, IPython calls ``_render_traceback_`` and shows only that sentence instead of a traceback from deep
inside a library. The cell still fails (papermill and the runner see ``ename``/``evalue`` as usual).
"""

from __future__ import annotations

#: The one wording of "you can run this without the download or the GPU", ending every such message.
SMOKE_HINT = "run the lesson in smoke mode instead (SMOKE = True in the parameters cell, or SMOKE=1 in the environment)"


class CourseError(RuntimeError):
    """Base class: a problem the learner can fix; ``str(err)`` says how."""

    kind = "error"

    def _render_traceback_(self) -> list[str]:  # IPython hook
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self}"]


class NeedsGPU(CourseError):
    """Full mode needs a GPU (or more VRAM) than this machine has."""

    kind = "needs GPU"


class MissingData(CourseError):
    """Data or weights are not on disk and cannot be downloaded (offline, or download not allowed)."""

    kind = "missing data"


class BadParameter(CourseError):
    """A lesson parameter has a value the lesson cannot use."""

    kind = "bad parameter"
