"""The one shapes generator of the smoke data sets: flat circles, squares and triangles in one palette.

Lessons 08 (detection boxes), 09 (captioned pictures) and 11 (visual questions) draw their pictures with
:func:`draw_shape`; lesson 03's classification set renders the same shapes (and textures) as arrays with
:func:`shape_masks`. Drawing has no anti-aliasing, so every pixel of a flat shape is exactly one palette colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from course_utils.core.errors import BadParameter

if TYPE_CHECKING:
    import numpy as np

SHAPES = ("circle", "square", "triangle")
#: The palette every generated picture uses (names appear in captions and answers).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 30),
    "white": (245, 245, 245), "black": (15, 15, 15), "purple": (140, 40, 180), "orange": (245, 130, 20),
}


def draw_shape(draw: Any, shape: str, box: tuple[float, float, float, float], fill: tuple[int, int, int],
               outline: tuple[int, int, int] | None = None, width: int = 1, apex_up: bool = True) -> None:
    """Draw one shape filling ``box`` (x0, y0, x1, y1) on a ``PIL.ImageDraw.Draw``.

    The box is the shape's exact extent: a circle touches its four sides, a triangle has its base on one edge and its
    apex on the middle of the other (up, or down with ``apex_up=False``).
    """
    if shape not in SHAPES:
        raise BadParameter(f"Unknown shape {shape!r}; the generator draws {SHAPES}.")
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif apex_up:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
    else:
        draw.polygon([(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)], fill=fill, outline=outline)


#: Lesson 03's ten classes: five shapes and five textures, rendered as arrays by :func:`shape_masks`.
SHAPES_CLASSES = ("disc", "square", "triangle", "cross", "ring",
                  "h-stripes", "v-stripes", "d-stripes", "checkers", "dots")


def shape_masks(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` float masks (32x32, values in [0, 1]) of one class, with random position, size, angle and phase."""
    import numpy as np

    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    yy, xx = yy[None], xx[None]

    def draw(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)

    cx, cy, r = draw(11, 21), draw(11, 21), draw(6, 10)
    dx, dy = xx - cx, yy - cy
    period, phase = draw(5, 9), draw(0, 2 * np.pi)

    def waves(u: np.ndarray) -> np.ndarray:
        return (np.sin(2 * np.pi * u / period + phase) > 0).astype(np.float32)

    if label == 0:  # disc
        mask = dx**2 + dy**2 <= r**2
    elif label == 1:  # square (axis-aligned)
        mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif label == 2:  # triangle pointing up
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif label == 3:  # plus-shaped cross
        arm = r * 0.3
        mask = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    elif label == 4:  # ring
        d = np.sqrt(dx**2 + dy**2)
        mask = (d <= r) & (d >= r * 0.55)
    elif label == 5:  # horizontal stripes
        return waves(yy)
    elif label == 6:  # vertical stripes
        return waves(xx)
    elif label == 7:  # diagonal stripes
        return waves((xx + yy) / np.sqrt(2))
    elif label == 8:  # checkerboard: stripes one way XOR stripes the other
        return np.abs(waves(xx) - waves(yy))
    else:  # dots on a grid
        spacing = period + 1
        return ((((xx + phase) % spacing) - spacing / 2) ** 2 + (((yy + phase) % spacing) - spacing / 2) ** 2
                <= (spacing * 0.28) ** 2).astype(np.float32)
    return mask.astype(np.float32)
