"""The drift canary (`make canary`): the lessons in smoke mode against the newest releases of the course's packages.

    python -m course_utils.runner.canary                 # build .venv-canary, run every lesson, write the table
    python -m course_utils.runner.canary --reuse 05 07   # keep the venv already built, two lessons

It builds a venv of its own (default ``.venv-canary``) with every top-level package of requirements.txt *unpinned*,
so pip takes the newest release the package index offers (where the machine's pip configuration caps a package, e.g.
a constraints file that keeps torch at the release on disk, pip installs the newest allowed and the table says so).
When the set cannot be installed together, each package is installed on its own, and one that still fails falls back
to its pin (the table says so too). The course package goes in without dependencies, then each lesson runs in smoke
mode with that venv's runner, offline, with its own home and caches (build/canary-home), one lesson at a time. The
table (package, pin, newest on the index, installed; then each lesson, pass/fail and its first error line) is
rewritten after every lesson in ``<out>/canary.md``, so a run stopped early still leaves what it found.
It never touches ``.venv`` or requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from course_utils.core.paths import REPO_ROOT
from course_utils.runner.lessons import discover

REQUIREMENTS = REPO_ROOT / "requirements.txt"
KERNEL = "dl12gb-canary"
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def pinned(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """``{package: pinned version}`` for every ``name==version`` line of requirements.txt, in file order."""
    return {m.group(1): m.group(2) for line in requirements.read_text().splitlines() if (m := _REQ.match(line))}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(venv: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True)
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ pip {' '.join(args)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n\n")
    return proc


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["(no output)"])[0][:200]


def newest_on_index(venv: Path, name: str) -> str:
    """The newest release the package index (pip's configuration: PyPI and any extra index) offers, or '?'."""
    proc = _pip(venv, "index", "versions", name)
    m = re.search(r"^\S+ \(([^)]+)\)", proc.stdout, re.M)
    return m.group(1) if m else "?"


def installed(venv: Path, names: list[str]) -> dict[str, str]:
    code = ("import json, sys\nfrom importlib.metadata import version, PackageNotFoundError\nout = {}\n"
            "for n in sys.argv[1:]:\n    try: out[n] = version(n)\n    except PackageNotFoundError: out[n] = ''\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code, *names], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {n: "" for n in names}


def build_venv(venv: Path, pins: dict[str, str], log: Path, python: str = sys.executable) -> dict[str, str]:
    """Create ``venv`` with the newest installable release of each package; returns ``{package: note}`` for the
    packages that could not get theirs (installed on their own, or at their pin)."""
    notes: dict[str, str] = {}
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    _pip(venv, "install", "--quiet", "--upgrade", "pip", log=log)
    print(f"canary: installing the newest releases of {len(pins)} packages into {venv} (log: {log})", flush=True)
    together = _pip(venv, "install", "--upgrade", "--upgrade-strategy", "eager", *pins, log=log)
    if together.returncode != 0:
        why = _last_error(together.stdout + together.stderr)
        print(f"canary: the newest releases do not install together ({why}); "
              "installing each on its own", flush=True)
        for name, pin in pins.items():
            alone = _pip(venv, "install", "--upgrade", name, log=log)
            if alone.returncode != 0:
                notes[name] = f"newest failed to install ({_last_error(alone.stdout + alone.stderr)}); pinned used"
                if _pip(venv, "install", f"{name}=={pin}", log=log).returncode != 0:
                    notes[name] = "neither the newest nor the pin installed"
    course = _pip(venv, "install", "--quiet", "--no-deps", "-e", str(REPO_ROOT), log=log)
    if course.returncode != 0:
        raise SystemExit(f"canary: the course package did not install into {venv}: {_last_error(course.stderr)}")
    subprocess.run([str(venv / "bin" / "python"), "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL,
                    "--display-name", "Deep learning on 12 GB (canary)"], check=True, capture_output=True)
    return notes


def lesson_env(home: Path) -> dict[str, str]:
    """The environment of the test suite (conftest.py): offline hubs, the network guard, a home of its own."""
    env = dict(os.environ)
    for key, sub in (("HF_HOME", "hf"), ("MPLCONFIGDIR", "matplotlib"), ("YOLO_CONFIG_DIR", "yolo"),
                     ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"),
                     ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("JUPYTER_DATA_DIR", "jupyter/data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("IPYTHONDIR", "ipython"), ("TORCH_HOME", "torch"),
                     ("COURSE_TRACKING", "tensorboard"), ("COURSE_CACHE", "course-cache")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(home / sub)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "DO_NOT_TRACK": "1",
                "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
                "COURSE_NETGUARD": "1", "COURSE_NETGUARD_LOG": str(home / "netguard.log")})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "tests" / "netguard"), env.get("PYTHONPATH")]))
    env.pop("VIRTUAL_ENV", None)
    return env


def run_lesson(venv: Path, lesson: Path, out: Path, env: dict[str, str]) -> tuple[str, str, float]:
    """One lesson in smoke mode with the canary venv's runner: (status, first error line, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "course_utils.runner.run", "--mode", "smoke",
                           "--kernel", KERNEL, "--out", str(out / "runs"), lesson.stem],
                          capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    seconds = time.perf_counter() - start
    (out / f"{lesson.stem}.log").write_text(proc.stdout + proc.stderr)
    status, error = "failed", ""
    m = re.search(r"^\s+(passed|failed|missed target|needs GPU) in ([\d.]+) s(?: — (.*))?$", proc.stdout, re.M)
    if m:  # the runner's own time for the lesson (without this process's start-up)
        status, seconds, error = m.group(1), float(m.group(2)), (m.group(3) or "")
    elif proc.returncode != 0:
        error = _last_error(proc.stderr or proc.stdout)
    return status, error.splitlines()[0][:240] if error else "", seconds


def constrained(venv: Path) -> dict[str, str]:
    """``{package: constraints file}`` for the packages that pip's configuration caps (``constraint`` settings)."""
    proc = _pip(venv, "config", "list")
    out = {}
    for path in re.findall(r"constraint\s*=\s*'([^']+)'", proc.stdout):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if m := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*[<>=!~]", line):
                out[_norm(m.group(1))] = path
    return out


def table(pins: dict[str, str], newest: dict[str, str], have: dict[str, str], notes: dict[str, str],
          lessons: dict[str, tuple[str, str, float]], caps: dict[str, str] | None = None) -> str:
    caps = caps or {}
    rows = ["## Packages", "", "| package | pinned | newest on the index | installed in the canary | note |",
            "|---|---|---|---|---|"]
    for name, pin in pins.items():
        new, got = newest.get(name, "?"), have.get(name, "")
        note = notes.get(name, "")
        if not note and got and new not in ("?", got):
            note = (f"newest not installed: capped by pip's constraints file {caps[_norm(name)]}"
                    if _norm(name) in caps else "newest not installed: another package's requirement holds it back")
        elif not note and got and got != pin:
            note = "newer than the pin"
        rows.append(f"| {name} | {pin} | {new} | {got or '—'} | {note} |")
    rows += ["", "## Lessons (smoke mode)", "", "| lesson | result | seconds | first error |", "|---|---|---|---|"]
    for stem, (status, error, seconds) in lessons.items():
        rows.append(f"| {stem} | {'pass' if status == 'passed' else status} | {seconds:.0f} | "
                    f"{error.replace('|', '/') if error else ''} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary", description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all)")
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv-canary")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "canary")
    parser.add_argument("--reuse", action="store_true", help="keep the canary venv as it is (no install)")
    args = parser.parse_args(argv)
    venv, out = args.venv.resolve(), args.out.resolve()
    if venv == (REPO_ROOT / ".venv").resolve():
        parser.error("the canary never touches .venv: give it a venv of its own")
    lessons = discover(args.lessons)
    out.mkdir(parents=True, exist_ok=True)
    pins = pinned()
    notes = {} if args.reuse else build_venv(venv, pins, out / "pip.log")
    have = installed(venv, list(pins))
    newest = {name: newest_on_index(venv, name) for name in pins}
    caps = constrained(venv)
    results: dict[str, tuple[str, str, float]] = {}
    md = out / "canary.md"
    md.write_text(table(pins, newest, have, notes, results, caps))
    env = lesson_env(REPO_ROOT / "build" / "canary-home")
    for i, lesson in enumerate(lessons, 1):
        print(f"[{i}/{len(lessons)}] {lesson.stem}", flush=True)
        results[lesson.stem] = run_lesson(venv, lesson, out, env)
        status, error, seconds = results[lesson.stem]
        print(f"    {status} in {seconds:.0f} s{' — ' + error if error else ''}", flush=True)
        md.write_text(table(pins, newest, have, notes, results, caps))
    print(md.read_text())
    print(f"canary: table in {md}")
    return 0 if all(r[0] == "passed" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
