#!/usr/bin/env python
"""QLoRA fine-tuning of a chat model on your JSONL conversations: lesson 06 of the course as one standalone script.

Needs only pip packages: torch, transformers, peft, trl, bitsandbytes, datasets (tensorboard for --report_to).

Data: one conversation a line, ``{"messages": [{"role": "system", "content": ...}, {"role": "user", ...},
{"role": "assistant", "content": ...}]}``. The last message is the answer; the loss is computed on it (and its
end-of-turn token) only. Give a held-out file with --eval_dataset to see the dev loss before, during and after.

The course's command for an 8B model on a 12 GB card (~10 GiB peak at 2048 tokens)::

    python train_qlora.py --model_name meta-llama/Llama-3.1-8B-Instruct --dataset train.jsonl \\
        --eval_dataset dev.jsonl --load_in_4bit --bf16 --gradient_checkpointing --lora_r 16 --lora_alpha 32 \\
        --lora_dropout 0.05 --per_device_train_batch_size 1 --gradient_accumulation_steps 16 \\
        --max_seq_length 2048 --num_train_epochs 2 --output_dir runs/qlora

Writes ``<output_dir>/adapter/`` (adapter_config.json + adapter_model.safetensors, replaced atomically),
``<output_dir>/checkpoints/checkpoint-N/`` (resume with --resume_from_checkpoint last) and
``<output_dir>/metrics.json`` (first/last training loss, eval loss before/after, the loss at each logged step,
tokens/s, peak VRAM).
Load the result with ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "<output_dir>/adapter")``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example:\n" + __doc__.split("::")[1].split("\n\nWrites")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", required=True, help="hub id or local folder of the base chat model")
    p.add_argument("--revision", default=None, help="hub commit to pin the model to (recommended for reproducibility)")
    p.add_argument("--dataset", required=True, help="training JSONL, one {\"messages\": [...]} conversation a line")
    p.add_argument("--eval_dataset", default=None, help="held-out JSONL in the same format: dev loss before/during/after")
    p.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training conversations")
    p.add_argument("--max_eval_samples", type=int, default=None, help="use only the first N eval conversations")
    p.add_argument("--output_dir", required=True, help="where the adapter, checkpoints and metrics.json go")
    p.add_argument("--load_in_4bit", action="store_true", help="QLoRA: store the frozen base in 4-bit NF4 (else 16-bit LoRA)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision and 4-bit compute on cards that compute "
                   "bf16 natively (Ampere or newer); without it, or on older GPUs (T4, RTX 20xx), fp16 with a gradient "
                   "scaler and the adapter in fp32. On a CPU the 4-bit layers compute in fp32 either way")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations in the backward pass "
                   "(needed for 2048-token sequences on 12 GB)")
    p.add_argument("--lora_r", type=int, default=16, help="adapter rank (default 16)")
    p.add_argument("--lora_alpha", type=int, default=32, help="adapter scale alpha; the update is scaled by alpha/r (default 32)")
    p.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the adapter input (default 0.05)")
    p.add_argument("--target_modules", default="all-linear",
                   help="'all-linear' (QLoRA's choice: q,k,v,o,gate,up,down) or a comma-separated list, e.g. q_proj,v_proj")
    p.add_argument("--per_device_train_batch_size", type=int, default=1, help="micro-batch (default 1)")
    p.add_argument("--per_device_eval_batch_size", type=int, default=8, help="eval batch (default 8)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=16, help="micro-batches per optimizer step (default 16)")
    p.add_argument("--max_seq_length", type=int, default=2048, help="longer conversations are cut (default 2048)")
    p.add_argument("--num_train_epochs", type=float, default=1.0, help="passes over the data (default 1)")
    p.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; overrides --num_train_epochs when > 0")
    p.add_argument("--learning_rate", type=float, default=2e-4, help="peak learning rate, cosine schedule (default 2e-4)")
    p.add_argument("--optim", default="paged_adamw_8bit", help="optimizer (default paged_adamw_8bit: 8-bit Adam states)")
    p.add_argument("--logging_steps", type=int, default=1, help="log the training loss every N steps")
    p.add_argument("--eval_steps", type=int, default=None, help="dev loss every N steps (default: ~5 times a run)")
    p.add_argument("--save_steps", type=int, default=None, help="checkpoint every N steps (default: ~5 times a run)")
    p.add_argument("--save_total_limit", type=int, default=None, help="keep only the last N checkpoints")
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="a checkpoint folder, or 'last' for the newest one in <output_dir>/checkpoints")
    p.add_argument("--report_to", default="none", help="'tensorboard' (logs in <output_dir>/checkpoints/runs) or 'none'")
    p.add_argument("--seed", type=int, default=0, help="seed for the adapters' init, dropout and data order")
    p.add_argument("--use_cpu", action="store_true", help="train on the CPU even if a GPU is there (default: the GPU if any)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------ the pieces (lesson 06 builds the same)


# Copied from course_utils/core/gpu.py:bf16_native
def bf16_native(device: object = None) -> bool:
    """The course's one bf16 rule: bf16 only where the card computes it natively, compute capability 8.0 (Ampere) or
    newer. ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or an RTX 20xx (it counts emulation), where bf16
    is slow and Ultralytics refuses it; those cards get fp16 with a gradient scaler. ``device`` is a CUDA device (index,
    ``"cuda:1"``, ``torch.device``) or None for the current one; a CPU device, or no GPU, is False."""
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type != "cuda":
            return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_device(use_cpu: bool = False) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def compute_dtype_for(device: str, bf16: bool) -> Any:
    """The 4-bit layers' matmul dtype: bf16 (with --bf16, on a card that computes it natively) or fp16 on a GPU;
    fp32 on a CPU, where bf16 matmuls are slow."""
    import torch

    if device != "cuda":
        return torch.float32
    if bf16 and not bf16_native():
        print(f"--bf16: the {torch.cuda.get_device_name()} has no native bf16 (compute capability below 8.0): "
              "training in fp16 with a gradient scaler, the adapter in fp32")
    return torch.bfloat16 if bf16 and bf16_native() else torch.float16


# Copied from course_utils/topics/llm.py:adapter_in_fp32_for_fp16
def adapter_in_fp32_for_fp16(model: Any, compute_dtype: Any) -> int:
    """Pre-Ampere QLoRA (T4, RTX 20xx: no native bf16): fp16 compute, the LoRA weights in fp32, a gradient scaler.

    trl's ``SFTTrainer`` casts the adapter of a 4-bit model to bf16 (the QLoRA paper's choice;
    ``trl/trainer/sft_trainer.py``), and fp16 training's GradScaler cannot unscale bf16 gradients
    (``"_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'`` at the first step). Call it
    after building the trainer and before ``train()``: with fp16 the trainable weights go back to fp32 (a no-op for
    bf16 or fp32). Returns how many tensors moved. ``recipes/train_qlora.py`` holds a copy.
    """
    import torch

    if compute_dtype != torch.float16:
        return 0
    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
            moved += 1
    return moved


def bnb_config(compute_dtype: Any) -> Any:
    """QLoRA's 4-bit recipe: NF4 levels, double quantisation of the scales, matmuls in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = "all-linear") -> Any:
    from peft import LoraConfig

    targets: Any = target_modules if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def load_model(model_name: str, device: str, compute_dtype: Any, load_in_4bit: bool = True,
               revision: str | None = None) -> tuple[Any, Any]:
    """The base model (4-bit or 16-bit) and its tokenizer, with the pad-token fix."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name, revision=revision)
    if tokenizer.pad_token is None:  # Llama 3 ships none; trl pads labels with -100, so the end-of-turn token is safe
        tokenizer.pad_token = tokenizer.eos_token
    # unquantised weights (embeddings, norms, LM head) in the compute dtype on a GPU, bf16 on a CPU (as on the GPU)
    dtype = compute_dtype if device == "cuda" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(
        model_name, revision=revision, dtype=dtype, quantization_config=bnb_config(compute_dtype) if load_in_4bit else None,
        device_map={"": 0} if device == "cuda" else device)
    return model, tokenizer


def read_conversations(path: str, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows[:limit]):
        roles = [m.get("role") for m in row.get("messages", [])]
        if len(roles) < 2 or roles[-1] != "assistant":
            sys.exit(f"{path}, line {i + 1}: expected {{\"messages\": [..., {{\"role\": \"assistant\", ...}}]}}, got roles {roles}")
    return rows[:limit]


def to_prompt_completion(row: dict) -> dict:
    """Prompt = every message but the last; completion = the assistant's answer (the only part that is trained)."""
    return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}


def total_steps(n_examples: int, args: argparse.Namespace) -> int:
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = math.ceil(n_examples / (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * args.num_train_epochs))


def sft_config(args: argparse.Namespace, compute_dtype: Any, device: str, steps: int, has_eval: bool) -> Any:
    """Lesson 06's training settings: cosine schedule with 5 % warm-up, paged 8-bit AdamW, checkpointing, bf16."""
    import torch
    from trl import SFTConfig

    every = max(1, steps // 5)
    return SFTConfig(
        output_dir=str(Path(args.output_dir) / "checkpoints"), max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs, learning_rate=args.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_length=args.max_seq_length, optim=args.optim,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        bf16=compute_dtype == torch.bfloat16, fp16=compute_dtype == torch.float16, use_cpu=device == "cpu",
        logging_steps=args.logging_steps, eval_strategy="steps" if has_eval else "no",
        eval_steps=args.eval_steps or every, save_steps=args.save_steps or every, save_total_limit=args.save_total_limit,
        include_num_input_tokens_seen="non_padding", report_to=args.report_to, seed=args.seed,
    )


# ------------------------------------------------------------------------------------------ atomic writes


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_adapter_atomic(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write to a temporary folder next to ``folder``, then swap it in: never half an adapter on disk."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainerCallback, set_seed
    from trl import SFTTrainer

    class CountSteps(TrainerCallback):  # optimizer steps run by this process (a resumed run skips the ones before)
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.use_cpu)
    compute_dtype = compute_dtype_for(device, args.bf16)
    train_rows = read_conversations(args.dataset, args.max_train_samples)
    eval_rows = read_conversations(args.eval_dataset, args.max_eval_samples) if args.eval_dataset else []
    print(f"{len(train_rows)} training / {len(eval_rows)} eval conversations; device {device}, compute {compute_dtype}")

    model, tokenizer = load_model(args.model_name, device, compute_dtype, args.load_in_4bit, args.revision)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules))
    model.print_trainable_parameters()

    steps = total_steps(len(train_rows), args)
    train_dataset = Dataset.from_list([to_prompt_completion(r) for r in train_rows])
    eval_dataset = Dataset.from_list([to_prompt_completion(r) for r in eval_rows]) if eval_rows else None
    counter = CountSteps()
    trainer = SFTTrainer(model=model, args=sft_config(args, compute_dtype, device, steps, eval_dataset is not None),
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                         callbacks=[counter])
    adapter_in_fp32_for_fp16(trainer.model, compute_dtype)  # before train() builds the optimizer
    eval_before = trainer.evaluate()["eval_loss"] if eval_dataset is not None else None
    if eval_before is not None:
        print(f"eval loss before training: {eval_before:.4f}")

    resume: Any = args.resume_from_checkpoint
    if resume in ("last", "True", "true"):
        resume = True
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    eval_after = trainer.evaluate()["eval_loss"] if eval_dataset is not None else None

    save_adapter_atomic(trainer.model, tokenizer, output_dir / "adapter")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    k = max(1, min(3, len(losses) // 2))  # first/last: means of up to 3 logged losses (single steps are noisy)
    metrics = {
        "model_name": args.model_name, "steps": trainer.state.global_step, "steps_this_process": counter.steps,
        "train_loss_first": sum(losses[:k]) / k if losses else None, "train_loss_last": sum(losses[-k:]) / k if losses else None,
        "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "train_log": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "train_seconds": round(seconds, 2), "train_tokens_per_s": round(trainer.state.num_input_tokens_seen / seconds, 1),
        "peak_vram_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3) if torch.cuda.is_available() else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter_dir": str(output_dir / "adapter"),
    }
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
