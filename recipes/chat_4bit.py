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
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: the longest wait for the next piece of the reply before the chat gives up on a generate() that stalled (seconds)
STREAM_TIMEOUT_S = 120.0


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
    p.add_argument("--max_history_tokens", type=int, default=2048,
                   help="the oldest turns of a long chat are dropped to keep its prompt under this many tokens (default "
                        "2048: the KV cache grows with the history, and an 8 GB card holds ~2k tokens next to 4-bit 8B)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (reproducible)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6, Llama 3.1's)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.add_argument("--use_cpu", action="store_true", help="run on the CPU even if a GPU is there (default: the GPU if any)")
    p.add_argument("--output_dir", default=None, help="write <output_dir>/metrics.json about the last reply")
    return p.parse_args(argv)


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
        dtype = compute = torch.bfloat16 if bf16_native() else torch.float16
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


class ChatError(RuntimeError):
    """A reply that could not be generated, said in one sentence."""


def prompt_tokens(tokenizer: Any, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def bounded_messages(messages: list[dict], tokenizer: Any, max_tokens: int) -> list[dict]:
    """The system message and the newest turns whose chat-template prompt fits ``max_tokens``: the oldest turns go
    first, a user turn with the answer that followed it. The newest user message is always kept."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while len(turns) > 1 and prompt_tokens(tokenizer, system + turns) > max_tokens:
        turns = turns[2:] if len(turns) > 2 else turns[-1:]
    if prompt_tokens(tokenizer, system + turns) > max_tokens:
        raise ChatError(f"The message alone is {prompt_tokens(tokenizer, system + turns)} tokens, over "
                        f"--max_history_tokens {max_tokens}: shorten it or raise the limit.")
    return system + turns


def stream_reply(model: Any, tokenizer: Any, messages: list[dict], args: argparse.Namespace, out=sys.stdout,
                 timeout_s: float = STREAM_TIMEOUT_S) -> dict:
    """Generate the assistant's next turn in a background thread and print it as it arrives.

    An error in the thread (e.g. the GPU running out of memory) ends the stream at once and is raised here as a
    :class:`ChatError` sentence; so is a thread that sends nothing for ``timeout_s`` seconds."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    sampling = (dict(do_sample=False, temperature=None, top_p=None) if args.greedy
                else dict(do_sample=True, temperature=args.temperature, top_p=args.top_p))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s)
    result: dict = {}
    torch.manual_seed(args.seed)

    def generate() -> None:
        try:
            result["ids"] = model.generate(
                **inputs, streamer=streamer, max_new_tokens=args.max_new_tokens,
                repetition_penalty=args.repetition_penalty, pad_token_id=tokenizer.pad_token_id, **sampling)
        except BaseException as err:  # noqa: BLE001 - the caller says what happened
            result["error"] = err
            streamer.end()  # wake the reader now, not after the timeout

    worker = threading.Thread(target=generate, daemon=True)
    start = time.perf_counter()
    worker.start()
    chunks, first = [], None
    try:
        for chunk in streamer:
            first = first if first is not None else time.perf_counter() - start
            chunks.append(chunk)
            print(chunk, end="", flush=True, file=out)
    except queue.Empty:
        raise ChatError(f"generate() sent nothing for {timeout_s:g} s and was left running: restart the chat, with a "
                        "shorter history or --max_new_tokens.") from None
    worker.join()
    seconds = time.perf_counter() - start
    print(file=out)
    error = result.get("error")
    if isinstance(error, torch.OutOfMemoryError):
        raise ChatError(f"The GPU ran out of memory answering a {inputs['input_ids'].shape[1]}-token prompt: lower "
                        "--max_history_tokens or --max_new_tokens, or start a new chat.") from None
    if error is not None:
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise ChatError(f"Generation failed ({type(error).__name__}: {first_line}).") from None
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
        try:
            asked = bounded_messages(messages + [{"role": "user", "content": text}], tokenizer, args.max_history_tokens)
            stats = stream_reply(model, tokenizer, asked, args)
        except ChatError as err:
            if args.prompt is not None:
                raise SystemExit(str(err)) from None
            print(err, file=sys.stderr)  # the unanswered message is dropped; the chat goes on
            continue
        messages = asked + [{"role": "assistant", "content": stats["reply"]}]
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
