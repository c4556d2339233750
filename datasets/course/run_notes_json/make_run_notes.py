"""Generate the run-notes extraction data set of lesson 06 (deterministic: same files every time).

Each example is a chat in the course's JSONL format: a system prompt, a free-text note a learner might write about
a fine-tuning run, and the answer — one line of JSON with fixed keys, ``null`` for what the note does not say:

    {"model": "Qwen2.5-7B", "method": "qlora", "gpu": "RTX 4070 Ti", "micro_batch": 2, "grad_accum": 8,
     "seq_len": 2048, "peak_vram_gb": 7.4}

The answer format is strict on purpose: exact match and per-field accuracy are easy to score, and a base model
that "mostly" gets it right scores visibly lower than one fine-tuned on the format.

    python datasets/course/run_notes_json/make_run_notes.py     # writes train.jsonl (300) and dev.jsonl (60)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("model", "method", "gpu", "micro_batch", "grad_accum", "seq_len", "peak_vram_gb")
SYSTEM = (
    "You extract fine-tuning run records. Reply with one line of JSON with exactly these keys in this order: "
    + ", ".join(KEYS) + ". method is one of qlora, lora, full. Numbers are numbers, peak_vram_gb in GiB with one "
    "decimal, and null for anything the note does not say."
)

MODELS = ["Llama-3.1-8B", "Qwen2.5-7B", "Mistral-7B", "Gemma-2-9B", "Phi-3-mini", "TinyLlama-1.1B",
          "SmolLM2-1.7B", "Llama-3.2-3B", "Qwen2.5-1.5B", "Llama-3.2-1B"]
GPUS = ["RTX 4070 Ti", "RTX 3060", "RTX 4090", "RTX 3090", "A100", "T4", "RTX 4060 Ti", "L4", "RTX 3080"]
METHOD_WORDS = {
    "qlora": ["QLoRA", "4-bit QLoRA", "QLoRA (nf4 base)", "a QLoRA run"],
    "lora": ["LoRA", "plain LoRA on a bf16 base", "LoRA adapters", "16-bit LoRA"],
    "full": ["a full fine-tune", "full fine-tuning", "all weights trained", "a full finetune"],
}
SEQ_WORDS = {512: ["512 tokens", "seq len 512", "max length 512", "0.5k context"],
             1024: ["1024 tokens", "seq len 1024", "max length 1024", "1k context"],
             2048: ["2048 tokens", "seq len 2048", "max length 2048", "2k context"],
             4096: ["4096 tokens", "seq len 4096", "max length 4096", "4k context"]}
LEADS = ["", "", "Run log: ", "Notes: ", "Today: ", "Quick note - ", "Experiment: ", "Yesterday's run: "]
DISTRACTORS = ["took about {h} hours", "loss ended at {l}", "learning rate 2e-4", "{e} epochs", "seed {s}",
               "eval every 50 steps", "saved a checkpoint every {c} steps", "ran overnight", "warmup 3%"]


def _record(rng: random.Random) -> dict:
    method = rng.choice(["qlora", "qlora", "lora", "full"])
    rec = {
        "model": rng.choice(MODELS),
        "method": method,
        "gpu": rng.choice(GPUS),
        "micro_batch": rng.choice([1, 1, 2, 2, 4, 8]),
        "grad_accum": rng.choice([1, 2, 4, 8, 8, 16, 32]),
        "seq_len": rng.choice([512, 1024, 2048, 2048, 4096]),
        "peak_vram_gb": round(rng.uniform(2.0, 23.9), 1),
    }
    for key in ("gpu", "grad_accum", "seq_len", "peak_vram_gb"):
        if rng.random() < 0.2:
            rec[key] = None
    return rec


def _note(rec: dict, rng: random.Random) -> str:
    gpu = rec["gpu"]
    clauses = [
        rng.choice(["fine-tuned {m} with {w}", "{m}, {w}", "trained {m} using {w}", "{w} on {m}"]).format(
            m=rec["model"], w=rng.choice(METHOD_WORDS[rec["method"]])),
        rng.choice(["batch {b}", "micro-batch of {b}", "{b} {seqs} per step", "per-device batch {b}"]).format(
            b=rec["micro_batch"], seqs="sequence" if rec["micro_batch"] == 1 else "sequences"),
    ]
    if gpu:
        clauses.append(rng.choice(["on an {g}", "on my {g}", "GPU: {g}", "using the {g}"]).format(g=gpu))
    if rec["grad_accum"] is not None:
        clauses.append(rng.choice(["accumulating {a} steps", "{a} accumulation steps", "grad accum {a}",
                                   "gradient accumulation x{a}"]).format(a=rec["grad_accum"]))
    if rec["seq_len"] is not None:
        clauses.append(rng.choice(SEQ_WORDS[rec["seq_len"]]))
    if rec["peak_vram_gb"] is not None:
        clauses.append(rng.choice(["peaked at {v} GiB", "{v} GiB peak VRAM", "max memory {v} GiB",
                                   "nvidia-smi showed {v} GiB at the peak"]).format(v=rec["peak_vram_gb"]))
    first, rest = clauses[0], clauses[1:]
    rng.shuffle(rest)
    for _ in range(rng.choice([0, 1, 1, 2])):
        rest.insert(rng.randrange(len(rest) + 1), rng.choice(DISTRACTORS).format(
            h=rng.randint(1, 9), l=round(rng.uniform(0.4, 1.9), 2), e=rng.randint(1, 3), s=rng.randint(0, 99),
            c=rng.choice([100, 200, 500])))
    sep = rng.choice([", ", "; ", ". "])
    parts = [first] + rest
    if sep == ". ":  # separate sentences start with a capital
        parts = [p[0].upper() + p[1:] for p in parts]
    text = rng.choice(LEADS) + sep.join(parts)
    return text[0].upper() + text[1:] + "."


def answer(rec: dict) -> str:
    """The one canonical answer line (keys in order, compact spacing)."""
    return json.dumps({k: rec[k] for k in KEYS})


def example(rec: dict, rng: random.Random) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": _note(rec, rng)},
                         {"role": "assistant", "content": answer(rec)}]}


def generate(n_train: int = 300, n_dev: int = 60, seed: int = 2026) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_dev:
        ex = example(_record(rng), rng)
        note = ex["messages"][1]["content"]
        if note not in seen:  # no note appears twice, so dev never leaks into train
            seen.add(note)
            rows.append(ex)
    return rows[:n_train], rows[n_train:]


def main() -> None:
    train, dev = generate()
    for name, rows in (("train", train), ("dev", dev)):
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}.jsonl: {len(rows)} examples")


if __name__ == "__main__":
    main()
