"""A local experiment tracker: TensorBoard event files under ``runs/tensorboard/<lesson>/<run>``, no account, offline.

The course notes' habit is "log every run"; here each training loop writes its losses where TensorBoard finds them,
so a learner compares runs side by side from JupyterLab::

    writer = cu.tracker("04_gpt_from_scratch")          # a SummaryWriter for a new run
    writer.add_scalar("loss/train", loss, step)
    # Hugging Face trainers (transformers 5 has no logging_dir): report_to="none" and
    #   callbacks=[TensorBoardCallback(cu.tracker("06_qlora_finetune_8b"))]
    # then, in a notebook:  %load_ext tensorboard   and   %tensorboard --logdir ../runs/tensorboard
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from course_utils.core.paths import REPO_ROOT


def tracking_root() -> Path:
    """``$COURSE_TRACKING`` if set, else ``runs/tensorboard`` in the repository (the folder ``%tensorboard`` opens)."""
    return Path(os.environ.get("COURSE_TRACKING") or REPO_ROOT / "runs" / "tensorboard").expanduser()


def tracking_dir(lesson: str, run: str | None = None) -> Path:
    """A new folder for one run of ``lesson`` (named by ``run``, else the time), created on demand (Ultralytics,
    or any tool that takes a log folder, writes there)."""
    path = tracking_root() / lesson / (run or time.strftime("%Y%m%d-%H%M%S"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracker(lesson: str, run: str | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing to :func:`tracking_dir` (flush it, or close it, at the end)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(tracking_dir(lesson, run)))
