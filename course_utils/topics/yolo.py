"""Object detection with Ultralytics YOLO, offline-safe: setup, data, weights, and the checks lesson 08 makes.

- :func:`setup_ultralytics` — call it *before* ``import ultralytics``: no telemetry, no update check, no pip
  installs at run time, a font on disk (Ultralytics downloads Arial.ttf on every train/val otherwise), and every
  folder Ultralytics writes (settings, weights, datasets, runs) outside the repository's notebooks.
- :func:`load_yolo` — ``*.yaml`` builds an architecture; ``yolov8n.pt`` is downloaded once and checked against its
  pinned sha256 *before* Ultralytics unpickles it.
- :func:`record_sha256`, :func:`verify_recorded` — the lesson records the sha256 of the ``best.pt`` it trained
  beside it (``best.pt.sha256``); the web demo (lesson 12) unpickles that file only if it still matches.
- :func:`load_detection_data` — ``"shapes"`` (generated, :mod:`course_utils.smoke.yolo`), ``"african-wildlife"``
  (Ultralytics' 4-class set with train/val/test splits; the archive is checked before it is unpacked) or a
  learner's folder with a ``data.yaml``, checked with a clear error when its layout is wrong.
- :func:`read_yolo_labels`, :func:`draw_boxes` — show boxes straight from label files.
- :func:`match_detections`, :func:`measure_latency_ms` — does the exported model agree, and how fast is it.

Heavy imports (numpy, PIL, ultralytics, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from course_utils import assets
from course_utils.core.download import CorruptDownload, download, pin_record, record_sha256, sha256_now, verify
from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.core.paths import atomic_dir, cache_dir, data_dir
from course_utils.smoke.yolo import make_shapes_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Checkpoints the course downloads, pinned by sha256. yolov8n.pt from the release the pinned Ultralytics (8.4.x)
# downloads from; the same digest (6,549,796 bytes) is recorded independently by several public projects that pin it.
# URLs and checksums live in datasets/assets.toml.
WEIGHTS = {"yolov8n.pt": (assets.url("yolov8n"), assets.checksum("yolov8n", "yolov8n.pt"))}
AFRICAN_WILDLIFE_URL = assets.url("african-wildlife")
# No published sha256 was found for this archive (Ultralytics publishes none). Until one is pinned here, the first
# download is trusted and its digest recorded next to the file (african-wildlife.zip.sha256); every later use is
# verified against that record. Paste the digest the lesson prints here to pin it for everyone.
AFRICAN_WILDLIFE_SHA256: str | None = None


def setup_ultralytics(config_dir: str | os.PathLike[str] | None = None,
                      runs_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Make Ultralytics quiet and offline-safe. Call before the first ``import ultralytics`` in a kernel.

    - ``YOLO_OFFLINE=1``: no connectivity probe, update check or analytics (downloads you ask for still work).
    - ``YOLO_AUTOINSTALL=0``: never ``pip install`` at run time (the course pins every package, onnxslim included).
    - ``YOLO_CONFIG_DIR``: the learner's value if set, else ``config_dir``, else the course cache.
    - a TrueType font (matplotlib's DejaVuSans) saved as ``Arial.ttf`` and ``Arial.Unicode.ttf``, the two names
      Ultralytics otherwise downloads before every plot.
    - Ultralytics' settings point its weights, datasets and default runs folders at course folders (by default
      they land next to the package's git root, i.e. inside this repository).
    - the trainer's AMP check is :func:`amp_check_offline`: with ``amp=True`` (fp16, the cards without native bf16)
      Ultralytics' own ``check_amp`` would download an unpinned ``yolo26n.pt`` and unpickle it, even offline.
      (``amp="bf16"`` never runs the check: ``ultralytics/engine/trainer.py``, ``_setup_train``.)

    Returns the folders it chose (``config_dir``, ``font``, ``weights_dir``, ``datasets_dir``, ``runs_dir``).
    """
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir("ultralytics", "config")))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "True")

    user_dir = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"
    if "ultralytics" in sys.modules:  # already imported: its config folder was fixed at import time
        from ultralytics.utils import USER_CONFIG_DIR

        if Path(USER_CONFIG_DIR) != user_dir:
            print(f"note: ultralytics was imported before setup_ultralytics(); it keeps using {USER_CONFIG_DIR}. "
                  "Restart the kernel and run the Setup cell first to use the course's folders.")
        user_dir = Path(USER_CONFIG_DIR)
    user_dir.mkdir(parents=True, exist_ok=True)

    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = user_dir / name
        if not target.exists():
            tmp = target.with_name(f".{name}.tmp")
            shutil.copyfile(dejavu, tmp)
            os.replace(tmp, target)

    from ultralytics.utils import SETTINGS  # the import reads the environment set above

    wanted = {
        "weights_dir": str(cache_dir("ultralytics", "weights")),
        "datasets_dir": str(data_dir()),
        "runs_dir": str(runs_dir or cache_dir("ultralytics", "runs")),
        "sync": False,
        "tensorboard": False,  # the lesson logs to the course's TensorBoard folder itself (a training callback)
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
    import ultralytics.engine.trainer as trainer_module

    trainer_module.check_amp = amp_check_offline  # the trainer's only AMP check: no unpinned yolo26n.pt download
    return {"config_dir": str(user_dir), "font": str(user_dir / "Arial.ttf"),
            **{k: v for k, v in wanted.items() if k not in ("sync", "tensorboard")}}


#: Ultralytics' own list of GPUs whose mixed precision gives NaN losses or zero mAP (``check_amp`` in
#: ``ultralytics/utils/checks.py``; tests/test_devices.py checks it is still the pinned Ultralytics' pattern).
AMP_BROKEN_GPUS = r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)"


def amp_check_offline(model: Any) -> bool:
    """Ultralytics' ``check_amp`` without its download: AMP stays on for a GPU unless Ultralytics lists the card as
    one whose AMP is broken (GTX 16xx, some Quadro T-series), then training runs in fp32. Its other half, comparing a
    downloaded ``yolo26n.pt``'s detections in fp32 and AMP, is what the course skips (an unpinned pickle)."""
    import re

    import torch

    device = next(model.parameters()).device
    if device.type in {"cpu", "mps"}:
        return False
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if re.search(AMP_BROKEN_GPUS, name, re.IGNORECASE):
            print(f"AMP off: Ultralytics lists the {name} among the GPUs whose mixed precision gives NaN losses or "
                  "zero mAP, so this run trains in fp32.")
            return False
    return True


def yolo_runs_dir(lesson: str = "08_yolov8_detection") -> Path:
    """Where a lesson's Ultralytics runs go: next to the executed notebook under the course runner, else the cache."""
    metrics_file = os.environ.get("COURSE_METRICS_FILE")
    if metrics_file:
        path = Path(metrics_file).resolve().parent / f"{lesson}_ultralytics"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("ultralytics", "runs", lesson)


def load_yolo(weights: str) -> Any:
    """``YOLO(weights)``: ``*.yaml`` builds the architecture with random weights; ``*.pt`` loads a checkpoint.

    A bare checkpoint name the course pins (``yolov8n.pt``) is downloaded once into the course's weights folder
    (not the current directory) and its sha256 checked *before* Ultralytics unpickles it — Ultralytics loads its
    checkpoints with ``torch.load(weights_only=False)``, which can run code, so only a file with the pinned digest
    gets that far (a file of that name in the current folder is not used instead). Your own checkpoints (any other
    path that exists) are loaded as they are: load only files you made or checked (:func:`verify_recorded`).
    """
    from ultralytics import YOLO

    path = Path(weights)
    pinned = path.name in WEIGHTS and str(path) == path.name
    if path.suffix in (".yaml", ".yml") or (path.exists() and not pinned):
        return YOLO(str(path))
    if path.suffix != ".pt" or path.parent != Path("."):
        raise BadParameter(f"Model {weights!r} not found; use a config such as 'yolov8n.yaml', a name such as "
                           "'yolov8n.pt', or the path of a checkpoint you trained.")
    if path.name not in WEIGHTS:
        raise MissingData(f"The course pins no checksum for {path.name} (only {', '.join(WEIGHTS)}): download it "
                          f"yourself, check it, and pass its path (MODEL = '/path/to/{path.name}').")
    url, sha256 = WEIGHTS[path.name]
    target = cache_dir("ultralytics", "weights") / path.name
    if not target.exists():
        download(url, target, sha256=sha256)
    verify(target, sha256=sha256)
    return YOLO(str(target))


def verify_recorded(path: str | os.PathLike[str]) -> Path:
    """``path`` if its sha256 is the one recorded beside it by :func:`record_sha256`; else one sentence
    (:class:`~course_utils.core.errors.MissingData` without a record, ``CorruptDownload`` when it differs)."""
    path = Path(path)
    record = pin_record(path)
    if not record.is_file():
        raise MissingData(f"{path} has no recorded sha256 ({record.name}, written when lesson 08 saves it), so it is "
                          "not unpickled: run lesson 08 again to train and record it.")
    recorded = (record.read_text().split() or [""])[0]
    if sha256_now(path) != recorded:
        raise CorruptDownload(f"{path} is not the file lesson 08 recorded (its sha256 differs from {record.name}), "
                              "so it is not unpickled: run lesson 08 again, or delete the file.")
    return path


# --------------------------------------------------------------------------------------------------------------
# Real data: Ultralytics' African Wildlife (train / val / test) or a learner's folder
# --------------------------------------------------------------------------------------------------------------
def _first_download(url: str, dest: Path) -> str:
    """Trust on first use: fetch ``url`` with the course's downloader, record its sha256 beside it, return it."""
    download(url, dest, unpinned=True, timeout=300)
    return record_sha256(dest)


def fetch_checked(url: str, dest: str | os.PathLike[str], sha256: str | None) -> tuple[Path, str, str]:
    """The file at ``dest`` (downloaded from ``url`` if missing), checked before anything reads it.

    With a pinned ``sha256``: the course's :func:`~course_utils.core.download.download` / ``verify``. Without one:
    trust on first use — the first download's digest is recorded in ``<dest>.sha256`` and every later use is
    verified against it. Returns ``(path, sha256, how)`` where ``how`` is ``"pinned"``, ``"recorded"`` (checked
    against an earlier first download) or ``"first use"`` (just downloaded, nothing to compare with yet).
    """
    dest = Path(dest)
    record = pin_record(dest)
    if sha256 is not None:
        if not dest.is_file():
            download(url, dest, sha256=sha256)
        verify(dest, sha256=sha256)
        return dest, sha256, "pinned"
    if dest.is_file() and record.is_file():
        recorded = record.read_text().split()[0]
        verify(dest, sha256=recorded)
        return dest, recorded, "recorded"
    if dest.is_file():  # a file put there by hand, no record: record it now, as a first use
        return dest, record_sha256(dest), "first use"
    return dest, _first_download(url, dest), "first use"


def _safe_extract(archive: Path, target: Path) -> None:
    """Unzip ``archive`` into ``target`` refusing members that would land outside it (absolute or ``..`` paths)."""
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            name = Path(member.filename)
            if name.is_absolute() or ".." in name.parts:
                raise CorruptDownload(f"{archive} has a member outside its folder ({member.filename!r}); not unpacked.")
        zf.extractall(target)


def african_wildlife_yaml(download_missing: bool = True, sha256: str | None = AFRICAN_WILDLIFE_SHA256) -> Path:
    """Ultralytics' ``african-wildlife.yaml`` (buffalo, elephant, rhino, zebra; 1,052 train / 225 val / 227 test)
    pointed at ``<course data>/african-wildlife``; the ~100 MB archive is downloaded if missing and checked
    (:func:`fetch_checked`) before it is unpacked or used."""
    import yaml
    from ultralytics.utils import ROOT

    spec = yaml.safe_load((ROOT / "cfg" / "datasets" / "african-wildlife.yaml").read_text())
    url = spec.pop("download", None) or AFRICAN_WILDLIFE_URL
    archive = data_dir() / "african-wildlife.zip"
    root = data_dir() / "african-wildlife"
    if not archive.is_file() and not download_missing:
        raise MissingData(f"african-wildlife is not in {data_dir()} (download_missing=False): download {url} to "
                          f"{archive}, or set DATA to your own folder, or {SMOKE_HINT}.")
    archive, digest, how = fetch_checked(url, archive, sha256)
    print(f"{archive.name}: sha256 {digest} ({how}{'' if how == 'pinned' else '; no published checksum: see AFRICAN_WILDLIFE_SHA256'})")
    marker = root / ".unpacked-from"
    if not (marker.is_file() and marker.read_text().strip() == digest):
        with atomic_dir(root) as tmp:
            _safe_extract(archive, tmp)
            inner = tmp / "african-wildlife"
            if inner.is_dir() and not (tmp / "images").is_dir():  # the archive may or may not have a top folder
                for child in inner.iterdir():
                    os.replace(child, tmp / child.name)
                inner.rmdir()
            (tmp / ".unpacked-from").write_text(digest + "\n")
    spec["path"] = str(root.resolve())
    target = cache_dir("ultralytics", "data") / "african-wildlife.yaml"
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


_LAYOUT = ("Expected a folder with a data.yaml (Roboflow's 'YOLOv8' export has one) such as:\n"
           "  data.yaml              path: .   train: images/train   val: images/val   test: images/test   names: {0: cat, 1: dog}\n"
           "  images/train/*.jpg     labels/train/*.txt   (one 'class cx cy w h' line per box, all 0-1)\n"
           "  images/val/*.jpg       labels/val/*.txt\n"
           "  images/test/*.jpg      labels/test/*.txt   (optional, recommended: held out, scored once at the end)")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def label_path(image_path: str | os.PathLike[str]) -> Path:
    """The label file Ultralytics reads for an image: last ``images`` folder -> ``labels``, extension -> ``.txt``."""
    parts = list(Path(image_path).parts)
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if idx is None:
        return Path(image_path).with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def check_yolo_folder(folder: str | os.PathLike[str]) -> Path:
    """Check a learner's YOLO data folder and return a ``data.yaml`` with absolute paths that Ultralytics can use.

    Raises :class:`BadParameter` with what is wrong and the expected layout (no deep traceback later in training).
    """
    import yaml

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BadParameter(f"DATA folder {root} does not exist. {_LAYOUT}")
    candidates = [root / n for n in ("data.yaml", "data.yml", "dataset.yaml")] + sorted(root.glob("*.yaml"))
    spec_file = next((p for p in candidates if p.is_file()), None)
    if spec_file is None:
        hint = ""
        if (root / "classes.txt").is_file():
            hint = (" Label Studio's YOLO export has a classes.txt instead: split images/ and labels/ into train/ and"
                    " val/ and write a data.yaml with those class names in that order.")
        raise BadParameter(f"No data.yaml in {root}.{hint} {_LAYOUT}")
    try:
        spec = yaml.safe_load(spec_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise BadParameter(f"{spec_file} is not valid YAML ({err}). {_LAYOUT}") from None
    names = spec.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise BadParameter(f"{spec_file} has no 'names' (the class names, e.g. names: {{0: cat, 1: dog}}). {_LAYOUT}")
    base = Path(spec.get("path") or ".")
    base = base if base.is_absolute() else (root / base)
    resolved = {}
    for split in ("train", "val", "test"):
        entry = spec.get(split)
        if not entry and split == "test":  # optional: without it the lesson scores on val (and says so)
            continue
        if not entry:
            raise BadParameter(f"{spec_file} has no '{split}:' entry. {_LAYOUT}")
        options = [base / entry, root / entry, root / str(entry).removeprefix("../")]
        images_dir = next((p.resolve() for p in options if p.is_dir()), None)
        if images_dir is None:
            raise BadParameter(f"{spec_file}: the {split} folder {entry!r} does not exist under {base}. {_LAYOUT}")
        images = _images_in(images_dir)
        if not images:
            raise BadParameter(f"{images_dir} has no images ({', '.join(IMAGE_SUFFIXES)}). {_LAYOUT}")
        labelled = [label_path(p) for p in images if label_path(p).is_file()]
        if not labelled:
            raise BadParameter(f"None of the {len(images)} {split} images has a label file (looked for "
                               f"{label_path(images[0])}): labels go in a 'labels' folder beside 'images'. {_LAYOUT}")
        for lbl in labelled:
            for n, line in enumerate(lbl.read_text().splitlines(), 1):
                values = line.split()
                if not values:
                    continue
                try:
                    cls, coords = int(values[0]), [float(v) for v in values[1:]]
                except ValueError:
                    cls, coords = -1, []
                if len(coords) != 4 or not 0 <= cls < len(names) or not all(0 <= v <= 1 for v in coords):
                    raise BadParameter(f"{lbl}, line {n}: {line!r} is not 'class cx cy w h' with a class in "
                                       f"0..{len(names) - 1} and coordinates in 0-1. {_LAYOUT}")
        resolved[split] = str(images_dir)
    clean = {"path": str(root.resolve()), **resolved, "names": {int(k): str(v) for k, v in names.items()}}
    import hashlib

    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]  # two folders with the same name do not collide
    target = cache_dir("ultralytics", "data") / f"{root.resolve().name}-{tag}.yaml"
    target.write_text(yaml.safe_dump(clean, sort_keys=False))
    return target


def load_detection_data(data: str | os.PathLike[str], n_images: int = 64, imgsz: int = 160, seed: int = 0) -> Path:
    """The lesson's data switch: ``"shapes"`` (generated: ``n_images`` at ``imgsz`` px, with val and test splits),
    ``"african-wildlife"`` (downloaded once, checked), or a folder with a ``data.yaml``."""
    if str(data) == "shapes":
        return make_shapes_dataset(n_images=n_images, imgsz=imgsz, seed=seed)
    if str(data) == "african-wildlife":
        return african_wildlife_yaml()
    return check_yolo_folder(data)


def split_images(data_yaml: str | os.PathLike[str], split: str = "val") -> list[Path]:
    """The image files of one split of a ``data.yaml``: a folder of images or a ``.txt`` list of image paths."""
    import yaml

    spec = yaml.safe_load(Path(data_yaml).read_text())
    if not spec.get(split):
        raise BadParameter(f"{data_yaml} has no '{split}:' split.")
    entry = Path(spec[split])
    entry = entry if entry.is_absolute() else Path(spec.get("path") or Path(data_yaml).parent) / entry
    if entry.suffix == ".txt":
        return [Path(line.strip()) if Path(line.strip()).is_absolute() else entry.parent / line.strip()
                for line in entry.read_text().splitlines() if line.strip()]
    return _images_in(entry)


# --------------------------------------------------------------------------------------------------------------
# Looking at boxes
# --------------------------------------------------------------------------------------------------------------
def read_yolo_labels(image_path: str | os.PathLike[str], image_shape: Sequence[int]) -> tuple[Any, Any]:
    """Classes (n,) and pixel boxes ``x0 y0 x1 y1`` (n, 4) from the YOLO label file of an image of ``(h, w, ...)``."""
    import numpy as np

    path = label_path(image_path)
    rows = np.loadtxt(path, ndmin=2) if path.is_file() and path.read_text().strip() else np.zeros((0, 5))
    h, w = image_shape[0], image_shape[1]
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return rows[:, 0].astype(int), boxes


def draw_boxes(ax: Any, image: Any, boxes: Any, classes: Any, names: Any, scores: Any = None,
               title: str | None = None) -> Any:
    """Show ``image`` on ``ax`` with pixel boxes ``x0 y0 x1 y1``, class names and (optional) scores."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    ax.imshow(image)
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        x0, y0, x1, y1 = (float(v) for v in box)
        colour = colours(int(cls) % 10)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        text = names[int(cls)] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        ax.text(x0, y0, text, fontsize=7, color="white", va="bottom", bbox={"facecolor": colour, "pad": 1, "lw": 0})
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


# --------------------------------------------------------------------------------------------------------------
# Does the export agree, and how fast is it
# --------------------------------------------------------------------------------------------------------------
def box_iou(a: Any, b: Any) -> Any:
    """IoU matrix (len(a), len(b)) of pixel boxes ``x0 y0 x1 y1``."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_detections(boxes_a: Any, classes_a: Any, boxes_b: Any, classes_b: Any, iou_threshold: float = 0.9) -> float:
    """Fraction of the detections in ``a`` that have a twin in ``b`` (same class, IoU >= threshold), one to one.

    Use it both ways round to check that two models agree. An empty ``a`` is fully found (1.0). Matching is greedy,
    highest IoU first, which is exact when the two sets are near copies of each other.
    """
    import numpy as np

    classes_a, classes_b = np.asarray(classes_a).reshape(-1), np.asarray(classes_b).reshape(-1)
    if len(classes_a) == 0:
        return 1.0
    if len(classes_b) == 0:
        return 0.0
    iou = box_iou(boxes_a, boxes_b)
    iou[classes_a[:, None] != classes_b[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < iou_threshold:
            break
        matched += 1
        iou[i, :], iou[:, j] = -1.0, -1.0
    return matched / len(classes_a)


def measure_latency_ms(fn: Callable[[], object], warmup: int = 10, repeats: int = 50,
                       cuda_sync: bool = False) -> list[float]:
    """Milliseconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones (report the median).

    ``cuda_sync`` waits for the GPU before each clock read: CUDA calls return before the work is done.
    """
    sync = (lambda: None)
    if cuda_sync:
        import torch

        sync = torch.cuda.synchronize
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times
