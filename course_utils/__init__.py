"""course_utils: the small shared package every lesson of *Deep learning on one 12 GB GPU* imports.

Importing it is instant: nothing heavy (torch, transformers) is imported until a function that needs it runs.
Lessons use the names below directly::

    import course_utils as cu
    cu.set_seed(0); print(cu.gpu_report())
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily on first access (keeps `import course_utils` light).
_EXPORTS = {
    "CourseError": "errors",
    "NeedsGPU": "errors",
    "MissingData": "errors",
    "BadParameter": "errors",
    "GPUReport": "gpu",
    "gpu_report": "gpu",
    "require_gpu": "gpu",
    "choose_device": "gpu",
    "free_gpu": "gpu",
    "track_peak_memory": "gpu",
    "PeakMemory": "gpu",
    "ModelShape": "memory",
    "VRAMEstimate": "memory",
    "estimate_inference_vram": "memory",
    "estimate_training_vram": "memory",
    "fits_card": "memory",
    "REFERENCE_CARD_GB": "memory",
    "safe_defaults": "defaults",
    "SafeDefaults": "defaults",
    "find_max_batch_size": "oom",
    "oom_advice": "oom",
    "explain_oom": "oom",
    "is_oom_error": "oom",
    "set_seed": "repro",
    "environment_snapshot": "repro",
    "check_pins": "repro",
    "record": "metrics",
    "recorded": "metrics",
    "data_dir": "paths",
    "cache_dir": "paths",
    "atomic_write": "paths",
    "atomic_dir": "paths",
    "plot_curves": "plots",
    "image_grid": "plots",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"course_utils.{name}") is not None:
            return importlib.import_module(f"course_utils.{name}")  # a submodule: cu.memory, cu.oom, ...
        raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"course_utils.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
