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
import datetime as dt
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from course_utils.core.errors import BadParameter
from course_utils.core.paths import REPO_ROOT
from course_utils.runner import plan
from course_utils.runner.lessons import NOTEBOOKS, discover, lesson_meta  # noqa: F401 (re-exported)
from course_utils.runner.params import check_overrides, lesson_parameters, parse_value  # noqa: F401 (re-exported)
from course_utils.runner.report import NEEDS_GPU, LessonResult, summary_line, write_report  # noqa: F401
from course_utils.runner.targets import OPS, BadTarget, TargetResult, check_targets, parse_targets  # noqa: F401

#: Seconds a cell that declares nothing may run before the lesson is stopped and reported failed (``--timeout``
#: overrides). A full-mode cell that downloads or trains for longer declares it and gets more: see :mod:`.plan`.
CELL_TIMEOUT_S = plan.DEFAULT_CELL_S


def _kernel_for(path: Path, override: str | None) -> str:
    if override:
        return override
    from jupyter_client.kernelspec import KernelSpecManager

    wanted = json.loads(path.read_text()).get("metadata", {}).get("kernelspec", {}).get("name", "python3")
    return wanted if wanted in KernelSpecManager().find_kernel_specs() else "python3"



def _kernel_manager_class():
    """A kernel manager that talks to the kernel over local IPC sockets instead of TCP on localhost.

    Over TCP, ipykernel warns (rightly) that the traffic is unencrypted and open to other local users. Each kernel's
    IPC sockets live in a folder of their own that only the user can open (``mkdtemp``, mode 0700): jupyter_client's
    default would name them ``kernel-ipc-1``... in the notebook's folder, where two lessons started at the same time
    (``pytest -n 2``, parallel course runs) pick the same names and one kernel never answers. Windows has no IPC
    transport: keep the default there.
    """
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager as KernelManager  # what nbclient uses by default
    from traitlets import default

    if os.name != "posix":
        return KernelManager

    class IPCKernelManager(KernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            return os.path.join(tempfile.mkdtemp(prefix="course-kernel-"), "ipc")

        def write_connection_file(self, **kwargs) -> None:
            os.makedirs(os.path.dirname(self.ip), mode=0o700, exist_ok=True)  # again after a restart's clean-up
            super().write_connection_file(**kwargs)

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)

    return IPCKernelManager


def _prepare(path: Path, params: dict, kernel: str):
    """The notebook with ``params`` injected after its parameters cell (papermill's cell, tagged
    ``injected-parameters``) and, in smoke runs, the VRAM ledger's hook after them (tagged ``injected-ledger``).
    The names were checked against the parameters cell already (:func:`check_overrides`), so papermill's own
    guessing, and its warnings about lines it cannot parse, are not needed."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(path))
    if params:
        nb = parameterize_notebook(nb, params, kernel_name=kernel, language="python")
    if os.environ.get("SMOKE") == "1":  # the VRAM ledger (course_utils.core.ledger): after each cell, the full-mode
        import nbformat                  # GiB of the models still alive, into <lesson>.ledger.json

        cell = nbformat.v4.new_code_cell("from course_utils.core.ledger import install_cell_hook\n"
                                         "install_cell_hook(get_ipython()); del install_cell_hook")
        cell.metadata["tags"] = ["injected-ledger"]
        tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
        after = max((i for i, t in enumerate(tags) if "parameters" in t or "injected-parameters" in t), default=-1)
        nb.cells.insert(after + 1, cell)
    return nb


def _stop_leftover_processes(tag: str, grace_s: float = 3.0) -> list[int]:
    """End the processes a lesson started that outlived its kernel (e.g. the workers of a multi-process launch in
    their own session, still blocked in a collective after a rank died). They are found by the run tag the runner put
    in the kernel's environment, which children inherit; nothing else is touched. Linux only (/proc); [] elsewhere."""
    import signal

    proc = Path("/proc")
    if not proc.is_dir():
        return []
    needle = f"COURSE_RUN_TAG={tag}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone already, or not ours to read
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in found:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while alive and sig == signal.SIGTERM and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        if not alive:
            break
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def run_lesson(path: Path, out_dir: Path, mode: str, params: dict | None = None, kernel: str | None = None,
               timeout: int | None = None, progress: bool = True) -> LessonResult:
    """Run one lesson with papermill; never raises for a lesson that fails, dies or hangs: the result says so.

    ``params`` are checked against the lesson's parameters cell first (a bad name or value is a
    :class:`BadParameter`). ``timeout`` is the seconds a cell that declares nothing may take (default
    :data:`CELL_TIMEOUT_S`; 0: no limit for any cell); in full mode a cell that declares a download or a long
    computation in its metadata gets what it needs on top (:func:`course_utils.runner.plan.cell_limit_s`).
    Whatever the lesson recorded before a cell failed or was stopped stays in the result.
    """
    import papermill as pm

    path = Path(path)
    values = check_overrides(path, dict(params or {}))
    meta = lesson_meta(path)
    targets = parse_targets(meta.get("targets", {}).get(mode, {}), mode, path.stem)
    output = Path(out_dir) / path.name
    metrics_file = Path(out_dir) / f"{path.stem}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    plan.check_lesson(json.loads(path.read_text()), path.stem)  # a bad declaration: one sentence, before the kernel
    if timeout is None:
        timeout = CELL_TIMEOUT_S[mode]
    kernel_name = _kernel_for(path, kernel)
    env_before = dict(os.environ)
    os.environ["COURSE_METRICS_FILE"] = str(metrics_file)
    os.environ["SMOKE"] = "1" if mode == "smoke" else "0"  # the parameters cell reads SMOKE from the environment
    tag = f"{path.stem}-{os.getpid()}-{time.time_ns()}"
    os.environ["COURSE_RUN_TAG"] = tag  # inherited by every process the lesson starts: see _stop_leftover_processes
    start = time.perf_counter()
    status, error = "passed", ""
    try:
        pm.execute_notebook(
            _prepare(path, values, kernel_name), str(output), kernel_name=kernel_name, cwd=str(path.parent),
            progress_bar=progress, log_output=False, kernel_manager_class=_kernel_manager_class(),
            timeout_func=plan.timeout_func(mode, timeout, path.stem),  # nbclient asks it before each cell
        )
    except pm.PapermillExecutionError as err:
        status = NEEDS_GPU if err.ename == "NeedsGPU" else "failed"
        error = f"{err.ename}: {err.evalue}".strip()
    except Exception as err:  # kernel died, cell timed out, bad notebook: keep going with the next lesson
        status, error = "failed", f"{type(err).__name__}: {err}".strip()
        if "Timeout" in type(err).__name__ or "timed out" in str(err):
            seconds = re.search(r"after (\d+) seconds", str(err))
            limit = f"its {seconds.group(1)} s limit" if seconds else "its time limit"
            error = (f"{path.stem}: a cell ran longer than {limit} (a cell that downloads or trains for long declares it "
                     f"in its metadata, see course_utils/runner/plan.py; --timeout changes the default): {error}")
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        leftover = _stop_leftover_processes(tag)
    if leftover and status != "passed":
        error += (f" (stopped {len(leftover)} process(es) the lesson had started that were still running, e.g. the "
                  f"workers of a multi-process launch: pid {', '.join(map(str, leftover))})")
    seconds = time.perf_counter() - start
    metrics: dict = {}
    if metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as err:
            status, error = "failed", error or f"unreadable metrics file {metrics_file.name}: {err}"
    results = [] if status == NEEDS_GPU else check_targets(targets, metrics)
    for result in results:  # recorded as None: the lesson could not measure it here (peak VRAM without a GPU)
        if result.actual is None and result.metric in metrics:
            result.note = "not measured"
    if status == NEEDS_GPU:  # list the targets anyway, with their source, as not reached
        results = [TargetResult(t.metric, t.op, t.value, None, False, t.source, "not run") for t in targets]
    if status == "passed" and not all(t.met for t in results):
        status = "missed target"
    return LessonResult(path.stem, meta.get("title", path.stem), status, round(seconds, 1), str(output), metrics,
                        results, error)


def _nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver, asked without CUDA: NVML (where nvidia-ml-py is installed), else the
    device files the driver creates (/dev/nvidia0 on Linux, /dev/dxg under WSL2)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no nvidia-ml-py, or no NVML library: no driver it can see
        pass
    return any(Path(dev).exists() for dev in ("/dev/nvidia0", "/dev/dxg"))


_SNAPSHOT = ("import json; from course_utils.core.repro import environment_snapshot; "
             "print(json.dumps(environment_snapshot(), default=str))")


def environment() -> dict:
    """The run's environment (python, packages, commit, GPU), taken without creating a CUDA context in this process.

    Asking PyTorch for the card's memory creates a CUDA context (~0.3-0.5 GiB of VRAM) that would stay in the runner
    for the whole run, and every lesson would have that much less. Where there is an NVIDIA driver the snapshot is
    taken in a child process that ends before the first lesson starts; without one there is no context to create.
    """
    from course_utils.core.repro import environment_snapshot

    if not _nvidia_driver_present():
        return environment_snapshot()
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True, timeout=300,
                             cwd=str(REPO_ROOT), check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        print(f"course-run: could not describe the GPU in a child process ({type(err).__name__}); the report will "
              "not name it.", file=sys.stderr)
        from course_utils.core.repro import git_commit

        return {"python": sys.version.split()[0], "git_commit": git_commit(), "gpu": "unknown (snapshot failed)"}


class _DropPapermillNoise(logging.Filter):
    """Papermill logs at INFO what the runner prints itself (input/output paths); keep only real problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="course-run", description="Run the course's lessons and write runs/<time>/report.md and report.json.")
    parser.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all, in order)")
    parser.add_argument("--mode", choices=("full", "smoke"), default=os.environ.get("MODE", "full"))
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a knob of the lessons' parameters cell (checked: it must exist, with the right type)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs", help="where runs/<timestamp>/ goes")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS,
                        help="folder of the lessons (default notebooks/; e.g. notebooks-fr/ for the French build)")
    parser.add_argument("--kernel", help="Jupyter kernel (default: the notebook's, else python3)")
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"seconds a cell that declares nothing may run (default {CELL_TIMEOUT_S['full']} full, "
                             f"{CELL_TIMEOUT_S['smoke']} smoke; 0: no limit). In full mode a cell that declares a "
                             "download or a long computation gets what it needs on top (python -m "
                             "course_utils.runner.plan NN shows it)")
    parser.add_argument("--skip-gpu-lessons", action="store_true",
                        default=os.environ.get("SKIP_GPU", "") not in ("", "0"),
                        help="exit 0 even if lessons could not run for want of a GPU (also: SKIP_GPU=1). "
                             "Without it, a full run that skipped any lesson fails.")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.timeout is not None and args.timeout < 0:
        parser.error("--timeout must be 0 (no limit) or a number of seconds")

    lessons = discover(args.lessons, args.notebooks)
    # check every lesson's targets and every -p before running anything: a typo should not cost an hour's run
    try:
        params = {name: value for name, value in args.parameter}
        for path in lessons:
            check_overrides(path, params)
            parse_targets(lesson_meta(path).get("targets", {}).get(args.mode, {}), args.mode, path.stem)
            plan.check_lesson(json.loads(path.read_text()), path.stem)
    except (BadParameter, BadTarget) as err:
        print(f"course-run: {err}", file=sys.stderr)
        return 2
    logging.getLogger("papermill").addFilter(_DropPapermillNoise())
    out_dir = args.out / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    from course_utils.runner import records

    env = environment()
    env["git_dirty"] = records.git_dirty()
    command = ("" if "--mode" in argv else f"MODE={args.mode} ") + shlex.join(["course-run", *argv])
    print(f"Running {len(lessons)} lesson(s) in {args.mode} mode -> {out_dir}")
    results = []
    for i, path in enumerate(lessons, 1):
        print(f"[{i}/{len(lessons)}] {path.stem}", flush=True)
        result = run_lesson(path, out_dir, args.mode, params, args.kernel, args.timeout)
        results.append(result)
        print(f"    {result.status} in {result.seconds:.1f} s" + (f" — {result.error}" if result.error else ""), flush=True)
    _, md = write_report(results, out_dir, args.mode, env, args.skip_gpu_lessons, command, records.this_machine(env))
    print(md.read_text())
    bad = [r for r in results if r.status in ("failed", "missed target")]
    skipped = [r for r in results if r.status == NEEDS_GPU]
    if skipped and not args.skip_gpu_lessons:
        print(f"course-run: {len(skipped)} lesson(s) could not run for want of a GPU "
              f"({', '.join(r.lesson for r in skipped)}); run them on a GPU, run --mode smoke, or pass "
              "--skip-gpu-lessons (SKIP_GPU=1 make course) to accept the skip.", file=sys.stderr)
    return 1 if bad or (skipped and not args.skip_gpu_lessons) else 0


if __name__ == "__main__":
    sys.exit(main())
