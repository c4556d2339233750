"""recipes/train_multi.py as a practitioner runs it: one plain process, copied next to train_gpt.py, no course_utils.

The multi-process runs happen elsewhere, each once: DDP and FSDP over gloo in lesson 13's smoke run
(tests/test_notebooks.py), DeepSpeed ZeRO-2 and ZeRO-3 through ``make engines`` (tests/test_multigpu.py), each compared
with the single-process curve.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "datasets" / "course" / "tiny_corpus" / "lamplighter.txt"
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "32", "--global_batch", "8",
        "--lr", "3e-3", "--warmup_steps", "2", "--eval_interval", "10", "--eval_batches", "2"]


def test_one_process_trains_and_writes_what_it_holds(run_recipe, tmp_path):
    run_recipe("train_multi.py", "--text_file", TEXT, "--output_dir", tmp_path / "out", "--max_steps", "20", *TINY)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["engine"] == "NO"
    assert len(metrics["history"]["loss"]) == 20
    assert metrics["val_loss"] < metrics["first_val_loss"] - 0.3, "the held-out loss should fall"
    (rank,) = metrics["ranks"]
    # one process holds everything: fp32 weights and gradients (4 bytes a parameter), AdamW's two moments (8)
    assert rank["param_bytes"] == rank["grad_bytes"] == metrics["full_param_bytes"] == 4 * metrics["n_params"]
    assert rank["optimizer_bytes"] == 8 * metrics["n_params"]
    assert not list((tmp_path / "out").glob(".metrics.json.*")), "no temp file left behind"


def test_a_copy_of_the_two_files_works_anywhere_and_says_what_is_wrong(tmp_path):
    """The recipe imports lesson 04's model from train_gpt.py next to it: copied together, they work as a pair."""
    for name in ("train_multi.py", "train_gpt.py"):
        shutil.copy(ROOT / "recipes" / name, tmp_path / name)
    bad = subprocess.run([sys.executable, "train_multi.py", "--text_file", str(TEXT), "--block_size", "100000"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "too short for --block_size 100000" in bad.stderr
    assert "Traceback" not in bad.stderr
