"""Plumbing for lesson 13: launch a multi-process run from a notebook cell without ever hanging it.

A multi-process launch (``accelerate launch``, ``torchrun``) starts a launcher that starts one worker per rank. If one
rank dies, the others can block forever in a collective; ``subprocess.run(timeout=...)`` would kill only the launcher
and then wait for output pipes the orphaned workers still hold. :func:`launch` starts the launcher in its own process
group, streams its output into the cell, and on a time limit or a failure ends the whole group and raises one course
sentence naming the run and what happened.

Part 2's offload plans come from :func:`offload_plan`: the device map ``from_pretrained`` computes for a (4-bit)
causal LM and a ``max_memory``, worked out on the ``meta`` device, so the lesson asserts what the library will do.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from course_utils import assets
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


SDXL_ID = assets.id("sdxl-base-1.0")
#: SDXL base 1.0's pinned commit (datasets/assets.toml: the snapshot public hub caches of the model hold).
SDXL_REVISION = assets.revision("sdxl-base-1.0")


def load_sdxl_pipeline(smoke: bool, model_id: str = SDXL_ID, image_size: int = 64,
                       revision: str | None = SDXL_REVISION) -> object:
    """SDXL base in fp16 at a pinned commit (full mode, ~7 GB download), or a tiny SDXL pipeline of the same classes
    (smoke mode)."""
    if smoke:
        from course_utils.smoke.multigpu import build_tiny_sdxl_pipeline

        return build_tiny_sdxl_pipeline(image_size=image_size // 2)  # VAE tiles images larger than this
    import torch
    from diffusers import StableDiffusionXLPipeline

    from course_utils.core.hub import check_revision, hub_errors_explained

    check_revision(model_id, revision)  # a local folder, or a hub id pinned to a commit: else one sentence, now
    with hub_errors_explained(model_id):
        return StableDiffusionXLPipeline.from_pretrained(model_id, revision=revision, dtype=torch.float16,
                                                         variant="fp16")


def _meta_causal_lm(config: Any, quantization_config: Any, dtype: Any) -> tuple[Any, Any]:
    """A causal LM of ``config`` on the ``meta`` device, its layers replaced as bitsandbytes' quantiser replaces them
    in ``from_pretrained``; and that quantiser (``None`` unquantised)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    dtype = dtype or torch.bfloat16
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if quantization_config is None:
        return model, None
    quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
    quantizer.preprocess_model(model=model, dtype=dtype, device_map="auto")
    return model, quantizer


def offload_plan(config: Any, max_memory: dict, quantization_config: Any = None, dtype: Any = None) -> dict:
    """The device map ``from_pretrained(..., device_map="auto", max_memory=max_memory, quantization_config=...)``
    computes for a causal LM of this ``config``, without a weight or a GPU: transformers' own planning code run on a
    model built on the ``meta`` device.

    That path, step by step: the model's ``nn.Linear`` layers replaced by bitsandbytes' (a 4-bit weight counts half a
    byte; embeddings, norms and the LM head stay in ``dtype``), every ``max_memory`` budget cut to 90 % for the
    quantiser's buffers, then ``infer_auto_device_map``, which keeps room on the GPU for the largest layer it may have
    to bring back from CPU RAM. Layers placed in CPU RAM need ``llm_int8_enable_fp32_cpu_offload`` (bitsandbytes then
    loads them unquantised): the plan is computed with it set, as a load with the plan must be.
    """
    import copy

    from transformers.integrations.accelerate import _get_device_map

    if quantization_config is not None:
        quantization_config = copy.deepcopy(quantization_config)
        quantization_config.llm_int8_enable_fp32_cpu_offload = True
    model, quantizer = _meta_causal_lm(config, quantization_config, dtype)
    return dict(_get_device_map(model, "auto", dict(max_memory), quantizer))


def placement_bytes(config: Any, quantization_config: Any = None, dtype: Any = None) -> int:
    """The bytes transformers counts when it places a causal LM of this ``config`` (parameters and buffers, a 4-bit
    weight half a byte): what :func:`offload_plan` fills the budgets with."""
    from transformers.integrations.accelerate import compute_module_sizes

    model, quantizer = _meta_causal_lm(config, quantization_config, dtype)
    return int(compute_module_sizes(model, quantizer)[0][""])


def layers_per_device(device_map: dict, n_layers: int, prefix: str = "model.layers") -> dict:
    """How many decoder layers (``<prefix>.<i>``) a device map puts on each device (the longest matching key of the
    map decides, as accelerate's dispatch does)."""
    from collections import Counter

    def device_of(name: str) -> Any:
        keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
        return device_map[max(keys, key=len)]

    return dict(Counter(device_of(f"{prefix}.{i}") for i in range(n_layers)))


#: How far each engine's loss may leave the single-process curve (max |difference| over the steps): in fp32 (``"no"``)
#: the engines do the same arithmetic up to the order of float additions; in bf16 and fp16 (pre-Ampere cards, with a
#: gradient scaler) they round differently. The 16-bit values are estimates: no GPU has run them.
CURVE_TOLERANCE = {"no": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def max_diff(reference: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """The largest |difference| between two loss curves and its step (a NaN counts as the largest: no match)."""
    diffs = [abs(a - b) for a, b in zip(reference, losses)]
    step = max(range(len(diffs)), key=lambda i: math.inf if math.isnan(diffs[i]) else diffs[i], default=0)
    return (diffs[step] if diffs else 0.0), step


def curve_problems(runs: dict[str, dict], tolerance: float) -> list[str]:
    """One sentence per engine whose loss curve leaves the single-process one (``runs["single"]``) by more than
    ``tolerance`` or has another length, and one if the single process's loss did not fall (engines that match a
    run that learned nothing prove nothing). Empty when every engine follows a curve that falls."""
    single = runs["single"]["history"]["loss"]
    problems = []
    if not single:
        problems.append("the single-process run recorded no loss.")
    elif not single[-1] < single[0]:
        problems.append(f"the single-process loss did not fall ({single[0]:.4f} -> {single[-1]:.4f}): check --lr and "
                        "--max_steps before comparing engines with it.")
    for engine, run in runs.items():
        if engine == "single":
            continue
        losses = run["history"]["loss"]
        if len(losses) != len(single):
            problems.append(f"{engine}: {len(losses)} steps against the single process's {len(single)}.")
            continue
        diff, step = max_diff(single, losses)
        if not diff <= tolerance:  # NaN fails too
            problems.append(f"{engine}: its loss left the single-process curve by {diff:.2e} (step {step}), more than "
                            f"the tolerance {tolerance:.0e}: same seed and global batch?")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``make engines``: one process and each engine on the tiny GPT; exits 1 when an engine's loss leaves the
    single-process curve by more than the tolerance (or that curve does not fall). Prints loss max |diff| and per-rank
    shares of what one process holds."""
    import argparse
    import json
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    parser = argparse.ArgumentParser(prog="python -m course_utils.topics.multigpu", description=main.__doc__)
    parser.add_argument("--engines", nargs="+", default=["ddp", "fsdp", "zero2", "zero3"],
                        help="configs/accelerate/<name>.yaml to launch (default: ddp fsdp zero2 zero3)")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=CURVE_TOLERANCE["no"],
                        help="largest loss |difference| from the single process allowed at any step (fp32: 1e-4)")
    parser.add_argument("--output_dir", type=Path, default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("--timeout_s", type=float, default=900)
    args = parser.parse_args(argv)
    unknown = [e for e in args.engines if not (ACCELERATE_CONFIGS / f"{e}.yaml").is_file()]
    if unknown:
        parser.error(f"no config for {', '.join(unknown)} in {ACCELERATE_CONFIGS}: choose from "
                     + ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))))
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="engines-"))
    text = REPO_ROOT / "datasets" / "course" / "tiny_corpus" / "lamplighter.txt"
    script = ["--text_file", text, "--n_layer", 2, "--n_head", 2, "--n_embd", 64, "--block_size", 32,
              "--global_batch", 4 * args.num_processes, "--max_steps", args.max_steps, "--lr", 3e-3,
              "--warmup_steps", 2, "--eval_interval", max(1, args.max_steps // 2), "--eval_batches", 2]

    def run(engine: str) -> str:
        config = None if engine == "single" else engine
        return launch(accelerate_command(config, [*script, "--output_dir", out / engine], args.num_processes),
                      engine, timeout_s=args.timeout_s, echo=False)

    names = ["single", *args.engines]
    with ThreadPoolExecutor(len(names)) as pool:  # all at once: nothing is compiled, the runs only wait on each other
        list(pool.map(run, names))
    runs = {name: json.loads((out / name / "metrics.json").read_text()) for name in names}
    single, full = runs["single"]["history"]["loss"], runs["single"]["ranks"][0]
    for engine in args.engines:
        diff, _ = max_diff(single, runs[engine]["history"]["loss"])
        shares = [" ".join(f"{k.split('_')[0]} {r[k] / full[k]:.2f}" if r[k] is not None else f"{k.split('_')[0]} -"
                           for k in ("param_bytes", "grad_bytes", "optimizer_bytes")) for r in runs[engine]["ranks"]]
        print(f"{engine:<6} {runs[engine]['engine']:<10} loss max |diff| vs one process {diff:.1e}"
              f" ({'ok' if diff <= args.tolerance else 'OFF'}); per rank: " + " | ".join(shares))
    problems = curve_problems(runs, args.tolerance)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"every engine follows the single-process curve within {args.tolerance:.0e} ({out})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
