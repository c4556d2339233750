"""Seeding and an environment snapshot, so a result can be reproduced and a report says what produced it."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from importlib import metadata


def set_seed(seed: int = 0, deterministic: bool = False) -> int:
    """Seed Python, NumPy and PyTorch (CPU and CUDA).

    ``deterministic=True`` also asks cuDNN and PyTorch for deterministic kernels: bit-identical reruns on the
    same machine, at some cost in speed (and an error from ops that have no deterministic version).
    """
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return seed
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


PACKAGES = ("torch", "torchvision", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "diffusers",
            "ultralytics", "scikit-learn", "numpy", "openai-whisper", "sentence-transformers", "faiss-cpu")


def git_commit() -> str | None:
    from course_utils.core.paths import REPO_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_snapshot() -> dict[str, object]:
    """Python, OS, package versions, git commit and GPU (no heavy import unless torch is already installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    snap: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": versions,
        "git_commit": git_commit(),
    }
    try:
        from course_utils.core.gpu import gpu_report

        report = gpu_report()
        snap["gpu"] = report.device_name if report.cuda_available else "none (CPU)"
        snap["vram_gb"] = round(report.total_vram_gb, 2)
        snap["cuda"] = report.cuda_version
        snap["driver"] = report.driver_version
    except ImportError:
        snap["gpu"] = "unknown (torch not installed)"
    return snap


def pinned_requirements(path: str | None = None) -> dict[str, str]:
    """The ``name==version`` pins of requirements.txt (the course's one list of packages)."""
    from course_utils.core.paths import REPO_ROOT

    pins = {}
    for line in open(path or REPO_ROOT / "requirements.txt"):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def check_pins(path: str | None = None) -> list[str]:
    """Packages whose installed version differs from the pin (empty list: the environment is the course's)."""
    problems = []
    for name, wanted in pinned_requirements(path).items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (want {wanted})")
            continue
        if have.split("+", 1)[0] != wanted:
            problems.append(f"{name}: {have} installed, course pins {wanted}")
    return problems
