"""The generated detection data set of lesson 08's smoke mode: coloured shapes on textured backgrounds, YOLO labels.

:func:`make_shapes_dataset` writes a train, a val and a held-out test split, each drawn from its own seeds
(``[seed, split, index]``), so no image of one split can be an image of another; the lesson checks that by content
hash. Deterministic and offline. Loaders (real data, a learner's folder) stay in :mod:`course_utils.topics.yolo`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter
from course_utils.core.paths import atomic_dir, cache_dir

from course_utils.smoke.shapes import SHAPES as SHAPE_NAMES
from course_utils.smoke.shapes import draw_shape

SPLITS = ("train", "val", "test")
_GENERATOR_VERSION = 2  # bump when the drawing code or the layout changes, so stale cached sets are not reused


# --------------------------------------------------------------------------------------------------------------
def _texture(rng: Any, size: int) -> Any:
    """A random background: smooth colour blobs, optional stripes or checks, and fine grain (uint8 HxWx3)."""
    import numpy as np
    from PIL import Image

    cells = int(rng.integers(2, 6))
    low = rng.uniform(40, 215, size=(cells, cells, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24) * size / 128
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        img += (rng.uniform(15, 40) * wave)[..., None]
    elif kind == 2:  # checks
        period = max(2, int(rng.uniform(6, 20) * size / 128))
        checks = ((xx // period + yy // period) % 2) * 2 - 1
        img += (rng.uniform(10, 30) * checks)[..., None]
    img += rng.normal(0, rng.uniform(3, 12), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area: how much of one shape the other could hide."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def shapes_image(seed: int, index: int, split: str = "train", imgsz: int = 160,
                 max_objects: int = 4) -> tuple[Any, list[tuple[int, float, float, float, float]]]:
    """One generated image and its labels ``(class, cx, cy, w, h)`` normalised to 0-1.

    Deterministic: the same ``(seed, split, index)`` always gives the same pixels and labels, whatever the size of
    the set it belongs to.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    split_id = SPLITS.index(split)  # each split has its own seeds
    rng = np.random.default_rng([seed, split_id, index])
    image = Image.fromarray(_texture(rng, imgsz))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[float, float, float, float]] = []
    labels = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # find a place that does not hide an earlier shape
            side = rng.uniform(0.14, 0.42) * imgsz
            x0, y0 = rng.uniform(1, imgsz - side - 1, size=2)
            box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
            if all(_overlap(box, other) < 0.1 for other in boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(SHAPE_NAMES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = tuple(255 - c for c in colour)
        x0, y0, x1, y1 = box
        draw_shape(draw, SHAPE_NAMES[cls], box, colour, outline=outline, width=max(1, imgsz // 160),
                   apex_up=bool(cls != 2 or rng.random() < 0.5))
        boxes.append(box)
        labels.append((cls, (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz, (x1 - x0) / imgsz, (y1 - y0) / imgsz))
    return image, labels


def make_shapes_dataset(n_images: int = 64, n_val: int | None = None, n_test: int | None = None, imgsz: int = 160,
                        seed: int = 0, root: str | os.PathLike[str] | None = None) -> Path:
    """Generate (once) a YOLO-format detection data set and return its ``data.yaml``.

    ``n_images`` training images, ``n_val`` validation images (picks ``best.pt``) and ``n_test`` held-out test
    images (scored once, at the end), each by default a quarter of ``n_images`` and at least 8, of ``imgsz`` x
    ``imgsz`` pixels with 1-4 circles, squares and triangles each. Each split is drawn from its own seeds. Layout::

        root/data.yaml  root/images/{train,val,test}/000000.jpg  root/labels/{train,val,test}/000000.txt

    The set is cached under the course cache (or ``root``) and reused when asked for again.
    """
    if n_images < 1 or imgsz < 32:
        raise BadParameter(f"make_shapes_dataset needs n_images >= 1 and imgsz >= 32 (got {n_images}, {imgsz}).")
    n_val = max(8, n_images // 4) if n_val is None else n_val
    n_test = max(8, n_images // 4) if n_test is None else n_test
    if n_val < 1 or n_test < 1:
        raise BadParameter(f"make_shapes_dataset needs n_val >= 1 and n_test >= 1 (got {n_val}, {n_test}).")
    name = f"shapes_v{_GENERATOR_VERSION}_n{n_images}_val{n_val}_test{n_test}_px{imgsz}_seed{seed}"
    folder = Path(root) if root is not None else cache_dir("yolo_shapes") / name
    yaml_path = folder / "data.yaml"
    if yaml_path.exists():
        return yaml_path
    with atomic_dir(folder) as tmp:
        for split, count in zip(SPLITS, (n_images, n_val, n_test)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            indices = range(count)
            if count >= 500:  # a progress bar only when it takes a while
                from tqdm.auto import tqdm

                indices = tqdm(indices, desc=f"generating {split} images", leave=False)
            for i in indices:
                image, labels = shapes_image(seed, i, split, imgsz)
                image.save(tmp / "images" / split / f"{i:06d}.jpg", quality=92)
                lines = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
                (tmp / "labels" / split / f"{i:06d}.txt").write_text(lines)
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(SHAPE_NAMES))
        (tmp / "data.yaml").write_text(
            f"# generated by course_utils.smoke.yolo.make_shapes_dataset(n_images={n_images}, n_val={n_val}, "
            f"n_test={n_test}, imgsz={imgsz}, seed={seed})\n"
            f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}"
        )
    return yaml_path
