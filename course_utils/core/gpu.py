"""What card is this, is it enough for the lesson, and how much memory did a piece of work really take."""

from __future__ import annotations

import contextlib
import gc
import platform
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from course_utils.core.cards import card_box_gb
from course_utils.core.errors import SMOKE_HINT, NeedsGPU
from course_utils.core.memory import GIB, lifetime_vram_peak, release_library_references, vram_peak



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
                ("device", "CPU only (no CUDA GPU visible to PyTorch)" if not self.driver_version
                 else f"CPU only ({_no_gpu_reason(self)})"),
                ("torch", self.torch_version),
                ("python", self.python_version),
                ("what you can run", "every lesson in smoke mode; full mode needs a GPU"),
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
    """The NVIDIA driver's version ("580.95.05") from NVML, else nvidia-smi; None where there is no NVIDIA driver.
    Neither creates a CUDA context."""
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    with contextlib.suppress(Exception):
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return None


#: The oldest NVIDIA driver each CUDA major version runs on (minor-version compatibility: CUDA 13.x needs 580 or newer,
#: 12.x 525, 11.x 450; on WSL2 it is the Windows driver that counts).
MIN_DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}


def _no_gpu_reason(report: GPUReport) -> str:
    """Why PyTorch sees no GPU, in one clause: a CPU-only PyTorch, an NVIDIA driver too old for its CUDA, or none."""
    if report.driver_version and report.cuda_version is None:
        return (f"PyTorch sees no GPU: this torch {report.torch_version} is a CPU-only build although the NVIDIA driver "
                f"{report.driver_version} is installed (reinstall the course's environment)")
    if report.driver_version and report.cuda_version:
        with contextlib.suppress(ValueError):
            driver = int(report.driver_version.split(".")[0])
            needed = MIN_DRIVER_FOR_CUDA.get(int(report.cuda_version.split(".")[0]))
            if needed and driver < needed:
                return (f"PyTorch sees no GPU because the NVIDIA driver {report.driver_version} is too old for its CUDA "
                        f"{report.cuda_version}, which needs driver {needed} or newer (on WSL2: update the Windows driver)")
        return (f"PyTorch sees no GPU although the NVIDIA driver {report.driver_version} is installed "
                "(check CUDA_VISIBLE_DEVICES and that `nvidia-smi` lists the card)")
    return "PyTorch sees no GPU"


def build_serves(compute_capability: tuple[int, int]) -> bool:
    """Whether this PyTorch build has kernels a card of ``compute_capability`` can run, by PyTorch's own rule
    (``torch.cuda.get_arch_list()``: the pinned torch 2.14.1+cu130 has sm_75 to sm_120, so not a GTX 10xx's 6.1)."""
    import warnings

    import torch

    arch_list = torch.cuda.get_arch_list()
    if not arch_list:  # a CPU-only or unusual build says nothing: let the card try
        return True
    device_cc = 10 * compute_capability[0] + compute_capability[1]
    compatible = getattr(torch.cuda, "_code_compatible_with_device", None)
    codes = [_arch_number(arch) for arch in arch_list]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns about architectures it does not know
        if compatible is not None:
            return any(compatible(device_cc, code) for code in codes)
    return any(code // 10 == device_cc // 10 and code <= device_cc for code in codes)


def _arch_number(arch: str) -> int:
    """``"sm_75"`` -> 75, ``"compute_120"`` -> 120, ``"sm_90a"`` -> 90."""
    return int(arch.split("_", 1)[1].rstrip("af"))


def _unsupported_card_reason(report: GPUReport) -> str | None:
    """One sentence when this PyTorch build has no kernels for the card, else None."""
    if report.compute_capability is None or build_serves(report.compute_capability):
        return None
    import torch

    archs = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    oldest = min(archs, key=_arch_number) if archs else "?"
    cc = ".".join(map(str, report.compute_capability))
    return (f"{report.device_name} (compute capability {cc}) cannot run this PyTorch {report.torch_version}: it has "
            f"kernels for {oldest} (compute capability {oldest[3:-1]}.{oldest[-1:]}) and newer only "
            f"({' '.join(torch.cuda.get_arch_list())}), so full mode needs an RTX 20xx / GTX 16xx or newer card.")


def device_type(device: object) -> str:
    """``"cuda"`` for ``"cuda"``, ``"cuda:1"``, ``torch.device("cuda", 1)`` or a GPU index; ``"cpu"`` for the CPU:
    what ``torch.autocast(device_type=...)`` and ``device == "cuda"`` tests need. A name PyTorch does not know is
    one sentence."""
    import torch

    if isinstance(device, int):
        return "cuda"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        from course_utils.core.errors import BadParameter

        raise BadParameter(f"device={device!r} is not a device PyTorch knows; use 'cuda', 'cuda:1' or 'cpu'.") from None


def bf16_native(device: object = None) -> bool:
    """The course's one bf16 rule: bf16 only where the card computes it natively, compute capability 8.0 (Ampere) or
    newer. ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or an RTX 20xx (it counts emulation), where bf16
    is slow and Ultralytics refuses it; those cards get fp16 with a gradient scaler. ``device`` is a CUDA device (index,
    ``"cuda:1"``, ``torch.device``) or None for the current one; a CPU device, or no GPU, is False."""
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type != "cuda":
            return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def gpu_report(device_index: int = 0) -> GPUReport:
    """Describe the GPU PyTorch sees (or say clearly that there is none)."""
    import torch

    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    if not torch.cuda.is_available():  # the driver and CUDA versions say why (require_gpu's message)
        return GPUReport(False, "cpu", 0.0, 0.0, None, False, torch.__version__, torch.version.cuda, _driver_version(),
                         sdpa, False)
    props = torch.cuda.get_device_properties(device_index)
    free, total = torch.cuda.mem_get_info(device_index)
    cc = (props.major, props.minor)
    flash = cc >= (8, 0) and bool(getattr(torch.backends.cuda, "flash_sdp_enabled", lambda: False)())
    return GPUReport(
        True, props.name, total / GIB, free / GIB, cc, bf16_native(device_index),
        torch.__version__, torch.version.cuda, _driver_version(), sdpa, flash,
    )


def require_gpu(min_vram_gb: float, why: str, report: GPUReport | None = None) -> GPUReport:
    """Stop with one clear sentence if there is no CUDA GPU with at least ``min_vram_gb`` GiB of VRAM that this
    PyTorch build can run on.

    ``why`` names what needs the memory, e.g. ``"QLoRA on an 8B model at sequence 2048"``. Without a GPU the sentence
    says which it is: a CPU-only PyTorch, an NVIDIA driver too old for PyTorch's CUDA, or no NVIDIA GPU at all; a card
    older than the build's kernels (a GTX 10xx under the pinned torch) is named with its compute capability.
    """
    report = report or gpu_report()
    smoke_hint = SMOKE_HINT[0].upper() + SMOKE_HINT[1:] + "."
    if not report.cuda_available:
        raise NeedsGPU(f"Full mode needs a CUDA GPU with {min_vram_gb:g} GiB of VRAM for {why}, but "
                       f"{_no_gpu_reason(report)}. {smoke_hint}")
    unsupported = _unsupported_card_reason(report)
    if unsupported:
        raise NeedsGPU(f"{unsupported} {smoke_hint}")

    # a card is the size on its box: a 12 GB card reports ~11.99 GiB and must pass a 12 GB minimum
    if card_box_gb(report.total_vram_gb) < min_vram_gb:
        raise NeedsGPU(
            f"Full mode needs {min_vram_gb:g} GiB of VRAM for {why}, but {report.device_name} has "
            f"{report.total_vram_gb:.1f} GiB. Lower the lesson's memory knobs (see 'If it runs out of memory') or: {smoke_hint}"
        )
    return report


def choose_device(smoke: bool, min_vram_gb: float | None, why: str, allow_cpu: bool = False) -> str:
    """The device a lesson runs on.

    Smoke mode takes whatever is there (a GPU if present, else the CPU). Full mode needs a GPU with
    ``min_vram_gb`` GiB unless ``min_vram_gb`` is None (the lesson runs anywhere) or ``allow_cpu`` is set
    (slow, but possible: e.g. a small CNN). A card this PyTorch build has no kernels for (a GTX 10xx) is never
    chosen: the CPU where that is allowed, else :func:`require_gpu`'s one sentence.
    """
    report = gpu_report()
    unsupported = _unsupported_card_reason(report) if report.cuda_available else None
    if unsupported and (smoke or min_vram_gb is None or allow_cpu):
        print(f"Running on the CPU: {unsupported}")
        return "cpu"
    if smoke or min_vram_gb is None:
        return report.device
    if allow_cpu and not report.cuda_available:
        print(f"No GPU: running full mode on the CPU because allow_cpu is set ({why}); expect it to be slow.")
        return "cpu"
    require_gpu(min_vram_gb, why, report)
    return "cuda"


def free_gpu(*objects: object) -> float:
    """Release objects (a model, an optimizer, a pipeline), collect garbage and empty PyTorch's CUDA cache.
    Returns the free VRAM in GiB (0 on the CPU).

    Python frees a model only once nothing refers to it. ``free_gpu(model, optimizer)`` deletes the caller's
    module-level (notebook) names bound to those objects, and IPython's output history entries that hold them, so
    the model really goes; names inside a function must be ``del``-ed by the function itself.
    """
    if objects:
        frame = sys._getframe(1)
        try:
            _forget(objects, frame.f_globals)  # a function's own locals cannot be deleted from outside
        finally:
            del frame
    del objects
    release_library_references()  # e.g. bitsandbytes' global list of the embeddings Trainer registered
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.ipc_collect()
    return torch.cuda.mem_get_info()[0] / GIB


def _forget(objects: tuple, namespace: dict) -> list[str]:
    ids = {id(o) for o in objects}
    names = [name for name, value in list(namespace.items()) if id(value) in ids and not name.startswith("__")]
    for name in names:
        del namespace[name]
    history = namespace.get("_oh") or namespace.get("Out")  # IPython's output cache keeps displayed objects alive
    if isinstance(history, dict):
        for key in [k for k, v in history.items() if id(v) in ids]:
            del history[key]
    for name in ("_", "__", "___"):
        if id(namespace.get(name)) in ids:
            namespace[name] = None
    return names


_LIFETIME_PEAK_RSS_GB = 0.0  # the peak before the last reset_peak_rss(): peak_rss_gb() stays a lifetime peak


def peak_vram_gb() -> tuple[float, float]:
    """The process's peak VRAM so far (allocated, reserved; GiB), across the resets :func:`track_peak_memory` does.
    (0, 0) without CUDA."""
    from course_utils.core import memory

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not _cuda_initialized(torch):
        return tuple(memory._LIFETIME_PEAK)
    return lifetime_vram_peak()


def _cuda_initialized(torch) -> bool:  # noqa: ANN001
    is_initialized = getattr(torch.cuda, "is_initialized", None)
    return True if is_initialized is None else bool(is_initialized())


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB), over its whole life."""
    return max(_LIFETIME_PEAK_RSS_GB, _hwm_gb(), _maxrss_gb())


def _maxrss_gb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


def _hwm_gb() -> float:
    """Peak RSS since the last reset (Linux's VmHWM); the lifetime peak elsewhere."""
    hwm = _proc_status_kib("VmHWM")
    return hwm / 1024**2 if hwm is not None else _maxrss_gb()


def current_rss_gb() -> float:
    """Resident memory of this process now (GiB; the peak so far where the system does not say)."""
    rss = _proc_status_kib("VmRSS")
    return rss / 1024**2 if rss is not None else peak_rss_gb()


def reset_peak_rss() -> bool:
    """Start the process's peak-RSS counter again from the current RSS (Linux: /proc/self/clear_refs). False where
    the system cannot, and then the peak is the process's lifetime peak."""
    global _LIFETIME_PEAK_RSS_GB
    _LIFETIME_PEAK_RSS_GB = peak_rss_gb()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class PeakMemory:
    """Filled in when a ``track_peak_memory()`` block ends.

    ``allocated_gb`` / ``reserved_gb`` are the block's peaks (what the card had to hold, including what was already
    there on entry, e.g. the model's weights); ``*_entry_gb`` what was held on entry; ``*_delta_gb`` what the block
    itself added on top (its activations, gradients, optimizer state). RSS likewise for the process's RAM.
    Without a GPU the VRAM fields are ``None``: not measured, which is not the same as zero (a VRAM target met by
    a CPU run would be a false pass). Code that rounds or compares them checks for ``None`` first.
    """

    allocated_gb: float | None = None
    reserved_gb: float | None = None
    rss_gb: float = 0.0
    seconds: float = 0.0
    allocated_entry_gb: float | None = None
    reserved_entry_gb: float | None = None
    rss_entry_gb: float = 0.0

    @property
    def allocated_delta_gb(self) -> float | None:
        if self.allocated_gb is None or self.allocated_entry_gb is None:
            return None
        return max(0.0, self.allocated_gb - self.allocated_entry_gb)

    @property
    def reserved_delta_gb(self) -> float | None:
        if self.reserved_gb is None or self.reserved_entry_gb is None:
            return None
        return max(0.0, self.reserved_gb - self.reserved_entry_gb)

    @property
    def rss_delta_gb(self) -> float:
        return max(0.0, self.rss_gb - self.rss_entry_gb)

    def __str__(self) -> str:
        gpu = (f"peak VRAM {self.allocated_gb:.2f} GiB allocated / {self.reserved_gb:.2f} GiB reserved "
               f"(+{self.allocated_delta_gb:.2f} GiB over the {self.allocated_entry_gb:.2f} held on entry), "
               if self.reserved_gb is not None else "")
        return f"{gpu}peak RSS {self.rss_gb:.2f} GiB (+{self.rss_delta_gb:.2f}), {self.seconds:.1f} s"


@contextlib.contextmanager
def track_peak_memory(release_cache: bool = True) -> Iterator[PeakMemory]:
    """Measure the peak VRAM (PyTorch's allocator: allocated and reserved) and peak process RSS of a block.

    On entry, garbage is collected, PyTorch's cached-but-unused CUDA blocks are released (``release_cache``: memory
    cached by earlier work, e.g. an inference pass, would otherwise count as reserved in this block's peak) and the
    peak counters are reset, so the peaks are this block's. What was held on entry is kept in ``*_entry_gb``.
    ``reserved_gb`` is the course's one meaning of peak VRAM (:mod:`course_utils.core.memory`). Blocks nest: an inner
    block's reset never loses an outer block's peak (:func:`course_utils.core.memory.vram_peak`).
    """
    import time

    import torch

    peak = PeakMemory()
    cuda = torch.cuda.is_available()
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        if release_cache:
            torch.cuda.empty_cache()
    reset = reset_peak_rss()
    peak.rss_entry_gb = current_rss_gb()
    start = time.perf_counter()
    try:
        with vram_peak() as vram:  # resets CUDA's peak counters, keeping the enclosing blocks' and the lesson's peaks
            peak.allocated_entry_gb, peak.reserved_entry_gb = vram.allocated_entry_gb, vram.reserved_entry_gb
            yield peak
    finally:
        peak.allocated_gb, peak.reserved_gb = vram.allocated_gb, vram.reserved_gb
        peak.rss_gb = _hwm_gb() if reset else peak_rss_gb()
        peak.seconds = time.perf_counter() - start
