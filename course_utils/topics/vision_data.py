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
32x32 RGB 10-class set of shapes and textures in random colours (deterministic from a seed, cached); both are built
in :mod:`course_utils.smoke.vision`.
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

from course_utils import assets
from course_utils.core.download import CorruptDownload
from course_utils.core.download import download as download_file
from course_utils.core.errors import SMOKE_HINT, MissingData
from course_utils.core.paths import atomic_write, data_dir
from course_utils.topics.spec import MNIST_CLASSES, ImageData  # noqa: F401 - public names

if TYPE_CHECKING:
    import torch

# Official sources and checksums (the same as torchvision 0.29's MNIST.resources / CIFAR10.tgz_md5), from the lock
# (datasets/assets.toml).
MNIST_MIRRORS = list(assets.asset("mnist")["base_urls"])
MNIST_FILES = {name: sums["md5"] for name, sums in assets.asset("mnist")["files"].items()}
CIFAR10_URL = assets.url("cifar-10")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = assets.checksum("cifar-10", CIFAR10_ARCHIVE, "md5")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
#: Written into the unpacked folder when the course downloaded (and MD5-checked) the archive itself: such a folder is
#: then read with torchvision's own per-file integrity checks; a learner's own files are read as they are.
CIFAR10_DOWNLOADED_MARK = ".downloaded-by-course"

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
        from course_utils.smoke.vision import smoke_digits

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


# ---------------------------------------------------------------------------------------------------- CIFAR-10

def _cifar_layout(root: Path) -> str:
    return (f"{root / CIFAR10_FOLDER}/{{{','.join(CIFAR10_FILES)}}} (the unpacked python version), "
            f"or the archive itself at {root / CIFAR10_ARCHIVE}")


def _cifar_complete(root: Path) -> bool:
    return all((root / CIFAR10_FOLDER / name).exists() for name in CIFAR10_FILES)


def extract_safely(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` into ``dest`` with nothing landing outside it: tarfile's ``"data"`` filter where this Python has
    it (3.10.12+, 3.11.4+, 3.12+), else the same rule checked here (plain files and folders only, no absolute path, no
    ``..``); a member that breaks it stops the unpacking with :class:`tarfile.TarError`."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = Path(dest).resolve()
    members = tar.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or os.path.isabs(member.name) or ".." in Path(member.name).parts \
                or (target != root and root not in target.parents):
            raise tarfile.TarError(f"unsafe member {member.name!r} (only plain files and folders inside the archive)")
        member.mode = (member.mode | 0o600) & 0o755 if member.isfile() else 0o755  # what the data filter does
    tar.extractall(dest, members=members)  # noqa: S202 - every member was checked above


def _untar_cifar(archive: Path, root: Path, downloaded: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-unpack-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            extract_safely(tar, tmp)
        if not all((tmp / CIFAR10_FOLDER / name).exists() for name in CIFAR10_FILES):
            raise MissingData(f"{archive} does not contain {CIFAR10_FOLDER}/ with {', '.join(CIFAR10_FILES)}: "
                              f"delete it so it is downloaded again, or replace it with the python version of CIFAR-10.")
        if downloaded:
            (tmp / CIFAR10_FOLDER / CIFAR10_DOWNLOADED_MARK).write_text(f"{CIFAR10_URL}\nmd5 {CIFAR10_MD5}\n")
        shutil.rmtree(root / CIFAR10_FOLDER, ignore_errors=True)
        os.replace(tmp / CIFAR10_FOLDER, root / CIFAR10_FOLDER)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise MissingData(f"{archive} cannot be unpacked ({err}): delete it so it is downloaded again, "
                          f"or replace it with a good copy.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_cifar10(root: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Make sure ``root/cifar-10-batches-py`` holds the unpacked CIFAR-10 files; return ``root``.

    An archive already in ``root`` is unpacked as it is; a downloaded one is checked against the official MD5, and
    the folder unpacked from it is marked (:data:`CIFAR10_DOWNLOADED_MARK`) so that every later load checks each
    file against torchvision's official MD5s too.
    """
    root = Path(root) if root is not None else data_dir()
    if _cifar_complete(root):
        return root
    archive = root / CIFAR10_ARCHIVE
    downloaded = False
    if not archive.exists():
        if not download:
            raise MissingData(
                f"CIFAR-10 is not in {root} and downloading is off (DOWNLOAD = False): put it in torchvision's layout — "
                f"{_cifar_layout(root)} — or point DATA_DIR / $COURSE_DATA at a folder that has it, or {SMOKE_HINT}."
            )
        try:
            download_file(CIFAR10_URL, archive, md5=CIFAR10_MD5, timeout=120)
            downloaded = True
        except CorruptDownload:
            raise
        except MissingData as err:
            raise MissingData(
                f"CIFAR-10 is not in {root} and could not be downloaded from {CIFAR10_URL} "
                f"({str(err).split(' (', 1)[-1].split(');', 1)[0]}): put it in torchvision's layout — {_cifar_layout(root)} — or point "
                f"DATA_DIR / $COURSE_DATA at a folder that has it, or {SMOKE_HINT}."
            ) from None
    _untar_cifar(archive, root, downloaded)
    return root


def cifar10_downloaded_by_course(root: str | os.PathLike[str]) -> bool:
    """True when ``root/cifar-10-batches-py`` was unpacked from an archive the course downloaded and verified."""
    return (Path(root) / CIFAR10_FOLDER / CIFAR10_DOWNLOADED_MARK).exists()


def _cifar10_class(verify: bool) -> type:
    """torchvision's ``CIFAR10`` with its integrity checks (``verify``: files the course downloaded), or a subclass
    that reads a learner's own local files as they are (a reduced set, a re-packed copy)."""
    from torchvision.datasets import CIFAR10

    if verify:
        return CIFAR10

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
    """CIFAR-10 (50,000 + 10,000 images, 3x32x32) in full mode; generated shapes
    (:func:`course_utils.smoke.vision.smoke_shapes`) in smoke mode."""
    if smoke:
        from course_utils.smoke.vision import smoke_shapes

        return smoke_shapes(*smoke_sizes, seed=seed)
    import torch

    root = ensure_cifar10(data_dir, download)
    verify = cifar10_downloaded_by_course(root)
    dataset = _cifar10_class(verify)
    try:
        train, test = dataset(root, train=True, download=False), dataset(root, train=False, download=False)
    except Exception as err:  # truncated or foreign pickles; a downloaded file that fails its MD5
        if verify:
            raise MissingData(
                f"The CIFAR-10 files the course downloaded to {root / CIFAR10_FOLDER} fail torchvision's integrity "
                f"check (MD5; {type(err).__name__}: {err}): delete the folder so it is downloaded again, or {SMOKE_HINT}."
            ) from None
        raise MissingData(
            f"The CIFAR-10 files in {root / CIFAR10_FOLDER} cannot be read ({type(err).__name__}: {err}): delete the "
            f"folder so it is downloaded again, or replace it with a good copy, or {SMOKE_HINT}."
        ) from None

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)

    return ImageData(*tensors(train), *tensors(test), tuple(train.classes), f"CIFAR-10 from {root}")
