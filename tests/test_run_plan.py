"""The full-mode run plan: no cell of any lesson can be stopped by the runner's time limit for doing what it was written
to do — download a model on a slow connection the first time, or train for the lesson's whole time."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell

from course_utils.runner import plan, run

LESSONS = run.discover()
IDS = [p.stem[:2] for p in LESSONS]

#: The slow connection the plan must survive (MB/s): a first download of the 8B takes ~54 min at this speed.
SLOW_MB_S = 5.0
#: What the first call of each of the course's hub loaders downloads in full mode, at the pinned revisions, in GB
#: (the weight files on the hub; a little under the real totals): a lesson may be the first to fetch it (lesson 14 when
#: lesson 05 never ran), so the lesson's first call of it must have the time for the download.
FIRST_DOWNLOAD_GB = {
    "load_causal_lm": 16.0,      # meta-llama/Llama-3.1-8B-Instruct, bf16 safetensors (16.07 GB)
    "load_llava": 14.0,          # llava-hf/llava-1.5-7b-hf, fp16 (7.06 B parameters)
    "load_sdxl_pipeline": 6.9,   # SDXL base 1.0, fp16 variant: UNet 5.14 + text encoders 1.64 + VAE 0.17 GB
    "load_sd_pipeline": 2.7,     # SD 1.5, fp16 variant: UNet 1.72 + text encoder 0.25 + VAE 0.17 + safety checker 0.61 GB
    "load_whisper": 0.95,        # openai/whisper-small (0.97 GB)
}
UNITS_S = {"s": 1, "sec": 1, "min": 60, "h": 3600, "hour": 3600, "hours": 3600}


def time_full_s(text: str) -> float:
    """'1.5 h' -> 5400, '40 min' -> 2400, '~2 min' -> 120 (the lesson's own estimate of its full run)."""
    match = re.match(r"\D*([\d.]+)\s*([a-z]+)", text)
    assert match and match.group(2) in UNITS_S, f"time_full {text!r}: write it as '<number> s|min|h'"
    return float(match.group(1)) * UNITS_S[match.group(2)]


def called_names(source: str) -> set[str]:
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    names = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    return names


def first_downloads_gb(cells: list[dict]) -> dict[int, float]:
    """The GB each code cell may download on a first run: the lesson's first call of each hub loader."""
    seen, found = set(), {}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        new = (called_names("".join(cell["source"])) & set(FIRST_DOWNLOAD_GB)) - seen
        seen |= new
        if new:
            found[i] = sum(FIRST_DOWNLOAD_GB[name] for name in new)
    return found


def runner_limits(path: Path, monkeypatch, tmp_path):
    """The ``timeout_func`` the runner hands nbclient for a full-mode run of ``path`` (papermill faked: nothing runs)."""
    import papermill

    seen = {}

    def fake_execute(nb, output, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(run, "_kernel_for", lambda path, override: "python3")
    run.run_lesson(path, tmp_path, "full", {}, progress=False)
    return seen["timeout_func"]


def plan_problems(path: Path, limit) -> list[str]:
    """One sentence per cell of ``path`` the runner's ``limit`` would stop by design in full mode."""
    nb = json.loads(path.read_text())
    cells, problems = nb["cells"], []
    downloads = first_downloads_gb(cells)
    declared_time = 0.0
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        needs = plan.cell_needs(cell, f"{path.stem}, cell {i}")
        declared_time += needs.time_s
        download = max(needs.download_gb, downloads.get(i, 0.0))
        need = download * 1000 / SLOW_MB_S + needs.time_s
        seconds = limit(cell)
        if seconds is not None and seconds < need:
            problems.append(f"{path.stem}, cell {i}: the runner stops it after {seconds} s but it needs {need:.0f} s "
                            f"({download:g} GB at {SLOW_MB_S:g} MB/s + {needs.time_s:g} s of work): declare "
                            f"metadata.course.download_gb / time_s")
    undeclared = time_full_s(nb["metadata"]["course"]["time_full"]) - declared_time
    plain = limit(new_code_cell("pass"))
    if plain is not None and undeclared > plain:
        problems.append(f"{path.stem}: {undeclared:.0f} s of its time_full are in cells that declare nothing, and any one "
                        f"of them is stopped after {plain} s: declare time_s on the cell(s) that take it")
    return problems


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_no_cell_can_be_killed_by_design(path, monkeypatch, tmp_path):
    problems = plan_problems(path, runner_limits(path, monkeypatch, tmp_path))
    assert not problems, "\n".join(problems)


def test_the_plan_catches_a_flat_cap(monkeypatch, tmp_path):
    """Lesson 15 trains Pong for ~1.5 h in one cell: under a flat 1800 s cap on every cell (the old runner) it is killed."""
    lesson = next(p for p in LESSONS if p.stem.startswith("15_"))
    flat = lambda cell: 1800  # noqa: E731
    assert any("cell" in p and "5400" in p for p in plan_problems(lesson, flat))


def test_the_plan_counts_a_first_download(tmp_path):
    """A cell that loads the 8B first (16 GB at 5 MB/s: ~53 min) needs more than the default 30 min."""
    nb = {"metadata": {"course": {"time_full": "5 min"}},
          "cells": [new_code_cell("model, tok = load_causal_lm(MODEL_ID, smoke=SMOKE)"),
                    new_code_cell("model, tok = load_causal_lm(MODEL_ID, smoke=SMOKE)  # cached by now")]}
    path = tmp_path / "05_x.ipynb"
    path.write_text(json.dumps(nb))
    limit = plan.timeout_func("full")
    problems = plan_problems(path, limit)
    assert len(problems) == 1 and "cell 0" in problems[0] and "16 GB" in problems[0]
    nb["cells"][0]["metadata"]["course"] = {"download_gb": 16.1}
    path.write_text(json.dumps(nb))
    assert plan_problems(path, limit) == []
