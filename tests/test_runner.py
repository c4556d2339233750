"""The course runner: keeps going past a failing lesson, keeps every executed notebook, reports honestly."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_utils.runner import run


def make_lesson(folder, name, body, targets=None):
    nb = new_notebook()
    params = new_code_cell("import os\nSMOKE = os.environ.get('SMOKE', '0') == '1'\nSTEPS = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("import course_utils as cu\n" + body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["course"] = {"title": name, "week": 1, "targets": {"smoke": targets or {}}}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def lessons(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return folder


def test_runner_continues_past_a_failing_lesson_and_exits_nonzero(lessons, tmp_path, capsys):
    bad = make_lesson(lessons, "01_bad", "raise ValueError('lesson is broken')")
    good = make_lesson(lessons, "02_good", "cu.record(score=STEPS * 2)", {"score": [">=", 2]})
    code = run.main([str(bad), str(good), "--mode", "smoke", "--out", str(tmp_path / "runs"), "-p", "STEPS", "5"])
    assert code == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "01_bad.ipynb").exists() and (run_dir / "02_good.ipynb").exists()  # failed one kept too
    report = json.loads((run_dir / "report.json").read_text())
    statuses = {lesson["lesson"]: lesson for lesson in report["lessons"]}
    assert statuses["01_bad"]["status"] == "failed" and "lesson is broken" in statuses["01_bad"]["error"]
    assert statuses["02_good"]["status"] == "passed" and statuses["02_good"]["metrics"]["score"] == 10  # -p passed through
    assert report["environment"]["packages"]["torch"].startswith("2.14.1")
    md = (run_dir / "report.md").read_text()
    assert "| 01_bad | failed: ValueError: lesson is broken" in md and "score 10 >= 2 ✓" in md


def test_missed_target_fails_the_run(lessons, tmp_path):
    path = make_lesson(lessons, "03_weak", "cu.record(accuracy=0.5)", {"accuracy": [">=", 0.9]})
    result = run.run_lesson(path, tmp_path, "smoke", {}, progress=False)
    assert result.status == "missed target" and not result.targets[0].met
    assert run.main([str(path), "--mode", "smoke", "--out", str(tmp_path / "r")]) == 1


def test_missing_metric_counts_as_missed():
    (result,) = run.check_targets({"accuracy": [">=", 0.9]}, {})
    assert not result.met and result.actual is None


def test_gpu_lesson_in_full_mode_on_a_cpu_stops_at_setup_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    lesson = run.discover(["00"])[0]
    result = run.run_lesson(lesson, tmp_path, "full", {}, progress=False)
    assert result.status == "needs GPU"
    assert "no GPU" in result.error and "smoke mode" in result.error
    executed = json.loads((tmp_path / lesson.name).read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and len(errors[0]["traceback"]) == 1  # one sentence, not a deep traceback
    setup_index = next(i for i, c in enumerate(executed["cells"]) if "choose_device" in "".join(c["source"]))
    assert any(o.get("output_type") == "error" for o in executed["cells"][setup_index]["outputs"])
    run_dir = tmp_path / "runs"
    assert run.main(["00", "--mode", "full", "--out", str(run_dir)]) == 0  # needs GPU is not a failure...
    assert run.main(["00", "--mode", "full", "--out", str(run_dir), "--strict"]) == 1  # ...unless --strict
    assert "needs GPU" in next(run_dir.glob("*/report.md")).read_text()


def test_discover_finds_lessons_in_order_and_rejects_unknown_names():
    lessons = run.discover()
    assert lessons == sorted(lessons) and lessons[0].stem.startswith("00_")
    assert run.discover(["0"])[0].stem.startswith("00_")
    with pytest.raises(SystemExit, match="no lesson called"):
        run.discover(["99_nothing"])


def test_parameter_values_are_parsed():
    assert run.parse_value("5") == 5 and run.parse_value("True") is True and run.parse_value("meta-llama/x") == "meta-llama/x"


def test_console_script_is_installed():
    assert shutil.which("course-run") or (run.REPO_ROOT / ".venv" / "bin" / "course-run").exists()
