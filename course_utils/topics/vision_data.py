"""MNIST and CIFAR-10 for lessons 02-03: the real data sets in full mode, small offline stand-ins in smoke mode.

Both modes return the same thing, an :class:`ImageData` of uint8 ``N x C x H x W`` image tensors and int64 labels, so
the lesson code after the loader is identical::

    from course_utils.topics.vision_data import load_mnist
    data = load_mnist(smoke=SMOKE, data_dir=DATA_DIR, download=DOWNLOAD)

Full mode reads torchvision's ``MNIST`` / ``CIFAR10`` from the course data folder (``$COURSE_DATA`` or
``datasets/``), in torchvision's folder layout::

    <data dir>/MNIST/raw/train-images-idx3-ubyte.gz   (+ train-labels, t10k-images, t10k-labels; .gz or unpacked)
    <data dir>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
                                                        (or <data dir>/cifar-10-python.tar.gz, unpacked on first use)

Files already there are used as they are (a learner's own copy, a reduced set); only files this module downloads
are checked against the official MD5 checksums. With the files missing and no download possible, the learner
gets one :class:`~course_utils.core.errors.MissingData` sentence: which files go where, or how to run smoke mode.

Smoke mode needs no files: scikit-learn's bundled handwritten digits resized to MNIST's 28x28, and a generated
32x32 RGB 10-class set of shapes and textures in random colours (deterministic from a seed, cached).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils.core.download import CorruptDownload
from course_utils.core.download import download as download_file
from course_utils.core.errors import SMOKE_HINT, MissingData
from course_utils.core.paths import atomic_write, cache_dir, data_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

# Official sources and checksums (the same as torchvision 0.29's MNIST.resources / CIFAR10.tgz_md5).
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]

MNIST_CLASSES = tuple(str(d) for d in range(10))
SHAPES_CLASSES = ("disc", "square", "triangle", "cross", "ring",
                  "h-stripes", "v-stripes", "d-stripes", "checkers", "dots")
_SHAPES_VERSION = 1  # bump when the generator changes, so old caches are not reused


@dataclass(frozen=True)
class ImageData:
    """A train/test split as tensors: uint8 images ``N x C x H x W`` (0-255) and int64 labels ``N``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __str__(self) -> str:
        _, c, h, w = self.x_train.shape
        return (f"{self.source}: {len(self.x_train):,} train / {len(self.x_test):,} test images, "
                f"{c}x{h}x{w} {str(self.x_train.dtype).replace('torch.', '')}, {len(self.classes)} classes")


# --------------------------------------------------------------------------------------------------- downloads

def _gunzip(src: Path, dest: Path) -> None:
    try:
        with gzip.open(src, "rb") as packed, atomic_write(dest) as out:
            shutil.copyfileobj(packed, out)
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; a truncated file raises EOFError
        raise MissingData(f"{src} is not a readable .gz file ({err}): delete it and download it again, or unpack it yourself to {dest}.") from None


# ------------------------------------------------------------------------------------------------------- MNIST

def _mnist_layout(root: Path) -> str:
    return ", ".join(str(root / "MNIST" / "raw" / name) for name in MNIST_FILES)


def _mnist_missing(raw: Path) -> list[str]:
    """Names (``*.gz``) with neither the archive nor its unpacked file in ``raw``."""
    return [name for name in MNIST_FILES if not (raw / name).exists() and not (raw / name[:-3]).exists()]


def ensure_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Make sure ``root/MNIST/raw`` holds the four unpacked MNIST files; return ``root``.

    Files already there (unpacked or ``.gz``) are accepted as they are. Missing ones are downloaded (if ``download``)
    and checked against the official MD5; ``.gz`` files are unpacked next to themselves.
    """
    root = Path(root) if root is not None else data_dir()
    raw = root / "MNIST" / "raw"
    missing = _mnist_missing(raw)
    if missing and not download:
        raise MissingData(
            f"MNIST is not in {root} and downloading is off (DOWNLOAD = False): put the four files in torchvision's "
            f"layout — {_mnist_layout(root)} (.gz or unpacked) — or point DATA_DIR / $COURSE_DATA at a folder that "
            f"has MNIST/raw/, or {SMOKE_HINT}."
        )
    for name in missing:
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                download_file(mirror + name, raw / name, md5=MNIST_FILES[name])
                break
            except CorruptDownload:
                raise
            except MissingData as err:  # no network, DNS failure, HTTP error, timeout
                errors.append(f"{mirror}: {str(err).split(' (', 1)[-1].split(');', 1)[0]}")
        else:
            raise MissingData(
                f"MNIST is not in {root} and could not be downloaded ({'; '.join(errors)}): put the four files in "
                f"torchvision's layout — {_mnist_layout(root)} (.gz or unpacked) — or point DATA_DIR / $COURSE_DATA "
                f"at a folder that has MNIST/raw/, or {SMOKE_HINT}."
            )
    for name in MNIST_FILES:
        if not (raw / name[:-3]).exists():
            try:
                _gunzip(raw / name, raw / name[:-3])
            except PermissionError:
                raise MissingData(f"{raw} is read-only and holds only {name}: unpack it there (gunzip -k) or copy the folder somewhere writable and point DATA_DIR at it.") from None
    return root


def load_mnist(smoke: bool, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
               seed: int = 0) -> ImageData:
    """MNIST (60,000 + 10,000 digits, 1x28x28) in full mode; scikit-learn's digits resized to 28x28 in smoke mode."""
    if smoke:
        return smoke_digits(seed=seed)
    from torchvision.datasets import MNIST

    root = ensure_mnist(data_dir, download)
    try:
        train, test = MNIST(root, train=True, download=False), MNIST(root, train=False, download=False)
    except Exception as err:  # truncated or foreign files: torchvision fails deep inside its reader
        raise MissingData(
            f"The MNIST files in {root / 'MNIST' / 'raw'} cannot be read ({type(err).__name__}: {err}): delete them "
            f"so they are downloaded again, or replace them with good copies, or {SMOKE_HINT}."
        ) from None
    return ImageData(train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long(),
                     MNIST_CLASSES, f"MNIST from {root}")


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


# ---------------------------------------------------------------------------------------------------- CIFAR-10

def _cifar_layout(root: Path) -> str:
    return (f"{root / CIFAR10_FOLDER}/{{{','.join(CIFAR10_FILES)}}} (the unpacked python version), "
            f"or the archive itself at {root / CIFAR10_ARCHIVE}")


def _cifar_complete(root: Path) -> bool:
    return all((root / CIFAR10_FOLDER / name).exists() for name in CIFAR10_FILES)


def _untar_cifar(archive: Path, root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-unpack-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not all((tmp / CIFAR10_FOLDER / name).exists() for name in CIFAR10_FILES):
            raise MissingData(f"{archive} does not contain {CIFAR10_FOLDER}/ with {', '.join(CIFAR10_FILES)}: "
                              f"delete it so it is downloaded again, or replace it with the python version of CIFAR-10.")
        shutil.rmtree(root / CIFAR10_FOLDER, ignore_errors=True)
        os.replace(tmp / CIFAR10_FOLDER, root / CIFAR10_FOLDER)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise MissingData(f"{archive} cannot be unpacked ({err}): delete it so it is downloaded again, "
                          f"or replace it with a good copy.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_cifar10(root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Make sure ``root/cifar-10-batches-py`` holds the unpacked CIFAR-10 files; return ``root``.

    An archive already in ``root`` is unpacked as it is; a downloaded one is checked against the official MD5.
    """
    root = Path(root) if root is not None else data_dir()
    if _cifar_complete(root):
        return root
    archive = root / CIFAR10_ARCHIVE
    if not archive.exists():
        if not download:
            raise MissingData(
                f"CIFAR-10 is not in {root} and downloading is off (DOWNLOAD = False): put it in torchvision's layout — "
                f"{_cifar_layout(root)} — or point DATA_DIR / $COURSE_DATA at a folder that has it, or {SMOKE_HINT}."
            )
        try:
            download_file(CIFAR10_URL, archive, md5=CIFAR10_MD5, timeout=120)
        except CorruptDownload:
            raise
        except MissingData as err:
            raise MissingData(
                f"CIFAR-10 is not in {root} and could not be downloaded from {CIFAR10_URL} "
                f"({str(err).split(' (', 1)[-1].split(');', 1)[0]}): put it in torchvision's layout — {_cifar_layout(root)} — or point "
                f"DATA_DIR / $COURSE_DATA at a folder that has it, or {SMOKE_HINT}."
            ) from None
    _untar_cifar(archive, root)
    return root


def _cifar10_class() -> type:
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10, accepting local files whose checksums differ from the official ones."""

        def _check_integrity(self) -> bool:
            return _cifar_complete(Path(self.root))

        def _load_meta(self) -> None:
            import pickle

            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as handle:
                self.classes = pickle.load(handle, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return LocalCIFAR10


def load_cifar10(smoke: bool, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
                 seed: int = 0, smoke_sizes: tuple[int, int] = (2560, 512)) -> ImageData:
    """CIFAR-10 (50,000 + 10,000 images, 3x32x32) in full mode; generated shapes (:func:`smoke_shapes`) in smoke mode."""
    if smoke:
        return smoke_shapes(*smoke_sizes, seed=seed)
    import torch

    root = ensure_cifar10(data_dir, download)
    dataset = _cifar10_class()
    try:
        train, test = dataset(root, train=True, download=False), dataset(root, train=False, download=False)
    except Exception as err:  # truncated or foreign pickles
        raise MissingData(
            f"The CIFAR-10 files in {root / CIFAR10_FOLDER} cannot be read ({type(err).__name__}: {err}): delete the "
            f"folder so it is downloaded again, or replace it with a good copy, or {SMOKE_HINT}."
        ) from None

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)

    return ImageData(*tensors(train), *tensors(test), tuple(train.classes), f"CIFAR-10 from {root}")


# ------------------------------------------------------------------------------------ generated smoke CIFAR set

def _shape_masks(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
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
        mask = _shape_masks(label, len(idx), rng)[..., None]  # k x 32 x 32 x 1
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
