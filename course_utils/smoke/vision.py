"""Smoke stand-ins for lessons 02-03 (and any lesson that needs small images): offline, seeded, instant.

* :func:`smoke_digits` — scikit-learn's 1,797 real handwritten 8x8 digits, made to look like MNIST (1x28x28 uint8);
* :func:`generate_shapes` / :func:`smoke_shapes` — a generated 32x32 RGB ten-class set of shapes and textures in
  random colours, the stand-in for CIFAR-10 (colour carries no information; the shape is the class).

Both return the :class:`~course_utils.topics.vision_data.ImageData` the real loaders return, so a lesson's code after
the loader is the same in both modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from course_utils.core.paths import atomic_write, cache_dir
from course_utils.topics.spec import MNIST_CLASSES, ImageData
from course_utils.smoke.shapes import SHAPES_CLASSES, shape_masks

if TYPE_CHECKING:
    import numpy as np

_SHAPES_VERSION = 1  # bump when the generator changes, so old caches are not reused


# ------------------------------------------------------------------------------------------- smoke MNIST digits

def smoke_digits(seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 1,797 real handwritten 8x8 digits, made to look like MNIST: 20x20 in a 28x28 frame, uint8.

    Offline and instant; a stratified train/test split drawn with ``seed``.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = F.pad(images, (4, 4, 4, 4))  # MNIST centres a 20x20 digit in a 28x28 frame
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=test_fraction, random_state=seed,
                                           stratify=digits.target)
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return ImageData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], MNIST_CLASSES,
                     "smoke digits (scikit-learn's 8x8 digits resized to 28x28)")


# ------------------------------------------------------------------------------------ generated smoke CIFAR set

def generate_shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 32x32 RGB uint8 images (N x 3 x 32 x 32) of ten shapes/textures, and their labels, from ``seed``.

    Colour carries no information (foreground and background colours are drawn at random for every image, with
    enough contrast to see the shape): the class is the shape or texture, as in CIFAR the class is the object.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = np.empty((n, 32, 32, 3), dtype=np.float32)
    for label in range(10):
        idx = np.flatnonzero(labels == label)
        mask = shape_masks(label, len(idx), rng)[..., None]  # k x 32 x 32 x 1
        fg = rng.uniform(0, 1, size=(len(idx), 1, 1, 3))
        bg = rng.uniform(0, 1, size=(len(idx), 1, 1, 3))
        # push the background away from the foreground so every shape stays visible
        low = np.abs(fg - bg).max(axis=-1, keepdims=True) < 0.35
        bg = np.where(low, 1.0 - fg, bg)
        images[idx] = mask * fg + (1 - mask) * bg
    images += rng.normal(0, 0.06, size=images.shape)  # sensor-like noise
    images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return images.transpose(0, 3, 1, 2).copy(), labels.astype(np.int64)


def smoke_shapes(n_train: int = 2560, n_test: int = 512, seed: int = 0, cache: bool = True) -> ImageData:
    """The smoke stand-in for CIFAR-10: generated shapes/textures, 3x32x32 uint8, ten classes.

    Built from ``seed`` (train and test from different streams) and cached as ``.npz`` in ``cache_dir("vision")``.
    """
    import numpy as np
    import torch

    path = cache_dir("vision") / f"shapes10-v{_SHAPES_VERSION}-seed{seed}-{n_train}-{n_test}.npz"
    arrays = None
    if cache and path.exists():
        try:
            with np.load(path) as saved:
                arrays = {k: saved[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):  # a damaged cache is rebuilt
            arrays = None
    if arrays is None:
        x_train, y_train = generate_shapes(n_train, seed=seed * 2 + 1)
        x_test, y_test = generate_shapes(n_test, seed=seed * 2 + 2)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        if cache:
            with atomic_write(path) as handle:
                np.savez(handle, **arrays)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return ImageData(t["x_train"], t["y_train"], t["x_test"], t["y_test"], SHAPES_CLASSES,
                     f"smoke shapes (generated, seed {seed})")
