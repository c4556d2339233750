"""Every call the lessons and recipes make to a pinned library's function or class exists in the installed version
and accepts its keywords (course_utils/runner/api_surface.py): a renamed argument fails here, naming the lesson and
cell, before a learner meets it."""

from __future__ import annotations

import json

from course_utils.core.paths import REPO_ROOT
from course_utils.runner import api_surface

def test_every_library_call_exists_with_its_keywords():
    report = api_surface.check()
    assert not report.problems, "\n".join(report.problems)
    # the extractor still finds the calls (a broken import resolution would find none and pass vacuously)
    assert report.calls > 500 and report.keywords > 300, report


def _notebook(cells: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s, "outputs": [],
                       "execution_count": None} for i, s in enumerate(cells)],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_a_renamed_keyword_in_a_lesson_cell_fails_with_lesson_and_cell(tmp_path):
    """The mutation the issue names: lesson 14's trainer cell with `evaluation_strategy=` (renamed eval_strategy)."""
    lesson = REPO_ROOT / "notebooks" / "14_nlp_finetune_bert.ipynb"
    nb = json.loads(lesson.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "eval_strategy=" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace("eval_strategy=", "evaluation_strategy=")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / lesson.name).write_text(json.dumps(nb))
    problems = api_surface.check(tmp_path).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"notebooks/{lesson.name} cell {cell['id']} line ")
    assert "transformers.TrainingArguments" in problems[0] and "takes no keyword 'evaluation_strategy'" in problems[0]


def test_names_resolve_through_imports_across_cells_and_recipes(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "recipes").mkdir()
    cells = [
        "import torch.nn as nn\nfrom transformers import TrainingArguments as TA\n",
        "%matplotlib inline\n!echo hi\nlayer = nn.Linear(3, 4, bias=False, biass=True)\nTA(output_dir='x', fp16=True)",
        "def TA(**kw):\n    return kw\nTA(anything=1)",  # the lesson's own function now: not the library's
        "import numpy as np\nnp.zeroes(2)",
        "def broken(:\n",
    ]
    (tmp_path / "notebooks" / "99_scratch.ipynb").write_text(json.dumps(_notebook(cells)))
    (tmp_path / "recipes" / "scratch.py").write_text(
        "from peft import LoraConfig\n\n\ndef main():\n    return LoraConfig(r=8, lora_alpha=16, lora_alpah=1)\n")
    report = api_surface.check(tmp_path)
    text = "\n".join(report.problems)
    assert "notebooks/99_scratch.ipynb cell c1 line 3: torch.nn.Linear(bias=..., biass=...)" in text
    assert "takes no keyword 'biass'" in text and "keyword 'bias'" not in text
    assert "cell c3 line 2: numpy.zeroes() — numpy.zeroes does not exist in numpy" in text
    assert "cell c4: not valid Python at line 1" in text
    assert "recipes/scratch.py line 5: peft.LoraConfig(" in text and "'lora_alpah'" in text
    assert "anything" not in text and "output_dir" not in text and "fp16" not in text
    assert len(report.problems) == 4, text
    assert report.calls == 4  # Linear, TA, zeroes, LoraConfig (the local TA() is not a library call)


def test_the_snapshot_says_what_the_installed_library_says():
    """api_surface.json is only a record of inspect.signature at a version: where it names the installed version,
    it agrees with the library itself (numpy here: it imports in a fraction of a second)."""
    snapshot = json.loads(api_surface.SNAPSHOT.read_text())
    versions = {dist: api_surface.installed_version(dist) for dist in ("numpy",)}
    entries = {n: e for n, e in snapshot.items() if versions.get(e["dist"]) == e["version"]}
    assert entries, f"api_surface.json has no entry for {versions}: python -m course_utils.runner.api_surface --update"
    for name, entry in entries.items():
        fresh = api_surface.describe(name)
        assert {k: entry.get(k) for k in fresh} == fresh, name
