"""recipes/train_qlora.py and recipes/chat_4bit.py: run as a learner would (course_utils not importable) on the tiny
Llama, and hold the QLoRA recipe to what lesson 06's cells build."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from course_utils.core.paths import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
DATA = REPO_ROOT / "datasets" / "course" / "run_notes_json"
LESSON_06 = REPO_ROOT / "notebooks" / "06_qlora_finetune_8b.ipynb"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer folder, built by the course's smoke builder (what smoke mode loads)."""
    from course_utils.smoke.llm import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("models") / "tiny-llama")


def _recipe_module(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits(model, tokenizer, text: str = "A QLoRA run on Llama-3.1-8B with 2k context."):
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits.float()


def test_train_qlora_trains_saves_and_the_adapter_reloads(run_recipe, tiny_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    out = tmp_path / "run"
    flags = ["--model_name", tiny_llama, "--dataset", DATA / "train.jsonl", "--eval_dataset", DATA / "dev.jsonl",
             "--max_train_samples", 64, "--max_eval_samples", 8, "--load_in_4bit", "--bf16", "--gradient_checkpointing",
             "--lora_r", 16, "--lora_alpha", 32, "--lora_dropout", 0.05, "--per_device_train_batch_size", 1,
             "--gradient_accumulation_steps", 2, "--max_seq_length", 2048, "--max_steps", 6, "--learning_rate", 2e-3,
             "--eval_steps", 100, "--save_steps", 3, "--seed", 0]
    run_recipe("train_qlora.py", *flags, "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.1, f"the training loss should fall: {metrics}"
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"], f"the held-out loss should fall: {metrics}"
    assert metrics["trainable_params"] > 0 and metrics["train_tokens_per_s"] > 0
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind: writes must be atomic"

    # a fresh base, as a learner reloads it: the adapter loads and changes the logits
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=bnb, dtype=torch.bfloat16, device_map="cpu")
    before = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, adapter)
    after = _logits(tuned, tokenizer)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    shift = (after - before).abs().max().item() / before.abs().max().item()
    assert shift > 0.05, f"the reloaded adapter barely changes the logits (relative shift {shift:.3g}): was it trained?"


    # a new process resumes from the step-3 checkpoint and repeats the uninterrupted run's next losses
    resumed_out = tmp_path / "resumed"
    run_recipe("train_qlora.py", *flags, "--output_dir", resumed_out,
               "--resume_from_checkpoint", out / "checkpoints" / "checkpoint-3")
    resumed = json.loads((resumed_out / "metrics.json").read_text())
    uninterrupted = dict(map(tuple, metrics["train_log"]))
    new_steps = [(step, loss) for step, loss in resumed["train_log"] if step > 3]  # 1-3 come from the checkpoint's log
    assert [step for step, _ in new_steps] == [4, 5, 6] and resumed["steps"] == 6, "the resumed run should continue at step 4"
    assert (metrics["steps_this_process"], resumed["steps_this_process"]) == (6, 3), "the resumed run retrained from step 0"
    diff = max(abs(loss - uninterrupted[step]) for step, loss in new_steps)
    assert diff <= 2e-3, f"the resumed run's losses differ from the uninterrupted run's by {diff:.3g}"


def test_train_qlora_help_lists_the_course_notes_flags(run_recipe):
    text = run_recipe("train_qlora.py", "--help").stdout
    for flag in ("--model_name", "--dataset", "--load_in_4bit", "--bf16", "--gradient_checkpointing", "--lora_r",
                 "--lora_alpha", "--lora_dropout", "--per_device_train_batch_size", "--gradient_accumulation_steps",
                 "--max_seq_length", "--num_train_epochs", "--output_dir", "--max_steps", "--eval_dataset", "--seed",
                 "--use_cpu", "--resume_from_checkpoint"):
        assert flag in text, f"--help does not mention {flag}"


def _lesson_cell(cells: list[dict], marker: str) -> str:
    found = [("".join(c["source"])) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(found) == 1, f"lesson 06 should have exactly one cell with {marker!r}, found {len(found)}"
    return found[0]


def test_recipe_builds_what_lesson_06_builds(monkeypatch, tmp_path):
    """The lesson's parameters, BitsAndBytesConfig, LoraConfig and SFTConfig cells run (full-mode values, on a CPU)
    and are compared field by field with the recipe's builders at the same settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    recipe = _recipe_module("train_qlora")
    cells = json.loads(LESSON_06.read_text())["cells"]
    params = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    monkeypatch.setenv("SMOKE", "0")
    ns: dict = {"torch": torch, "BitsAndBytesConfig": BitsAndBytesConfig, "LoraConfig": LoraConfig, "SFTConfig": SFTConfig,
                "Dataset": Dataset, "shutil": __import__("shutil"), "device": "cpu", "defaults": None,
                "micro_batch": 1, "grad_accum": 16, "max_seq_len": 2048, "output_dir": tmp_path,
                "train_rows": [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:4]],
                "dev_rows": [json.loads(line) for line in (DATA / "dev.jsonl").read_text().splitlines()[:4]]}
    exec(params, ns)
    exec(_lesson_cell(cells, "bnb_config = BitsAndBytesConfig("), ns)
    exec(_lesson_cell(cells, "lora_config = LoraConfig("), ns)
    exec(_lesson_cell(cells, "sft_config = SFTConfig("), ns)

    # the recipe at the lesson's full-mode settings (the course notes' command), on the same device
    args = recipe.parse_args([
        "--model_name", "m", "--dataset", "d.jsonl", "--output_dir", str(tmp_path), "--load_in_4bit", "--bf16",
        "--gradient_checkpointing", "--lora_r", str(ns["LORA_R"]), "--lora_alpha", str(ns["LORA_ALPHA"]),
        "--lora_dropout", str(ns["LORA_DROPOUT"]), "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "16", "--max_seq_length", "2048", "--max_steps", str(ns["MAX_STEPS"]),
        "--learning_rate", str(ns["LEARNING_RATE"]), "--seed", str(ns["SEED"]), "--use_cpu"])
    device = recipe.pick_device(args.use_cpu)
    compute_dtype = recipe.compute_dtype_for(device, args.bf16)

    lesson_bnb, recipe_bnb = ns["bnb_config"], recipe.bnb_config(compute_dtype)
    for field in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"):
        assert getattr(lesson_bnb, field) == getattr(recipe_bnb, field), f"BitsAndBytesConfig.{field} differs"
    assert lesson_bnb.bnb_4bit_quant_type == "nf4" and lesson_bnb.bnb_4bit_use_double_quant

    lesson_lora, recipe_lora = ns["lora_config"], recipe.lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules)
    for field in ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "bias", "use_rslora", "use_dora"):
        assert getattr(lesson_lora, field) == getattr(recipe_lora, field), f"LoraConfig.{field} differs"

    lesson_sft = ns["sft_config"]
    recipe_sft = recipe.sft_config(args, compute_dtype, device, recipe.total_steps(300, args), has_eval=True)
    for field in ("max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "max_length", "optim", "activation_checkpointing",
                  "activation_checkpointing_kwargs", "bf16", "fp16", "use_cpu", "seed", "completion_only_loss",
                  "assistant_only_loss", "packing", "weight_decay", "max_grad_norm", "adam_beta2"):
        assert getattr(lesson_sft, field) == getattr(recipe_sft, field), f"SFTConfig.{field} differs: lesson " \
            f"{getattr(lesson_sft, field)!r}, recipe {getattr(recipe_sft, field)!r}"

    row = ns["train_rows"][0]
    assert ns["to_prompt_completion"](row) == recipe.to_prompt_completion(row), "the lesson and the recipe split a conversation differently"


def test_chat_4bit_streams_what_generate_returns_through_the_chat_template(run_recipe, tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    out = tmp_path / "chat"
    proc = run_recipe("chat_4bit.py", "--model_name", tiny_llama, "--prompt", "What is NF4?", "--system", "Answer briefly.",
                      "--greedy", "--max_new_tokens", 12, "--use_cpu", "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reply"] == metrics["generated_text"], "the streamed text should be exactly the decoded reply"
    assert metrics["reply"] in proc.stdout, "the reply should be printed as it streams"
    assert 0 < metrics["new_tokens"] <= 12 and metrics["weights_gb"] < 0.01

    # the same conversation in this process: the chat template is applied, and greedy decoding gives the same reply
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=bnb, dtype=torch.bfloat16, device_map="cpu")
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is NF4?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert metrics["prompt_tokens"] == inputs["input_ids"].shape[1], "the recipe should format the chat with the template"
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=12, do_sample=False, temperature=None, top_p=None,
                             pad_token_id=tokenizer.eos_token_id)
    assert metrics["reply"] == tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chat_4bit_help(run_recipe):
    text = run_recipe("chat_4bit.py", "--help").stdout
    for flag in ("--model_name", "--adapter", "--quantization", "--prompt", "--greedy", "--temperature", "--top_p",
                 "--max_new_tokens", "--output_dir"):
        assert flag in text, f"--help does not mention {flag}"
