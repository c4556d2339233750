"""Lesson 12's web app (course_utils.demo): every tab over HTTP in smoke mode, a real browser, a load test, bad input.

One server for the whole module (``python -m course_utils.demo`` in smoke mode on a free port, its own temporary
folders), started the way ``make demo`` starts it. The network guard is inherited by the server process: a call past
loopback from the app fails the test during which it happened. The model manager's rules (budget, LRU eviction, OOM,
missing model) are tested on fake models, in this process, in milliseconds.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTES = ROOT / "datasets" / "course" / "rag_notes"
CLIP = ROOT / "datasets" / "course" / "speech_clips" / "test_01.flac"  # espeak-ng speech, shipped (lesson 10)
SCREENSHOT = ROOT / "docs" / "demo_screenshot.png"
pytestmark = pytest.mark.xdist_group("demo")  # under `pytest -n N --dist loadgroup`: one worker, one server


# ------------------------------------------------------------------------------------------------ the server


class Server:
    def __init__(self, url: str, password: str, proc: subprocess.Popen, log: Path, files: Path):
        self.url, self.password, self.proc, self.log, self.files = url, password, proc, log, files
        self._client = None

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.password}"}

    def status(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/api/status", headers=self.auth_header, timeout=30).json()

    def client(self):
        from gradio_client import Client

        if self._client is None:
            self._client = Client(self.url + "/", auth=("learner", self.password), verbose=False,
                                  download_files=str(self.files / "downloads"))
        return self._client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    files = tmp_path_factory.mktemp("demo")
    password = secrets.token_urlsafe(12)
    port = _free_port()
    env = dict(os.environ, SMOKE="1", DEMO_PASSWORD=password, DEMO_ARTEFACTS_DIR=str(files / "artefacts"),
               GRADIO_TEMP_DIR=str(files / "gradio"), DEMO_PORT=str(port), OMP_WAIT_POLICY="PASSIVE")
    env.pop("DEMO_BUDGET_GB", None)
    log = files / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "course_utils.demo"], cwd=files, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the demo server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/status", timeout=2).status_code == 401:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the demo server did not answer within 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    server = Server(url, password, proc, log, files)
    yield server
    if server._client is not None:
        server._client.close()
    proc.terminate()  # uvicorn stops at once unless a client keeps a connection open: then it is killed
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def wav(server) -> Path:
    """A WAV of the shipped espeak-ng sentence (the course ships FLAC; the app takes either)."""
    import soundfile as sf

    audio, sr = sf.read(str(CLIP))
    path = server.files / "sentence.wav"
    sf.write(str(path), audio, sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def photo(server) -> Path:
    """A real photo (a small copy of Ultralytics' bus.jpg, shipped in its wheel)."""
    import importlib.util

    from PIL import Image

    bus = Path(next(iter(importlib.util.find_spec("ultralytics").submodule_search_locations))) / "assets" / "bus.jpg"
    path = server.files / "bus.jpg"
    with Image.open(bus) as image:
        image.convert("RGB").resize((240, 320)).save(path, quality=90)
    return path


# ------------------------------------------------------------------------------------------------ login


def test_requests_without_login_are_refused(server):
    import httpx

    assert httpx.get(f"{server.url}/api/status", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/api/status", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.post(f"{server.url}/api/chat", json={"message": "hi"}, timeout=10).status_code == 401
    # Gradio's API behind the same login: no session cookie, no call
    refused = httpx.post(f"{server.url}/gradio_api/call/generate", json={"data": ["a cat", 0, 64, 64]}, timeout=10)
    assert refused.status_code == 401, refused.text
    assert httpx.post(f"{server.url}/login", data={"username": "learner", "password": "wrong"},
                      timeout=10).status_code in (400, 401)
    # the password is printed at start, bound to loopback, and never on the command line
    text = server.log.read_text()
    assert f"password: {server.password}" in text and "http://127.0.0.1:" in text
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert server.password not in cmdline


# ------------------------------------------------------------------------------------------------ every tab


def test_chat_streams_token_by_token(server):
    import httpx

    deltas, final = [], None
    with httpx.stream("POST", f"{server.url}/api/chat", json={"message": "What does QLoRA train?"},
                      headers=server.auth_header, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            event = json.loads(line)
            assert "error" not in event, event
            if "delta" in event:
                deltas.append(event["delta"])
            else:
                final = event
    assert final is not None, "the stream ended without the final answer"
    assert len(deltas) > 1, f"the reply came in {len(deltas)} piece(s): it should stream"
    assert "".join(deltas) == final["answer"] and final["answer"].strip()
    assert "tiny random Llama" in final["model"] and "base model" in final["model"]


def test_every_tab_over_the_gradio_api(server, wav, photo):
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    client = server.client()
    shipped = {p.relative_to(NOTES).as_posix() for p in NOTES.rglob("*.md")}
    answer, sources = client.predict("How do I resume training from a checkpoint?", api_name="/notes")
    assert sources and all(s["source"] in shipped for s in sources), sources
    assert sources[0]["source"] == "checkpoints_and_resume.md", "the closest note should be the checkpoints note"
    assert "[1]" in answer and "checkpoints_and_resume.md" in answer

    text, segments, edited = client.predict(handle_file(str(wav)), None, True, api_name="/transcribe")
    seconds = 2.67
    assert text.strip(), "the clip has speech: the tiny Whisper should write something"
    assert segments and all(0 <= a < b <= seconds + 0.05 for a, b in segments), segments
    assert sum(b - a for a, b in segments) > 1.0, "the VAD should find the spoken second(s)"
    assert edited.strip(), "the post-edit should return the chat model's version"

    preview, answer = client.predict(handle_file(str(photo)), "What is in this picture?", api_name="/ask_image")
    assert isinstance(answer, str) and Image.open(preview).size == (240, 320)

    drawn, boxes = client.predict(handle_file(str(photo)), 0.0001, api_name="/detect")
    assert boxes, "the detector should return boxes at a confidence threshold of 1e-4"
    assert all(0 <= b["box"][0] < b["box"][2] <= 240 and 0 <= b["box"][1] < b["box"][3] <= 320 for b in boxes)
    assert Image.open(drawn).size == (240, 320)

    first = np.asarray(Image.open(client.predict("a red circle", 7, 64, 48, api_name="/generate")))
    again = np.asarray(Image.open(client.predict("a red circle", 7, 64, 48, api_name="/generate")))
    other = np.asarray(Image.open(client.predict("a red circle", 8, 64, 48, api_name="/generate")))
    assert first.shape[:2] == (48, 64), f"asked for 64 x 48, got {first.shape}"
    assert np.array_equal(first, again), "the same seed should give the same image"
    assert not np.array_equal(first, other), "another seed should give another image"


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_gets_a_message_and_changes_nothing(server, wav, photo):
    import httpx
    from gradio_client import handle_file

    client = server.client()
    bad = server.files / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "notes.txt").write_text("not an image")
    (bad / "empty.png").write_bytes(b"")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    (bad / "broken.wav").write_bytes(b"RIFF" + os.urandom(3000))
    (bad / "huge.png").write_bytes(b"\0" * (10 * 2**20 + 2**19))  # 10.5 MB: over the app's 10 MB limit
    before = server.status()
    cases = [
        ("/detect", (handle_file(str(bad / "notes.txt")), 0.5), "file type the app reads as image"),
        ("/detect", (handle_file(str(bad / "empty.png")), 0.5), "is empty"),
        ("/ask_image", (handle_file(str(bad / "broken.png")), "what?"), "is not a readable image"),
        ("/detect", (handle_file(str(bad / "huge.png")), 0.5), "the limit is 10 MB"),
        ("/transcribe", (handle_file(str(bad / "broken.wav")), None, False), "is not readable audio"),
        ("/transcribe", (handle_file(str(photo)), None, False), "file type the app reads as audio clip"),
        ("/transcribe", (None, None, False), "No audio clip was uploaded"),
        ("/generate", ("x" * 2001, 0, 64, 64), "the limit is 2,000"),
        ("/generate", ("a cat", 0, 100, 64), "multiple of 8"),
        ("/notes", ("   ", ), "is empty"),
        ("/detect", (handle_file(str(photo)), 1.5), "greater than maximum"),  # Gradio checks the slider
    ]
    for api_name, args, expected in cases:
        with pytest.raises(Exception) as caught:
            client.predict(*args, api_name=api_name)
        assert expected.lower() in str(caught.value).lower(), f"{api_name}: {caught.value}"
    too_long = httpx.post(f"{server.url}/api/chat", json={"message": "y" * 5000}, headers=server.auth_header, timeout=30)
    assert too_long.status_code == 400 and "the limit is 2,000" in too_long.json()["error"]
    not_json = httpx.post(f"{server.url}/api/chat", content=b"{", headers=server.auth_header, timeout=30)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    after = server.status()
    assert after["loaded"] == before["loaded"] and after["loads"] == before["loads"], "bad input loaded a model"
    assert after["ooms"] == 0


# ------------------------------------------------------------------------------------------------ load


def test_sixteen_concurrent_requests_are_all_answered(server, wav, photo):
    import httpx
    from gradio_client import handle_file

    client = server.client()

    def chat(i: int) -> str:
        with httpx.stream("POST", f"{server.url}/api/chat", json={"message": f"question {i}"},
                          headers=server.auth_header, timeout=300) as response:
            events = [json.loads(line) for line in response.iter_lines()]
        assert "answer" in events[-1], events[-1]
        return "chat"

    jobs = {"notes": lambda i: client.predict(f"what is gradient checkpointing {i}", api_name="/notes"),
            "speech": lambda i: client.predict(handle_file(str(wav)), None, False, api_name="/transcribe"),
            "vision": lambda i: client.predict(handle_file(str(photo)), f"question {i}", api_name="/ask_image"),
            "detect": lambda i: client.predict(handle_file(str(photo)), 0.0001, api_name="/detect"),
            "image": lambda i: client.predict(f"shape {i}", i, 32, 32, api_name="/generate"),
            "chat": chat}
    plan = [list(jobs)[i % len(jobs)] for i in range(16)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda item: (item[1], jobs[item[1]](item[0])), enumerate(plan)))
    wall = time.perf_counter() - start
    status = server.status()
    assert len(results) == 16 and all(r[1] is not None for r in results), "a request was lost"
    assert status["ooms"] == 0
    assert status["peak_held_gb"] <= status["budget_gb"], "the manager let the models exceed the card's budget"
    assert status["peak_rss_gb"] < 4.0, f"the server's RAM peaked at {status['peak_rss_gb']} GiB"
    print(f"16 concurrent requests ({', '.join(sorted(set(plan)))}): all answered in {wall:.1f} s; "
          f"peak held {status['peak_held_gb']} GiB of {status['budget_gb']} GiB budget, peak RSS "
          f"{status['peak_rss_gb']} GiB, evictions {len(status['evictions'])}")


# ------------------------------------------------------------------------------------------------ the browser


def test_a_real_browser_logs_in_chats_and_uploads(server, wav, photo, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); the browser test "
                    "must run, it is never skipped.")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # not logged in: the login page, and the API refuses the browser's requests
            anonymous = browser.new_page()
            anonymous.goto(server.url + "/")
            anonymous.get_by_role("button", name="Login").wait_for(timeout=30000)
            assert anonymous.request.get(f"{server.url}/gradio_api/info").status == 401
            anonymous.close()

            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((server.url, "data:", "blob:")) else None)
            page.goto(server.url + "/")
            page.get_by_label("username").fill("learner")
            page.get_by_label("password").fill(server.password)
            page.get_by_role("button", name="Login").click()
            page.locator("#chat-input textarea").wait_for(timeout=30000)
            page.locator("#chat-input textarea").fill("Hello, what is LoRA?")
            page.keyboard.press("Enter")
            bot = page.locator("#chatbot .bot, #chatbot [data-testid='bot']").last
            bot.wait_for(timeout=60000)
            page.wait_for_function("() => { const b = document.querySelectorAll('#chatbot .bot, "
                                   "#chatbot [data-testid=\"bot\"]'); return b.length && "
                                   "b[b.length - 1].innerText.trim().length > 3; }", timeout=60000)
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot))

            page.get_by_role("tab", name="Detect objects").click()
            page.locator("#detect-upload input[type=file]").set_input_files(str(photo))
            page.locator("#detect-go").click()
            page.wait_for_function("() => { const j = document.querySelector('#detect-boxes'); "
                                   "return j && j.innerText.includes('score'); }", timeout=60000)
            page.locator("#detect-image img").wait_for(timeout=30000)

            page.get_by_role("tab", name="Transcribe").click()
            page.locator("#audio-upload input[type=file]").set_input_files(str(wav))
            page.locator("#speech-go").click()
            page.wait_for_function("() => { const t = document.querySelector('#transcript textarea'); "
                                   "return t && t.value.trim().length > 0; }", timeout=60000)
            assert page.locator("#transcript textarea").input_value().strip()
        finally:
            browser.close()
    assert not outside, f"the page reached past the app: {outside[:5]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 400_000
    keep = ROOT / "build" / "demo_screenshot.png"  # every run; docs/ only when missing or asked for
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)
    if os.environ.get("DEMO_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.{os.getpid()}.tmp")
        shutil.copyfile(shot, tmp)
        os.replace(tmp, SCREENSHOT)


# ------------------------------------------------------------------------------------------------ the manager


def _fake_specs(log: list, sizes: dict[str, float], fail: dict[str, BaseException] | None = None):
    from course_utils.demo.models import ModelSpec

    def loader(name):
        def load():
            if fail and name in fail:
                raise fail[name]
            log.append(name)
            return {"name": name, "weights": bytearray(1000)}
        return load

    return {n: ModelSpec(n, loader(n), gb, f"fake {n}") for n, gb in sizes.items()}


def test_manager_keeps_the_budget_and_frees_the_least_recently_used():
    from course_utils.demo.models import ModelManager

    loads: list[str] = []
    manager = ModelManager(_fake_specs(loads, {"chat": 6.0, "vision": 5.0, "detector": 0.2, "image": 3.0}), 10.5)
    for name in ["chat", "detector", "chat", "vision", "detector", "image", "chat"]:
        with manager.use(name) as bundle:
            assert bundle["name"] == name
        assert manager.held_gb() <= manager.budget_gb
    # chat + detector fit; vision (5) needs room: detector goes first (chat was used after it), then chat;
    # image fits next to vision and detector; chat again: vision (now the least recently used) goes, and it fits
    assert manager.stats.evictions == ["detector", "chat", "vision"]
    assert manager.loaded == ["detector", "image", "chat"] and loads.count("chat") == 2
    assert manager.stats.peak_held_gb <= 10.5


def test_manager_turns_oom_and_missing_models_into_messages_and_keeps_serving():
    from course_utils.core.errors import CourseError, MissingData
    from course_utils.core.oom import OutOfMemory
    from course_utils.demo.models import ModelManager

    loads: list[str] = []
    specs = _fake_specs(loads, {"chat": 6.0, "image": 3.0, "gone": 1.0, "huge": 20.0},
                        fail={"gone": MissingData("No weights for gone: run lesson 09 first.")})
    manager = ModelManager(specs, 10.5)
    with manager.use("image"):
        pass
    with pytest.raises(OutOfMemory, match="ran out of GPU memory.*keeps serving"):
        with manager.use("chat"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # what torch raises, as older code paths do
    assert manager.loaded == [] and manager.stats.ooms == 1, "an OOM should free every model"
    with pytest.raises(MissingData, match="run lesson 09 first"):
        with manager.use("gone"):
            pass
    with pytest.raises(MissingData, match="no model called 'nope'"):
        with manager.use("nope"):
            pass
    with pytest.raises(CourseError, match="budget is 10.5 GiB"):
        with manager.use("huge"):
            pass
    assert manager.loaded == []
    with manager.use("chat") as bundle:  # and it keeps serving
        assert bundle["name"] == "chat"
    assert manager.loaded == ["chat"] and loads == ["image", "chat", "chat"]


def test_manager_serves_one_request_at_a_time():
    from course_utils.demo.models import ModelManager

    manager = ModelManager(_fake_specs([], {"a": 1.0, "b": 1.0}), 10.5)
    inside, most = [0], [0]
    guard = threading.Lock()

    def request(name: str) -> None:
        with manager.use(name):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            with guard:
                inside[0] -= 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(request, ["a", "b"] * 8))
    assert most[0] == 1 and manager.stats.requests == 16


# ------------------------------------------------------------------------------------------------ the recipe


def test_recipe_serves_a_chat_model_behind_a_login(run_recipe, tmp_path):
    from course_utils.smoke.llm import tiny_llm_dir

    run_recipe("serve_demo.py", "--model", str(tiny_llm_dir()), "--max-new-tokens", "24", "--selftest",
                      "--output-dir", str(tmp_path / "out"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["refused_status"] == 401 and metrics["too_long_status"] == 400, metrics
    assert metrics["pieces"] > 1 and metrics["stream_matches_answer"], metrics
    assert metrics["first_piece_s"] < metrics["total_s"], metrics
