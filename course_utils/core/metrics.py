"""``record(...)``: a lesson's results, collected by the course runner and harmless when run by hand.

When the runner executes a lesson it sets ``COURSE_METRICS_FILE``; each ``record`` call merges its values into
that JSON file (atomically), together with peak memory. Run by hand in JupyterLab, it just keeps the values in
memory and shows them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_RECORDED: dict[str, object] = {}


def _peak_memory() -> dict[str, float]:
    from course_utils.core.gpu import peak_rss_gb, peak_vram_gb

    peaks = {"peak_rss_gb": round(peak_rss_gb(), 3)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        # the whole kernel's peaks, also across the resets track_peak_memory does for its own blocks
        allocated, reserved = peak_vram_gb()
        peaks["peak_vram_allocated_gb"] = round(allocated, 3)
        peaks["peak_vram_reserved_gb"] = round(reserved, 3)
    return peaks


def record(**metrics: object) -> dict[str, object]:
    """Record metrics (numbers, strings, booleans). Returns everything recorded so far in this kernel."""
    clean: dict[str, object] = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        clean[key] = value
    _RECORDED.update(clean)
    _RECORDED.update(_peak_memory())
    path = os.environ.get("COURSE_METRICS_FILE")
    if path:
        from course_utils.core.paths import atomic_write

        target = Path(path)
        existing = json.loads(target.read_text()) if target.exists() else {}
        existing.update(_RECORDED)
        with atomic_write(target, "w") as handle:
            json.dump(existing, handle, indent=2, default=str)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in clean.items())
    print(f"recorded: {shown}")
    return dict(_RECORDED)


def recorded() -> dict[str, object]:
    """Everything ``record`` has stored in this kernel."""
    return dict(_RECORDED)
