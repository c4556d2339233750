"""What card is this, is it enough for the lesson, and how much memory did a piece of work really take."""

from __future__ import annotations

import contextlib
import gc
import platform
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from course_utils.core.errors import SMOKE_HINT, NeedsGPU
from course_utils.core.memory import GIB



@dataclass(frozen=True)
class GPUReport:
    """A snapshot of the accelerator (or its absence). Prints as a small table."""

    cuda_available: bool
    device_name: str
    total_vram_gb: float
    free_vram_gb: float
    compute_capability: tuple[int, int] | None
    bf16_supported: bool
    torch_version: str
    cuda_version: str | None
    driver_version: str | None
    sdpa_available: bool
    flash_attention_available: bool
    python_version: str = field(default_factory=lambda: platform.python_version())

    @property
    def device(self) -> str:
        return "cuda" if self.cuda_available else "cpu"

    def rows(self) -> list[tuple[str, str]]:
        if not self.cuda_available:
            return [
                ("device", "CPU only (no CUDA GPU visible to PyTorch)"),
                ("torch", self.torch_version),
                ("python", self.python_version),
                ("what you can run", "every lesson in smoke mode (SMOKE=1); full mode needs a GPU"),
            ]
        cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "?"
        return [
            ("device", self.device_name),
            ("VRAM total / free", f"{self.total_vram_gb:.1f} GiB / {self.free_vram_gb:.1f} GiB"),
            ("compute capability", cc),
            ("bf16", "yes" if self.bf16_supported else "no (fp16 + GradScaler instead)"),
            ("torch / CUDA / driver", f"{self.torch_version} / {self.cuda_version} / {self.driver_version or '?'}"),
            ("SDPA / flash attention", f"{_yes(self.sdpa_available)} / {_yes(self.flash_attention_available)}"),
            ("python", self.python_version),
        ]

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _repr_markdown_(self) -> str:
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in self.rows())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _driver_version() -> str | None:
    with contextlib.suppress(Exception):
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return None


def gpu_report(device_index: int = 0) -> GPUReport:
    """Describe the GPU PyTorch sees (or say clearly that there is none)."""
    import torch

    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    if not torch.cuda.is_available():
        return GPUReport(False, "cpu", 0.0, 0.0, None, False, torch.__version__, None, None, sdpa, False)
    props = torch.cuda.get_device_properties(device_index)
    free, total = torch.cuda.mem_get_info(device_index)
    cc = (props.major, props.minor)
    flash = cc >= (8, 0) and bool(getattr(torch.backends.cuda, "flash_sdp_enabled", lambda: False)())
    return GPUReport(
        True, props.name, total / GIB, free / GIB, cc, torch.cuda.is_bf16_supported(),
        torch.__version__, torch.version.cuda, _driver_version(), sdpa, flash,
    )


def require_gpu(min_vram_gb: float, why: str, report: GPUReport | None = None) -> GPUReport:
    """Stop with one clear sentence if there is no CUDA GPU with at least ``min_vram_gb`` GiB of VRAM.

    ``why`` names what needs the memory, e.g. ``"QLoRA on an 8B model at sequence 2048"``.
    """
    report = report or gpu_report()
    smoke_hint = SMOKE_HINT[0].upper() + SMOKE_HINT[1:] + "."
    if not report.cuda_available:
        raise NeedsGPU(f"Full mode needs a CUDA GPU with {min_vram_gb:g} GiB of VRAM for {why}, but PyTorch sees no GPU. {smoke_hint}")
    if report.total_vram_gb < min_vram_gb:
        raise NeedsGPU(
            f"Full mode needs {min_vram_gb:g} GiB of VRAM for {why}, but {report.device_name} has "
            f"{report.total_vram_gb:.1f} GiB. Lower the lesson's memory knobs (see 'If it runs out of memory') or: {smoke_hint}"
        )
    return report


def choose_device(smoke: bool, min_vram_gb: float | None, why: str, allow_cpu: bool = False) -> str:
    """The device a lesson runs on.

    Smoke mode takes whatever is there (a GPU if present, else the CPU). Full mode needs a GPU with
    ``min_vram_gb`` GiB unless ``min_vram_gb`` is None (the lesson runs anywhere) or ``allow_cpu`` is set
    (slow, but possible: e.g. a small CNN).
    """
    report = gpu_report()
    if smoke or min_vram_gb is None:
        return report.device
    if allow_cpu and not report.cuda_available:
        print(f"No GPU: running full mode on the CPU because allow_cpu is set ({why}); expect it to be slow.")
        return "cpu"
    require_gpu(min_vram_gb, why, report)
    return "cuda"


def free_gpu(*objects: object) -> float:
    """Drop references, collect garbage and empty PyTorch's CUDA cache. Returns free VRAM in GiB (0 on CPU).

    Python can only free a model once nothing refers to it: ``del model`` in your own namespace first, or pass
    the objects here so the caller's last reference is the one that goes.
    """
    del objects
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.ipc_collect()
    return torch.cuda.mem_get_info()[0] / GIB


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


@dataclass
class PeakMemory:
    """Filled in when a ``track_peak_memory()`` block ends."""

    allocated_gb: float = 0.0
    reserved_gb: float = 0.0
    rss_gb: float = 0.0
    seconds: float = 0.0

    def __str__(self) -> str:
        gpu = f"peak VRAM {self.allocated_gb:.2f} GiB allocated / {self.reserved_gb:.2f} GiB reserved, " if self.reserved_gb else ""
        return f"{gpu}peak RSS {self.rss_gb:.2f} GiB, {self.seconds:.1f} s"


@contextlib.contextmanager
def track_peak_memory() -> Iterator[PeakMemory]:
    """Measure peak VRAM (allocated and reserved, by PyTorch's allocator) and peak process RSS inside a block."""
    import time

    import torch

    peak = PeakMemory()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield peak
    finally:
        if cuda:
            torch.cuda.synchronize()
            peak.allocated_gb = torch.cuda.max_memory_allocated() / GIB
            peak.reserved_gb = torch.cuda.max_memory_reserved() / GIB
        peak.rss_gb = peak_rss_gb()
        peak.seconds = time.perf_counter() - start
