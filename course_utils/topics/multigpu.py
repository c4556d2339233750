"""Plumbing for lesson 13: launch a multi-process run from a notebook cell without ever hanging it.

A multi-process launch (``accelerate launch``, ``torchrun``) starts a launcher that starts one worker per rank. If one
rank dies, the others can block forever in a collective; ``subprocess.run(timeout=...)`` would kill only the launcher
and then wait for output pipes the orphaned workers still hold. :func:`launch` starts the launcher in its own process
group, streams its output into the cell, and on a time limit or a failure ends the whole group and raises one course
sentence naming the run and what happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from course_utils.core.errors import CourseError
from course_utils.core.paths import REPO_ROOT

ACCELERATE_CONFIGS = REPO_ROOT / "configs" / "accelerate"
RECIPE = REPO_ROOT / "recipes" / "train_multi.py"


class LaunchFailed(CourseError):
    """A multi-process run exited non-zero or ran past its time limit (its processes were ended)."""


def free_port() -> int:
    """A TCP port nobody listens on now (for MASTER_PORT): never a fixed port, so parallel runs cannot collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(config: str | None, script_args: Sequence[str], num_processes: int = 2,
                       port: int | None = None, mixed_precision: str = "no") -> list[str]:
    """``accelerate launch --config_file configs/accelerate/<config>.yaml ... recipes/train_multi.py ARGS``
    (``config=None``: the plain single-process ``python recipes/train_multi.py ARGS``)."""
    if config is None:
        return [sys.executable, str(RECIPE), *map(str, script_args)]
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"),
            "--num_processes", str(num_processes), "--mixed_precision", mixed_precision,
            "--main_process_port", str(port or free_port()), str(RECIPE), *map(str, script_args)]


def _end_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(cmd: Sequence[str], name: str, timeout_s: float = 120, env: dict | None = None, cwd: str | None = None,
           echo: bool = True, keep_lines: int = 40) -> str:
    """Run ``cmd`` (a launcher and its workers) with a time limit; return its output.

    Output lines are printed as they come (``echo``). On a non-zero exit or when ``timeout_s`` passes, every process
    of the run is ended and :class:`LaunchFailed` says which run, what happened and the last lines it printed.
    """
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=run_env, cwd=cwd or str(REPO_ROOT), start_new_session=True)
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=keep_lines)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            tail.append(line.rstrip())
            if echo:
                print(line, end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        reader.join(timeout=2)
        raise LaunchFailed(f"{name}: still running after {timeout_s:.0f} s, so all its processes were stopped "
                           "(a rank that died or hangs leaves the others waiting in a collective). Last lines:\n"
                           + "\n".join(tail)) from None
    except BaseException:  # the learner interrupted the cell: take the workers down with it
        _end_group(proc)
        raise
    _end_group(proc, grace_s=0.5)  # a worker the launcher left behind
    reader.join(timeout=2)
    if code != 0:
        raise LaunchFailed(f"{name}: exited with code {code} after {time.monotonic() - start:.0f} s (a rank died or "
                           "the script failed). Last lines:\n" + "\n".join(tail))
    return "".join(lines)


SDXL_ID = "stabilityai/stable-diffusion-xl-base-1.0"


def load_sdxl_pipeline(smoke: bool, model_id: str = SDXL_ID, image_size: int = 64) -> object:
    """SDXL base in fp16 (full mode, ~7 GB download), or a tiny SDXL pipeline of the same classes (smoke mode)."""
    if smoke:
        from course_utils.smoke.multigpu import build_tiny_sdxl_pipeline

        return build_tiny_sdxl_pipeline(image_size=image_size // 2)  # VAE tiles images larger than this
    import torch
    from diffusers import StableDiffusionXLPipeline

    from course_utils.core.hub import hub_errors_explained

    with hub_errors_explained(model_id):
        return StableDiffusionXLPipeline.from_pretrained(model_id, dtype=torch.float16, variant="fp16")


def main(argv: Sequence[str] | None = None) -> int:
    """``make engines``: one process and each engine on the tiny GPT; loss max |diff| and per-rank shares."""
    import argparse
    import json
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    parser = argparse.ArgumentParser(prog="python -m course_utils.topics.multigpu", description=main.__doc__)
    parser.add_argument("--engines", nargs="+", default=["ddp", "fsdp", "zero2", "zero3"])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--timeout_s", type=float, default=900)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="engines-"))
    text = REPO_ROOT / "datasets" / "course" / "tiny_corpus" / "lamplighter.txt"
    script = ["--text_file", text, "--n_layer", 2, "--n_head", 2, "--n_embd", 64, "--block_size", 32,
              "--global_batch", 4 * args.num_processes, "--max_steps", 20, "--lr", 3e-3, "--warmup_steps", 2,
              "--eval_interval", 10, "--eval_batches", 2]

    def run(engine: str) -> str:
        config = None if engine == "single" else engine
        return launch(accelerate_command(config, [*script, "--output_dir", out / engine], args.num_processes),
                      engine, timeout_s=args.timeout_s, echo=False)

    with ThreadPoolExecutor(2) as pool:  # DeepSpeed builds its CPU op once: let it, before running engines in pairs
        list(pool.map(run, ["single", *args.engines]))
    runs = {name: json.loads((out / name / "metrics.json").read_text()) for name in ["single", *args.engines]}
    single, full = runs["single"]["history"]["loss"], runs["single"]["ranks"][0]
    for engine in args.engines:
        diff = max(abs(a - b) for a, b in zip(single, runs[engine]["history"]["loss"]))
        shares = [" ".join(f"{k.split('_')[0]} {r[k] / full[k]:.2f}" if r[k] is not None else f"{k.split('_')[0]} -"
                           for k in ("param_bytes", "grad_bytes", "optimizer_bytes")) for r in runs[engine]["ranks"]]
        print(f"{engine:<6} {runs[engine]['engine']:<10} loss max |diff| vs one process {diff:.1e}; per rank: "
              + " | ".join(shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
