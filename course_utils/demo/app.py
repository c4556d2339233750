"""The web app: a FastAPI application with the Gradio UI mounted on it, behind one login.

* ``/``            the Gradio UI (six tabs), after the login page (user ``learner``, the password printed at start);
* ``/gradio_api``  Gradio's own HTTP API (``gradio_client.Client(url, auth=(user, password))``), same login;
* ``/api/status``  the model manager's state (JSON) and ``/api/chat`` (a streamed reply, one JSON line per piece):
  plain FastAPI routes that want ``Authorization: Bearer <password>``.

Every route needs the login: :class:`LoginGate` sits in front of the whole app and lets through only the login page,
its form and the frontend's own files (:data:`OPEN_BEFORE_LOGIN`); anything else, whatever a Gradio upgrade adds,
answers 401 without the session cookie or the Bearer password. Failed logins are counted per client address, and
after :data:`MAX_FAILED_LOGINS` in :data:`FAILED_LOGIN_WINDOW_S` seconds that client gets 429 until the window
passes. Gradio's run history (whose routes act with the Hugging Face token saved on the machine) is off, and so are
the OpenAPI schemas of both apps.

Nothing calls out: Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False``, set before Gradio is imported),
there is no share link, no update check (that lives in ``launch()``, which the app never calls), the theme uses the
system's fonts, and FastAPI's interactive docs (which load scripts from a CDN) are switched off.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from course_utils.core.errors import BadParameter, CourseError  # noqa: E402
from course_utils.demo.tabs import (MAX_AUDIO_SECONDS, MAX_PROMPT_CHARS, MAX_UPLOAD_MB, BadInput, Demo,  # noqa: E402
                                    check_prompt, describe_error)

USER = "learner"
TABS = ("chat", "notes", "speech", "vision", "detector", "image")


#: The shortest password the app accepts (a generated one has 24 characters).
MIN_PASSWORD_CHARS = 12
#: Failed logins (the login form, a wrong Bearer password) one client address may make within the window.
MAX_FAILED_LOGINS = 10
FAILED_LOGIN_WINDOW_S = 60.0
#: What answers before the login: the login page (Gradio serves it at / to a browser without a session), its form,
#: and the frontend's own JavaScript, CSS and theme from Gradio's wheel. Every other path needs the login.
OPEN_BEFORE_LOGIN = re.compile(r"(GET|HEAD) /|POST /login/?|GET /theme\.css|GET /(assets|static)/.+")


def check_password(password: str) -> str:
    """A password of at least :data:`MIN_PASSWORD_CHARS` characters, or one sentence saying so."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadParameter(f"The demo's password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS} "
                           "(or unset DEMO_PASSWORD and the app makes one up).")
    return password


def new_password() -> str:
    """The login password: ``DEMO_PASSWORD`` from the environment if set (never a command-line flag: ``ps``
    shows those to every user of the machine), else a fresh random one printed at start."""
    return check_password(os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(18))


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


class LoginGate:
    """ASGI middleware in front of the whole app: the login, or 401; too many failed logins, 429.

    A request passes with Gradio's session cookie (set by its login form), with ``Authorization: Bearer <password>``,
    or when it is in :data:`OPEN_BEFORE_LOGIN`. The session is looked up in the mounted Gradio app's own table
    (``tokens``, keyed by the cookie ``access-token[-unsecure]-<cookie_id>``), the one Gradio's routes use.
    """

    def __init__(self, app: Any, password: str, gradio_app: Any, failures: FailedLogins | None = None):
        self.app, self.password, self.gradio_app = app, password, gradio_app
        self.failures = failures or FailedLogins()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        from starlette.requests import HTTPConnection

        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        client = conn.client.host if conn.client else "unknown"
        request = f"{scope.get('method', 'WEBSOCKET')} {scope['path']}"
        bearer = conn.headers.get("authorization")
        logging_in = re.fullmatch(r"POST /login/?", request) is not None
        if bearer is not None or logging_in:
            wait = self.failures.wait_s(client)
            if wait > 0:
                return await self._refuse(scope, receive, send, 429, f"Too many failed logins from {client}: try "
                                          f"again in {wait:.0f} s.", {"Retry-After": str(int(wait) + 1)})
        if bearer is not None:
            if secrets.compare_digest(bearer.encode(), f"Bearer {self.password}".encode()):
                return await self.app(scope, receive, send)
            self.failures.fail(client)
            return await self._refuse(scope, receive, send, 401, "Wrong password: send 'Authorization: Bearer <the "
                                      "app's password>' (printed at start, or your DEMO_PASSWORD).")
        cookie = f"access-token-unsecure-{self.gradio_app.cookie_id}", f"access-token-{self.gradio_app.cookie_id}"
        if any(conn.cookies.get(name) in self.gradio_app.tokens for name in cookie):
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and OPEN_BEFORE_LOGIN.fullmatch(request):
            if not logging_in:
                return await self.app(scope, receive, send)

            async def count_failures(message: dict) -> None:  # Gradio answers a wrong password with 400
                if message["type"] == "http.response.start" and message["status"] in (400, 401):
                    self.failures.fail(client)
                await send(message)

            return await self.app(scope, receive, count_failures)
        return await self._refuse(scope, receive, send, 401, "Log in first: open the app's page in a browser, or "
                                  "send 'Authorization: Bearer <the app's password>' (printed at start, or your "
                                  "DEMO_PASSWORD).")

    @staticmethod
    async def _refuse(scope: dict, receive: Callable, send: Callable, status: int, message: str,
                      headers: dict[str, str] | None = None) -> None:
        from starlette.responses import JSONResponse
        from starlette.websockets import WebSocketClose

        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008, reason=message[:120])(scope, receive, send)
        return await JSONResponse({"detail": message}, status_code=status, headers=headers)(scope, receive, send)


def _guard(fn: Callable) -> Callable:
    """Turn the course's one-sentence errors into Gradio messages (a toast in the UI, an error over the API)."""
    import functools
    import inspect

    import gradio as gr

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped_gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except CourseError as err:
                raise gr.Error(str(err), print_exception=False) from None
            except Exception as err:
                raise gr.Error(describe_error(err)) from None
        return wrapped_gen

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CourseError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:
            raise gr.Error(describe_error(err)) from None
    return wrapped


def image_file(image: Any, folder: Path, keep_s: float = 3600.0) -> str:
    """Write a picture the app returns to a file of its own, and give Gradio the path.

    Given a picture, Gradio 6.31 writes it to a file named by its content, in place: two requests that return the same
    picture (the same photo detected twice at once) rewrite that file while it is being sent, and one browser gets half
    an image. Given a path, Gradio copies the file into its cache under a temporary name and renames it into place,
    which is safe. Files in ``folder`` older than ``keep_s`` seconds are removed on the way.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in folder.glob("*.png"):
        try:
            if now - old.stat().st_mtime > keep_s:
                old.unlink()
        except FileNotFoundError:  # another request removed it first
            pass
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    fd, path = tempfile.mkstemp(suffix=".png", dir=folder)
    with os.fdopen(fd, "wb") as out:
        picture.save(out, format="PNG")
    return path


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


def build_blocks(demo: Demo) -> Any:
    """The Gradio UI: one tab per lesson piece, each saying which model it uses."""
    import gradio as gr

    pictures = Path(tempfile.gettempdir()) / f"course-demo-{os.getpid()}"  # see image_file

    def model_line(name: str) -> str:
        return f"**Model:** {demo.source(name)}"

    def chat_fn(message: str, history: list) -> Iterator[str]:
        reply = ""
        for piece in demo.chat_stream(message, text_turns(history)):
            reply += piece
            yield reply

    def notes_fn(question: str) -> tuple[str, list]:
        result = demo.ask_notes(question)
        cites = "\n".join(f"[{s['n']}] `{s['source']}` > {s['heading']} (similarity {s['score']:.2f})"
                          for s in result["sources"])
        return f"{result['answer']}\n\n**Sources**\n\n{cites}", result["sources"]

    def speech_fn(upload: Any, recording: Any, post_edit: bool) -> tuple[str, list, str]:
        result = demo.transcribe(upload or recording, post_edit=bool(post_edit))
        text = result["text"] or f"({result.get('note', 'no words recognised')})"
        return text, result["segments"], result["edited"] or ""

    def vision_fn(upload: Any, question: str) -> tuple[Any, str]:
        from course_utils.demo.tabs import read_image

        answer = demo.ask_image(upload, question)["answer"]
        return image_file(read_image(upload), pictures), answer

    def detect_fn(upload: Any, conf: float) -> tuple[Any, list]:
        drawn, boxes = demo.detect(upload, conf)
        return image_file(drawn, pictures), boxes

    def image_fn(prompt: str, seed: float, width: float, height: float) -> Any:
        return image_file(demo.generate(prompt, seed=seed, width=int(width), height=int(height)), pictures)

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "Consolas", "monospace"])
    limits = (f"Uploads up to {MAX_UPLOAD_MB} MB (images: png, jpg, webp, bmp; audio: wav, flac, ogg, up to "
              f"{MAX_AUDIO_SECONDS} s); prompts up to {MAX_PROMPT_CHARS:,} characters. Models load on first use and "
              f"the least recently used is freed to stay within {demo.manager.budget_gb:.1f} GiB; requests are "
              "served one at a time.")
    side = demo.max_image_side
    with gr.Blocks(title="Deep learning on 12 GB: the demo", analytics_enabled=False) as blocks:
        blocks.theme_for_mount = theme
        gr.Markdown(f"# Your models, one card{' (smoke mode: tiny random models)' if demo.smoke else ''}\n{limits}")
        with gr.Tab("Chat", id="chat"):
            gr.Markdown(model_line("chat"))
            gr.ChatInterface(_guard(chat_fn), api_name="chat", concurrency_limit=4,
                             chatbot=gr.Chatbot(height=300, elem_id="chatbot"),
                             textbox=gr.Textbox(placeholder="Ask anything", elem_id="chat-input", max_lines=6))
        with gr.Tab("Ask my notes", id="notes"):
            gr.Markdown(f"**Model:** {demo.source('notes')}; {demo.source('chat')}")
            question = gr.Textbox(label="question", elem_id="notes-question")
            ask = gr.Button("Ask", elem_id="notes-ask")
            answer = gr.Markdown(elem_id="notes-answer")
            sources = gr.JSON(label="sources")
            ask.click(_guard(notes_fn), question, [answer, sources], api_name="notes", concurrency_limit=4)
        with gr.Tab("Transcribe", id="speech"):
            gr.Markdown(model_line("speech") + "; voice activity: Silero VAD")
            upload = gr.File(label="audio file (wav, flac, ogg)", elem_id="audio-upload")
            recording = gr.Audio(sources=["microphone"], type="filepath", label="or record")
            post = gr.Checkbox(label="post-edit with the chat model", value=False)
            go = gr.Button("Transcribe", elem_id="speech-go")
            transcript = gr.Textbox(label="transcript", elem_id="transcript")
            segments = gr.JSON(label="speech segments (s)")
            edited = gr.Textbox(label="post-edited")
            go.click(_guard(speech_fn), [upload, recording, post], [transcript, segments, edited],
                     api_name="transcribe", concurrency_limit=4)
        with gr.Tab("Ask about an image", id="vision"):
            gr.Markdown(model_line("vision"))
            picture = gr.File(label="image (png, jpg, webp, bmp)", elem_id="vision-upload")
            vq = gr.Textbox(label="question", value="What is in this picture?")
            vgo = gr.Button("Ask", elem_id="vision-go")
            preview = gr.Image(label="your image", type="pil", format="png", interactive=False)
            vanswer = gr.Textbox(label="answer", elem_id="vision-answer")
            vgo.click(_guard(vision_fn), [picture, vq], [preview, vanswer], api_name="ask_image", concurrency_limit=4)
        with gr.Tab("Detect objects", id="detector"):
            gr.Markdown(model_line("detector"))
            dpic = gr.File(label="image (png, jpg, webp, bmp)", elem_id="detect-upload")
            conf = gr.Slider(0.0001, 0.95, value=demo.detect_conf, step=0.0001, label="confidence threshold")
            dgo = gr.Button("Detect", elem_id="detect-go")
            drawn = gr.Image(label="boxes", type="pil", format="png", interactive=False, elem_id="detect-image")
            boxes = gr.JSON(label="detections", elem_id="detect-boxes")
            dgo.click(_guard(detect_fn), [dpic, conf], [drawn, boxes], api_name="detect", concurrency_limit=4)
        with gr.Tab("Generate an image", id="image"):
            gr.Markdown(model_line("image"))
            prompt = gr.Textbox(label="prompt", value="a watercolor lighthouse at sunset")
            seed = gr.Number(label="seed (same seed, same image)", value=0, precision=0)
            width = gr.Slider(8, side, value=min(512, side), step=8, label="width")
            height = gr.Slider(8, side, value=min(512, side), step=8, label="height")
            igo = gr.Button("Generate", elem_id="image-go")
            made = gr.Image(label="image", type="pil", format="png", interactive=False)
            igo.click(_guard(image_fn), [prompt, seed, width, height], made, api_name="generate", concurrency_limit=4)
    return blocks


def build_app(demo: Demo, password: str, user: str = USER) -> Any:
    """FastAPI with the token-protected JSON routes, and the Gradio UI mounted at ``/`` behind the same login."""
    import gradio as gr

    def require_token(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {password}".encode()):
            raise HTTPException(status_code=401, detail="Log in: send 'Authorization: Bearer <the password printed "
                                                        "when the app started>'.")

    check_password(password)
    no_docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}  # FastAPI's docs load scripts from a CDN
    app = FastAPI(title="Deep learning on 12 GB: the demo", max_body_size=(MAX_UPLOAD_MB + 2) * 2**20, **no_docs)

    @app.get("/api/status", dependencies=[Depends(require_token)])
    def status() -> dict[str, Any]:
        return {"smoke": demo.smoke, "device": demo.device, **demo.manager.status()}

    @app.post("/api/chat", dependencies=[Depends(require_token)])
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "The body must be JSON: {\"message\": \"...\"}."}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "The body must be a JSON object: {\"message\": \"...\"}."}, status_code=400)
        try:
            message = check_prompt(body.get("message"))
        except BadInput as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        history = body.get("history") if isinstance(body.get("history"), list) else []

        def lines() -> Iterator[bytes]:  # a sync generator: Starlette runs it in a worker thread
            pieces = []
            try:
                for piece in demo.chat_stream(message, history):
                    pieces.append(piece)
                    yield (json.dumps({"delta": piece}) + "\n").encode()
                yield (json.dumps({"answer": "".join(pieces), "model": demo.source("chat")}) + "\n").encode()
            except Exception as err:  # the status is sent already: the error is the last line
                yield (json.dumps({"error": describe_error(err)}) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    blocks = build_blocks(demo)
    # run_history=False: no run-history routes (they act with the Hugging Face token saved on this machine)
    gr.mount_gradio_app(
        app, blocks, path="/", auth=(user, password), auth_message="Log in with the user and password the app "
        "printed when it started.", footer_links=["api"], max_file_size=f"{MAX_UPLOAD_MB + 1}mb", ssr_mode=False,
        theme=blocks.theme_for_mount, mcp_server=False, enable_monitoring=False, pwa=False, run_history=False,
        app_kwargs=dict(no_docs),
    )
    app.add_middleware(LoginGate, password=password, gradio_app=app.routes[-1].app)  # the Mount just added
    return app
