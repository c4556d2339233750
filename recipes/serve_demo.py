"""Serve one chat model as a local web app: a Gradio chat UI on FastAPI, streaming, behind a login (lesson 12).

A standalone script (pip packages only: torch, transformers, peft, bitsandbytes, gradio, fastapi, uvicorn, httpx)::

    python recipes/serve_demo.py --model meta-llama/Llama-3.1-8B-Instruct --adapter runs/qlora/adapter
    python recipes/serve_demo.py --model ./my-merged-model --port 7860
    python recipes/serve_demo.py --model ./tiny --selftest --output-dir out   # start, check, write out/metrics.json

* binds 127.0.0.1 (this machine only: use an SSH tunnel to share it, not 0.0.0.0);
* the password is printed at start, or read from SERVE_DEMO_PASSWORD; never a command-line flag (`ps` shows those);
* the UI at / and Gradio's API need the login; ``POST /api/chat`` streams one JSON line per piece of the reply and
  wants ``Authorization: Bearer <password>``;
* one lock: requests are answered one at a time, so concurrent users never add their activations up on the card;
* no outside calls: Gradio's analytics off, no share link, system fonts, FastAPI's CDN docs page off.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

MAX_PROMPT_CHARS = 2000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local folder of a causal LM (merged, or the base)")
    parser.add_argument("--revision", default=None, help="hub commit to pin (recommended for hub ids)")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA/QLoRA) adapter folder to put on the model")
    parser.add_argument("--load-in-4bit", choices=["auto", "yes", "no"], default="auto",
                        help="NF4 weights with bitsandbytes (auto: on a GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--selftest", action="store_true",
                        help="start on a free port, check the login and one streamed reply, write metrics.json, exit")
    parser.add_argument("--output-dir", default="serve_demo_out", help="where --selftest writes metrics.json")
    return parser.parse_args(argv)


def load(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    four_bit = args.load_in_4bit == "yes" or (args.load_in_4bit == "auto" and cuda)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype) if four_bit else None
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
    model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, dtype=dtype,
                                                 quantization_config=quant, device_map={"": 0} if cuda else "cpu")
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


class Chat:
    """One model, one lock; ``stream(messages)`` yields the reply's pieces as they are decoded."""

    def __init__(self, model, tokenizer, max_new_tokens: int):
        from transformers import TextStreamer

        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.lock = threading.Lock()
        self.streamer_class = TextStreamer

    def stream(self, messages):
        pieces: queue.Queue = queue.Queue()
        outer = self

        class QueueStreamer(self.streamer_class):
            def on_finalized_text(self, text, stream_end=False):
                if text:
                    pieces.put(("text", text))

        def work():
            try:
                with outer.lock:  # one request at a time on the card
                    inputs = outer.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                 return_tensors="pt", return_dict=True)
                    outer.model.generate(**inputs.to(outer.model.device), max_new_tokens=outer.max_new_tokens,
                                         pad_token_id=outer.tokenizer.pad_token_id,
                                         streamer=QueueStreamer(outer.tokenizer, skip_prompt=True,
                                                                skip_special_tokens=True))
                pieces.put(("end", None))
            except BaseException as err:
                pieces.put(("error", err))

        threading.Thread(target=work, daemon=True).start()
        while True:
            kind, value = pieces.get()
            if kind == "text":
                yield value
            elif kind == "error":
                raise value
            else:
                return


def check_message(message) -> str:
    message = "" if message is None else str(message)
    if not message.strip():
        raise ValueError("The message is empty: type something first.")
    if len(message) > MAX_PROMPT_CHARS:
        raise ValueError(f"The message has {len(message):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    return message


def build_app(chat: Chat, password: str, user: str = "learner"):
    import gradio as gr

    def require_token(request: Request) -> None:
        if not secrets.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {password}".encode()):
            raise HTTPException(status_code=401, detail="send 'Authorization: Bearer <password>'")

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/chat", dependencies=[Depends(require_token)])
    async def api_chat(request: Request):
        try:
            body = await request.json()
            message = check_message(body.get("message") if isinstance(body, dict) else None)
        except (ValueError, UnicodeDecodeError) as err:
            return JSONResponse({"error": str(err) if str(err) else "the body must be JSON"}, status_code=400)

        def lines():
            pieces = []
            try:
                for piece in chat.stream([{"role": "user", "content": message}]):
                    pieces.append(piece)
                    yield (json.dumps({"delta": piece}) + "\n").encode()
                yield (json.dumps({"answer": "".join(pieces)}) + "\n").encode()
            except Exception as err:
                yield (json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def respond(message, history):
        try:
            message = check_message(message)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        turns = [{"role": t["role"], "content": t["content"]} for t in history
                 if isinstance(t, dict) and isinstance(t.get("content"), str)]
        reply = ""
        for piece in chat.stream(turns + [{"role": "user", "content": message}]):
            reply += piece
            yield reply

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="Chat", analytics_enabled=False) as blocks:
        gr.ChatInterface(respond, api_name="chat")
    return gr.mount_gradio_app(app, blocks, path="/", auth=(user, password), ssr_mode=False, theme=theme,
                               footer_links=["api"], mcp_server=False)


def selftest(app, password: str, output_dir: Path) -> dict:
    """Serve on a free port in a thread, check the login and one streamed reply, write metrics.json atomically."""
    import httpx
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    refused = httpx.post(f"{url}/api/chat", json={"message": "hi"}, timeout=30).status_code
    start, first, deltas, answer = time.perf_counter(), None, [], None
    with httpx.stream("POST", f"{url}/api/chat", json={"message": "What is LoRA?"},
                      headers={"Authorization": f"Bearer {password}"}, timeout=300) as response:
        for line in response.iter_lines():
            event = json.loads(line)
            if "delta" in event:
                first = first or time.perf_counter() - start
                deltas.append(event["delta"])
            elif "answer" in event:
                answer = event["answer"]
            else:
                raise RuntimeError(event.get("error"))
    total = time.perf_counter() - start
    too_long = httpx.post(f"{url}/api/chat", json={"message": "x" * (MAX_PROMPT_CHARS + 1)},
                          headers={"Authorization": f"Bearer {password}"}, timeout=30).status_code
    server.should_exit = True
    metrics = {"refused_status": refused, "too_long_status": too_long, "pieces": len(deltas),
               "stream_matches_answer": "".join(deltas) == answer, "first_piece_s": round(first or total, 4),
               "total_s": round(total, 4)}
    output_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(metrics, handle, indent=2)
    os.replace(tmp, output_dir / "metrics.json")
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    model, tokenizer = load(args)
    chat = Chat(model, tokenizer, args.max_new_tokens)
    password = os.environ.get("SERVE_DEMO_PASSWORD") or secrets.token_urlsafe(18)
    app = build_app(chat, password)
    if args.selftest:
        print(json.dumps(selftest(app, password, Path(args.output_dir))))
        return 0
    import uvicorn

    print(f"Chat with {args.model}{' + ' + args.adapter if args.adapter else ''} on http://{args.host}:{args.port}/")
    print(f"  log in as: learner   password: {password}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
