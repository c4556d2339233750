"""recipes/train_llava_qlora.py: run as a learner would (fresh process, no course_utils) on the tiny LLaVA in 4-bit and a
generated shape-VQA set in JSONL; the held-out loss falls, exact match rises on the same held-out examples, the adapter
reloads onto a fresh base model and changes its output, and its answers are scored as the course scores them. The
prompt and label masking it shares with lesson 11 (and the constants shared with course_utils.topics.vlm) are held to
their sources by the copy checker (tests/test_copies.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_llava_qlora.py"


def _recipe_module():
    spec = importlib.util.spec_from_file_location("train_llava_qlora", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the recipe is being executed
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny LLaVA (model + processor) in a folder, and 24 training / 12 held-out generated triples as JSONL: the
    lesson's smoke task (colour questions about one-shape pictures), with its question types."""
    from course_utils.smoke.vlm import build_tiny_llava, make_shape_vqa

    root = tmp_path_factory.mktemp("llava-recipe")
    build_tiny_llava(root / "tiny-llava")
    train, test = make_shape_vqa(24, 12, seed=0, max_shapes=1, kinds=("color",))
    (root / "images").mkdir()
    for name, split in (("train", train), ("test", test)):
        lines = []
        for i, ex in enumerate(split):
            ex.image.save(root / "images" / f"{name}_{i:03d}.png")
            lines.append(json.dumps({"image": f"images/{name}_{i:03d}.png", "question": ex.question, "answer": ex.answer,
                                     "question_type": ex.template}))
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_recipe_scores_answers_as_the_course_does():
    from course_utils.topics import vlm

    recipe = _recipe_module()
    for text in ("Two.", "The red", "  LEFT!", "three shapes", "an apple"):
        assert recipe.normalize_answer(text) == vlm.normalize_answer(text)
    assert recipe.exact_match(["Two.", "blue"], ["2", "red"]) == vlm.exact_match(["Two.", "blue"], ["2", "red"]) == 0.5


def test_recipe_help_lists_the_qlora_flags(run_recipe):
    out = run_recipe("train_llava_qlora.py", "--help").stdout
    for flag in ("--model_name", "--dataset", "--eval_dataset", "--load_in_4bit", "--bf16", "--gradient_checkpointing",
                 "--lora_r", "--lora_alpha", "--lora_dropout", "--per_device_train_batch_size",
                 "--gradient_accumulation_steps", "--max_seq_length", "--num_train_epochs", "--output_dir"):
        assert flag in out, f"--help does not mention {flag}"


def test_recipe_qlora_improves_held_out_and_the_adapter_reloads(run_recipe, tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "adapter"
    run_recipe("train_llava_qlora.py", "--model_name", tiny / "tiny-llava", "--dataset", tiny / "train.jsonl",
               "--eval_dataset", tiny / "test.jsonl", "--load_in_4bit", "--lora_r", "16", "--lora_alpha", "32",
               "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--num_train_epochs", "20",
               "--learning_rate", "1e-2", "--seed", "0", "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_examples"] == 12 and metrics["train_examples"] == 24
    assert metrics["eval_loss_after"] < 0.7 * metrics["eval_loss_before"], f"held-out loss did not fall: {metrics}"
    assert metrics["exact_match_gain"] > 0, f"exact match did not rise on the held-out examples: {metrics}"
    # the generated colours are balanced: answering blind (the commonest training colour) scores chance, 1/4
    assert metrics["blind_exact_match"] == pytest.approx(1 / 4)
    assert metrics["exact_match_gain_over_blind"] == pytest.approx(metrics["exact_match_after"] - 1 / 4)
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith("tmp")], "no temporary files left behind"
    from course_utils.topics import vlm

    config = json.loads((out / "adapter_config.json").read_text())  # LoRA on the language model's projections only
    assert (config["r"], config["lora_alpha"], config["target_modules"], config["task_type"]) == \
        (16, 32, vlm.LANGUAGE_MODEL_PROJECTIONS, "CAUSAL_LM")

    processor = AutoProcessor.from_pretrained(tiny / "tiny-llava")
    base = LlavaForConditionalGeneration.from_pretrained(tiny / "tiny-llava").eval()
    from course_utils.smoke.vlm import generate_shape_qa

    ex = generate_shape_qa(1, seed=11)[0]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex.question}]}], add_generation_prompt=True)
    inputs = processor(images=ex.image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        before = base(**inputs).logits
        tuned = PeftModel.from_pretrained(base, out).eval()
        after = tuned(**inputs).logits
    assert (after - before).abs().max() > 1e-3, "the reloaded adapter must change the model's output"
