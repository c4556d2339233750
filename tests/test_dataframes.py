"""course_utils.topics.dataframes (lesson 17's plumbing): the generated trips table, its cache, the capability check
that finds a Python with RAPIDS, and the one-sentence error of a failed run."""

from __future__ import annotations

import os
import stat
import sys
import time

import numpy as np
import pytest

from course_utils.core.errors import BadParameter, CourseError
from course_utils.topics import dataframes as dfs


def test_make_trips_is_seeded_and_realistic():
    a, b, c = dfs.make_trips(20_000, seed=3), dfs.make_trips(20_000, seed=3), dfs.make_trips(20_000, seed=4)
    assert a.equals(b) and not a.equals(c), "the same seed gives the same table, another seed another one"
    assert list(a["trip_id"]) == list(range(20_000))
    broken = (a["trip_distance"] <= 0) | (a["fare_amount"] <= 0) | (a["dropoff_datetime"] <= a["pickup_datetime"])
    assert 0.002 < broken.mean() < 0.01, "about 0.5 % broken rows, as in real exports"
    assert 0.65 < (a["payment_type"] == "card").mean() < 0.75 and (a.loc[a["payment_type"] == "cash", "tip_amount"] == 0).all()
    hours = a["pickup_datetime"].dt.hour.value_counts()
    assert hours[18] > 3 * hours[3], "evening rush hour is much busier than 3 a.m."
    ok = a[~broken]
    speed = ok["trip_distance"] / ((ok["dropoff_datetime"] - ok["pickup_datetime"]).dt.total_seconds() / 3600)
    rush = ok["pickup_datetime"].dt.hour.isin([8, 17])
    assert speed[rush].median() < 0.8 * speed[~rush].median(), "rush-hour trips are slower"


def test_load_trips_caches_the_file_and_refuses_too_few_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    path = dfs.load_trips(6_000, seed=1)
    stamp = path.stat().st_mtime_ns
    assert dfs.load_trips(6_000, seed=1) == path and path.stat().st_mtime_ns == stamp, "the second call reuses the file"
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_parquet(path), dfs.make_trips(6_000, seed=1), check_dtype=False)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "written atomically"
    with pytest.raises(BadParameter, match="at least 5,000"):
        dfs.load_trips(100)


def test_find_rapids_python_is_a_capability_check(tmp_path, monkeypatch):
    monkeypatch.setattr(dfs, "RAPIDS_VENV", tmp_path / "no-venv")
    monkeypatch.delenv("COURSE_RAPIDS_PYTHON", raising=False)
    assert dfs.find_rapids_python() is None, "this machine has no RAPIDS: the accelerated pass must not be attempted"
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("COURSE_RAPIDS_PYTHON", str(broken))
    assert dfs.find_rapids_python() is None, "a Python that cannot import cudf and cuml is not used"
    working = tmp_path / "rapids-python"
    working.write_text('#!/bin/sh\n[ "$1" = "-c" ] && case "$2" in *"import cudf, cuml"*) exit 0;; esac\nexit 1\n')
    working.chmod(working.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("COURSE_RAPIDS_PYTHON", str(working))
    assert dfs.find_rapids_python() == str(working)


def test_run_script_says_what_failed():
    assert dfs.run_script([sys.executable, "-c", "print('ok')"]).strip() == "ok"
    with pytest.raises(CourseError, match=r"exited with 3: .*no such data"):
        dfs.run_script([sys.executable, "-c", "import sys; print('no such data', file=sys.stderr); sys.exit(3)"])
    assert os.environ.get("CUML_ACCEL_ENABLED") is None
    out = dfs.run_script([sys.executable, "-c", "import os; print(os.environ['CUML_ACCEL_ENABLED'])"],
                         env={"CUML_ACCEL_ENABLED": "1"})
    assert out.strip() == "1", "the accelerated pass's environment reaches the script"


def test_run_script_shows_lines_as_they_come_and_stops_at_its_limit(capsys):
    """A 10-minute pass shows its stages as they end, and one past its time limit is stopped with one sentence."""
    slow = "import time; print('read 5 rows', flush=True); time.sleep(30)"
    start = time.monotonic()
    with pytest.raises(CourseError, match=r"ran past 1 s and was stopped"):
        dfs.run_script([sys.executable, "-c", slow], timeout=1)
    assert time.monotonic() - start < 20, "the script should be killed at its limit, not waited for"
    assert "read 5 rows" in capsys.readouterr().out, "a line printed before the limit should already be shown"
