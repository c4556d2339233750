"""Screenshot a translated lesson as JupyterLab renders it (headless Chromium), to check the language displays.

    python docs/render_translation.py --lang ja                 # docs/i18n_ja.png, lesson 00
    python docs/render_translation.py --lang fr --lesson 05 --out /tmp/fr05.png

It builds the lesson into notebooks-<lang>/ (python -m course_utils.i18n build), starts JupyterLab on a free
loopback port (token in JUPYTER_TOKEN, rooted at the repository, as `make lab` does), has Debian's
/usr/bin/chromium load the notebook and save a screenshot, then stops the Lab. CJK text needs a CJK font on the
machine (Debian: fonts-noto-cjk); without one, Chromium draws boxes. The script warns when fontconfig lists none.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from course_utils.i18n import catalog  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FONT_LANG = {"ja": "ja", "zh-Hant": "zh-tw"}  # fontconfig's language tags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cjk_font_missing(lang: str) -> bool:
    tag = FONT_LANG.get(lang)
    if not tag or not shutil.which("fc-list"):
        return False
    out = subprocess.run(["fc-list", f":lang={tag}"], capture_output=True, text=True).stdout
    return not out.strip()


def wait_for_lab(port: int, token: str, lab: subprocess.Popen, timeout: float = 90) -> None:
    url = f"http://127.0.0.1:{port}/api/status"
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            raise SystemExit(f"render: JupyterLab exited with code {lab.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"render: JupyterLab did not answer on port {port} within {timeout:.0f} s")


def render(lang: str, lesson: str, out: Path, budget_ms: int = 20000, size: str = "1400,1000") -> Path:
    sources = [p for p in catalog.lessons() if p.suffix == ".ipynb" and (p.stem == lesson or p.stem[:2] == lesson)]
    if not sources:
        raise SystemExit(f"render: no lesson {lesson!r}")
    (built,) = catalog.build(lang, sources=sources[:1])
    if cjk_font_missing(lang):
        print(f"render: warning: fontconfig lists no font for {lang}; CJK text will show as boxes "
              "(Debian: apt-get install fonts-noto-cjk)", file=sys.stderr)
    port, token = free_port(), secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="render-i18n-") as tmp:
        env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=f"{tmp}/config",
                   JUPYTER_RUNTIME_DIR=f"{tmp}/runtime")
        settings = Path(tmp, "settings", "@jupyterlab", "apputils-extension")
        settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the lesson
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "doNotDisturbMode": true}')
        cmd = [str(REPO / ".venv/bin/jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.root_dir=.", f"--LabApp.workspaces_dir={tmp}/workspaces",
               f"--LabApp.user_settings_dir={tmp}/settings", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(f"{tmp}/lab.log", "w") as log:
            lab = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_lab(port, token, lab)
            rel = built.relative_to(REPO).as_posix()
            url = f"http://127.0.0.1:{port}/lab/tree/{rel}?reset&token={token}"
            out.parent.mkdir(parents=True, exist_ok=True)
            shot = Path(tmp) / "shot.png"
            subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--no-first-run", f"--virtual-time-budget={budget_ms}", f"--user-data-dir={tmp}/chrome",
                            f"--screenshot={shot}", f"--window-size={size}", "--hide-scrollbars", url],
                           check=True, capture_output=True, timeout=180)
            shutil.move(shot, out)  # a complete PNG or nothing: Chromium wrote it in the temporary folder
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", choices=catalog.LANGUAGES, required=True)
    parser.add_argument("--lesson", default="00", help="lesson number or stem (default 00)")
    parser.add_argument("--out", type=Path, help="PNG path (default docs/i18n_<lang>.png)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual time budget")
    args = parser.parse_args()
    out = render(args.lang, args.lesson, args.out or REPO / "docs" / f"i18n_{args.lang}.png", args.budget_ms)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
