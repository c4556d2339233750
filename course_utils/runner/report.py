"""The run's report: ``report.json`` for machines and ``report.md`` for people, both written atomically.

The first line of ``report.md`` says how many lessons ran and how many were skipped for want of a GPU, so a
full-mode run that could run one lesson of twelve cannot pass for a complete one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils.core.paths import atomic_write
from course_utils.runner.targets import TargetResult

NEEDS_GPU = "needs GPU"


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


def summary_line(results: list[LessonResult], mode: str) -> str:
    """``12 of 12 lessons ran (11 passed, 1 missed a target); 0 skipped for want of a GPU`` — the report's headline."""
    ran = [r for r in results if r.status != NEEDS_GPU]
    skipped = len(results) - len(ran)
    counts = []
    for status, word in (("passed", "passed"), ("missed target", "missed a target"), ("failed", "failed")):
        n = sum(r.status == status for r in ran)
        if n:
            counts.append(f"{n} {word}")
    detail = f" ({', '.join(counts)})" if counts else ""
    return (f"Course run, {mode} mode: {len(ran)} of {len(results)} lessons ran{detail}; "
            f"{skipped} skipped for want of a GPU")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _target_cell(t: TargetResult, where: str = "") -> str:
    mark = "✓" if t.met else "✗"
    note = f" ({t.note})" if t.note else ""
    evidence = f" [{where or t.source}]" if t.source else ""
    return f"{t.metric} {_fmt(t.actual)}{note} {t.op} {_fmt(t.value)} {mark}{evidence}"


def measured_where(lesson: str, t: TargetResult, folder: Path | None = None) -> str:
    """For a target marked "measured": where its record says it was measured, from ``benchmarks/measured/``
    ("measured on a CPU (AMD EPYC), 2 cores, 2026-12-07, commit abc1234"); "" for other targets."""
    from course_utils.runner import records

    if t.source != "measured":
        return ""
    entry = records.load(lesson, folder or records.RECORDS_DIR).get(t.metric)
    if entry is None or not records.meets(t.op, t.value, entry):
        return "marked measured, but no record meets it"
    return records.describe(entry)


def _json_safe(value: object) -> object:
    """NaN and infinities are not JSON: write them as strings so report.json stays loadable everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(results: list[LessonResult], out_dir: Path, mode: str, env: dict,
                 skip_gpu_lessons: bool = False, command: str = "", machine: dict | None = None,
                 records_dir: Path | None = None) -> tuple[Path, Path]:
    """``machine`` (GPU, VRAM, CPU model, cores) and ``command`` go into report.json so that a record can be written
    from it (``python -m course_utils.runner.records write``)."""
    headline = summary_line(results, mode)
    finished = dt.datetime.now().isoformat(timespec="seconds")
    lessons, where = [], {}
    for r in results:
        item = asdict(r)
        for t, d in zip(r.targets, item["targets"]):
            d["evidence"] = t.evidence
            where[r.lesson, t.metric] = d["measured"] = measured_where(r.lesson, t, records_dir)
        lessons.append(item)
    data = {"summary": headline, "mode": mode, "finished": finished, "skip_gpu_lessons": skip_gpu_lessons,
            "command": command, "machine": machine or {}, "environment": env, "lessons": lessons}
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    with atomic_write(json_path, "w") as handle:
        json.dump(_json_safe(data), handle, indent=2, default=str)

    from course_utils.runner.records import describe_machine

    commit = (env.get("git_commit") or "?") + (" + local changes" if env.get("git_dirty") else "")
    lines = [f"# {headline}", "",
             f"GPU: {env.get('gpu')} · torch {env.get('packages', {}).get('torch', '?')} · "
             f"python {env.get('python')} · commit {commit} · {finished}", ""]
    if machine:
        lines[-1:] = ["", f"Machine: {describe_machine(machine)}" + (f" · command: `{command}`" if command else ""), ""]
    if mode == "full":
        lines += ["A target marked [measured on ...] was met by the run its record names (benchmarks/measured/"
                  "<lesson>.json: the machine, date, commit and command); [estimate] ones are expected values no run "
                  "has confirmed yet. Each shows the value this run saw.", ""]
    lines += ["| lesson | status | time (s) | peak VRAM (GiB) | peak RSS (GiB) | targets (seen op target) |",
              "|---|---|---|---|---|---|"]
    for r in results:
        vram = r.metrics.get("peak_vram_reserved_gb", "-")
        rss = r.metrics.get("peak_rss_gb", "-")
        targets = "; ".join(_target_cell(t, where.get((r.lesson, t.metric), "")) for t in r.targets)
        status = f"{r.status}: {r.error}" if r.error else r.status
        cells = [r.lesson, status, str(r.seconds), _fmt(vram), _fmt(rss), targets or "-"]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    with atomic_write(md_path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return json_path, md_path

