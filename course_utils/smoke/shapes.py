"""The one shapes generator of the smoke data sets: flat circles, squares and triangles in one palette.

Lessons 08 (detection boxes), 09 (captioned pictures) and 11 (visual questions) draw their pictures with
:func:`draw_shape`; lesson 03's classification set renders the same shapes (and textures) as arrays with
:func:`shape_masks`. Drawing has no anti-aliasing, so every pixel of a flat shape is exactly one palette colour.
"""

from __future__ import annotations

from typing import Any

from course_utils.core.errors import BadParameter

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
