"""recipes/train_sd_lora.py: run as a learner would (fresh process, no course_utils) on the tiny SD pipeline and a
generated captioned folder; the held-out loss falls, the LoRA file has its rank's size, reloads into a fresh pipeline
and changes the output. The data reader, split and LoRA target modules it shares with lesson 09 are held to the
lesson's cells by the copy checker (tests/test_copies.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_sd_lora.py"


def _recipe_module():
    spec = importlib.util.spec_from_file_location("train_sd_lora", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the recipe is being executed
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SD 1.5-shaped pipeline saved to a folder, and 24 generated captioned 32-px images (image + .txt)."""
    from course_utils.smoke.diffusion import build_tiny_sd_pipeline, write_captioned_folder

    root = tmp_path_factory.mktemp("sd-recipe")
    build_tiny_sd_pipeline(32).save_pretrained(root / "tiny-sd")
    write_captioned_folder(root / "data", n=24, size=32, seed=0)
    return root / "tiny-sd", root / "data"


def test_reader_needs_a_caption_per_image_and_split_is_disjoint(tmp_path):
    from course_utils.smoke.diffusion import make_shapes_dataset

    recipe = _recipe_module()
    for i, item in enumerate(make_shapes_dataset(5, 32, seed=1)):
        item.image.save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(item.caption + "\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not an image")
    pairs = recipe.read_caption_folder(tmp_path)
    assert [p.name for p, _ in pairs] == [f"{i}.png" for i in range(5)]
    assert all(c == c.strip() and c.startswith(("a ", "an ")) for _, c in pairs)
    train, heldout = recipe.split_heldout(pairs, 2, seed=0)
    assert len(train) == 3 and len(heldout) == 2 and not {p for p, _ in train} & {p for p, _ in heldout}
    assert recipe.split_heldout(pairs, 2, seed=0) == (train, heldout), "the split must be the same for the same seed"
    (tmp_path / "4.txt").unlink()
    with pytest.raises(FileNotFoundError, match="4.txt"):
        recipe.read_caption_folder(tmp_path)
    for name in ("2", "3", "4"):
        (tmp_path / f"{name}.png").unlink()
    with pytest.raises(ValueError, match="at least 3"):
        recipe.read_caption_folder(tmp_path)


def test_recipe_help_explains_the_flags(run_recipe):
    out = run_recipe("train_sd_lora.py", "--help").stdout
    for flag in ("--pretrained_model_name_or_path", "--train_data_dir", "--resolution", "--rank", "--learning_rate",
                 "--max_train_steps", "--train_batch_size", "--gradient_accumulation_steps", "--mixed_precision",
                 "--gradient_checkpointing", "--seed", "--output_dir", "--num_heldout"):
        assert flag in out, f"--help does not mention {flag}"


def test_recipe_trains_a_lora_that_reloads_and_changes_the_output(run_recipe, tiny, tmp_path, monkeypatch):
    import torch
    from diffusers import StableDiffusionPipeline

    model, data = tiny
    out = tmp_path / "lora"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the tiny model's operations are too small to share between threads
    run_recipe("train_sd_lora.py", "--pretrained_model_name_or_path", model, "--train_data_dir", data,
               "--num_heldout", "6", "--resolution", "32", "--rank", "8", "--learning_rate", "5e-3",
               "--max_train_steps", "30", "--train_batch_size", "4", "--gradient_accumulation_steps", "1",
               "--mixed_precision", "no", "--seed", "0", "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == 18 and metrics["heldout_images"] == 6
    assert metrics["eval_loss_after"] < 0.95 * metrics["eval_loss_before"], f"held-out loss did not fall: {metrics}"
    assert metrics["train_loss_last"] < metrics["train_loss_first"], "the training loss should fall"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "pytorch_lora_weights.safetensors"], \
        "only the two artefacts, no temporary files left behind"
    ratio = metrics["lora_file_bytes"] / (metrics["lora_parameters"] * 4)
    assert 0.95 <= ratio <= 1.3, f"the LoRA file is {ratio:.2f}x its rank's parameter count in fp32"

    def sample(pipe):
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red circle on a blue background", num_inference_steps=2, height=32, width=32,
                    generator=generator, output_type="np").images[0]

    pipe = StableDiffusionPipeline.from_pretrained(model)  # a fresh pipeline, as a learner's project would load it
    pipe.set_progress_bar_config(disable=True)
    base = sample(pipe)
    pipe.load_lora_weights(out)
    with_lora = sample(pipe)
    assert np.abs(with_lora - base).max() > 1e-3, "the trained LoRA must change the output"
    pipe.unload_lora_weights()
    assert np.array_equal(sample(pipe), base), "unloading must give back the base model's output"
