"""Plumbing for the GPU-dataframes elective (lesson 17): the trips table, and finding a Python with RAPIDS.

The ETL and the model live once, in the take-home script ``recipes/etl_and_model.py`` (plain pandas and
scikit-learn); the lesson runs that file twice, unchanged: once as it is, once under ``cudf.pandas`` and
``cuml.accel``. This module loads the script's generator from there (no copy to drift), caches the generated table,
and says which Python can run the accelerated pass: RAPIDS wheels are multi-GB and CUDA-only, so they are an
optional install (``make rapids`` puts them in ``.venv-rapids``), found here by a capability check.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from course_utils.core.errors import BadParameter, CourseError
from course_utils.core.paths import REPO_ROOT, cache_dir, load_recipe

RECIPE = REPO_ROOT / "recipes" / "etl_and_model.py"
RAPIDS_VENV = REPO_ROOT / ".venv-rapids"


_r = load_recipe("etl_and_model")
script = _r  # the recipe as a module: the lesson shows its functions' source
make_trips = _r.make_trips
FEATURES = _r.FEATURES
GENEROUS = _r.GENEROUS


def load_trips(rows: int, seed: int = 0) -> Path:
    """The Parquet file of ``rows`` generated trips (made once, atomically, then reused from the course cache)."""
    if rows < 5_000:
        raise BadParameter(f"ROWS = {rows} is too few for a train/test split by day with every hour present; "
                           "use at least 5,000.")
    path = cache_dir("17_dataframes") / f"trips_{rows}_seed{seed}.parquet"
    if not path.exists():
        _r.write_parquet(make_trips(rows, seed), path)
    return path


def _has_rapids(python: str) -> bool:
    """Whether ``python`` imports cudf and cuml and sees a CUDA GPU (a subprocess: RAPIDS must not load here)."""
    probe = "import cudf, cuml, cupy; assert cupy.cuda.runtime.getDeviceCount() > 0"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_rapids_python() -> str | None:
    """A Python that can run the accelerated pass, or None: ``$COURSE_RAPIDS_PYTHON``, this kernel's Python, then
    ``.venv-rapids/bin/python`` (``make rapids``). Each must import cudf and cuml and see a GPU."""
    candidates = [os.environ.get("COURSE_RAPIDS_PYTHON")]
    if importlib.util.find_spec("cudf") is not None and importlib.util.find_spec("cuml") is not None:
        candidates.append(sys.executable)
    candidates.append(str(RAPIDS_VENV / "bin" / "python"))
    for python in filter(None, candidates):
        if Path(python).exists() and _has_rapids(python):
            return python
    return None


def run_script(command: list[str], env: dict[str, str] | None = None, timeout: float = 3_600) -> str:
    """Run ``command`` (the recipe, plain or accelerated) from the repository root; its output, or one sentence
    with the end of its error output if it failed."""
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise CourseError(f"`{' '.join(map(str, command))}` exited with {proc.returncode}: " + " | ".join(tail))
    return proc.stdout


__all__ = ["RECIPE", "RAPIDS_VENV", "script", "make_trips", "FEATURES", "GENEROUS", "load_trips", "find_rapids_python",
           "run_script"]
