"""Every lesson opens on Colab and Kaggle from one setting, and its setup cell installs the course only there.

The links and the setup cell are generated from ``[tool.course]`` in pyproject.toml by
``python -m course_utils.runner.cloud apply``; these tests hold every lesson and translation to that setting, run the
setup cell as it stands in each lesson (a no-op here; with Colab or Kaggle faked, exactly the install commands), and
check the plan a T4 gets.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from course_utils.core.defaults import safe_defaults
from course_utils.runner import cloud

ROOT = Path(__file__).resolve().parent.parent
LESSONS = cloud.lessons()


def test_every_lesson_and_translation_follows_the_one_setting():
    assert len(LESSONS) == 18
    assert cloud.problems() == []


def test_the_links_derive_from_the_setting(tmp_path):
    """A fork changes one line of pyproject.toml: every lesson's links then point elsewhere until `apply` runs."""
    for name in ("notebooks", "translations"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("solutions"))
    text = (ROOT / "pyproject.toml").read_text()
    repo, branch = cloud.setting()
    (tmp_path / "pyproject.toml").write_text(text.replace(f'repository = "{repo}"',
                                                          'repository = "https://github.com/a-fork/course"'))
    paths = tmp_path / "notebooks", tmp_path / "translations", tmp_path / "pyproject.toml"
    found = cloud.problems(*paths)
    assert sum("title's Colab/Kaggle links" in p for p in found) == 18
    assert sum("cloud-setup" in p for p in found) == 18
    assert any("translated title" in p for p in found)
    cloud.apply(*paths)
    assert cloud.problems(*paths) == []
    nb = json.loads((tmp_path / "notebooks" / "04_gpt_from_scratch.ipynb").read_text())
    title = "".join(nb["cells"][0]["source"])
    assert ("https://colab.research.google.com/github/a-fork/course/blob/main/notebooks/04_gpt_from_scratch.ipynb"
            in title)
    assert "https://kaggle.com/kernels/welcome?src=https://github.com/a-fork/course/blob/main/notebooks/" in title
    assert cloud.apply(*paths) == [], "apply is idempotent"


def test_a_bad_setting_is_one_sentence(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.course]\nrepository = "git@github.com:me/course"\n')
    with pytest.raises(ValueError, match=r"must be 'https://github.com/<owner>/<name>'"):
        cloud.setting(tmp_path / "pyproject.toml")


def _setup_function(path: Path):
    """``cloud_setup`` exactly as the lesson's setup cell defines it."""
    cell = json.loads(path.read_text())["cells"][1]
    assert cloud.SETUP_TAG in cell["metadata"]["tags"]
    tree = ast.parse("".join(cell["source"]))
    ns: dict = {}
    exec(compile(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.FunctionDef))],
                            type_ignores=[]), path.name, "exec"), ns)
    call = tree.body[-1].value
    assert isinstance(call, ast.Call) and call.func.id == "cloud_setup"
    return ns["cloud_setup"], [ast.literal_eval(a) for a in call.args[:2]]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem[:2] for p in LESSONS])
def test_the_setup_cell_does_nothing_here(path):
    setup, (repo, branch) = _setup_function(path)
    assert (repo, branch) == cloud.setting()
    calls = []
    before = os.getcwd()
    assert setup(repo, branch, os.environ, sys.modules, calls.append) is None
    assert calls == [] and os.getcwd() == before


@pytest.mark.parametrize("platform, env, modules, root", [
    ("colab", {}, {"google.colab": object()}, "/content/course"),
    ("kaggle", {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, "/kaggle/working/course"),
])
def test_the_setup_cell_installs_the_course_on_colab_and_kaggle(monkeypatch, platform, env, modules, root):
    setup, (repo, branch) = _setup_function(ROOT / "notebooks" / "06_qlora_finetune_8b.ipynb")
    moved = []
    monkeypatch.setattr(os, "chdir", moved.append)
    monkeypatch.setattr(sys, "path", list(sys.path))
    calls = []
    assert setup(repo, branch, env, modules, calls.append) == root
    assert calls == [
        ["git", "clone", "--depth", "1", "--branch", branch, repo, root],
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", f"{root}/requirements.txt"],
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", root],
    ]
    assert moved == [f"{root}/notebooks"] and sys.path[0] == root
    monkeypatch.setattr(os.path, "isdir", lambda p: p == root)  # a second run of the cell: no second clone
    calls.clear()
    setup(repo, branch, env, modules, calls.append)
    assert [c[0] for c in calls] == [sys.executable, sys.executable]


def test_a_t4_gets_the_fp16_plan():
    """Colab's and Kaggle's T4: 16 GB, compute capability 7.5, no native bf16 -> fp16 with a gradient scaler."""
    for task in ("llm-qlora", "gpt-train", "sd-lora"):
        plan = safe_defaults(task, vram_gb=14.6, bf16=False)  # what a T4 reports (GiB)
        assert (plan.device, plan.dtype, plan.use_grad_scaler) == ("cuda", "float16", True), task
        assert plan.micro_batch_size == safe_defaults(task, vram_gb=15.9, bf16=True).micro_batch_size  # the 16 GB plan


def test_lesson_13_sends_a_learner_without_two_cards_to_kaggle():
    cells = json.loads((ROOT / "notebooks" / "13_beyond_one_card.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "Kaggle" in text and "two T4s" in text
