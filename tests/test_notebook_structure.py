"""House rules for lessons (../shared/LESSON_GUIDE.md): clean, parametrised, the same skeleton everywhere."""

from __future__ import annotations

import json
import re

import pytest

from course_utils.runner import run

LESSONS = run.discover()
REQUIRED_HEADINGS = ("Setup", "If it runs out of memory", "Results", "Exercises", "Summary")


def cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_lessons():
    assert LESSONS, "no notebooks/NN_*.ipynb found"
    assert LESSONS[0].stem.startswith("00_"), "lesson 00 (setup and GPU check) must come first"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_has_one_parameters_cell_reading_smoke_from_env(path):
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    assert re.search(r"SMOKE\s*=.*os\.environ", source), f"{path.name}: SMOKE's default must come from the environment"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_skeleton(path):
    all_cells = cells(path)
    title = "".join(all_cells[0]["source"])
    assert all_cells[0]["cell_type"] == "markdown" and re.match(r"# Week \d+ · ", title), f"{path.name}: first cell must be '# Week N · Title'"
    assert "VRAM" in title and "prerequisites" in title.lower(), f"{path.name}: title cell needs the objectives/prerequisites/time/VRAM table"
    headings = [line.lstrip("#").strip() for c in all_cells if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
    for heading in REQUIRED_HEADINGS:
        assert any(h.startswith(heading) for h in headings), f"{path.name}: missing the '## {heading}' section"
    code = "\n".join("".join(c["source"]) for c in all_cells if c["cell_type"] == "code")
    assert "record(" in code, f"{path.name}: must record its results with course_utils record()"
    assert "assert " in code, f"{path.name}: needs check cells that assert what the learner just did"
    tagged = [i for i, c in enumerate(all_cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    outside = [i for i, c in enumerate(all_cells) if c["cell_type"] == "code" and i != tagged[0]
               and re.search(r"^\s*if\s+(not\s+)?SMOKE\b", "".join(c["source"]), re.M)]
    assert not outside, f"{path.name}: 'if SMOKE:' in cells {outside}; mode differences belong in the parameters cell or course_utils loaders"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_declares_targets_for_both_modes(path):
    meta = run.lesson_meta(path)
    assert meta.get("title") and isinstance(meta.get("week"), int), f"{path.name}: metadata.course needs title and week"
    assert "vram_gb" in meta and "needs_gpu" in meta, f"{path.name}: metadata.course needs vram_gb and needs_gpu"
    for mode in ("smoke", "full"):
        targets = meta.get("targets", {}).get(mode)
        assert targets, f"{path.name}: no {mode} targets"
        for metric, (op, value) in targets.items():
            assert op in run.OPS and isinstance(value, (int, float)), f"{path.name}: bad target {metric}: {op} {value}"
