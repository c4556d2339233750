"""The repository keeps its promises: one set of pins, a safe `make lab`, CI that runs `make test`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_environment_yml_lists_exactly_the_pinned_requirements():
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(requirement_lines((ROOT / "requirements.txt").read_text())), (
        "environment.yml and requirements.txt disagree: copy the pins from requirements.txt into environment.yml"
    )


def test_every_requirement_is_pinned_exactly():
    loose = [line for line in requirement_lines((ROOT / "requirements.txt").read_text()) if "==" not in line]
    assert not loose, f"pin these with ==: {loose}"
    pins = dict(line.split("==") for line in requirement_lines((ROOT / "requirements.txt").read_text()))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_ci_runs_make_test():
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)


def test_readme_gives_the_two_commands_and_the_lesson_table():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme and "make course" in readme
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert notebook.name in readme, f"README's lesson table is missing {notebook.name}"


def test_make_lab_binds_loopback_with_a_token():
    recipe = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--ip=127.0.0.1" in recipe and "0.0.0.0" not in recipe
    # the token goes through the environment, never the command line (`ps` shows command lines to every user)
    assert 'JUPYTER_TOKEN="$TOKEN"' in recipe and "--IdentityProvider.token" not in recipe and "token=\"\"" not in recipe
    # rooted at the repository so lesson links to ../course_utils/... open; starts on notebooks/
    assert "--ServerApp.root_dir=." in recipe and "--LabApp.default_url=/lab/tree/notebooks" in recipe
    assert "--notebook-dir" not in recipe


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_make_lab_serves_on_loopback_and_refuses_without_the_token():
    port, token = _free_port(), "test-token-123"
    env = dict(os.environ, JUPYTER_TOKEN=token, PORT=str(port))
    proc = subprocess.Popen(["make", "-s", "lab", f"PORT={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/status"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}?token={token}", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=2)
        assert err.value.code == 403  # no token, no access
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as resp:
            assert b"JupyterLab" in resp.read()
        # no process of the Lab carries the token on its command line (other users can read /proc/<pid>/cmdline)
        lab_pids = _process_tree(proc.pid)
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in lab_pids
                    if Path(f"/proc/{pid}/cmdline").exists()]
        assert any("jupyter" in c and "lab" in c for c in cmdlines), cmdlines
        assert not [c for c in cmdlines if token in c], "the Lab's token is visible in `ps`"
        # rooted at the repository: course code opens from the Lab; / lands on notebooks/
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/course_utils/core/gpu.py?token={token}",
                                    timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=10) as resp:
            assert resp.url.split("?")[0].endswith("/lab/tree/notebooks")
        # what the Lab's front end asks for on start: none of it may reach the internet (the guard would fail us)
        for api in ("lab/api/extensions", "lab/api/news", "lab/api/update"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{api}?token={token}", timeout=10).read()
            except urllib.error.HTTPError:
                pass
        time.sleep(1)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
