"""The course runner: execute lessons with papermill, keep every executed notebook, write a report.

    course-run                      # every lesson, full mode
    course-run --mode smoke 02 03   # two lessons, smoke mode
    course-run -p MAX_STEPS 50 04   # pass a parameter through to the parameters cell

Each lesson declares what it must achieve in its notebook metadata::

    "course": {"title": "...", "week": 2, "needs_gpu": true, "vram_gb": 10,
               "targets": {"smoke": {"test_accuracy": [">=", 0.85]}, "full": {...}}}
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import operator
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils.core.paths import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass
class TargetResult:
    metric: str
    op: str
    value: float
    actual: object
    met: bool


@dataclass
class LessonResult:
    lesson: str
    title: str
    status: str  # "passed" | "failed" | "missed target" | "needs GPU"
    seconds: float
    output: str
    metrics: dict = field(default_factory=dict)
    targets: list[TargetResult] = field(default_factory=list)
    error: str = ""


def discover(selection: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Lessons in order; ``selection`` items may be numbers ("02"), stems or paths."""
    lessons = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return lessons
    chosen = []
    for item in selection:
        path = Path(item)
        if path.suffix == ".ipynb" and path.exists():
            chosen.append(path)
            continue
        matches = [p for p in lessons if p.stem == item or p.stem.split("_")[0] == item.zfill(2)]
        if not matches:
            names = ", ".join(p.stem for p in lessons)
            raise SystemExit(f"course-run: no lesson called {item!r}. Lessons: {names}")
        chosen.extend(matches)
    return chosen


def lesson_meta(path: Path) -> dict:
    return json.loads(path.read_text()).get("metadata", {}).get("course", {})


def check_targets(targets: dict, metrics: dict) -> list[TargetResult]:
    results = []
    for metric, (op, value) in targets.items():
        actual = metrics.get(metric)
        met = actual is not None and bool(OPS[op](actual, value))
        results.append(TargetResult(metric, op, value, actual, met))
    return results


def parse_value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kernel_for(path: Path, override: str | None) -> str:
    if override:
        return override
    from jupyter_client.kernelspec import KernelSpecManager

    wanted = json.loads(path.read_text()).get("metadata", {}).get("kernelspec", {}).get("name", "python3")
    return wanted if wanted in KernelSpecManager().find_kernel_specs() else "python3"


def run_lesson(path: Path, out_dir: Path, mode: str, params: dict, kernel: str | None = None,
               timeout: int | None = None, progress: bool = True) -> LessonResult:
    import papermill as pm

    meta = lesson_meta(path)
    output = out_dir / path.name
    metrics_file = out_dir / f"{path.stem}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    env_before = dict(os.environ)
    os.environ["COURSE_METRICS_FILE"] = str(metrics_file)
    os.environ["SMOKE"] = "1" if mode == "smoke" else "0"
    start = time.perf_counter()
    status, error = "passed", ""
    try:
        pm.execute_notebook(
            str(path), str(output), parameters={"SMOKE": mode == "smoke", **params},
            kernel_name=_kernel_for(path, kernel), cwd=str(path.parent), progress_bar=progress,
            execution_timeout=timeout, log_output=False,
        )
    except pm.PapermillExecutionError as err:
        status = "needs GPU" if err.ename == "NeedsGPU" else "failed"
        error = f"{err.ename}: {err.evalue}".strip()
    except Exception as err:  # kernel died, timeout, bad notebook: keep going with the next lesson
        status, error = "failed", f"{type(err).__name__}: {err}"
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    seconds = time.perf_counter() - start
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    targets = check_targets(meta.get("targets", {}).get(mode, {}), metrics) if status == "passed" else []
    if status == "passed" and not all(t.met for t in targets):
        status = "missed target"
    return LessonResult(path.stem, meta.get("title", path.stem), status, round(seconds, 1), str(output), metrics, targets, error)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(results: list[LessonResult], out_dir: Path, mode: str, env: dict) -> tuple[Path, Path]:
    data = {"mode": mode, "finished": dt.datetime.now().isoformat(timespec="seconds"), "environment": env,
            "lessons": [asdict(r) for r in results]}
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(data, indent=2, default=str))
    lines = [f"# Course run — {mode} mode", "",
             f"GPU: {env.get('gpu')} · torch {env.get('packages', {}).get('torch', '?')} · "
             f"python {env.get('python')} · commit {env.get('git_commit') or '?'} · {data['finished']}", "",
             "| lesson | status | time (s) | peak VRAM (GiB) | peak RSS (GiB) | targets |", "|---|---|---|---|---|---|"]
    for r in results:
        vram = r.metrics.get("peak_vram_reserved_gb", "-")
        rss = r.metrics.get("peak_rss_gb", "-")
        targets = "; ".join(f"{t.metric} {_fmt(t.actual)} {t.op} {t.value} {'✓' if t.met else '✗'}" for t in r.targets)
        status = f"{r.status}: {r.error}" if r.error else r.status
        lines.append(f"| {r.lesson} | {status.replace('|', '/')} | {r.seconds} | {_fmt(vram)} | {_fmt(rss)} | {targets or '-'} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course-run", description="Run the course's lessons and write a report.")
    parser.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all, in order)")
    parser.add_argument("--mode", choices=("full", "smoke"), default=os.environ.get("MODE", "full"))
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a parameter of the lessons' parameters cell")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs", help="where runs/<timestamp>/ goes")
    parser.add_argument("--kernel", help="Jupyter kernel (default: the notebook's, else python3)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell")
    parser.add_argument("--strict", action="store_true", help="also fail when a lesson could not run for want of a GPU")
    args = parser.parse_args(argv)

    lessons = discover(args.lessons)
    params = {key: parse_value(value) for key, value in args.parameter}
    out_dir = args.out / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    from course_utils.core.repro import environment_snapshot

    env = environment_snapshot()
    print(f"Running {len(lessons)} lesson(s) in {args.mode} mode -> {out_dir}")
    results = []
    for i, path in enumerate(lessons, 1):
        print(f"[{i}/{len(lessons)}] {path.stem}", flush=True)
        result = run_lesson(path, out_dir, args.mode, params, args.kernel, args.timeout)
        results.append(result)
        print(f"    {result.status} in {result.seconds:.1f} s" + (f" — {result.error}" if result.error else ""), flush=True)
    _, md = write_report(results, out_dir, args.mode, env)
    print(md.read_text())
    bad = [r for r in results if r.status in ("failed", "missed target") or (args.strict and r.status == "needs GPU")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
