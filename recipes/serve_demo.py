"""Serve one chat model as a local web app: a Gradio chat UI on FastAPI, streaming, behind a login (lesson 12).

A standalone script (pip packages only: torch, transformers, peft, bitsandbytes, gradio, fastapi, uvicorn, httpx)::

    python recipes/serve_demo.py --model meta-llama/Llama-3.1-8B-Instruct --adapter runs/qlora/adapter
    python recipes/serve_demo.py --model ./my-merged-model --port 7860
    python recipes/serve_demo.py --model ./tiny --selftest --output-dir out   # start, check, write out/metrics.json

* binds 127.0.0.1 (this machine only: use an SSH tunnel to share it); another --host is refused over plain HTTP
  unless --allow-remote says you mean it;
* the password is made up and printed at start, or read from SERVE_DEMO_PASSWORD (12 characters or more; then it is
  never printed); never a command-line flag (`ps` shows those);
* every route needs the login (a gate in front of the whole app lets only the login page and its static files
  through): the UI at / and Gradio's API take the login form's cookie; ``POST /api/chat`` streams one JSON line per
  piece of the reply and wants ``Authorization: Bearer <password>``; 10 failed logins from one address within 60 s
  get 429 until the minute has passed; Gradio's run history (which acts with the Hugging Face token saved on the
  machine) and both apps' OpenAPI pages are off;
* bounded input: uploads and request bodies up to 10 MB, a message up to 2,000 characters, the last 20 turns of a
  chat (8,000 characters at most), roles user and assistant only (the system prompt is --system, the server's);
* one lock: requests are answered one at a time, so concurrent users never add their activations up on the card;
* no outside calls: Gradio's analytics off, no share link, system fonts, FastAPI's CDN docs page off.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

MAX_PROMPT_CHARS = 2000
MAX_UPLOAD_MB = 10                      # the course app's limit (course_utils.demo)
MAX_HISTORY_TURNS = 20
MAX_HISTORY_CHARS = 4 * MAX_PROMPT_CHARS
MIN_PASSWORD_CHARS = 12
MAX_FAILED_LOGINS, FAILED_LOGIN_WINDOW_S = 10, 60.0
# what answers before the login: the login page, its form, the frontend's own files; everything else needs the login
# Copied from course_utils/demo/app.py:OPEN_BEFORE_LOGIN
OPEN_BEFORE_LOGIN = re.compile(r"(GET|HEAD) /|POST /login/?|GET /theme\.css|GET /(assets|static)/.+")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local folder of a causal LM (merged, or the base)")
    parser.add_argument("--revision", default=None, help="hub commit to pin (recommended for hub ids)")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA/QLoRA) adapter folder to put on the model")
    parser.add_argument("--load-in-4bit", choices=["auto", "yes", "no"], default="auto",
                        help="NF4 weights with bitsandbytes (auto: on a GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply")
    parser.add_argument("--system", default=None, help="a system prompt put before every conversation (clients "
                        "cannot send one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="serve on a --host other machines can reach, over plain HTTP (prefer an SSH tunnel)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--selftest", action="store_true",
                        help="start on a free port, check the login and one streamed reply, write metrics.json, exit")
    parser.add_argument("--output-dir", default="serve_demo_out", help="where --selftest writes metrics.json")
    return parser.parse_args(argv)


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


def load(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    four_bit = args.load_in_4bit == "yes" or (args.load_in_4bit == "auto" and cuda)
    dtype = (torch.bfloat16 if bf16_native() else torch.float16) if cuda else torch.float32
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


# Copied from course_utils/demo/tabs.py:bounded_history
def bounded_history(history: Any) -> list[dict[str, str]]:
    """The turns of a chat history the model may see: user and assistant text only (a client cannot send a system
    prompt), the last :data:`MAX_HISTORY_TURNS`, then the oldest dropped past :data:`MAX_HISTORY_CHARS` characters."""
    turns = [{"role": t["role"], "content": t["content"]} for t in (history if isinstance(history, list) else [])
             if isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)]
    turns = turns[-MAX_HISTORY_TURNS:]
    total = sum(len(t["content"]) for t in turns)
    while turns and total > MAX_HISTORY_CHARS:
        total -= len(turns.pop(0)["content"])
    return turns


# Copied from course_utils/demo/app.py:text_turns
def text_turns(history: Any) -> list[dict[str, Any]]:
    """A Gradio chat history as chat-template turns. Gradio 6 hands each message's content over as a list of parts
    (``[{"type": "text", "text": ...}]``, files): the text parts are joined; a turn with no text is left out."""
    turns = []
    for turn in history if isinstance(history, list) else []:
        if not isinstance(turn, dict):
            continue
        content = turn.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text") or "" for part in content
                              if isinstance(part, dict) and part.get("type") == "text")
        if isinstance(content, str) and content:
            turns.append({"role": turn.get("role"), "content": content})
    return turns


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"The password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS} (or unset "
                         "SERVE_DEMO_PASSWORD and one is made up).")
    return password


# Copied from course_utils/demo/__main__.py:is_loopback
def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


# Copied from course_utils/demo/app.py:FailedLogins
class FailedLogins:
    """Failed logins per client address in a sliding window: :meth:`wait_s` says how long a client must wait."""

    def __init__(self, limit: int = MAX_FAILED_LOGINS, window_s: float = FAILED_LOGIN_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self._times: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._times.setdefault(client, deque())
        while times and time.monotonic() - times[0] > self.window_s:
            times.popleft()
        return times

    def fail(self, client: str) -> None:
        if len(self._times) > 10_000:  # many addresses: forget those with nothing recent
            self._times = {c: t for c, t in self._times.items() if self._recent(c)}
        self._recent(client).append(time.monotonic())

    def wait_s(self, client: str) -> float:
        times = self._recent(client)
        return self.window_s - (time.monotonic() - times[0]) if len(times) >= self.limit else 0.0


# Adapted from course_utils/demo/app.py (LoginGate): the same gate, with the recipe's own messages
class LoginGate:
    """ASGI middleware in front of the whole app: Gradio's session cookie, the Bearer password, or a path in
    OPEN_BEFORE_LOGIN; else 401. Too many failed logins (login form or Bearer): 429."""

    def __init__(self, app, password, gradio_app, failures=None):
        self.app, self.password, self.gradio_app = app, password, gradio_app
        self.failures = failures or FailedLogins()

    async def __call__(self, scope, receive, send):
        from starlette.requests import HTTPConnection

        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        client = conn.client.host if conn.client else "unknown"
        request = f"{scope.get('method', 'WEBSOCKET')} {scope['path']}"
        bearer = conn.headers.get("authorization")
        logging_in = re.fullmatch(r"POST /login/?", request) is not None
        if (bearer is not None or logging_in) and self.failures.wait_s(client) > 0:
            wait = self.failures.wait_s(client)
            return await self.refuse(scope, receive, send, 429, f"Too many failed logins from {client}: try again in "
                                     f"{wait:.0f} s.", {"Retry-After": str(int(wait) + 1)})
        if bearer is not None:
            if secrets.compare_digest(bearer.encode(), f"Bearer {self.password}".encode()):
                return await self.app(scope, receive, send)
            self.failures.fail(client)
            return await self.refuse(scope, receive, send, 401, "Wrong password: send 'Authorization: Bearer "
                                     "<password>'.")
        cookies = (f"access-token-unsecure-{self.gradio_app.cookie_id}", f"access-token-{self.gradio_app.cookie_id}")
        if any(conn.cookies.get(name) in self.gradio_app.tokens for name in cookies):
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and OPEN_BEFORE_LOGIN.fullmatch(request):
            if not logging_in:
                return await self.app(scope, receive, send)

            async def count_failures(message):  # Gradio answers a wrong password with 400
                if message["type"] == "http.response.start" and message["status"] in (400, 401):
                    self.failures.fail(client)
                await send(message)

            return await self.app(scope, receive, count_failures)
        return await self.refuse(scope, receive, send, 401, "Log in first (the page at /), or send 'Authorization: "
                                 "Bearer <password>'.")

    @staticmethod
    async def refuse(scope, receive, send, status, message, headers=None):
        from starlette.responses import JSONResponse
        from starlette.websockets import WebSocketClose

        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008, reason=message[:120])(scope, receive, send)
        return await JSONResponse({"detail": message}, status_code=status, headers=headers)(scope, receive, send)


def build_app(chat: Chat, password: str, user: str = "learner", system: str | None = None):
    import gradio as gr

    check_password(password)
    system_turn = [{"role": "system", "content": system}] if system else []

    def require_token(request: Request) -> None:
        if not secrets.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {password}".encode()):
            raise HTTPException(status_code=401, detail="send 'Authorization: Bearer <password>'")

    no_docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(max_body_size=(MAX_UPLOAD_MB + 2) * 2**20, **no_docs)

    @app.post("/api/chat", dependencies=[Depends(require_token)])
    async def api_chat(request: Request):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("The body must be a JSON object: {\"message\": \"...\", \"history\": [...]}.")
            message = check_message(body.get("message"))
        except (ValueError, UnicodeDecodeError) as err:
            return JSONResponse({"error": str(err) if str(err) else "the body must be JSON"}, status_code=400)
        messages = system_turn + bounded_history(body.get("history")) + [{"role": "user", "content": message}]

        def lines():
            pieces = []
            try:
                for piece in chat.stream(messages):
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
        reply = ""
        for piece in chat.stream(system_turn + bounded_history(text_turns(history))
                                 + [{"role": "user", "content": message}]):
            reply += piece
            yield reply

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="Chat", analytics_enabled=False) as blocks:
        gr.ChatInterface(respond, api_name="chat")
    gr.mount_gradio_app(app, blocks, path="/", auth=(user, password), ssr_mode=False, theme=theme,
                        footer_links=["api"], mcp_server=False, run_history=False, enable_monitoring=False, pwa=False,
                        max_file_size=f"{MAX_UPLOAD_MB + 1}mb", app_kwargs=dict(no_docs))
    app.add_middleware(LoginGate, password=password, gradio_app=app.routes[-1].app)  # the Mount just added
    return app


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
    if not is_loopback(args.host) and not args.allow_remote:
        sys.exit(f"Refusing to serve on {args.host} over plain HTTP, where the password and every message would cross "
                 "the network unencrypted: share it with an SSH tunnel (ssh -L 7860:127.0.0.1:7860 this-machine), or "
                 "pass --allow-remote if you mean it.")
    try:
        password = check_password(os.environ.get("SERVE_DEMO_PASSWORD") or secrets.token_urlsafe(18))
    except ValueError as err:
        sys.exit(str(err))
    model, tokenizer = load(args)
    chat = Chat(model, tokenizer, args.max_new_tokens)
    app = build_app(chat, password, system=args.system)
    if args.selftest:
        print(json.dumps(selftest(app, password, Path(args.output_dir))))
        return 0
    import uvicorn

    print(f"Chat with {args.model}{' + ' + args.adapter if args.adapter else ''} on http://{args.host}:{args.port}/")
    shown = "the one in SERVE_DEMO_PASSWORD" if os.environ.get("SERVE_DEMO_PASSWORD") else password  # never echo it
    print(f"  log in as: learner   password: {shown}", flush=True)
    # proxy_headers=False: the failed-login limit counts the connection's address, not a header anyone can send
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
