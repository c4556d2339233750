"""The few plots every lesson needs: training curves and image grids. Labelled axes, a title, one idea each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def plot_curves(history: Mapping[str, Sequence[float]], title: str = "Training curves", xlabel: str = "step",
                ylabel: str | None = None, ax: Any = None, *,
                x: Sequence[float] | Mapping[str, Sequence[float]] | None = None) -> Any:
    """Plot one line per series in ``history`` (e.g. ``{"train loss": [...], "val loss": [...]}``).

    ``x`` gives the steps the values were logged at: one sequence for every series, or a mapping with a sequence per
    series (train loss is logged every step, val loss every ``EVAL_INTERVAL`` steps: ``x={"train loss": steps,
    "val loss": eval_steps}``). A series without x values is plotted at 1, 2, 3, ...
    """
    import matplotlib.pyplot as plt

    from course_utils.core.errors import BadParameter

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in history.items():
        values = list(values)
        xs = x.get(name) if isinstance(x, Mapping) else x
        xs = list(range(1, len(values) + 1)) if xs is None else list(xs)
        if len(xs) != len(values):
            raise BadParameter(f"plot_curves: {name!r} has {len(values)} values but {len(xs)} x values; "
                               "pass x={name: steps} with one step per value.")
        ax.plot(xs, values, label=name, marker="o" if len(values) <= 20 else None)
    if isinstance(x, Mapping) and set(x) - set(history):
        raise BadParameter(f"plot_curves: x has series that history lacks: {sorted(set(x) - set(history))}.")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or ", ".join(history))
    ax.grid(alpha=0.3)
    if len(history) > 1:
        ax.legend()
    return ax


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 4, title: str | None = None,
               size: float = 2.0, cmap: str | None = None) -> Any:
    """Show images (PIL, HxW / HxWxC arrays, or CxHxW tensors) in a grid with optional per-image titles."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if hasattr(img, "detach"):
            img = img.detach().float().cpu().numpy()
            if img.ndim == 3 and img.shape[0] in (1, 3):
                img = np.transpose(img, (1, 2, 0))
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap=cmap or ("gray" if img.ndim == 2 else None))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
