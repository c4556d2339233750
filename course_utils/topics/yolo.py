"""Object detection with Ultralytics YOLO, offline-safe: setup, data, and the checks lesson 08 makes.

- :func:`setup_ultralytics` — call it *before* ``import ultralytics``: no telemetry, no update check, no pip
  installs at run time, a font on disk (Ultralytics downloads Arial.ttf on every train/val otherwise), and every
  folder Ultralytics writes (settings, weights, datasets, runs) outside the repository's notebooks.
- :func:`make_shapes_dataset` — a deterministic detection data set (coloured shapes on textured backgrounds, YOLO
  labels, ``data.yaml``) of any size, generated once into the course cache.
- :func:`load_detection_data` — ``"shapes"`` (generated), ``"coco128"`` (Ultralytics' own data yaml; downloads when
  online) or a learner's folder with a ``data.yaml``, checked with a clear error when its layout is wrong.
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

from course_utils.core.errors import BadParameter, MissingData
from course_utils.core.paths import atomic_dir, cache_dir, data_dir

SHAPE_NAMES = ("circle", "square", "triangle")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
COCO128_URL = "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip"
_GENERATOR_VERSION = 1  # bump when the drawing code changes, so stale cached sets are not reused


# --------------------------------------------------------------------------------------------------------------
# Offline setup
# --------------------------------------------------------------------------------------------------------------
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
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
    return {"config_dir": str(user_dir), "font": str(user_dir / "Arial.ttf"),
            **{k: v for k, v in wanted.items() if k != "sync"}}


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

    A bare checkpoint name such as ``yolov8n.pt`` is looked up (and, when online, downloaded) in the course's
    weights folder instead of the current directory, so nothing lands in ``notebooks/``.
    """
    from ultralytics import YOLO

    path = Path(weights)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return YOLO(str(path))
    if path.suffix != ".pt" or path.parent != Path("."):
        raise BadParameter(f"Model {weights!r} not found; use a config such as 'yolov8n.yaml', a name such as "
                           "'yolov8n.pt', or the path of a checkpoint you trained.")
    target = cache_dir("ultralytics", "weights") / path.name
    if not target.exists():
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            attempt_download_asset(str(target))
        except (ConnectionError, OSError) as err:
            raise MissingData(f"{path.name} is not in {target.parent} and could not be downloaded ({type(err).__name__}); "
                              f"connect to the internet once, or copy the file there, or run smoke mode (SMOKE=1).") from None
        if not target.exists():
            raise MissingData(f"{path.name} is not an Ultralytics release asset; copy the checkpoint to {target}.")
    return YOLO(str(target))


# --------------------------------------------------------------------------------------------------------------
# The generated data set
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

    split_id = {"train": 0, "val": 1, "test": 2}[split]
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
        if cls == 0:
            draw.ellipse(box, fill=colour, outline=outline, width=max(1, imgsz // 160))
        elif cls == 1:
            draw.rectangle(box, fill=colour, outline=outline, width=max(1, imgsz // 160))
        else:  # apex up or down, base on the box's edge: the box is exactly the triangle's extent
            if rng.random() < 0.5:
                points = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
            else:
                points = [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)]
            draw.polygon(points, fill=colour, outline=outline)
        boxes.append(box)
        labels.append((cls, (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz, (x1 - x0) / imgsz, (y1 - y0) / imgsz))
    return image, labels


def make_shapes_dataset(n_images: int = 64, n_val: int | None = None, imgsz: int = 160, seed: int = 0,
                        root: str | os.PathLike[str] | None = None) -> Path:
    """Generate (once) a YOLO-format detection data set and return its ``data.yaml``.

    ``n_images`` training images and ``n_val`` validation images (default: a quarter of ``n_images``, at least 8)
    of ``imgsz`` x ``imgsz`` pixels with 1-4 circles, squares and triangles each. Layout::

        root/data.yaml  root/images/{train,val}/000000.jpg  root/labels/{train,val}/000000.txt

    The set is cached under the course cache (or ``root``) and reused when asked for again.
    """
    if n_images < 1 or imgsz < 32:
        raise BadParameter(f"make_shapes_dataset needs n_images >= 1 and imgsz >= 32 (got {n_images}, {imgsz}).")
    n_val = max(8, n_images // 4) if n_val is None else n_val
    name = f"shapes_v{_GENERATOR_VERSION}_n{n_images}_val{n_val}_px{imgsz}_seed{seed}"
    folder = Path(root) if root is not None else cache_dir("yolo_shapes") / name
    yaml_path = folder / "data.yaml"
    if yaml_path.exists():
        return yaml_path
    with atomic_dir(folder) as tmp:
        for split, count in (("train", n_images), ("val", n_val)):
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
            f"# generated by course_utils.topics.yolo.make_shapes_dataset(n_images={n_images}, n_val={n_val}, "
            f"imgsz={imgsz}, seed={seed})\n"
            f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}"
        )
    return yaml_path


# --------------------------------------------------------------------------------------------------------------
# Real data: coco128 or a learner's folder
# --------------------------------------------------------------------------------------------------------------
def coco128_yaml(download: bool = True) -> Path:
    """Ultralytics' own ``coco128.yaml`` pointed at ``<course data>/coco128`` (downloaded there, ~7 MB, if missing)."""
    import yaml
    from ultralytics.utils import ROOT

    spec = yaml.safe_load((ROOT / "cfg" / "datasets" / "coco128.yaml").read_text())
    url = spec.pop("download", None) or COCO128_URL
    root = data_dir() / "coco128"
    if not (root / "images" / "train2017").is_dir():
        error = "download=False"
        if download:
            from ultralytics.utils.downloads import safe_download

            try:
                safe_download(url, dir=data_dir(), unzip=True, delete=True)
            except (ConnectionError, OSError) as err:
                error = type(err).__name__
        if not (root / "images" / "train2017").is_dir():
            raise MissingData(f"coco128 is not in {root} and could not be downloaded ({error}): download {url} "
                              f"and unzip it into {data_dir()}, or set DATA to your own folder, or run smoke mode (SMOKE=1).")
    spec["path"] = str(root.resolve())
    target = cache_dir("ultralytics", "data") / "coco128.yaml"
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


_LAYOUT = ("Expected a folder with a data.yaml (Roboflow's 'YOLOv8' export has one) such as:\n"
           "  data.yaml              path: .   train: images/train   val: images/val   names: {0: cat, 1: dog}\n"
           "  images/train/*.jpg     labels/train/*.txt   (one 'class cx cy w h' line per box, all 0-1)\n"
           "  images/val/*.jpg       labels/val/*.txt")


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
    for split in ("train", "val"):
        entry = spec.get(split)
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
    """The lesson's data switch: ``"shapes"`` (generated: ``n_images`` at ``imgsz`` px), ``"coco128"``, or a folder."""
    if str(data) == "shapes":
        return make_shapes_dataset(n_images=n_images, imgsz=imgsz, seed=seed)
    if str(data) == "coco128":
        return coco128_yaml()
    return check_yolo_folder(data)


def split_images(data_yaml: str | os.PathLike[str], split: str = "val") -> list[Path]:
    """The image files of one split of a ``data.yaml`` written by this module."""
    import yaml

    spec = yaml.safe_load(Path(data_yaml).read_text())
    folder = Path(spec[split])
    folder = folder if folder.is_absolute() else Path(spec["path"]) / folder
    return _images_in(folder)


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
