"""Measured records: what a run measured, committed beside the course, so that "measured" points to evidence.

A full-mode target marked ``"measured"`` in a lesson's metadata is backed by an entry in
``benchmarks/measured/<lesson>.json``, written from a ``course-run`` report by this module::

    {"lesson": "01_sklearn_basics",
     "targets": {"cancer_roc_auc": {"value": 0.995, "mode": "full", "command": "course-run --mode full 01",
                                    "commit": "c928caa", "dirty": false, "date": "2026-12-07",
                                    "machine": {"gpu": null, "vram_gb": null, "cpu": "AMD EPYC", "cores": 2},
                                    "note": ""}}}

``tests/test_records.py`` holds every notebook to it: a "measured" target needs an entry whose value meets it.
The smoke times the README and the lessons print live in ``benchmarks/measured/smoke_times.json``, written from a
smoke run's report and applied to README.md, each lesson's ``time_smoke`` and its title table (and the
translations' copies of that number) by the same command.

    python -m course_utils.runner.records write runs/<time>/report.json            # every lesson of a full run
    python -m course_utils.runner.records write runs/<time>/report.json --lesson 15 \\
        --metric ppo_test_return --metric dqn_test_return --mark-measured
    python -m course_utils.runner.records smoke-times runs/<time>/report.json --apply
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from course_utils.core.paths import REPO_ROOT, atomic_write

RECORDS_DIR = REPO_ROOT / "benchmarks" / "measured"
SMOKE_TIMES = "smoke_times.json"
FIELDS = ("value", "mode", "command", "commit", "date", "machine")
#: Smoke times are shown rounded *up* to a multiple of this many seconds ("23.4 s" -> "25 s").
SMOKE_STEP_S = 5


class BadRecord(ValueError):
    """A report that cannot become a record (wrong mode, a failed lesson, a metric it did not record)."""


# --- the machine -----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def this_machine(env: dict | None = None) -> dict:
    """What ran: the GPU (None without one) and its VRAM, the CPU model and the cores this process may use."""
    env = env or {}
    gpu = env.get("gpu")
    has_gpu = bool(gpu) and not str(gpu).startswith(("none", "unknown"))
    return {"gpu": gpu if has_gpu else None, "vram_gb": env.get("vram_gb") if has_gpu else None,
            "cpu": cpu_model(), "cores": cpu_cores()}


def git_dirty() -> bool | None:
    """True when the work tree has changes that the commit does not hold (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def describe_machine(machine: dict) -> str:
    """``a CPU (AMD EPYC), 2 cores`` or ``an NVIDIA GeForce RTX 4070 Ti (12.0 GiB), 16 cores``."""
    cores = machine.get("cores")
    tail = f", {cores} cores" if cores else ""
    if machine.get("gpu"):
        vram = machine.get("vram_gb")
        return f"a GPU, {machine['gpu']}" + (f" ({vram:g} GiB)" if vram else "") + tail
    return f"a CPU ({machine.get('cpu') or 'unknown model'})" + tail


def describe(entry: dict) -> str:
    """Where a record was measured: ``measured on a CPU (AMD EPYC), 2 cores, 2026-12-07, commit abc1234``."""
    commit = entry.get("commit") or "?"
    if entry.get("dirty"):
        commit += " + local changes"
    mode = "" if entry.get("mode") == "full" else f", {entry.get('mode')} mode"
    return f"measured on {describe_machine(entry.get('machine') or {})}, {entry.get('date')}, commit {commit}{mode}"


# --- reading and checking --------------------------------------------------------------------------------------
def record_path(lesson: str, folder: Path = RECORDS_DIR) -> Path:
    return Path(folder) / f"{lesson}.json"


def _shown(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def load(lesson: str, folder: Path = RECORDS_DIR) -> dict[str, dict]:
    """A lesson's record entries by metric ({} when it has none)."""
    path = record_path(lesson, folder)
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("targets", {})


def meets(op: str, value: object, entry: dict) -> bool:
    from course_utils.runner.targets import OPS

    seen = entry.get("value")
    if isinstance(value, str):
        return seen == value
    if not isinstance(seen, numbers.Real) or isinstance(seen, bool) or math.isnan(seen):
        return False
    return bool(OPS[op](seen, value))


def measured_problems(path: Path, folder: Path = RECORDS_DIR) -> list[str]:
    """One sentence for each full target of a lesson marked "measured" that no record backs (or whose record
    misses it, or lacks the command, commit, date or machine). Empty: every "measured" has its evidence."""
    from course_utils.runner.lessons import lesson_meta
    from course_utils.runner.targets import parse_targets

    path = Path(path)
    entries = load(path.stem, folder)
    problems = []
    for target in parse_targets(lesson_meta(path).get("targets", {}).get("full", {}), "full", path.stem):
        if target.source != "measured":
            continue
        where = f"{path.stem}: full target {target.metric} {target.op} {target.value!r} is marked \"measured\""
        entry = entries.get(target.metric)
        if entry is None:
            problems.append(f"{where} but {_shown(record_path(path.stem, folder))} has no record of it: write one "
                            "from a run's report (python -m course_utils.runner.records write ...) or mark it "
                            "\"estimate\".")
            continue
        missing = [f for f in FIELDS if entry.get(f) in (None, "", {})]
        if missing:
            problems.append(f"{where} but its record lacks {', '.join(missing)}.")
        elif not meets(target.op, target.value, entry):
            problems.append(f"{where} but its record measured {entry.get('value')!r}, which misses it: "
                            "lower the target to what was measured, or mark it \"estimate\".")
    return problems


# --- writing ----------------------------------------------------------------------------------------------------
def _load_report(report: Path) -> dict:
    try:
        return json.loads(Path(report).read_text())
    except (OSError, ValueError) as err:
        raise BadRecord(f"cannot read the run's report {report}: {err}") from None


def _provenance(data: dict) -> dict:
    env = data.get("environment", {})
    machine = data.get("machine") or {}
    if not machine:
        raise BadRecord("the report names no machine (it was written by an older course-run); run the lesson again.")
    return {"mode": data.get("mode"), "command": data.get("command") or "", "commit": env.get("git_commit"),
            "dirty": env.get("git_dirty"), "date": str(data.get("finished", ""))[:10], "machine": machine}


def entries_from_report(data: dict, lesson: dict, metrics: list[str] | None = None, note: str = "") -> dict[str, dict]:
    """The record entries a lesson's result in a report gives: each full target's value (or only ``metrics``)."""
    name = lesson["lesson"]
    if lesson["status"] not in ("passed", "missed target"):
        raise BadRecord(f"{name} did not run to the end ({lesson['status']}: {lesson.get('error', '')}); "
                        "nothing it printed is a measurement.")
    base = _provenance(data)
    if base["mode"] != "full" and not note:
        raise BadRecord(f"the report is of a {base['mode']} run: a full-mode target may be recorded from it only with "
                        "--note saying why the metric does not depend on the mode.")
    seen = lesson.get("metrics", {})
    wanted = metrics or [t["metric"] for t in lesson.get("targets", [])]
    if base["mode"] != "full" and not metrics:
        raise BadRecord("name the mode-independent metrics to record from a smoke run with --metric.")
    entries = {}
    for metric in wanted:
        value = seen.get(metric)
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (numbers.Real, str)) or (isinstance(value, float) and not math.isfinite(value)):
            raise BadRecord(f"{name} recorded no number for {metric} ({value!r}); a record holds measured values only.")
        entries[metric] = {"value": value, **base, "note": note}
    return entries


def write_records(report: Path, lessons: list[str] | None = None, metrics: list[str] | None = None, note: str = "",
                  mark_measured: bool = False, folder: Path = RECORDS_DIR,
                  notebooks: Path = REPO_ROOT / "notebooks") -> list[Path]:
    """Write (or update) ``<folder>/<lesson>.json`` for the lessons of a run's report; return the files written.

    ``mark_measured``: also set each recorded full target whose record meets it to "measured" in the lesson's
    metadata (a target the record misses stays as it is)."""
    data = _load_report(report)
    chosen = [item for item in data.get("lessons", [])
              if not lessons or any(item["lesson"] == s or item["lesson"].split("_")[0] == s.zfill(2) for s in lessons)]
    if not chosen:
        raise BadRecord(f"the report holds none of the lessons {lessons}.")
    written = []
    for item in chosen:
        entries = entries_from_report(data, item, metrics, note)
        path = record_path(item["lesson"], folder)
        existing = json.loads(path.read_text()) if path.exists() else {"lesson": item["lesson"], "targets": {}}
        existing["targets"].update(entries)
        existing["targets"] = dict(sorted(existing["targets"].items()))
        Path(folder).mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as handle:
            handle.write(json.dumps(existing, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
        if mark_measured:
            _mark_measured(Path(notebooks) / f"{item['lesson']}.ipynb", entries)
    return written


def _mark_measured(notebook: Path, entries: dict[str, dict]) -> None:
    nb = json.loads(notebook.read_text())
    full = nb["metadata"]["course"]["targets"]["full"]
    for metric, entry in entries.items():
        if metric in full and meets(full[metric][0], full[metric][1], entry):
            full[metric] = [full[metric][0], full[metric][1], "measured"]
    _save_notebook(notebook, nb)


def _save_notebook(path: Path, nb: dict) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


# --- smoke times ---------------------------------------------------------------------------------------------
def shown_seconds(seconds: float) -> int:
    """The smoke time the course prints for a measured one: rounded up to a multiple of :data:`SMOKE_STEP_S`."""
    return max(SMOKE_STEP_S, math.ceil(seconds / SMOKE_STEP_S - 1e-9) * SMOKE_STEP_S)


def write_smoke_times(report: Path, folder: Path = RECORDS_DIR,
                      notebooks: Path = REPO_ROOT / "notebooks") -> Path:
    """``smoke_times.json`` from a smoke run of every lesson (all passed): seconds per lesson, with provenance."""
    data = _load_report(report)
    base = _provenance(data)
    if base["mode"] != "smoke":
        raise BadRecord(f"the report is of a {base['mode']} run; smoke times come from `MODE=smoke make course`.")
    lessons = {item["lesson"]: item for item in data.get("lessons", [])}
    expected = sorted(p.stem for p in Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
    missing = [name for name in expected if name not in lessons]
    if missing:
        raise BadRecord(f"the run did not include {', '.join(missing)}: smoke times come from one run of every lesson.")
    failed = [f"{name} ({item['status']})" for name, item in lessons.items() if item["status"] != "passed"]
    if failed:
        raise BadRecord(f"{', '.join(failed)} did not pass: a failed lesson's time is not its smoke time.")
    record = {**{k: v for k, v in base.items() if k != "mode"},
              "rule": f"shown as the seconds rounded up to a multiple of {SMOKE_STEP_S} s",
              "seconds": {name: lessons[name]["seconds"] for name in expected}}
    path = Path(folder) / SMOKE_TIMES
    Path(folder).mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def load_smoke_times(folder: Path = RECORDS_DIR) -> dict:
    path = Path(folder) / SMOKE_TIMES
    return json.loads(path.read_text()) if path.exists() else {}


_SMOKE_TAIL = re.compile(r"(\d+)(\s*s\s*)$")  # the smoke part ends a "full / smoke" cell: "... / ~25 s", "/ 約 25 s"


def smoke_part(cell: str) -> int | None:
    """The smoke seconds at the end of a "time full / smoke" table cell ("2 min / 15 s" -> 15)."""
    match = _SMOKE_TAIL.search(cell.strip())
    return int(match.group(1)) if match and "/" in cell else None


def _replace_smoke_part(cell: str, seconds: int) -> str:
    return _SMOKE_TAIL.sub(lambda m: f"{seconds}{m.group(2)}", cell.rstrip()) + cell[len(cell.rstrip()):]


def _table_time_cell(text: str, column: int | None = None) -> tuple[int, int] | None:
    """(line index, column index) of the time cell in a markdown table's first data row; the column is the one
    whose header mentions "smoke" (or ``column``)."""
    lines = text.split("\n")
    for i, line in enumerate(lines[:-2]):
        if line.startswith("|") and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip().strip("|").split("|")]
            col = column if column is not None else next((k for k, c in enumerate(header) if "smoke" in c), None)
            if col is not None:
                return i + 2, col
    return None


def title_time_cell(text: str, column: int | None = None) -> str | None:
    found = _table_time_cell(text, column)
    if not found:
        return None
    line, col = found
    cells = text.split("\n")[line].strip().strip("|").split("|")
    return cells[col] if col < len(cells) else None


def _rewrite_title(text: str, seconds: int, column: int | None = None) -> str:
    found = _table_time_cell(text, column)
    if not found:
        return text
    line, col = found
    lines = text.split("\n")
    row = lines[line]
    inner = row.strip().strip("|").split("|")
    inner[col] = _replace_smoke_part(inner[col], seconds)
    lines[line] = "|" + "|".join(inner) + "|"
    return "\n".join(lines)


def readme_smoke_cells(readme_text: str) -> dict[str, tuple[int, str]]:
    """The README's lesson rows by lesson stem: (line index, the last cell, "time full / smoke")."""
    found = {}
    for i, line in enumerate(readme_text.split("\n")):
        match = re.match(r"\| (?:\d+ \| )?\[(\d\d_\w+)\.ipynb\]", line)
        if match:
            found[match.group(1)] = (i, line.strip().strip("|").split("|")[-1])
    return found


def apply_smoke_times(folder: Path = RECORDS_DIR, notebooks: Path = REPO_ROOT / "notebooks",
                      readme: Path = REPO_ROOT / "README.md",
                      translations: Path = REPO_ROOT / "translations") -> list[Path]:
    """Write the recorded smoke times into README.md's tables, each lesson's ``time_smoke`` and the smoke part of
    its title table, in English and in every translation of it (whose hash follows when it was up to date)."""
    from course_utils.i18n.catalog import LANGUAGES, catalogue_path, cell_key, dumps, sha256

    record = load_smoke_times(folder)
    if not record:
        raise BadRecord(f"no {SMOKE_TIMES} in {folder}: write it first (smoke-times REPORT).")
    changed = []
    text = Path(readme).read_text()
    lines = text.split("\n")
    for stem, (i, cell) in readme_smoke_cells(text).items():
        if stem in record["seconds"]:
            cells = lines[i].strip().strip("|").split("|")
            cells[-1] = _replace_smoke_part(cells[-1], shown_seconds(record["seconds"][stem]))
            lines[i] = "|" + "|".join(cells) + "|"
    if "\n".join(lines) != text:
        Path(readme).write_text("\n".join(lines))
        changed.append(Path(readme))
    for stem, seconds in record["seconds"].items():
        path = Path(notebooks) / f"{stem}.ipynb"
        if not path.exists():
            continue
        shown = shown_seconds(seconds)
        nb = json.loads(path.read_text())
        before = json.dumps(nb)
        nb["metadata"]["course"]["time_smoke"] = f"{shown} s"
        index, cell = next((k, c) for k, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown")
        old_text = "".join(cell["source"])
        new_text = _rewrite_title(old_text, shown)
        cell["source"] = new_text.splitlines(keepends=True)
        if json.dumps(nb) != before:
            _save_notebook(path, nb)
            changed.append(path)
        if new_text == old_text:
            continue
        key = cell_key(cell, index)
        column = _table_time_cell(old_text)[1]
        for lang in LANGUAGES:
            catalogue = catalogue_path(lang, path, translations)
            if not catalogue.exists():
                continue
            data = json.loads(catalogue.read_text())
            entry = data.get("cells", {}).get(key)
            if not entry:
                continue
            entry["text"] = _rewrite_title(entry["text"], shown, column)
            if entry.get("source_sha256") == sha256(old_text):  # it was current: it still is (only the number moved)
                entry["source_sha256"] = sha256(new_text)
            with atomic_write(catalogue, "w") as handle:
                handle.write(dumps(data))
            changed.append(catalogue)
    return changed


# --- command line ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.runner.records",
                                     description="Write measured records (benchmarks/measured/) from a course-run report.")
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="record the full targets a run measured, per lesson")
    write.add_argument("report", type=Path, help="runs/<time>/report.json")
    write.add_argument("--lesson", action="append", default=[], help="only these lessons (number or name; repeat)")
    write.add_argument("--metric", action="append", default=[], help="only these metrics (repeat); default: every "
                       "full target of the lesson")
    write.add_argument("--note", default="", help="why a figure from a smoke run holds in full mode, or anything a "
                       "reader of the record must know")
    write.add_argument("--mark-measured", action="store_true",
                       help="also mark each recorded target that its record meets \"measured\" in the lesson's metadata")
    smoke = sub.add_parser("smoke-times", help="record a smoke run's time per lesson (and --apply it)")
    smoke.add_argument("report", type=Path, nargs="?", help="runs/<time>/report.json of `MODE=smoke make course`")
    smoke.add_argument("--apply", action="store_true", help="write the times into README.md, each lesson's "
                       "time_smoke and title table, and the translations")
    sub.add_parser("check", help="list every \"measured\" target without a record that meets it")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            for path in write_records(args.report, args.lesson, args.metric, args.note, args.mark_measured):
                print(f"wrote {_shown(path)}")
        elif args.command == "smoke-times":
            if args.report is None and not args.apply:
                parser.error("smoke-times needs a report, --apply, or both")
            if args.report is not None:
                print(f"wrote {_shown(write_smoke_times(args.report))}")
            if args.apply:
                for path in apply_smoke_times():
                    print(f"updated {_shown(path)}")
        else:
            from course_utils.runner.lessons import discover

            problems = [p for path in discover() for p in measured_problems(path)]
            print("\n".join(problems) or "every \"measured\" target has a record that meets it")
            return 1 if problems else 0
    except BadRecord as err:
        print(f"records: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
