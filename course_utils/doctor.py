"""The course doctor (``make doctor``, ``course-doctor``): this machine against what the course needs, in seconds.

It prints one paste-ready block — the facts a bug report needs, then one sentence per problem saying what to do:

- ``os`` / ``python`` / ``wsl``: the system, the Python and its venv, and under WSL2 the memory cap Windows gives
  Linux against the host's RAM (the ``.wslconfig`` fix);
- ``driver`` / ``torch`` / ``gpu``: the NVIDIA driver, PyTorch's build (CPU or CUDA x.y) and whether that driver runs
  it, the card, its compute capability and whether the build has kernels for it (:func:`.core.gpu.build_serves`);
- ``bf16`` / ``sdpa`` / ``bitsandbytes``: bf16 in hardware (:func:`.core.gpu.bf16_native`, never emulation), which
  fused attention kernels run, and a tiny 4-bit layer's forward on the card;
- ``disk``: free space where the Hugging Face cache lives against what full mode downloads, per lesson and in all
  (the ``download_gb`` the lessons' cells declare, :mod:`.runner.plan`);
- ``hub``: online, whether the saved Hugging Face token reaches each gated model the course uses;
- ``full mode``: which lessons' full mode starts on this machine, by :func:`.core.gpu.choose_device`'s rule with the
  ``min_vram_gb`` each lesson passes it.

The exit status is 0 unless a lesson cannot run at all, even in smoke mode (PyTorch does not import, Python is too
old). Each probe is a small function here so the tests can fake the machine at its boundary.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.core.memory import GIB
from course_utils.core.paths import REPO_ROOT

#: The report's sections, in order.
SECTIONS = ("os", "python", "wsl", "driver", "torch", "gpu", "bf16", "sdpa", "bitsandbytes", "disk", "hub",
            "full mode")
GB = 1e9  # downloads are declared in GB (plan.py: download_gb at SLOW_MB_S), so disk is compared in GB too
#: Under WSL2 Linux gets half the host's RAM unless .wslconfig says otherwise; less than this share was capped by hand.
WSL_MIN_SHARE = 0.45
HUB_HOST = "huggingface.co"
REACH_TIMEOUT_S = 2.0


@dataclass
class Finding:
    """One problem, in one sentence that says what to do. ``fatal``: a lesson cannot run at all (exit 1)."""

    text: str
    fatal: bool = False


@dataclass
class Check:
    name: str
    line: str
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Checkup:
    checks: list[Check]
    full_mode_lessons: list[str] = field(default_factory=list)  # the lessons whose full mode starts here
    seconds: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checks for f in c.findings]

    @property
    def fatal(self) -> bool:
        return any(f.fatal for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.fatal else 0

    def section(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"course-doctor · {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC · commit {_commit()} · "
                 f"{self.seconds:.1f} s"]
        lines += [f"{c.name:<{width}}  {c.line}" for c in self.checks]
        findings = self.findings
        lines.append(f"problems: {len(findings) or 'none'}")
        lines += [f"{i}. {'[stops every lesson] ' if f.fatal else ''}{f.text}" for i, f in enumerate(findings, 1)]
        return "```text\n" + _private("\n".join(lines)) + "\n```"


def _private(text: str) -> str:
    """The block is pasted in public: the home folder (it names the user) becomes ``~``."""
    home = str(Path.home())
    return text.replace(home, "~") if len(home) > 1 else text


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ------------------------------------------------------------------------------------------ os, python, WSL


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def check_os() -> Check:
    return Check("os", f"{platform.system()} {platform.release()} ({platform.machine()})"
                       + (f", {_distro()}" if _distro() else ""))


def _distro() -> str:
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)', _read_text("/etc/os-release"), re.M)
    return match.group(1) if match else ""


def check_python() -> Check:
    venv = sys.prefix if sys.prefix != sys.base_prefix else None
    ours = venv is not None and Path(venv).resolve() == (REPO_ROOT / ".venv").resolve()
    line = f"{platform.python_version()} at {sys.executable}" + (
        "" if ours else " (not the course's .venv: a conda environment from environment.yml, or another Python)")
    findings = []
    if sys.version_info < (3, 10):
        findings.append(Finding(f"Python {platform.python_version()} is too old for the course (3.10 or newer, 3.11 "
                                "advised): run `rm -r .venv && make setup PYTHON=python3.11`.", fatal=True))
    return Check("python", line, findings)


def _wsl_version() -> int | None:
    """2 under WSL2, 1 under WSL1, None on a plain Linux (or another system)."""
    text = (_read_text("/proc/sys/kernel/osrelease") + " " + _read_text("/proc/version")).lower()
    if "microsoft" not in text and "wsl" not in text:
        return None
    return 2 if ("wsl2" in text or "microsoft-standard" in text) else 1


def _linux_ram_gib() -> float | None:
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read_text("/proc/meminfo"), re.M)
    return int(match.group(1)) * 1024 / GIB if match else None


def _windows_ram_gib() -> float | None:
    """The Windows host's RAM as Windows sees it (WSL's interop runs powershell.exe); None where it cannot be asked."""
    command = ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command",
               "(Get-CimInstance Win32_ComputerSystem).TotalPhysicalMemory"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=8)
        return int(out.stdout.strip().splitlines()[-1]) / GIB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def check_wsl() -> Check:
    version = _wsl_version()
    if version is None:
        return Check("wsl", "no (not running under WSL)")
    cap, host = _linux_ram_gib(), _windows_ram_gib()
    line = (f"WSL{version}; Linux sees {cap:.1f} GiB of RAM" if cap else f"WSL{version}") + (
        f" of the host's {host:.1f} GiB" if host else " (the host's RAM could not be read)")
    findings = []
    if version == 1:
        findings.append(Finding("This is WSL1, which cannot reach the GPU: convert the distribution with "
                                "`wsl --set-version <distro> 2` in a Windows terminal."))
    if cap and host and cap < WSL_MIN_SHARE * host:
        want = max(int(host * 0.75), 8)
        findings.append(Finding(
            f"WSL2 caps Linux at {cap:.1f} GiB of the host's {host:.1f} GiB, so loading an 8B model can be killed "
            f"at that cap: write the two lines `[wsl2]` and `memory={want}GB` in %UserProfile%\\.wslconfig, saved as "
            "UTF-8 or ASCII (not Notepad's 'Unicode', UTF-16, which WSL ignores), then run `wsl --shutdown` in Windows "
            "and reopen the terminal."))
    return Check("wsl", line, findings)


# ------------------------------------------------------------------------------------------ driver, torch, GPU


def _import_torch():
    import torch

    return torch


def _gpu_facts():
    """``(torch, report, error)``: ``torch`` None when PyTorch does not import, ``report`` None when it cannot describe
    the GPU; ``error`` is then the exception in one line."""
    try:
        torch = _import_torch()
    except Exception as err:  # a broken install: ImportError, OSError from a missing CUDA library, ...
        return None, None, _one_line(err)
    from course_utils.core.gpu import gpu_report

    try:
        return torch, gpu_report(), None
    except Exception as err:  # a GPU PyTorch sees but cannot open: a driver half-updated, a card in a bad state
        return torch, None, _one_line(err)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def check_driver(report) -> Check:  # noqa: ANN001
    from course_utils.core.gpu import MIN_DRIVER_FOR_CUDA

    from course_utils.core.gpu import _driver_version

    driver = report.driver_version if report is not None else _driver_version()
    if not driver:
        return Check("driver", "no NVIDIA driver found (NVML and nvidia-smi do not answer)")
    line = f"NVIDIA {driver}"
    if report is not None and report.cuda_version:
        try:
            needed = MIN_DRIVER_FOR_CUDA.get(int(report.cuda_version.split(".")[0]))
            runs = needed is None or int(report.driver_version.split(".")[0]) >= needed
            line += (f"; runs CUDA {report.cuda_version} builds" if runs else
                     f"; too old for CUDA {report.cuda_version} (needs {needed} or newer)")
        except ValueError:
            pass
    return Check("driver", line)


def check_torch(torch, report, import_error: str | None = None) -> Check:  # noqa: ANN001
    if torch is None:
        return Check("torch", f"does not import ({import_error})", [Finding(
            f"PyTorch does not import ({import_error}), so no lesson can run, not even in smoke mode: rebuild the "
            "environment with `rm -r .venv && make setup`.", fatal=True)])
    arch = torch.cuda.get_arch_list()
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    kernels = f", kernels {' '.join(arch)}" if arch else ""
    return Check("torch", f"{torch.__version__} ({build}{kernels})")


def check_gpu(torch, report, error: str | None = None) -> Check:  # noqa: ANN001
    from course_utils.core.gpu import _no_gpu_reason, _unsupported_card_reason

    if torch is None:
        return Check("gpu", "unknown (PyTorch does not import)")
    if report is None:
        return Check("gpu", f"PyTorch cannot describe it ({error})", [Finding(
            f"PyTorch sees a GPU but cannot use it ({error}): restart the machine (a driver update needs it) and check "
            "that `nvidia-smi` lists the card; until then run the lessons in smoke mode on the CPU "
            "(`CUDA_VISIBLE_DEVICES= SMOKE=1 make lab`).")])
    if not report.cuda_available:
        if report.driver_version:  # a driver but no GPU for PyTorch: a CPU build, an old driver, a hidden card
            reason = _no_gpu_reason(report)
            return Check("gpu", "none visible to PyTorch", [Finding(reason[0].upper() + reason[1:] + ".")])
        return Check("gpu", "none (no NVIDIA GPU): every lesson runs in smoke mode (`SMOKE=1 make lab`)")
    cc = ".".join(map(str, report.compute_capability))
    line = (f"{report.device_name}, {report.total_vram_gb:.1f} GiB ({report.free_vram_gb:.1f} free), compute "
            f"capability {cc}")
    unsupported = _unsupported_card_reason(report)
    if unsupported:
        return Check("gpu", line + "; this PyTorch has no kernels for it", [Finding(
            unsupported + " Meanwhile every lesson runs in smoke mode (`SMOKE=1 make lab`).")])
    return Check("gpu", line + "; this PyTorch has kernels for it")


def _serves(report) -> bool:  # noqa: ANN001
    from course_utils.core.gpu import build_serves

    return bool(report is not None and report.cuda_available and build_serves(report.compute_capability))


def check_bf16(torch, report) -> Check:  # noqa: ANN001
    from course_utils.core.gpu import bf16_native

    if not _serves(report):
        return Check("bf16", "skipped: no usable CUDA GPU (the CPU runs smoke mode in fp32)")
    if bf16_native():
        return Check("bf16", "native (compute capability 8.0 or newer): the course trains in bf16")
    if torch.cuda.is_bf16_supported(including_emulation=True):
        cc = ".".join(map(str, report.compute_capability))
        return Check("bf16", "emulated only: the course uses fp16 with a gradient scaler", [Finding(
            f"{report.device_name} (compute capability {cc}) computes bf16 only through emulation, although "
            "torch.cuda.is_bf16_supported() says True: the course gives it fp16 with a gradient scaler by itself, and "
            "in your own code choose bf16 with course_utils.core.gpu.bf16_native(), not is_bf16_supported().")])
    return Check("bf16", "no: the course uses fp16 with a gradient scaler")


def _sdpa_runs(torch, backend_name: str) -> str | None:  # noqa: ANN001
    """None if SDPA's ``backend_name`` kernel runs a tiny fp16 attention on the card, else its error in one line."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.float16)
    try:
        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        torch.cuda.synchronize()
        return None
    except RuntimeError as err:
        return _one_line(err)


def check_sdpa(torch, report) -> Check:  # noqa: ANN001
    if not _serves(report):
        return Check("sdpa", "skipped: no usable CUDA GPU (the CPU uses the math kernel)")
    flash, efficient = _sdpa_runs(torch, "FLASH_ATTENTION"), _sdpa_runs(torch, "EFFICIENT_ATTENTION")
    line = f"flash {'yes' if flash is None else 'no'}, memory-efficient {'yes' if efficient is None else 'no'}"
    findings = []
    if efficient is not None:
        findings.append(Finding(
            f"SDPA's memory-efficient attention does not run on {report.device_name} ({efficient}): attention falls "
            "back to the math kernel, which holds the whole attention matrix, so lower the sequence lengths (see each "
            "lesson's 'If it runs out of memory') and check that `make setup` installed the pinned torch."))
    return Check("sdpa", line, findings)


def _bnb_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return "not installed"


def bitsandbytes_forward(torch) -> None:  # noqa: ANN001
    """A 4-bit (NF4) linear layer quantised on the card and run forward once; raises what bitsandbytes raises."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float16, quant_type="nf4").to("cuda")
    out = layer(torch.randn(2, 64, dtype=torch.float16, device="cuda"))
    torch.cuda.synchronize()
    if out.shape != (2, 64) or not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"the 4-bit layer's output is wrong (shape {tuple(out.shape)}, finite: "
                           f"{bool(torch.isfinite(out).all())})")


def check_bitsandbytes(torch, report) -> Check:  # noqa: ANN001
    version = _bnb_version()
    if not _serves(report):
        return Check("bitsandbytes", f"{version}; skipped: no usable CUDA GPU (smoke mode loads nothing in 4-bit)")
    try:
        bitsandbytes_forward(torch)
    except Exception as err:
        error = _one_line(err)
        return Check("bitsandbytes", f"{version}; a 4-bit layer FAILED on the card", [Finding(
            f"bitsandbytes {version} cannot run a 4-bit layer on {report.device_name} ({error}), so the lessons that "
            "load models in 4-bit (the 8B LLM, LLaVA) stop: reinstall it with `make setup`, run "
            "`.venv/bin/python -m bitsandbytes` for its own diagnosis, and on WSL2 make sure the Windows NVIDIA driver "
            "(not a Linux one) provides CUDA.")])
    return Check("bitsandbytes", f"{version}; a 4-bit layer ran on the card")


# ------------------------------------------------------------------------------------------ disk


def lesson_downloads(folder: Path | None = None) -> dict[str, list[float]]:
    """Lesson number -> the GB each of its cells downloads on a first run in full mode (the ``download_gb`` the cells
    declare, :mod:`course_utils.runner.plan`); lessons that declare none are left out."""
    from course_utils.runner.lessons import NOTEBOOKS, discover
    from course_utils.runner.plan import check_lesson

    sizes = {}
    for path in discover(None, folder or NOTEBOOKS):
        declared = [n.download_gb for n in check_lesson(json.loads(path.read_text()), path.stem) if n.download_gb]
        if declared:
            sizes[path.stem[:2]] = declared
    return sizes


def shared_total(sizes: dict[str, list[float]]) -> float:
    """All lessons' downloads, a size declared by several cells counted once: the lessons share models (the 8B LLM's
    16.1 GB is declared by each lesson that may be the first to fetch it)."""
    return round(sum({gb for declared in sizes.values() for gb in declared}), 1)


def _free_gb(folder: Path) -> float:
    path = Path(folder)
    while not path.exists() and path != path.parent:  # the cache may not exist yet: ask its disk
        path = path.parent
    return shutil.disk_usage(path).free / GB


def _cached_gb(folder: Path) -> float:
    """What the Hugging Face cache already holds (its blobs), in GB."""
    if not folder.is_dir():
        return 0.0
    total = 0
    for blobs in folder.glob("*/blobs"):
        total += sum(f.stat().st_size for f in blobs.iterdir() if f.is_file())
    return total / GB


def check_disk() -> Check:
    from course_utils.core.hub import DISK_MARGIN_GB, hf_cache_dir

    cache = hf_cache_dir()
    declared = lesson_downloads()
    sizes = {k: round(sum(v), 1) for k, v in declared.items()}
    total = shared_total(declared)
    free, cached = _free_gb(cache), _cached_gb(cache)
    per_lesson = ", ".join(f"{k} {v:g}" for k, v in sizes.items())
    line = (f"{free:.1f} GB free for the Hugging Face cache ({cache}), {cached:.1f} GB already in it; full mode "
            f"downloads {total:g} GB in all, shared models counted once (per lesson, GB: {per_lesson})")
    room = free + cached - DISK_MARGIN_GB
    if room >= total:
        return Check("disk", line)
    short = [k for k, v in sizes.items() if v > room]
    which = (f"lessons {', '.join(short)} do not fit even alone" if short else
             "each lesson fits alone but not all of them")
    return Check("disk", line, [Finding(
        f"Only {free:.1f} GB is free on the disk of the Hugging Face cache ({cache}) and the full-mode lessons "
        f"download {total:g} GB ({which}, with {DISK_MARGIN_GB:g} GB kept spare): free some space, or point HF_HOME "
        "at a bigger disk (`export HF_HOME=/path/on/big/disk/huggingface`) before running them.")])


# ------------------------------------------------------------------------------------------ hub


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(host: str = HUB_HOST, timeout: float = REACH_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def gated_models() -> dict[str, str]:
    """The gated models the lessons load by default -> what to use instead (the course's ungated alternative)."""
    from course_utils.topics import llm

    return {llm.DEFAULT_MODEL_ID: llm.UNGATED_HINT}


def check_hub() -> Check:
    if _offline():
        return Check("hub", "skipped: offline (HF_HUB_OFFLINE is set)")
    if not _hub_reachable():
        return Check("hub", f"skipped: offline ({HUB_HOST} cannot be reached)")
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    from course_utils.core.hub import explain_hub_error

    token = "a token is saved" if huggingface_hub.get_token() else "no token saved"
    parts, findings = [], []
    for model_id, alternative in gated_models().items():
        try:
            huggingface_hub.auth_check(model_id)
            parts.append(f"{model_id} reachable")
        except Exception as err:
            explained = explain_hub_error(err, model_id, alternative)
            if explained is None and isinstance(err, hf_errors.HfHubHTTPError):
                explained = f"The hub refused {model_id} ({err}): try again later."
            if explained is None:
                parts.append(f"{model_id} not checked ({type(err).__name__})")
                continue
            parts.append(f"{model_id} REFUSED")
            findings.append(Finding(str(explained).splitlines()[0]))
    return Check("hub", f"online, {token}; " + "; ".join(parts), findings)


# ------------------------------------------------------------------------------------------ full mode


def _choose_device_call(nb: dict) -> ast.Call | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        if "choose_device(" not in source:
            continue
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            name = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(name, "attr", getattr(name, "id", "")) == "choose_device":
                return node
    return None


#: A lesson whose ``choose_device`` call cannot be read: its verdict says so rather than guess.
UNREAD = object()


def lesson_requirements(folder: Path | None = None) -> dict[str, tuple[object, bool]]:
    """Lesson number -> ``(min_vram_gb, allow_cpu)`` as its ``choose_device`` call passes them in full mode (a
    parameter is read from the lesson's parameters cell); ``min_vram_gb`` is :data:`UNREAD` where the call (or the
    value) cannot be read without running the lesson."""
    from course_utils.runner.lessons import NOTEBOOKS, discover
    from course_utils.runner.params import lesson_parameters

    found: dict[str, tuple[object, bool]] = {}
    for path in discover(None, folder or NOTEBOOKS):
        call = _choose_device_call(json.loads(path.read_text()))
        if call is None:
            found[path.stem[:2]] = (UNREAD, False)
            continue
        params = lesson_parameters(path)

        def value(node: ast.AST | None, default: object) -> object:
            if node is None:
                return default
            if isinstance(node, ast.Name) and node.id in params:
                return params[node.id].default
            try:
                return ast.literal_eval(node)
            except (ValueError, TypeError, SyntaxError):
                return UNREAD

        keywords = {k.arg: k.value for k in call.keywords}
        positional = list(call.args)
        min_vram = value(keywords.get("min_vram_gb", positional[1] if len(positional) > 1 else None), None)
        allow_cpu = value(keywords.get("allow_cpu", positional[3] if len(positional) > 3 else None), False)
        if not (min_vram is None or isinstance(min_vram, (int, float)) and not isinstance(min_vram, bool)):
            min_vram = UNREAD
        found[path.stem[:2]] = (min_vram, allow_cpu is True)
    return found


def full_mode_verdict(report, min_vram_gb: object, allow_cpu: bool) -> str | None:  # noqa: ANN001
    """None when a lesson's full mode starts on this machine, else why not in a few words: choose_device's rule
    (:func:`.core.gpu.choose_device`, :func:`.core.gpu.require_gpu`) on this machine's report."""
    from course_utils.core.errors import NeedsGPU
    from course_utils.core.gpu import _unsupported_card_reason, require_gpu

    if min_vram_gb is UNREAD:
        return "its choose_device call could not be read"
    if min_vram_gb is None or (report is None and allow_cpu):
        return None
    if report is None:
        return "PyTorch or its GPU is broken"
    unsupported = _unsupported_card_reason(report) if report.cuda_available else None
    if allow_cpu and (unsupported or not report.cuda_available):
        return None
    try:
        require_gpu(min_vram_gb, "this lesson", report)
    except NeedsGPU:
        if not report.cuda_available:
            return "no usable GPU"
        if unsupported:
            return "card too old for this PyTorch"
        return f"needs {min_vram_gb:g} GB of VRAM"
    return None


def _ranges(numbers: list[str]) -> str:
    """["00", "02", "03", "04"] -> "00, 02-04"."""
    out: list[list[int]] = []
    for n in sorted(int(x) for x in numbers):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a:02d}" if a == b else f"{a:02d}-{b:02d}" for a, b in out)


def check_full_mode(report) -> tuple[Check, list[str]]:  # noqa: ANN001
    verdicts = {k: full_mode_verdict(report, *needs) for k, needs in lesson_requirements().items()}
    starts = [k for k, v in verdicts.items() if v is None]
    blocked: dict[str, list[str]] = {}
    for k, why in verdicts.items():
        if why is not None:
            blocked.setdefault(why, []).append(k)
    line = f"starts for {_ranges(starts) if starts else 'no lesson'}"
    if blocked:
        line += "; smoke mode only for " + "; ".join(f"{_ranges(ks)} ({why})" for why, ks in blocked.items())
    return Check("full mode", line), starts


# ------------------------------------------------------------------------------------------ the whole checkup


def run() -> Checkup:
    """Every check, in :data:`SECTIONS` order."""
    import time

    start = time.perf_counter()
    torch, report, error = _gpu_facts()
    checks = [check_os(), check_python(), check_wsl(), check_driver(report),
              check_torch(torch, report, error), check_gpu(torch, report, error), check_bf16(torch, report),
              check_sdpa(torch, report), check_bitsandbytes(torch, report), check_disk(), check_hub()]
    full, starts = check_full_mode(report)
    checks.append(full)
    return Checkup(checks, starts, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="course-doctor", description="Check this machine against what the course needs and print a block to "
        "paste into a bug report (exit 1 only when a lesson cannot run at all).")
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    checkup = run()
    print("Paste everything between the ``` lines (included) into your bug report:\n")
    print(checkup)
    if checkup.findings:
        print(f"\n{len(checkup.findings)} problem(s): each line above says what to do.")
    return checkup.exit_code


if __name__ == "__main__":
    sys.exit(main())
