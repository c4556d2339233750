#!/usr/bin/env python
"""Chat with a model loaded in 4-bit NF4, streaming the reply: lesson 05 of the course as one standalone script.

Needs only pip packages: torch, transformers, bitsandbytes (peft for --adapter).

    python chat_4bit.py --model_name meta-llama/Llama-3.1-8B-Instruct --prompt "Why does a 4-bit 8B model fit 12 GB?"
    python chat_4bit.py --model_name meta-llama/Llama-3.1-8B-Instruct --adapter runs/qlora/adapter   # lesson 06's result
    python chat_4bit.py --model_name Qwen/Qwen2.5-7B-Instruct                                      # no --prompt: a chat loop

The conversation is formatted with the tokenizer's own chat template (never by hand), the reply is streamed token by
token from a background generate() thread, and with --output_dir the last reply and its timings are written to
``<output_dir>/metrics.json`` (prompt tokens, new tokens, time to first text, decode tokens/s, peak VRAM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Examples:\n" + __doc__.split("\n\n")[2])
    p.add_argument("--model_name", required=True, help="hub id or local folder of a chat model")
    p.add_argument("--revision", default=None, help="hub commit to pin the model to")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder to put on the base (e.g. from train_qlora.py)")
    p.add_argument("--quantization", choices=("4bit", "8bit", "16bit"), default="4bit",
                   help="weight format: 4bit NF4 (default; an 8B model in ~5.5 GiB), 8bit, or 16bit (~16 GiB for 8B)")
    p.add_argument("--prompt", default=None, help="one user message; without it, an interactive chat (empty line quits)")
    p.add_argument("--system", default="You are a concise, helpful assistant.", help="the system message")
    p.add_argument("--max_new_tokens", type=int, default=256, help="length limit of a reply (default 256)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (reproducible)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6, Llama 3.1's)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.add_argument("--use_cpu", action="store_true", help="run on the CPU even if a GPU is there (default: the GPU if any)")
    p.add_argument("--output_dir", default=None, help="write <output_dir>/metrics.json about the last reply")
    return p.parse_args(argv)


def quantization_config(quantization: str, compute_dtype: Any) -> Any:
    """4-bit NF4 with double quantisation and ``compute_dtype`` matmuls; LLM.int8 for 8bit; nothing for 16bit."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    if device == "cuda":
        dtype = compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:  # weights stored in bf16 as on a GPU; 4-bit matmuls in fp32, because CPU bf16 matmuls are slow
        dtype, compute = torch.bfloat16, torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model_name, revision=args.revision)
    if tokenizer.pad_token is None:  # Llama 3 ships none
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        args.model_name, revision=args.revision, dtype=dtype, quantization_config=quantization_config(args.quantization, compute),
        device_map={"": 0} if device == "cuda" else device)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    return model, tokenizer, device


def stream_reply(model: Any, tokenizer: Any, messages: list[dict], args: argparse.Namespace, out=sys.stdout) -> dict:
    """Generate the assistant's next turn in a background thread and print it as it arrives."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    sampling = (dict(do_sample=False, temperature=None, top_p=None) if args.greedy
                else dict(do_sample=True, temperature=args.temperature, top_p=args.top_p))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}
    torch.manual_seed(args.seed)
    worker = threading.Thread(target=lambda: result.update(ids=model.generate(
        **inputs, streamer=streamer, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id, **sampling)))
    start = time.perf_counter()
    worker.start()
    chunks, first = [], None
    for chunk in streamer:
        first = first if first is not None else time.perf_counter() - start
        chunks.append(chunk)
        print(chunk, end="", flush=True, file=out)
    worker.join()
    seconds = time.perf_counter() - start
    print(file=out)
    prompt_tokens = inputs["input_ids"].shape[1]
    new_tokens = result["ids"].shape[1] - prompt_tokens
    return {"reply": "".join(chunks), "prompt_tokens": int(prompt_tokens), "new_tokens": int(new_tokens),
            "first_text_s": round(first or seconds, 4), "seconds": round(seconds, 4),
            "decode_tokens_per_s": round((new_tokens - 1) / max(seconds - (first or 0.0), 1e-9), 2) if new_tokens > 1 else None,
            "generated_text": tokenizer.decode(result["ids"][0, prompt_tokens:], skip_special_tokens=True)}


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    model, tokenizer, device = load(args)
    print(f"{args.model_name} ({args.quantization}{', adapter ' + args.adapter if args.adapter else ''}) on {device}: "
          f"{model.get_memory_footprint() / 2**30:.2f} GiB of weights", file=sys.stderr)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    stats: dict = {}
    while True:
        text = args.prompt if args.prompt is not None else input("\nyou> ").strip()
        if not text:
            break
        messages.append({"role": "user", "content": text})
        stats = stream_reply(model, tokenizer, messages, args)
        messages.append({"role": "assistant", "content": stats["reply"]})
        if args.prompt is not None:
            break
    if args.output_dir and stats:
        stats.update(model_name=args.model_name, quantization=args.quantization, adapter=args.adapter, device=device,
                     weights_gb=round(model.get_memory_footprint() / 2**30, 4),
                     peak_vram_gb=round(torch.cuda.max_memory_reserved() / 2**30, 3) if device == "cuda" else None)
        write_json_atomic(Path(args.output_dir) / "metrics.json", stats)
    return stats


if __name__ == "__main__":
    main()
