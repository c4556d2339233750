#!/usr/bin/env python
"""QLoRA fine-tune of LLaVA-1.5 on image questions with short answers (lesson 11 of the course, as one script).

The data: JSONL files, one example a line, ``{"image": "pics/0001.png", "question": "...", "answer": "..."}``; image
paths are relative to the JSONL file's folder. The language model is loaded in 4-bit NF4 (``--load_in_4bit``) while
the vision tower, the projector and the LM head stay in 16-bit; LoRA goes on the language model's attention and MLP
projections only. Exact match (VQA-style: lower case, no punctuation or articles, numbers as digits) is measured on
``--eval_dataset`` before and after training, on the same examples, and against an image-blind baseline: the most
frequent training answer for each question type (a line's optional ``"question_type"``, else the question itself),
which a model scores by learning the answers' frequencies without reading the image. Needs only pip packages: torch, transformers,
peft, bitsandbytes (for 4-bit), pillow.

    python train_llava_qlora.py --model_name llava-hf/llava-1.5-7b-hf \\
        --revision b234b804b114d9e37bb655e11cbbb5f5e971b7a9 --dataset train.jsonl --eval_dataset test.jsonl \\
        --load_in_4bit --bf16 --gradient_checkpointing --lora_r 16 --lora_alpha 32 --lora_dropout 0.05 \\
        --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --num_train_epochs 3 \\
        --learning_rate 2e-4 --output_dir llava-lora

Writes the adapter (``adapter_config.json``, ``adapter_model.safetensors``; load it with
``PeftModel.from_pretrained(base_model, output_dir)``) and ``metrics.json`` into ``--output_dir``, each file atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# LLaVA-1.5's own suffix for short-answer VQA.
# Copied from course_utils/topics/spec.py:SHORT_ANSWER
SHORT_ANSWER = "Answer the question using a single word or phrase."
# LoRA on the language model only: the vision tower has q_proj/k_proj/v_proj too, hence a regular expression.
# Copied from course_utils/topics/vlm.py:LANGUAGE_MODEL_PROJECTIONS
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Parts kept in 16-bit when the language model is quantised (matched from the start of a module's name).
# Copied from course_utils/topics/vlm.py:SKIP_QUANTIZATION
SKIP_QUANTIZATION = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


@dataclass
class Example:
    image: Any  # PIL.Image
    question: str
    answer: str
    question_type: str = ""  # the line's "question_type", else the question: what the blind baseline groups by


def read_jsonl(path):
    """Examples from a JSONL file of {"image", "question", "answer"} lines (image paths relative to the file)."""
    from PIL import Image

    path = Path(path)
    examples = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"image", "question", "answer"} - set(row)
        if missing:
            raise SystemExit(f"{path}:{line_no}: missing {sorted(missing)}; each line needs image, question and answer")
        examples.append(Example(Image.open(path.parent / row["image"]).convert("RGB"), row["question"], str(row["answer"]),
                                str(row.get("question_type", row["question"]))))
    if not examples:
        raise SystemExit(f"{path} holds no examples")
    return examples


def lora_config(r, alpha, dropout):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LANGUAGE_MODEL_PROJECTIONS,
                      task_type="CAUSAL_LM")


# Copied from notebooks/11_llava_vlm.ipynb#8da6281e:vqa_conversation
def vqa_conversation(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{question}\n{SHORT_ANSWER}"}]}]


def make_collate(processor):
    """Prompt + answer + end-of-sequence, with labels only on the answer (image tokens, question and padding -> -100)."""
    # Copied from notebooks/11_llava_vlm.ipynb#ec27b23d:collate
    def collate(examples):
        prompts = [processor.apply_chat_template(vqa_conversation(ex.question), add_generation_prompt=True) for ex in examples]
        texts = [f"{prompt} {ex.answer}{processor.tokenizer.eos_token}" for prompt, ex in zip(prompts, examples)]
        images = [ex.image for ex in examples]
        batch = processor(images=images, text=texts, padding=True, padding_side="right", return_tensors="pt")
        prompt_lengths = processor(images=images, text=prompts, padding=True, padding_side="right",
                                   return_tensors="pt")["attention_mask"].sum(dim=1)
        labels = batch["input_ids"].clone()
        for row, length in enumerate(prompt_lengths):
            labels[row, :length] = -100                   # no loss on image tokens and question
        labels[batch["attention_mask"] == 0] = -100       # nor on padding
        batch["labels"] = labels
        return batch

    return collate


# Copied from course_utils/topics/vlm.py:_NUMBER_WORDS
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def normalize_answer(text):
    """Lower-case, drop punctuation and articles, and spell numbers as digits: "Two." -> "2", "The red" -> "red"."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the"))


def blind_answers(train_set, eval_set):
    """The image-blind baseline: the most frequent training answer for each question type (ties: the first seen)."""
    from collections import Counter

    counts = {}
    for ex in train_set:
        counts.setdefault(ex.question_type, Counter())[ex.answer] += 1
    return [counts[ex.question_type].most_common(1)[0][0] if ex.question_type in counts else "" for ex in eval_set]


def exact_match(predictions, answers):
    if not answers:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)


def answer_all(model, processor, examples, batch_size=4, max_new_tokens=5):
    """Greedy short answers; batched generation pads on the left so every prompt ends where the answer starts."""
    import torch

    predictions = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            prompts = [processor.apply_chat_template(vqa_conversation(ex.question), add_generation_prompt=True) for ex in chunk]
            inputs = processor(images=[ex.image for ex in chunk], text=prompts, padding=True, padding_side="left",
                               return_tensors="pt").to(model.device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            predictions += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [p.strip() for p in predictions]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", required=True, help="hub id (llava-hf/llava-1.5-7b-hf) or a local folder (model + processor)")
    p.add_argument("--revision", default=None, help="hub commit to pin the weights to (recommended)")
    p.add_argument("--dataset", required=True, help="training JSONL: {\"image\", \"question\", \"answer\"} per line")
    p.add_argument("--eval_dataset", required=True, help="held-out JSONL in the same format, scored before and after")
    p.add_argument("--load_in_4bit", action="store_true", help="4-bit NF4 language model (QLoRA); 16-bit vision tower")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and compute on a GPU that has it (else fp16); CPU: fp32")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations: less memory, slower")
    p.add_argument("--lora_r", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora_alpha", type=int, default=32, help="LoRA scale numerator (update = alpha / r * B A)")
    p.add_argument("--lora_dropout", type=float, default=0.05, help="dropout on the LoRA input")
    p.add_argument("--per_device_train_batch_size", type=int, default=1, help="micro-batch (1 on a 12 GB card)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=8, help="micro-batches per optimizer step")
    p.add_argument("--max_seq_length", type=int, default=2048, help="longest example in tokens (an image is 576 of them)")
    p.add_argument("--num_train_epochs", type=float, default=3, help="passes over the training set")
    p.add_argument("--learning_rate", type=float, default=2e-4, help="AdamW learning rate (2e-4 is the usual QLoRA one)")
    p.add_argument("--max_new_tokens", type=int, default=5, help="answer length when scoring exact match")
    p.add_argument("--seed", type=int, default=0, help="seed for the LoRA initialisation and the data order")
    p.add_argument("--output_dir", required=True, help="where the adapter files and metrics.json go")
    args = p.parse_args(argv)
    if min(args.lora_r, args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_seq_length) < 1:
        p.error("--lora_r, --per_device_train_batch_size, --gradient_accumulation_steps, --max_seq_length must be >= 1")
    return args


def write_json_atomically(path, data):
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2)
    os.replace(handle.name, path)


def save_adapter_atomically(model, output_dir):
    """save_pretrained into a temporary folder next to the target, then move each finished file into place."""
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        model.save_pretrained(tmp)
        names = sorted(os.listdir(tmp))
        for name in names:
            os.replace(Path(tmp) / name, Path(output_dir) / name)
    return names


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


def main(argv=None):
    args = parse_args(argv)
    import torch
    from peft import get_peft_model
    from transformers import (AutoProcessor, BitsAndBytesConfig, LlavaForConditionalGeneration, Trainer,
                              TrainingArguments, set_seed)

    set_seed(args.seed)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        dtype = torch.float32
    else:
        # --bf16 on a card that computes it natively; else fp16 with a gradient scaler (peft keeps the adapter in fp32)
        dtype = torch.bfloat16 if args.bf16 and bf16_native() else torch.float16
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = read_jsonl(args.dataset), read_jsonl(args.eval_dataset)
    print(f"{len(train_set)} training and {len(eval_set)} held-out examples")

    quantization = None
    if args.load_in_4bit:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=SKIP_QUANTIZATION)
    processor = AutoProcessor.from_pretrained(args.model_name, revision=args.revision)
    model = LlavaForConditionalGeneration.from_pretrained(
        args.model_name, revision=args.revision, quantization_config=quantization, dtype=dtype,
        device_map={"": "cuda" if on_gpu else "cpu"})
    collate = make_collate(processor)
    longest = max(collate([ex])["input_ids"].shape[1] for ex in train_set[:8])
    if longest > args.max_seq_length:
        raise SystemExit(f"examples reach {longest} tokens > --max_seq_length {args.max_seq_length}: shorten the "
                         f"questions or raise the limit")

    model.eval()
    answers = [ex.answer for ex in eval_set]
    predictions_before = answer_all(model, processor, eval_set, max_new_tokens=args.max_new_tokens)
    exact_match_before = exact_match(predictions_before, answers)
    print(f"held-out exact match before training: {exact_match_before:.3f}")
    blind_exact_match = exact_match(blind_answers(train_set, eval_set), answers)
    print(f"held-out exact match of the image-blind baseline: {blind_exact_match:.3f}")

    model = get_peft_model(model, lora_config(args.lora_r, args.lora_alpha, args.lora_dropout))
    model.print_trainable_parameters()
    steps_per_epoch = -(-len(train_set) // (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    eval_every = max(1, int(steps_per_epoch * args.num_train_epochs) // 6)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "trainer"), num_train_epochs=args.num_train_epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, lr_scheduler_type="constant",
        logging_steps=eval_every, eval_strategy="steps", eval_steps=eval_every, save_strategy="no", report_to="none",
        seed=args.seed, disable_tqdm=True, bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16, use_cpu=not on_gpu,
        optim="paged_adamw_8bit" if on_gpu and args.load_in_4bit else "adamw_torch",
        activation_checkpointing=args.gradient_checkpointing, activation_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, data_collator=collate)
    eval_loss_before = trainer.evaluate()["eval_loss"]
    print(f"held-out loss before training: {eval_loss_before:.4f}")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = trainer.state.log_history
    for log in logs:
        if "eval_loss" in log:
            print(f"step {log['step']}: held-out loss {log['eval_loss']:.4f}")
    train_losses = [log["loss"] for log in logs if "loss" in log]
    eval_losses = [log["eval_loss"] for log in logs if "eval_loss" in log]

    if args.gradient_checkpointing:
        model.activation_checkpointing_disable()
    model.eval()
    predictions_after = answer_all(model, processor, eval_set, max_new_tokens=args.max_new_tokens)
    exact_match_after = exact_match(predictions_after, answers)
    files = save_adapter_atomically(model, output_dir)
    metrics = {
        "model": args.model_name, "train_examples": len(train_set), "eval_examples": len(eval_set),
        "steps": trainer.state.global_step, "train_loss_first": train_losses[0], "train_loss_last": train_losses[-1],
        "eval_loss_before": eval_loss_before, "eval_loss_after": eval_losses[-1],
        "exact_match_before": exact_match_before, "exact_match_after": exact_match_after,
        "exact_match_gain": exact_match_after - exact_match_before, "blind_exact_match": blind_exact_match,
        "exact_match_gain_over_blind": exact_match_after - blind_exact_match, "seconds": round(seconds, 2),
        "peak_vram_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if on_gpu else None,
        "adapter_files": files, "predictions_after": predictions_after[:20],
    }
    write_json_atomically(output_dir / "metrics.json", metrics)
    print(f"adapter saved to {output_dir} ({', '.join(files)}); exact match {exact_match_before:.3f} -> "
          f"{exact_match_after:.3f}; held-out loss {eval_loss_before:.4f} -> {eval_losses[-1]:.4f}; {seconds:.1f} s")
    return metrics


if __name__ == "__main__":
    main()
