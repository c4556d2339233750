"""course_utils: the small shared package every lesson of *Deep learning on one 12 GB GPU* imports.

Importing it is instant: nothing heavy (torch, transformers) is imported until a function that needs it runs.
Lessons use the core names below directly::

    import course_utils as cu
    cu.set_seed(0); print(cu.gpu_report())

The tree says what each part is for:

* ``core/``    what every lesson uses: GPU checks, the VRAM estimator, memory-safe defaults, OOM back-off, seeding,
  paths and atomic writes, downloads with checksums, hub errors, errors, plots, metrics;
* ``topics/``  one module per lesson topic (``from course_utils.topics.llm import load_causal_lm``): loaders that pick
  the full-mode model or the smoke stand-in, and the plumbing a learner would not write in the lesson;
* ``smoke/``   the smoke-mode stand-ins: tiny models of the real classes and generated data;
* ``runner/``  the instructor's ``course-run`` and its report.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily on first access (keeps `import course_utils` light).
_EXPORTS = {
    "CourseError": "core.errors",
    "NeedsGPU": "core.errors",
    "MissingData": "core.errors",
    "BadParameter": "core.errors",
    "GPUReport": "core.gpu",
    "gpu_report": "core.gpu",
    "require_gpu": "core.gpu",
    "choose_device": "core.gpu",
    "free_gpu": "core.gpu",
    "track_peak_memory": "core.gpu",
    "PeakMemory": "core.gpu",
    "ModelShape": "core.memory",
    "VRAMEstimate": "core.memory",
    "estimate_inference_vram": "core.memory",
    "estimate_training_vram": "core.memory",
    "fits_card": "core.memory",
    "REFERENCE_CARD_GB": "core.memory",
    "GIB": "core.memory",
    "safe_defaults": "core.defaults",
    "SafeDefaults": "core.defaults",
    "find_max_batch_size": "core.oom",
    "oom_advice": "core.oom",
    "explain_oom": "core.oom",
    "is_oom_error": "core.oom",
    "set_seed": "core.repro",
    "environment_snapshot": "core.repro",
    "check_pins": "core.repro",
    "record": "core.metrics",
    "recorded": "core.metrics",
    "data_dir": "core.paths",
    "cache_dir": "core.paths",
    "atomic_write": "core.paths",
    "atomic_dir": "core.paths",
    "plot_curves": "core.plots",
    "tracker": "core.tracking",
    "tracking_dir": "core.tracking",
    "SMOKE_HINT": "core.errors",
    "image_grid": "core.plots",
}

_SUBPACKAGES = ("core", "topics", "smoke", "runner")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        for package in _SUBPACKAGES:  # a submodule: cu.memory, cu.oom, cu.llm ...
            if not name.startswith("_") and importlib.util.find_spec(f"course_utils.{package}.{name}") is not None:
                return importlib.import_module(f"course_utils.{package}.{name}")
        raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"course_utils.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
