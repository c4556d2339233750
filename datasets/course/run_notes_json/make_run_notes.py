"""Generate the run-notes extraction data set of lesson 06 (deterministic: same files every time).

Each example is a chat in the course's JSONL format: a system prompt, a free-text note a learner might write about
a fine-tuning run, and the answer — one line of JSON with fixed keys, ``null`` for what the note does not say:

    {"model": "Qwen2.5-7B", "method": "qlora", "gpu": "RTX 4070 Ti", "micro_batch": 2, "grad_accum": 8,
     "seq_len": 2048, "peak_vram_gb": 7.4}

The answer format is strict on purpose: exact match and per-field accuracy are easy to score, and a base model
that "mostly" gets it right scores visibly lower than one fine-tuned on the format.

The dev split is worded in ways training never shows: every phrasing a note is built from (the lead, the clause
templates, the method and sequence-length words, the asides) has held-out variants that only dev notes use (e.g.
"2k context" and "{w} on {m}" are dev's alone). A model that memorised the training notes' wording gains nothing on
dev; one that learned to read a note does.

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

def held_out(options: list[str], n: int = 1) -> dict[str, list[str]]:
    """Split the variants of one phrasing: the last ``n`` are the dev split's alone."""
    return {"train": options[:-n], "dev": options[-n:]}


METHOD_WORDS = {
    "qlora": held_out(["QLoRA", "4-bit QLoRA", "a QLoRA run", "QLoRA (nf4 base)"]),
    "lora": held_out(["LoRA", "plain LoRA on a bf16 base", "LoRA adapters", "16-bit LoRA"]),
    "full": held_out(["a full fine-tune", "full fine-tuning", "a full finetune", "all weights trained"]),
}
SEQ_WORDS = {n: held_out([f"{n} tokens", f"seq len {n}", f"max length {n}", f"{k} context"])
             for n, k in ((512, "0.5k"), (1024, "1k"), (2048, "2k"), (4096, "4k"))}
MODEL_CLAUSES = held_out(["fine-tuned {m} with {w}", "{m}, {w}", "trained {m} using {w}", "{w} on {m}"])
BATCH_CLAUSES = held_out(["batch {b}", "micro-batch of {b}", "per-device batch {b}", "{b} {seqs} per step"])
GPU_CLAUSES = held_out(["on an {g}", "on my {g}", "using the {g}", "GPU: {g}"])
ACCUM_CLAUSES = held_out(["accumulating {a} steps", "{a} accumulation steps", "grad accum {a}",
                          "gradient accumulation x{a}"])
VRAM_CLAUSES = held_out(["peaked at {v} GiB", "{v} GiB peak VRAM", "max memory {v} GiB",
                         "nvidia-smi showed {v} GiB at the peak"])
LEADS = held_out(["", "", "Run log: ", "Notes: ", "Today: ", "Quick note - ", "Experiment: ", "Yesterday's run: "], 2)
DISTRACTORS = held_out(["took about {h} hours", "loss ended at {l}", "learning rate 2e-4", "{e} epochs", "seed {s}",
                        "eval every 50 steps", "warmup 3%", "saved a checkpoint every {c} steps", "ran overnight"], 2)


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


def _note(rec: dict, rng: random.Random, split: str) -> str:
    """The note for ``rec``, worded with ``split``'s phrasings only ("train" or "dev")."""
    gpu = rec["gpu"]
    clauses = [
        rng.choice(MODEL_CLAUSES[split]).format(m=rec["model"], w=rng.choice(METHOD_WORDS[rec["method"]][split])),
        rng.choice(BATCH_CLAUSES[split]).format(
            b=rec["micro_batch"], seqs="sequence" if rec["micro_batch"] == 1 else "sequences"),
    ]
    if gpu:
        clauses.append(rng.choice(GPU_CLAUSES[split]).format(g=gpu))
    if rec["grad_accum"] is not None:
        clauses.append(rng.choice(ACCUM_CLAUSES[split]).format(a=rec["grad_accum"]))
    if rec["seq_len"] is not None:
        clauses.append(rng.choice(SEQ_WORDS[rec["seq_len"]][split]))
    if rec["peak_vram_gb"] is not None:
        clauses.append(rng.choice(VRAM_CLAUSES[split]).format(v=rec["peak_vram_gb"]))
    first, rest = clauses[0], clauses[1:]
    rng.shuffle(rest)
    for _ in range(rng.choice([0, 1, 1, 2])):
        rest.insert(rng.randrange(len(rest) + 1), rng.choice(DISTRACTORS[split]).format(
            h=rng.randint(1, 9), l=round(rng.uniform(0.4, 1.9), 2), e=rng.randint(1, 3), s=rng.randint(0, 99),
            c=rng.choice([100, 200, 500])))
    sep = rng.choice([", ", "; ", ". "])
    parts = [first] + rest
    if sep == ". ":  # separate sentences start with a capital
        parts = [p[0].upper() + p[1:] for p in parts]
    text = rng.choice(LEADS[split]) + sep.join(parts)
    return text[0].upper() + text[1:] + "."


def answer(rec: dict) -> str:
    """The one canonical answer line (keys in order, compact spacing)."""
    return json.dumps({k: rec[k] for k in KEYS})


def example(rec: dict, rng: random.Random, split: str = "train") -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": _note(rec, rng, split)},
                         {"role": "assistant", "content": answer(rec)}]}


def generate(n_train: int = 300, n_dev: int = 60, seed: int = 2026) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {"train": [], "dev": []}
    for split, size in (("train", n_train), ("dev", n_dev)):
        while len(splits[split]) < size:
            ex = example(_record(rng), rng, split)
            note = ex["messages"][1]["content"]
            if note not in seen:  # no note appears twice
                seen.add(note)
                splits[split].append(ex)
    return splits["train"], splits["dev"]


def main() -> None:
    train, dev = generate()
    for name, rows in (("train", train), ("dev", dev)):
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}.jsonl: {len(rows)} examples")


if __name__ == "__main__":
    main()
