"""The one shapes generator (course_utils.smoke.shapes) that lessons 03, 08, 09 and 11 draw their smoke data with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

import course_utils as cu
from course_utils.smoke import diffusion, shapes, vlm
from course_utils.smoke import yolo as smoke_yolo


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_a_shape_fills_exactly_its_box_in_one_colour(shape):
    image = Image.new("RGB", (64, 64), shapes.COLORS["white"])
    shapes.draw_shape(ImageDraw.Draw(image), shape, (10, 20, 40, 50), shapes.COLORS["red"])
    pixels = np.asarray(image)
    red = np.all(pixels == shapes.COLORS["red"], axis=-1)
    assert np.all(red | np.all(pixels == shapes.COLORS["white"], axis=-1)), "no anti-aliasing: two colours only"
    ys, xs = np.nonzero(red)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (10, 20, 40, 50), f"{shape} must touch its box's four sides"
    area = red.sum() / (31 * 31)
    expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[shape]
    assert abs(area - expected) < 0.08, f"{shape} covers {area:.2f} of its box, expected ~{expected:.2f}"


def test_apex_down_triangle_is_the_mirror_image():
    up, down = (Image.new("RGB", (32, 32)) for _ in range(2))
    shapes.draw_shape(ImageDraw.Draw(up), "triangle", (4, 4, 27, 27), (255, 255, 255))
    shapes.draw_shape(ImageDraw.Draw(down), "triangle", (4, 4, 27, 27), (255, 255, 255), apex_up=False)
    assert np.abs(np.asarray(up)[::-1].astype(int) - np.asarray(down).astype(int)).mean() < 6


def test_unknown_shape_is_one_sentence():
    image = Image.new("RGB", (8, 8))
    with pytest.raises(cu.BadParameter, match="circle"):
        shapes.draw_shape(ImageDraw.Draw(image), "hexagon", (0, 0, 7, 7), (1, 2, 3))


def test_every_generator_draws_with_the_one_palette():
    assert diffusion.COLORS is shapes.COLORS and diffusion.SHAPES == shapes.SHAPES
    assert set(vlm.COLORS.items()) <= set(shapes.COLORS.items()) and vlm.SHAPES == shapes.SHAPES
    assert smoke_yolo.SHAPE_NAMES == shapes.SHAPES
    item = diffusion.make_shapes_dataset(n=1, size=32, seed=0)[0]
    colours = {tuple(c) for c in np.asarray(item.image).reshape(-1, 3)}
    assert colours == {shapes.COLORS[item.color], shapes.COLORS[item.background]}
    scene = vlm.generate_shape_qa(1, seed=0, image_size=112)[0]
    allowed = {tuple(vlm.BACKGROUND)} | {vlm.COLORS[s.color] for s in scene.shapes}
    assert {tuple(c) for c in np.asarray(scene.image).reshape(-1, 3)} <= allowed


def test_lesson_03_masks_come_from_the_same_module():
    rng = np.random.default_rng(0)
    masks = shapes.shape_masks(shapes.SHAPES_CLASSES.index("square"), 4, rng)
    assert masks.shape == (4, 32, 32) and set(np.unique(masks)) <= {0.0, 1.0}
    assert 0.1 < masks.mean() < 0.6, "a square covers part of the image, not none or all of it"
