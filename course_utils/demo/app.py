"""The web app: a FastAPI application with the Gradio UI mounted on it, behind one login.

* ``/``            the Gradio UI (six tabs), after the login page (user ``learner``, the password printed at start);
* ``/gradio_api``  Gradio's own HTTP API (``gradio_client.Client(url, auth=(user, password))``), same login;
* ``/api/status``  the model manager's state (JSON) and ``/api/chat`` (a streamed reply, one JSON line per piece):
  plain FastAPI routes that want ``Authorization: Bearer <password>``.

Nothing calls out: Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False``, set before Gradio is imported),
there is no share link, no update check (that lives in ``launch()``, which the app never calls), the theme uses the
system's fonts, and FastAPI's interactive docs (which load scripts from a CDN) are switched off.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from course_utils.core.errors import CourseError  # noqa: E402
from course_utils.demo.tabs import (MAX_AUDIO_SECONDS, MAX_PROMPT_CHARS, MAX_UPLOAD_MB, BadInput, Demo,  # noqa: E402
                                    check_prompt, describe_error)

USER = "learner"
TABS = ("chat", "notes", "speech", "vision", "detector", "image")


def new_password() -> str:
    """The login password: ``DEMO_PASSWORD`` from the environment if set (never a command-line flag: ``ps``
    shows those to every user of the machine), else a fresh random one printed at start."""
    return os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(18)


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


def build_blocks(demo: Demo) -> Any:
    """The Gradio UI: one tab per lesson piece, each saying which model it uses."""
    import gradio as gr

    def model_line(name: str) -> str:
        return f"**Model:** {demo.source(name)}"

    def chat_fn(message: str, history: list) -> Iterator[str]:
        reply = ""
        for piece in demo.chat_stream(message, history):
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
        return read_image(upload), answer

    def detect_fn(upload: Any, conf: float) -> tuple[Any, list]:
        return demo.detect(upload, conf)

    def image_fn(prompt: str, seed: float, width: float, height: float) -> Any:
        return demo.generate(prompt, seed=seed, width=int(width), height=int(height))

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

    app = FastAPI(title="Deep learning on 12 GB: the demo", docs_url=None, redoc_url=None, openapi_url=None)

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
    return gr.mount_gradio_app(
        app, blocks, path="/", auth=(user, password), auth_message="Log in with the user and password the app "
        "printed when it started.", footer_links=["api"], max_file_size=f"{MAX_UPLOAD_MB + 1}mb", ssr_mode=False,
        theme=blocks.theme_for_mount, mcp_server=False, enable_monitoring=False, pwa=False,
    )
