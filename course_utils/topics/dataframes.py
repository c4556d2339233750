"""Plumbing for the GPU-dataframes elective (lesson 17): the cached trips table, and finding a Python with RAPIDS.

The generator, the ETL and the model are written in the lesson's cells; the take-home script
``recipes/etl_and_model.py`` holds copies of them, and the lesson runs that file twice, unchanged: once as it is, once
under ``cudf.pandas`` and ``cuml.accel``. This module holds a copy of the lesson's generator (``make_trips``) to cache
its table as Parquet, runs the script with its progress shown, and says which Python can run the accelerated pass:
RAPIDS wheels are multi-GB and CUDA-only, so they are an optional install (``make rapids`` puts them in
``.venv-rapids``), found here by a capability check.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from course_utils.core.errors import BadParameter, CourseError
from course_utils.core.paths import REPO_ROOT, atomic_write, cache_dir

RECIPE = REPO_ROOT / "recipes" / "etl_and_model.py"
RAPIDS_VENV = REPO_ROOT / ".venv-rapids"


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#a0ea5d95:START
START = "2026-03-02"     # a Monday: day 0 of the generated month


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#a0ea5d95:make_trips
def make_trips(rows: int, seed: int = 0, days: int = 28, start: str = START):
    """``rows`` taxi-trip-like rows over ``days`` days from ``start``, from a seeded generator (same seed, same table).

    Columns as in public taxi data: pickup/dropoff times, zones (60, Zipf-like popularity), passengers, distance,
    payment type (card/cash), fare and tip. Rush hours are slower, some zones and the night tip more, and ~0.5 % of
    the rows are broken (zero distance, non-positive fare, or a dropoff before the pickup), as in real exports.
    """
    rng = np.random.default_rng(seed)
    profile = np.array([3, 2, 1.5, 1, 1, 1.5, 3, 6, 8, 7, 6, 6, 6.5, 6.5, 6.5, 7, 8, 9, 9, 8, 7, 6, 5, 4], float)
    hour = rng.choice(24, rows, p=profile / profile.sum())
    day = rng.integers(0, days, rows)
    seconds = day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, rows)
    pickup = np.datetime64(start, "s") + seconds.astype("timedelta64[s]")
    n_zones = 60
    popularity = 1.0 / np.arange(1, n_zones + 1) ** 0.8
    pickup_zone = rng.choice(n_zones, rows, p=popularity / popularity.sum()) + 1
    dropoff_zone = rng.choice(n_zones, rows, p=popularity / popularity.sum()) + 1
    distance = np.clip(rng.lognormal(0.6, 0.7, rows), 0.1, 40.0)
    rush = np.isin(hour, [7, 8, 9, 16, 17, 18, 19])
    night = (hour >= 22) | (hour <= 4)
    speed = np.where(rush, 9.0, np.where(night, 22.0, 14.0)) * rng.lognormal(0.0, 0.25, rows)
    duration_s = (distance / speed * 3_600 + 60).astype(np.int64)
    passengers = rng.choice([1, 2, 3, 4, 5, 6], rows, p=[0.70, 0.15, 0.05, 0.03, 0.04, 0.03])
    card = rng.random(rows) < 0.7
    fare = np.round(3.0 + 2.5 * distance + 0.5 * duration_s / 60 + rng.normal(0, 1.0, rows), 2)
    generous_zone = (pickup_zone % 7 == 0).astype(float)
    weekend = day % 7 >= 5
    share = (0.14 + 0.06 * generous_zone + 0.04 * night + 0.03 * weekend - 0.02 * (passengers > 2)
             - 0.003 * np.minimum(distance, 20) + rng.normal(0, 0.06, rows))
    tip = np.where(card, np.round(np.maximum(share, 0) * np.maximum(fare, 0), 2), 0.0)
    broken = rng.random(rows) < 0.005
    kind = rng.integers(0, 3, rows)
    distance = np.where(broken & (kind == 0), 0.0, distance)
    fare = np.where(broken & (kind == 1), -fare, fare)
    duration_s = np.where(broken & (kind == 2), -duration_s, duration_s)
    return pd.DataFrame({
        "trip_id": np.arange(rows, dtype=np.int64),
        "pickup_datetime": pickup,
        "dropoff_datetime": pickup + duration_s.astype("timedelta64[s]"),
        "pickup_zone": pickup_zone.astype(np.int32),
        "dropoff_zone": dropoff_zone.astype(np.int32),
        "passenger_count": passengers.astype(np.int8),
        "trip_distance": distance.round(2),
        "payment_type": pd.Categorical(np.where(card, "card", "cash")),
        "fare_amount": fare,
        "tip_amount": tip,
    })


def load_trips(rows: int, seed: int = 0) -> Path:
    """The Parquet file of ``rows`` generated trips (made once, atomically, then reused from the course cache)."""
    if rows < 5_000:
        raise BadParameter(f"ROWS = {rows} is too few for a train/test split by day with every hour present; "
                           "use at least 5,000.")
    path = cache_dir("17_dataframes") / f"trips_{rows}_seed{seed}.parquet"
    if not path.exists():
        with atomic_write(path) as handle:
            make_trips(rows, seed).to_parquet(handle, index=False)
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


def run_script(command: list[str], env: dict[str, str] | None = None, timeout: float = 3_600,
               echo: bool = True) -> str:
    """Run ``command`` (the recipe, plain or accelerated) from the repository root, printing its lines as they come
    (``echo``: the stages of a 10-minute pass show as they end); its output, or one sentence with the end of its
    error output if it failed or ran past ``timeout`` seconds."""
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # no pipe may fill up and block
    reader.start()
    out: list[str] = []
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, stop)
    timer.start()
    try:
        for line in proc.stdout:
            out.append(line)
            if echo:
                print(line, end="", flush=True)
        code = proc.wait()
    finally:
        timer.cancel()
        reader.join(timeout=5)
    if code != 0:
        tail = ("".join(err) or "".join(out)).strip().splitlines()[-5:]
        why = f"ran past {timeout:.0f} s and was stopped" if timed_out.is_set() else f"exited with {code}"
        raise CourseError(f"`{' '.join(map(str, command))}` {why}: " + " | ".join(tail))
    return "".join(out)


__all__ = ["RECIPE", "RAPIDS_VENV", "START", "make_trips", "load_trips", "find_rapids_python", "run_script"]
