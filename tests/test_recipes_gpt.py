"""recipes/train_gpt.py: runs without the course package, learns, prints a sample at each evaluation, writes a
checkpoint that reloads, and holds lesson 04's cells as marked copies (as course_utils.topics.gpt does)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

import course_utils as cu
from course_utils.core.paths import REPO_ROOT
from course_utils.topics import gpt, text_data

RECIPE = REPO_ROOT / "recipes" / "train_gpt.py"
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--batch_size", "16",
        "--lr", "3e-3", "--warmup_steps", "10", "--dropout", "0", "--device", "cpu"]


def load_recipe():
    """The recipe as a module (its dataclasses need it registered in sys.modules)."""
    import sys

    if "train_gpt_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_gpt_recipe", RECIPE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_gpt_recipe"] = module
        spec.loader.exec_module(module)
    return sys.modules["train_gpt_recipe"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """A tiny GPT gains nothing from threads; on a busy machine thread hand-offs slow it down. The recipe's process
    inherits OMP_NUM_THREADS."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_recipe_trains_on_a_text_file_and_its_checkpoint_reloads(run_recipe, tmp_path):
    out = tmp_path / "out"
    proc = run_recipe("train_gpt.py", "--text_file", text_data.TINY_CORPUS, "--max_steps", "40", "--eval_interval", "40",
                      "--eval_iters", "2", "--sample_tokens", "40", "--eval_sample_tokens", "24", "--output_dir", out, *TINY)
    evaluations = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(evaluations) == 2 and all(" | '" in line or ' | "' in line for line in evaluations), \
        f"each evaluation should print a sample: {evaluations}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_train_loss"] < 0.8 * metrics["first_train_loss"], "the training loss should fall"
    assert metrics["val_loss"] < 0.7 * metrics["uniform_loss"], "held-out loss should fall well below a uniform guess"
    assert metrics["uniform_loss"] == pytest.approx(math.log(len(set(text_data.load_tiny_corpus()))))
    assert len((out / "sample.txt").read_text()) == 40
    assert metrics["history"]["step"] == [0, 40]
    assert not list(out.glob(".*.tmp")), "no temporary files may be left behind"

    recipe = load_recipe()
    # the reload line the recipe documents, run as written (map_location: a GPU-saved checkpoint holds CUDA tensors)
    reload_line = recipe.__doc__.split("Reload: ``", 1)[1].split("``", 1)[0].replace("\n", " ")
    assert 'map_location="cpu"' in reload_line
    namespace = {"torch": torch, "GPT": recipe.GPT, "GPTConfig": recipe.GPTConfig, "path": out / "ckpt.pt"}
    exec(reload_line, namespace)  # noqa: S102
    ckpt, model = namespace["ckpt"], namespace["model"]
    # the checkpoint also loads into the lesson's class: same parameter names and shapes
    lesson_model = gpt.GPT(gpt.GPTConfig(**ckpt["config"]))
    lesson_model.load_state_dict(ckpt["model"])
    text = text_data.load_tiny_corpus()
    stoi = {ch: i for i, ch in enumerate(ckpt["chars"])}
    val = torch.tensor([stoi[ch] for ch in text[int(0.9 * len(text)):]])
    x, y = val[:64][None], val[1:65][None]
    with torch.no_grad():
        loss = model.eval()(x, y)[1].item()
    assert loss < 0.75 * metrics["uniform_loss"], "the reloaded model should predict held-out text"


MODEL = ("GPTConfig", "rope_angles", "alibi_slopes", "CausalSelfAttention", "MLP", "Block", "KVCache", "sample_next", "GPT")


@pytest.mark.parametrize("path,names", [
    ("recipes/train_gpt.py", MODEL + ("CharTokenizer", "get_batch", "autocast", "estimate_loss", "make_optimizer", "lr_at")),
    ("course_utils/topics/gpt.py", MODEL + ("apply_rope",)),
])
def test_the_model_is_copied_from_the_lessons_cells(path, names):
    """One source, the lesson's cells: the recipe and course_utils.topics.gpt hold marked copies of them, equal to
    their cells, and a one-character change to a copy is caught."""
    from course_utils.runner import copies

    text = (REPO_ROOT / path).read_text(encoding="utf-8")
    found, problems = copies.copies_in(REPO_ROOT, path, text)
    assert not problems, problems
    lesson = {c.source.rsplit(":", 1)[1]: c for c in found if c.source.startswith("notebooks/04_gpt_from_scratch.ipynb#")}
    assert set(names) <= set(lesson), f"{path} lacks marked copies of {sorted(set(names) - set(lesson))}"
    lines = text.split("\n")
    for copy in found:
        assert copies.difference(copy, lines) is None, copies.difference(copy, lines)
    copy = lesson["CausalSelfAttention"]
    changed = lines[:copy.start + 3] + [lines[copy.start + 3] + "x"] + lines[copy.start + 4:]
    assert copies.difference(copy, changed) is not None, "a changed line in a copy must be reported"
    with pytest.raises(cu.BadParameter, match="rope"):  # course_utils' one addition: a course error for a bad setting
        gpt.GPTConfig(position="sinusoidal")


def test_recipe_schedule_matches_the_lesson_recipe():
    recipe = load_recipe()
    lr = [recipe.lr_at(s, 100, 1e-3, 1e-4, 10) for s in range(100)]
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3), "linear warm-up to the peak"
    assert lr[-1] == pytest.approx(1e-4, rel=0.01) and all(a >= b for a, b in zip(lr[10:], lr[11:])), "cosine decay to min_lr"


def test_recipe_refuses_a_text_too_short_for_its_context(tmp_path):
    import subprocess
    import sys

    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 3)
    proc = subprocess.run([sys.executable, str(RECIPE), "--text_file", str(short), "--max_steps", "1",
                           "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "too short" in proc.stderr


@pytest.mark.parametrize("cc,want", [((7, 5), torch.float16), ((8, 9), torch.bfloat16)], ids=["T4", "RTX-4070-Ti"])
def test_recipe_picks_bf16_only_where_the_card_computes_it(monkeypatch, cc, want):
    """The course's bf16 rule (compute capability 8.0+, never emulation), for the first GPU and for --device cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # emulation says yes
    recipe = load_recipe()
    assert recipe.choose_dtype("auto", "cuda") == want and recipe.choose_dtype("auto", "cuda:1") == want
    assert recipe.choose_dtype("auto", "cpu") == torch.float32
    assert recipe.choose_device("cuda:1") == "cuda:1"


def test_recipe_accepts_learned_positions_and_rejects_unknown_ones(capsys):
    """--position learned (GPT-2's table, nanoGPT's configuration) reaches the model; an unknown scheme is refused."""
    recipe = load_recipe()
    args = recipe.parse_args(["--text_file", "input.txt", "--position", "learned"])
    assert args.position == "learned"
    model = recipe.GPT(recipe.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                        position=args.position))
    assert model.state_dict()["pos_emb.weight"].shape == (8, 16)
    with pytest.raises(SystemExit):
        recipe.parse_args(["--text_file", "input.txt", "--position", "sinusoidal"])
    assert "invalid choice" in capsys.readouterr().err
