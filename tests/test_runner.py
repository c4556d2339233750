"""The course runner: keeps going past a failing lesson, keeps every executed notebook, reports honestly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import course_utils as cu
from course_utils.runner import run


PARAMS = "import os\nSMOKE = os.environ.get('SMOKE', '0') == '1'\nSTEPS = 1"


def make_lesson(folder, name, body, targets=None, params=PARAMS, full_targets=None):
    nb = new_notebook()
    cells = []
    if params is not None:
        cell = new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    nb.cells = cells + [new_code_cell("import course_utils as cu\n" + body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["course"] = {"title": name, "week": 1, "targets": {"smoke": targets or {}, "full": full_targets or {}}}
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
    assert md.splitlines()[0] == "# Course run, smoke mode: 2 of 2 lessons ran (1 passed, 1 failed); 0 skipped for want of a GPU"


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
    setup_index = next(i for i, c in enumerate(executed["cells"])
                       if c["cell_type"] == "code" and "choose_device(" in "".join(c["source"]))
    assert any(o.get("output_type") == "error" for o in executed["cells"][setup_index]["outputs"])


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


# --- full mode without a GPU ---------------------------------------------------------------------------------
NEEDS_GPU = "raise cu.NeedsGPU('Full mode needs a CUDA GPU with 10 GiB of VRAM, but PyTorch sees no GPU.')"


def test_full_run_that_skips_gpu_lessons_fails_unless_the_instructor_accepts_it(lessons, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SKIP_GPU", raising=False)
    gpu = make_lesson(lessons, "01_gpu", NEEDS_GPU, full_targets={"acc": [">=", 0.9, "measured"]})
    cpu = make_lesson(lessons, "02_cpu", "cu.record(acc=0.95)", full_targets={"acc": [">=", 0.9]})
    runs = tmp_path / "runs"
    assert run.main([str(gpu), str(cpu), "--mode", "full", "--out", str(runs / "a")]) == 1
    assert "could not run for want of a GPU (01_gpu)" in capsys.readouterr().err
    (report,) = (runs / "a").glob("*/report.md")
    first = report.read_text().splitlines()[0]
    assert first == "# Course run, full mode: 1 of 2 lessons ran (1 passed); 1 skipped for want of a GPU"
    data = json.loads(report.with_name("report.json").read_text())
    assert data["summary"] in first and data["skip_gpu_lessons"] is False
    assert run.main([str(gpu), str(cpu), "--mode", "full", "--out", str(runs / "b"), "--skip-gpu-lessons"]) == 0
    monkeypatch.setenv("SKIP_GPU", "1")  # what `SKIP_GPU=1 make course` sets
    assert run.main([str(gpu), str(cpu), "--mode", "full", "--out", str(runs / "c")]) == 0
    data = json.loads(next((runs / "c").glob("*/report.json")).read_text())
    assert data["skip_gpu_lessons"] is True


def test_make_course_passes_skip_gpu_through():
    recipe = subprocess.run(["make", "-n", "course", "SKIP_GPU=1"], cwd=run.REPO_ROOT, capture_output=True, text=True).stdout
    assert "--skip-gpu-lessons" in recipe
    recipe = subprocess.run(["make", "-n", "course"], cwd=run.REPO_ROOT, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "SKIP_GPU"}).stdout
    assert "course-run --mode full" in recipe and "--skip-gpu-lessons" not in recipe


# --- targets: format, source, evidence in the report ---------------------------------------------------------
def test_targets_format_and_sources():
    smoke = run.parse_targets({"acc": [">=", 0.9]}, "smoke")
    assert smoke[0].source is None
    full = run.parse_targets({"acc": [">=", 0.9, "measured"], "loss": ["<=", 1.5, "estimate"], "old": ["<", 2]}, "full")
    assert [t.source for t in full] == ["measured", "estimate", "estimate"]  # a missing source is an estimate
    for bad, mode, words in (({"acc": ["=>", 0.9]}, "smoke", "unknown op"), ({"acc": [">=", 0.9, "guess"]}, "full", "source"),
                             ({"acc": [">=", 0.9, "measured"]}, "smoke", r"smoke targets are \[op, value\]"),
                             ({"acc": [">=", "high"]}, "smoke", "only == works on text"), ({"acc": 0.9}, "full", "must be")):
        with pytest.raises(run.BadTarget, match=words):
            run.parse_targets(bad, mode)


def test_report_shows_measured_or_estimate_and_the_value_seen(lessons, tmp_path):
    path = make_lesson(lessons, "01_full", "cu.record(acc=0.93, loss=1.7)",
                       full_targets={"acc": [">=", 0.9, "measured"], "loss": ["<=", 1.5, "estimate"]})
    assert run.main([str(path), "--mode", "full", "--out", str(tmp_path)]) == 1  # loss missed
    md = next(tmp_path.glob("*/report.md")).read_text()
    # "measured" with no record in benchmarks/measured/ says so (tests/test_records.py: where a record is found)
    assert "acc 0.93 >= 0.9 ✓ [marked measured, but no record meets it]" in md and "loss 1.7 <= 1.5 ✗ [estimate]" in md
    assert "[estimate] ones are expected values" in md
    data = json.loads(next(tmp_path.glob("*/report.json")).read_text())
    targets = {t["metric"]: t for t in data["lessons"][0]["targets"]}
    assert targets["acc"]["evidence"] == "measured" and targets["acc"]["actual"] == 0.93
    assert targets["loss"]["evidence"] == "estimate" and not targets["loss"]["met"]


def test_a_bad_target_stops_the_run_before_any_lesson(lessons, tmp_path, capsys):
    path = make_lesson(lessons, "01_typo", "cu.record(acc=1.0)", {"acc": ["=>", 0.9]})
    assert run.main([str(path), "--mode", "smoke", "--out", str(tmp_path / "r")]) == 2
    assert "unknown op '=>'" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_non_numeric_and_nan_metrics_never_crash_the_report(lessons, tmp_path):
    path = make_lesson(lessons, "01_odd", "cu.record(acc='high', loss=float('nan'), items=[1, 2], lang='en')",
                       {"acc": [">=", 0.9], "loss": ["<=", 1.0], "items": [">", 0], "lang": ["==", "en"]})
    assert run.main([str(path), "--mode", "smoke", "--out", str(tmp_path)]) == 1
    report = next(tmp_path.glob("*/report.md")).read_text()
    assert "acc high (not a number) >= 0.9 ✗" in report and "loss NaN (NaN) <= 1 ✗" in report
    assert "lang en == en ✓" in report
    data = json.loads(next(tmp_path.glob("*/report.json")).read_text())  # strict JSON: no bare NaN
    assert data["lessons"][0]["status"] == "missed target"
    (result,) = run.check_targets({"acc": [">=", 0.5]}, {"acc": True})
    assert result.met  # a recorded bool compares as 1


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    from course_utils.runner import report

    result = run.LessonResult("01_x", "x", "passed", 1.0, "x.ipynb", {"a": 1})
    report.write_report([result], tmp_path, "smoke", {})
    before = (tmp_path / "report.md").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report.json, "dump", crash)
    with pytest.raises(RuntimeError):
        report.write_report([result], tmp_path, "smoke", {})
    assert (tmp_path / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]  # no half-written temp files
    monkeypatch.undo()
    written = []
    real = report.atomic_write

    def spy(path, mode="wb"):
        written.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(report, "atomic_write", spy)
    report.write_report([result], tmp_path, "smoke", {})
    assert sorted(written) == ["report.json", "report.md"]  # both files go through atomic_write


# --- parameters ---------------------------------------------------------------------------------------------
TYPED = """import os
SMOKE = os.environ.get("SMOKE", "0") == "1"
BATCH_SIZE = 32          # micro-batch
MAX_STEPS = 100
LEARNING_RATE = 3e-4
WARMUP_STEPS = 10
MODEL_ID = "meta-llama/Llama-3.1-8B"
REVISION = "0123456"
GRAD_ACCUM = None
USE_8BIT = True
N_LAYER, N_HEAD = 6, 6
if SMOKE:
    BATCH_SIZE = 4
    MAX_STEPS = 5
"""


def test_parameters_are_read_from_the_parameters_cell(lessons):
    path = make_lesson(lessons, "01_p", "pass", params=TYPED)
    params = run.lesson_parameters(path)
    assert params["BATCH_SIZE"].values == [32, 4] and params["N_HEAD"].values == [6]
    assert set(params) >= {"SMOKE", "LEARNING_RATE", "MODEL_ID", "GRAD_ACCUM", "USE_8BIT", "N_LAYER"}


@pytest.mark.parametrize("name, text, expected", [
    ("BATCH_SIZE", "8", 8), ("LEARNING_RATE", "1", 1), ("LEARNING_RATE", "1e-3", 1e-3), ("WARMUP_STEPS", "0", 0),
    ("MODEL_ID", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B"), ("REVISION", "1234567", "1234567"),
    ("GRAD_ACCUM", "4", 4), ("GRAD_ACCUM", "None", None), ("USE_8BIT", "False", False), ("N_LAYER", "2", 2),
])
def test_good_overrides_are_accepted(lessons, name, text, expected):
    path = make_lesson(lessons, "01_p", "pass", params=TYPED)
    value = run.check_overrides(path, {name: text})[name]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name, text, words", [
    ("BATCH_SIZE", "-1", "BATCH_SIZE is a size or a count and must be greater than 0"),
    ("BATCH_SIZE", "0", "BATCH_SIZE is a size or a count"),
    ("MAX_STEPS", "ten", "MAX_STEPS takes a whole number"),
    ("MAX_STEPS", "2.5", "MAX_STEPS takes a whole number"),
    ("BATCH_SIZE", "True", "BATCH_SIZE takes a whole number"),
    ("LEARNING_RATE", "fast", "LEARNING_RATE takes a number"),
    ("LEARNING_RATE", "-1e-3", "LEARNING_RATE is a size or a count"),
    ("WARMUP_STEPS", "-1", "WARMUP_STEPS must be 0 or more"),
    ("USE_8BIT", "1", "USE_8BIT takes True/False"),
    ("GRAD_ACCUM", "-2", "GRAD_ACCUM is a size or a count"),
    ("SMOKE", "True", "set by the runner's --mode"),
])
def test_bad_overrides_stop_with_one_sentence_naming_the_parameter(lessons, name, text, words):
    path = make_lesson(lessons, "01_p", "pass", params=TYPED)
    with pytest.raises(cu.BadParameter) as err:
        run.check_overrides(path, {name: text})
    message = str(err.value)
    assert words in message and name in message and "\n" not in message and message.endswith(".")


def test_unknown_parameter_lists_the_lessons_parameters(lessons, tmp_path, capsys):
    path = make_lesson(lessons, "01_p", "cu.record(x=BATCH_SIZE)", params=TYPED)
    code = run.main([str(path), "--mode", "smoke", "--out", str(tmp_path / "r"), "-p", "BATCHSIZE", "8"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "r").exists()  # stopped before running anything
    assert "Lesson 01_p has no parameter BATCHSIZE; its parameters are: BATCH_SIZE=32, MAX_STEPS=100," in err
    assert "SMOKE" not in err.split("parameters are:")[1]
    bare = make_lesson(lessons, "02_bare", "pass", params=None)
    assert run.main([str(bare), "--mode", "smoke", "--out", str(tmp_path / "r"), "-p", "X", "1"]) == 2
    assert "no parameters cell" in capsys.readouterr().err


def test_a_smoke_run_prints_no_warnings(lessons, tmp_path):
    """papermill's "Passed unknown parameter", "Unable to parse line", "does not contain a cell with tag
    parameters", ipykernel's "running over TCP without encryption": none of them in a course run."""
    with_params = make_lesson(lessons, "01_p", "cu.record(steps=MAX_STEPS)", {"steps": ["==", 7]}, params=TYPED)
    without = make_lesson(lessons, "02_bare", "cu.record(ok=2)", {"ok": [">=", 1]}, params=None)
    env = dict(os.environ, PYTHONWARNINGS="default")
    for lesson, extra in ((with_params, ["-p", "MAX_STEPS", "7"]), (without, [])):
        proc = subprocess.run([sys.executable, "-m", "course_utils.runner.run", str(lesson), "--mode", "smoke",
                               "--out", str(tmp_path), *extra], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "WARNING" not in proc.stderr.upper() and "unknown parameter" not in proc.stderr.lower(), proc.stderr
        assert "Unable to parse" not in proc.stderr and "without encryption" not in proc.stderr


# --- a lesson that dies or hangs -----------------------------------------------------------------------------
def test_a_hanging_cell_is_stopped_and_the_run_goes_on(lessons, tmp_path):
    """...and what the lesson recorded before the stopped cell is in the report (lesson 15 records CartPole's figures
    before Pong trains)."""
    hang = make_lesson(lessons, "01_hang", "cu.record(before=3)\nimport time\ntime.sleep(120)", {"before": [">=", 3]})
    good = make_lesson(lessons, "02_good", "cu.record(x=2)", {"x": [">=", 1]})
    start = time.perf_counter()
    assert run.main([str(hang), str(good), "--mode", "smoke", "--out", str(tmp_path), "--timeout", "3"]) == 1
    assert time.perf_counter() - start < 100
    data = json.loads(next(tmp_path.glob("*/report.json")).read_text())
    status = {item["lesson"]: item for item in data["lessons"]}
    assert status["01_hang"]["status"] == "failed" and "3 s limit" in status["01_hang"]["error"]
    assert status["01_hang"]["metrics"]["before"] == 3 and status["01_hang"]["targets"][0]["met"]
    assert status["02_good"]["status"] == "passed"


def test_a_dying_kernel_is_reported_and_the_run_goes_on(lessons, tmp_path):
    dead = make_lesson(lessons, "01_dead", "import os\nos._exit(3)")
    good = make_lesson(lessons, "02_good", "cu.record(x=2)", {"x": [">=", 1]})
    assert run.main([str(dead), str(good), "--mode", "smoke", "--out", str(tmp_path)]) == 1
    data = json.loads(next(tmp_path.glob("*/report.json")).read_text())
    status = {item["lesson"]: item["status"] for item in data["lessons"]}
    assert status == {"01_dead": "failed", "02_good": "passed"}


def test_every_cell_gets_a_default_time_limit(lessons, tmp_path, monkeypatch):
    seen = {}
    import papermill

    def fake_execute(nb, output, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    path = make_lesson(lessons, "01_x", "pass")
    nb = nbformat.read(path, as_version=4)
    plain = nb.cells[1]
    long = new_code_cell("train()", metadata={"course": {"time_s": 5400, "download_gb": 16}})
    run.run_lesson(path, tmp_path, "smoke", {}, progress=False)
    assert seen["timeout_func"](plain) == seen["timeout_func"](long) == run.CELL_TIMEOUT_S["smoke"] == 300
    run.run_lesson(path, tmp_path, "full", {}, progress=False)
    assert seen["timeout_func"](plain) == run.CELL_TIMEOUT_S["full"] == 1800
    assert seen["timeout_func"](long) == 1800 + 2 * 5400 + 16_000 / 5  # 2x slower card, 16 GB at 5 MB/s
    run.run_lesson(path, tmp_path, "full", {}, timeout=60, progress=False)
    assert seen["timeout_func"](plain) == 60 and seen["timeout_func"](long) == 60 + 2 * 5400 + 16_000 / 5
    run.run_lesson(path, tmp_path, "full", {}, timeout=0, progress=False)
    assert seen["timeout_func"](plain) is None and seen["timeout_func"](long) is None


def test_a_bad_cell_declaration_stops_the_run_in_one_sentence(lessons, tmp_path, capsys):
    path = make_lesson(lessons, "01_x", "pass")
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].metadata["course"] = {"time_s": "90 min"}
    nbformat.write(nb, path)
    assert run.main([str(path), "--mode", "full", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "01_x, cell 1: metadata.course.time_s must be a number >= 0, not '90 min'" in err and "Traceback" not in err


def test_a_vram_figure_recorded_as_none_is_a_missed_target_not_measured(lessons, tmp_path, monkeypatch):
    """Without a GPU a lesson records peak VRAM as None: the full-mode VRAM target is missed ("not measured"), not
    passed as if 0 GiB had been used."""
    import papermill

    def fake_execute(nb, output, **kwargs):  # what the lesson's results cell writes on a CPU
        Path(os.environ["COURSE_METRICS_FILE"]).write_text(json.dumps({"train_peak_vram_gb": None, "acc": 0.95}))

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    path = make_lesson(lessons, "06_x", "pass", full_targets={"train_peak_vram_gb": ["<=", 8.5, "estimate"],
                                                               "acc": [">=", 0.9, "estimate"], "f1": [">=", 0.5, "estimate"]})
    result = run.run_lesson(path, tmp_path, "full", {}, progress=False)
    by_metric = {t.metric: t for t in result.targets}
    vram, acc, f1 = by_metric["train_peak_vram_gb"], by_metric["acc"], by_metric["f1"]
    assert result.status == "missed target" and not vram.met and vram.note == "not measured" and acc.met
    assert not f1.met and f1.note == "not recorded"
    run.write_report([result], tmp_path, "full", {})
    assert "train_peak_vram_gb - (not measured) <= 8.5 ✗" in (tmp_path / "report.md").read_text()


def test_a_multi_process_cell_whose_workers_hang_is_stopped_with_its_workers(lessons, tmp_path):
    """A training cell that launched workers in their own session (as a multi-process launch does) and waits on them
    forever: the runner stops it at the time limit, names the lesson, and ends the workers it left behind."""
    pid_file = tmp_path / "worker.pid"
    body = ("import subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
            f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
            "worker.wait()  # a rank blocked in a collective after its peer died")
    hang = make_lesson(lessons, "13_hang", body)
    start = time.perf_counter()
    result = run.run_lesson(hang, tmp_path, "smoke", {}, timeout=4, progress=False)
    assert time.perf_counter() - start < 60
    assert result.status == "failed"
    assert "13_hang" in result.error and "4 s limit" in result.error and "stopped 1 process" in result.error
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or run._is_zombie(pid), "the hanging worker is still running"


@pytest.mark.skipif(os.name != "posix", reason="IPC sockets are POSIX-only; Windows keeps TCP")
def test_kernels_started_together_get_private_socket_folders_of_their_own():
    """Two lessons started at the same moment (``pytest -n 2``) must not pick the same IPC socket names: jupyter_client's
    default puts ``kernel-ipc-N`` in the notebook's folder, and a kernel bound to another's sockets never answers."""
    import asyncio

    async def start_two():
        managers = [run._kernel_manager_class()(kernel_name="python3") for _ in range(2)]
        await asyncio.gather(*(km.start_kernel() for km in managers))
        try:
            folders = [Path(km.ip).parent for km in managers]
            modes = [f.stat().st_mode & 0o777 for f in folders]
            for km in managers:
                client = km.client()
                client.start_channels()
                await client.wait_for_ready(timeout=60)
                client.stop_channels()
        finally:
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))
        return folders, modes

    folders, modes = asyncio.run(start_two())
    assert folders[0] != folders[1], "two kernels share one socket folder"
    assert modes == [0o700, 0o700], f"socket folders must be private to the user, got {[oct(m) for m in modes]}"
    assert not any(f.exists() for f in folders), "a kernel's socket folder should be removed when it shuts down"


def test_the_environment_snapshot_creates_no_cuda_context_in_the_runner(monkeypatch):
    """On a GPU machine, asking PyTorch for the card's memory creates a CUDA context that would stay in course-run for
    the whole run: the runner describes the GPU from a child process instead (faked here, with a faked card)."""
    import subprocess as sp

    import torch

    touched = []

    def cuda_call(name):
        def call(*args, **kwargs):
            touched.append(name)
            raise AssertionError(f"torch.cuda.{name} called in the runner's process")
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("mem_get_info", "get_device_properties", "init", "get_device_capability"):
        monkeypatch.setattr(torch.cuda, name, cuda_call(name))
    monkeypatch.setattr(run, "_nvidia_driver_present", lambda: True)
    child = json.dumps({"gpu": "NVIDIA GeForce RTX 4070 Ti", "vram_gb": 11.99, "packages": {"torch": "2.14.1"}})

    real_run = sp.run

    def fake_run(cmd, **kwargs):  # the child's answer; git and uname run for real
        if cmd[0] != sys.executable:
            return real_run(cmd, **kwargs)
        assert "environment_snapshot" in cmd[-1]
        return sp.CompletedProcess(cmd, 0, stdout=child + "\n", stderr="")

    monkeypatch.setattr(sp, "run", fake_run)
    env = run.environment()
    assert env["gpu"] == "NVIDIA GeForce RTX 4070 Ti" and env["vram_gb"] == 11.99
    assert not touched and not torch.cuda.is_initialized()
