"""Every "measured" full target points to a committed record (benchmarks/measured/) that meets it, and the report
says where each was measured — on a CPU when it was, never "on a GPU" unless one ran it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_utils.runner import records, report, run
from course_utils.runner.targets import TargetResult

LESSONS = run.discover()
CPU = {"gpu": None, "vram_gb": None, "cpu": "AMD EPYC 7B13", "cores": 2}
GPU = {"gpu": "NVIDIA GeForce RTX 4070 Ti", "vram_gb": 11.99, "cpu": "AMD Ryzen 7 7700", "cores": 16}


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_measured_target_has_a_record_that_meets_it(path):
    problems = records.measured_problems(path)
    assert not problems, "\n".join(problems)


def test_records_name_the_command_commit_date_and_machine():
    files = sorted(records.RECORDS_DIR.glob("[0-9][0-9]_*.json"))
    assert files, "benchmarks/measured/ holds no lesson records"
    for file in files:
        data = json.loads(file.read_text())
        assert data["lesson"] == file.stem and (records.REPO_ROOT / "notebooks" / f"{file.stem}.ipynb").exists()
        for metric, entry in data["targets"].items():
            assert all(entry.get(f) not in (None, "") for f in records.FIELDS), f"{file.name}: {metric} lacks a field"
            assert entry["command"].startswith(("course-run", "MODE=")), f"{file.name}: {metric}: {entry['command']}"
            assert entry["mode"] == "full" or entry["note"], f"{file.name}: {metric} comes from a smoke run without a note"
            assert entry["machine"]["cores"] >= 1 and (entry["machine"]["gpu"] or entry["machine"]["cpu"])


# --- the check can fail ------------------------------------------------------------------------------------------
def lesson(folder: Path, full: dict, name: str = "01_x") -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# Week 1 · X"), new_code_cell("pass")])
    nb.metadata["course"] = {"title": "X", "targets": {"smoke": {}, "full": full}}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def entry(value, machine=CPU, **extra):
    return {"value": value, "mode": "full", "command": "course-run --mode full 01", "commit": "abc1234",
            "dirty": False, "date": "2026-12-07", "machine": machine, "note": "", **extra}


def write_record(folder: Path, name: str, targets: dict) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"lesson": name, "targets": targets}))


def test_a_measured_target_without_a_record_or_whose_record_misses_fails(tmp_path):
    path = lesson(tmp_path, {"acc": [">=", 0.9, "measured"], "loss": ["<=", 1.0, "estimate"]})
    folder = tmp_path / "measured"
    (problem,) = records.measured_problems(path, folder)  # no record at all (an estimate needs none)
    assert "acc >= 0.9 is marked \"measured\"" in problem and "has no record" in problem
    write_record(folder, "01_x", {"acc": entry(0.95)})
    assert records.measured_problems(path, folder) == []
    write_record(folder, "01_x", {"acc": entry(0.85)})  # the record misses the target
    (problem,) = records.measured_problems(path, folder)
    assert "measured 0.85, which misses it" in problem
    write_record(folder, "01_x", {"acc": {**entry(0.95), "machine": {}, "command": ""}})
    (problem,) = records.measured_problems(path, folder)
    assert "lacks command, machine" in problem


# --- the report says where ---------------------------------------------------------------------------------------
def test_the_report_says_where_each_measured_target_was_measured(tmp_path):
    folder = tmp_path / "measured"
    write_record(folder, "01_cpu", {"acc": entry(0.95)})
    write_record(folder, "02_gpu", {"acc": entry(0.95, GPU, commit="def5678", dirty=True)})
    results = [run.LessonResult(name, name, "passed", 1.0, "x.ipynb", {"acc": 0.96},
                                [TargetResult("acc", ">=", 0.9, 0.96, True, "measured"),
                                 TargetResult("loss", "<=", 1.0, 0.5, True, "estimate")])
               for name in ("01_cpu", "02_gpu", "03_none")]
    _, md = report.write_report(results, tmp_path, "full", {"gpu": "none (CPU)"}, command="course-run 01",
                                machine=CPU, records_dir=folder)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.read_text().splitlines() if line.startswith("| 0")}
    assert "[measured on a CPU (AMD EPYC 7B13), 2 cores, 2026-12-07, commit abc1234]" in rows["01_cpu"]
    assert "GPU" not in rows["01_cpu"]
    assert ("[measured on a GPU, NVIDIA GeForce RTX 4070 Ti (11.99 GiB), 16 cores, 2026-12-07, "
            "commit def5678 + local changes]") in rows["02_gpu"]
    assert "[marked measured, but no record meets it]" in rows["03_none"] and "loss 0.5 <= 1 ✓ [estimate]" in rows["03_none"]
    assert "confirmed by a run on a GPU" not in md.read_text()
    data = json.loads(md.with_name("report.json").read_text())
    assert data["machine"] == CPU and data["command"] == "course-run 01"
    assert data["lessons"][0]["targets"][0]["measured"].startswith("measured on a CPU")


# --- writing records from a report ------------------------------------------------------------------------------
def report_json(tmp_path: Path, mode="full", status="passed", metrics=None, machine=CPU) -> Path:
    data = {"mode": mode, "finished": "2026-12-07T10:00:00", "command": f"course-run --mode {mode} 01",
            "machine": machine, "environment": {"git_commit": "abc1234", "git_dirty": False},
            "lessons": [{"lesson": "01_x", "status": status, "error": "", "metrics": metrics or {"acc": 0.93, "loss": 0.4},
                         "targets": [{"metric": "acc"}, {"metric": "loss"}]}]}
    path = tmp_path / f"report-{mode}-{status}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_record_is_written_from_a_report_and_can_mark_the_target_measured(tmp_path):
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    nb = lesson(notebooks, {"acc": [">=", 0.9, "estimate"], "loss": ["<=", 0.3, "estimate"]})
    folder = tmp_path / "measured"
    (path,) = records.write_records(report_json(tmp_path), folder=folder, notebooks=notebooks, mark_measured=True)
    written = json.loads(path.read_text())["targets"]
    assert written["acc"] == entry(0.93) and written["loss"]["value"] == 0.4
    full = json.loads(nb.read_text())["metadata"]["course"]["targets"]["full"]
    assert full == {"acc": [">=", 0.9, "measured"], "loss": ["<=", 0.3, "estimate"]}  # 0.4 misses <= 0.3: unchanged
    assert records.measured_problems(nb, folder) == []


@pytest.mark.parametrize("kwargs, words", [
    ({"status": "failed"}, "did not run to the end"),
    ({"status": "needs GPU"}, "did not run to the end"),
    ({"mode": "smoke"}, "--note"),
    ({"metrics": {"acc": None, "loss": 0.4}}, "recorded no number for acc"),
    ({"metrics": {"acc": float("nan"), "loss": 0.4}}, "recorded no number for acc"),
    ({"machine": {}}, "names no machine"),
])
def test_what_is_not_a_measurement_is_refused_with_one_sentence(tmp_path, kwargs, words):
    with pytest.raises(records.BadRecord, match=words):
        records.write_records(report_json(tmp_path, **kwargs), folder=tmp_path / "m", notebooks=tmp_path)
    assert not (tmp_path / "m").exists()


def test_a_smoke_run_gives_a_record_only_for_named_metrics_with_a_note(tmp_path):
    folder = tmp_path / "m"
    report = report_json(tmp_path, mode="smoke")
    with pytest.raises(records.BadRecord, match="--metric"):
        records.write_records(report, note="same code in both modes", folder=folder, notebooks=tmp_path)
    (path,) = records.write_records(report, metrics=["acc"], note="same code in both modes", folder=folder,
                                    notebooks=tmp_path)
    (only,) = json.loads(path.read_text())["targets"].values()
    assert only["mode"] == "smoke" and only["note"] == "same code in both modes"
    assert records.describe(only).endswith("commit abc1234, smoke mode")


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, capsys):
    assert records.main(["write", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("records: cannot read the run's report") and "\n" not in err


# --- smoke times ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, shown", [(4.0, 5), (5.0, 5), (5.1, 10), (17.3, 20), (20.0, 20), (58.2, 60)])
def test_smoke_times_are_shown_rounded_up_to_5_s(seconds, shown):
    assert records.shown_seconds(seconds) == shown


def test_smoke_times_are_recorded_from_a_whole_passing_run_and_applied_everywhere(tmp_path):
    """The README column, the lesson's time_smoke, its title table and the title's translations all get the
    recorded number, and a translation that was current stays current."""
    from course_utils.i18n.catalog import LANGUAGES, catalogue_path, resolve

    stem = "00_setup_and_gpu_check"
    notebooks, translations = tmp_path / "notebooks", tmp_path / "translations"
    notebooks.mkdir()
    shutil.copy(run.NOTEBOOKS / f"{stem}.ipynb", notebooks)
    for lang in LANGUAGES:
        target = catalogue_path(lang, notebooks / f"{stem}.ipynb", translations)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(catalogue_path(lang, run.NOTEBOOKS / f"{stem}.ipynb"), target)
    row = next(line for line in (records.REPO_ROOT / "README.md").read_text().splitlines() if f"[{stem}.ipynb]" in line)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n| week | lesson | a | b | c | time full / smoke |\n|---|---|---|---|---|---|\n{row}\n")
    data = {"mode": "smoke", "finished": "2026-12-07T10:00:00", "command": "MODE=smoke course-run", "machine": CPU,
            "environment": {"git_commit": "abc1234"},
            "lessons": [{"lesson": stem, "status": "failed", "seconds": 42.0}]}
    report = tmp_path / "report.json"
    report.write_text(json.dumps(data))
    folder = tmp_path / "measured"
    with pytest.raises(records.BadRecord, match="did not pass"):
        records.write_smoke_times(report, folder, notebooks)
    data["lessons"][0]["status"] = "passed"
    report.write_text(json.dumps(data))
    records.write_smoke_times(report, folder, notebooks)
    changed = records.apply_smoke_times(folder, notebooks, readme, translations)
    assert len(changed) == 2 + len(LANGUAGES)
    (_, cell), = records.readme_smoke_cells(readme.read_text()).values()
    assert records.smoke_part(cell) == 45 and cell.strip().startswith("2 min /")
    nb = json.loads((notebooks / f"{stem}.ipynb").read_text())
    assert nb["metadata"]["course"]["time_smoke"] == "45 s"
    assert records.smoke_part(records.title_time_cell("".join(nb["cells"][0]["source"]))) == 45
    for lang in LANGUAGES:
        catalogue = json.loads(catalogue_path(lang, notebooks / f"{stem}.ipynb", translations).read_text())
        title_key = nb["cells"][0]["id"]
        assert records.smoke_part(records.title_time_cell(catalogue["cells"][title_key]["text"], 2)) == 45
        assert not resolve(lang, notebooks / f"{stem}.ipynb", translations).stale, lang
    data["lessons"] = []  # a run without every lesson is refused
    report.write_text(json.dumps(data))
    with pytest.raises(records.BadRecord, match="did not include 00_setup"):
        records.write_smoke_times(report, folder, notebooks)
