"""course_utils.topics.yolo: the generated detection set is valid and deterministic, the offline setup really keeps
Ultralytics off the network, a learner's folder is checked with a readable error, and the export checks measure
what they claim. Nothing here downloads (downloads are replaced by failures, as when offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import course_utils as cu
from course_utils.topics import yolo


@pytest.fixture(autouse=True)
def _course_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))


# ------------------------------------------------------------------------------------------- the generator

def _all_labels(root: Path, split: str) -> list[np.ndarray]:
    return [np.loadtxt(p, ndmin=2) for p in sorted((root / "labels" / split).glob("*.txt"))]


def test_generated_labels_are_normalised_and_inside_the_image(tmp_path):
    data_yaml = yolo.make_shapes_dataset(n_images=40, n_val=10, imgsz=96, seed=3, root=tmp_path / "shapes")
    root = data_yaml.parent
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == dict(enumerate(yolo.SHAPE_NAMES))
    assert Path(spec["path"]) == root.resolve() and spec["train"] == "images/train" and spec["val"] == "images/val"
    for split, count in (("train", 40), ("val", 10)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = _all_labels(root, split)
        assert len(images) == len(labels) == count
        for rows in labels:
            assert rows.shape[1] == 5 and 1 <= len(rows) <= 4
            cls, cx, cy, w, h = rows.T
            assert set(cls.astype(int)) <= {0, 1, 2} and (cls == cls.astype(int)).all()
            assert (w > 0).all() and (h > 0).all()
            assert (cx - w / 2 >= 0).all() and (cx + w / 2 <= 1).all(), "boxes must stay inside the image (x)"
            assert (cy - h / 2 >= 0).all() and (cy + h / 2 <= 1).all(), "boxes must stay inside the image (y)"
    # images have the requested size
    from PIL import Image

    assert Image.open(next((root / "images" / "train").glob("*.jpg"))).size == (96, 96)


def test_generator_is_deterministic_for_a_seed(tmp_path):
    a = yolo.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=7, root=tmp_path / "a").parent
    b = yolo.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=7, root=tmp_path / "b").parent
    c = yolo.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=8, root=tmp_path / "c").parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "data.yaml")
    assert len(files) == 2 * (12 + 8)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files), "same seed must give identical files"
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files), "another seed must give another set"
    # an image does not depend on the size of the set it belongs to
    image_small, labels_small = yolo.shapes_image(7, 5, "train", 64)
    assert np.array_equal(np.asarray(image_small), np.asarray(yolo.shapes_image(7, 5, "train", 64)[0]))
    assert np.allclose(np.array(labels_small), np.loadtxt(a / "labels/train/000005.txt", ndmin=2), atol=1e-6)


def test_generated_box_frames_the_shape():
    """The label box is the shape's extent: the shape's colour fills the box centre (the box is not off target)."""
    checked = 0
    for index in range(6):
        image, labels = yolo.shapes_image(seed=0, index=index, imgsz=128)
        pixels = np.asarray(image).astype(int)
        for _cls, cx, cy, _w, _h in labels:  # the centre of a circle, square or triangle's box is inside the shape
            x, y = int(cx * 128), int(cy * 128)
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
            assert patch.std(axis=0).max() < 1, f"image {index}: the centre of a labelled box should be flat shape colour"
            checked += 1
    assert checked >= 10


def test_dataset_is_cached_in_the_course_cache():
    first = yolo.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, seed=0)
    assert Path(os.environ["COURSE_CACHE"]) in first.parents
    stamp = (first.parent / "labels/train/000000.txt").stat().st_mtime_ns
    assert yolo.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, seed=0) == first
    assert (first.parent / "labels/train/000000.txt").stat().st_mtime_ns == stamp, "a cached set is reused, not rewritten"


def test_bad_generator_parameters_are_course_errors():
    with pytest.raises(cu.BadParameter, match="n_images"):
        yolo.make_shapes_dataset(n_images=0)


def test_read_labels_and_label_path(tmp_path):
    root = yolo.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, root=tmp_path / "s").parent
    image = root / "images" / "train" / "000002.jpg"
    assert yolo.label_path(image) == root / "labels" / "train" / "000002.txt"
    classes, boxes = yolo.read_yolo_labels(image, (64, 64, 3))
    rows = np.loadtxt(yolo.label_path(image), ndmin=2)
    assert np.array_equal(classes, rows[:, 0].astype(int))
    assert np.allclose(boxes[:, 2] - boxes[:, 0], rows[:, 3] * 64) and (boxes >= 0).all() and (boxes <= 64).all()


# ------------------------------------------------------------------------------------------ offline setup

def test_setup_puts_env_font_and_folders_in_place_and_makes_no_network_call(tmp_path):
    """In a fresh interpreter (Ultralytics reads its environment at import): setup, import, plot a label font."""
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")}
    env["COURSE_CACHE"] = str(tmp_path / "cache")
    script = textwrap.dedent("""
        import json, os
        from course_utils.topics.yolo import setup_ultralytics
        info = setup_ultralytics()
        import ultralytics.utils as u
        from ultralytics.utils.checks import check_font
        from ultralytics.utils import SETTINGS
        print(json.dumps({"info": info, "env": {k: os.environ[k] for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")},
                          "user_config_dir": str(u.USER_CONFIG_DIR), "online": u.ONLINE, "autoinstall": u.AUTOINSTALL,
                          "font": str(check_font("Arial.ttf")), "font_unicode": str(check_font("Arial.Unicode.ttf")),
                          "settings": {k: SETTINGS[k] for k in ("weights_dir", "datasets_dir", "runs_dir", "sync")}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    config = tmp_path / "cache" / "ultralytics" / "config"
    assert got["env"] == {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": str(config)}
    assert got["user_config_dir"] == str(config / "Ultralytics")
    assert got["online"] is False and got["autoinstall"] is False
    assert got["font"] == str(config / "Ultralytics" / "Arial.ttf"), "check_font must find the local font, not download"
    assert got["font_unicode"] == str(config / "Ultralytics" / "Arial.Unicode.ttf")
    assert (config / "Ultralytics" / "Arial.ttf").stat().st_size > 100_000
    settings = got["settings"]
    repo = Path(__file__).resolve().parent.parent
    assert settings["sync"] is False
    assert Path(settings["weights_dir"]).is_relative_to(tmp_path / "cache"), "weights must not land in the repository"
    assert Path(settings["runs_dir"]).is_relative_to(tmp_path / "cache")
    assert not Path(settings["weights_dir"]).is_relative_to(repo / "notebooks")


def test_setup_keeps_a_learners_config_dir(tmp_path, monkeypatch):
    mine = tmp_path / "my-yolo"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(mine), "COURSE_CACHE": str(tmp_path / "cache")}
    script = "from course_utils.topics.yolo import setup_ultralytics; print(setup_ultralytics()['font'])"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(mine / "Ultralytics" / "Arial.ttf")


def test_runs_go_next_to_the_executed_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_METRICS_FILE", str(tmp_path / "run" / "08.metrics.json"))
    assert yolo.yolo_runs_dir() == (tmp_path / "run" / "08_yolov8_detection_ultralytics").resolve()
    monkeypatch.delenv("COURSE_METRICS_FILE")
    assert Path(os.environ["COURSE_CACHE"]) in yolo.yolo_runs_dir().parents


# ---------------------------------------------------------------------------- real data: missing or wrong

def test_coco128_missing_offline_is_a_course_error(monkeypatch):
    import ultralytics.utils.downloads as downloads

    def offline(*args, **kwargs):
        raise ConnectionError("Download failure. Environment may be offline.")

    monkeypatch.setattr(downloads, "safe_download", offline)
    with pytest.raises(cu.MissingData, match="coco128 is not in .* smoke mode"):
        yolo.coco128_yaml()


def test_coco128_yaml_points_at_the_course_data_folder():
    root = Path(os.environ["COURSE_DATA"]) / "coco128" / "images" / "train2017"
    root.mkdir(parents=True)
    spec = yaml.safe_load(yolo.coco128_yaml(download=False).read_text())
    assert spec["path"] == str(root.parent.parent.resolve()) and spec["train"] == "images/train2017"
    assert len(spec["names"]) == 80 and "download" not in spec


def test_missing_weights_offline_is_a_course_error(monkeypatch):
    import ultralytics.utils.downloads as downloads

    def offline(*args, **kwargs):
        raise ConnectionError("Download failure. Environment may be offline.")

    monkeypatch.setattr(downloads, "attempt_download_asset", offline)
    with pytest.raises(cu.MissingData, match="yolov8n.pt is not in"):
        yolo.load_yolo("yolov8n.pt")
    with pytest.raises(cu.BadParameter, match="not found"):
        yolo.load_yolo("no/such/model.pt")


def _learner_folder(tmp_path: Path) -> Path:
    """A Roboflow-style export: data.yaml with ../train/images paths, train/ and valid/ folders."""
    shapes = yolo.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, root=tmp_path / "src").parent
    folder = tmp_path / "my_data"
    for src, dst in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            (folder / dst / kind).mkdir(parents=True)
            for f in (shapes / kind / src).iterdir():
                (folder / dst / kind / f.name).write_bytes(f.read_bytes())
    (folder / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['circle', 'square', 'triangle']\n")
    return folder


def test_a_good_learner_folder_is_accepted(tmp_path):
    spec = yaml.safe_load(yolo.check_yolo_folder(_learner_folder(tmp_path)).read_text())
    assert Path(spec["train"]).is_dir() and Path(spec["train"]).name == "images" and Path(spec["val"]).parent.name == "valid"
    assert spec["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert yolo.load_detection_data(str(tmp_path / "my_data")).is_file()


@pytest.mark.parametrize("break_it, message", [
    (lambda f: f.rename(f.parent / "elsewhere"), "does not exist"),
    (lambda f: (f / "data.yaml").unlink(), "No data.yaml"),
    (lambda f: ((f / "data.yaml").unlink(), (f / "classes.txt").write_text("a\nb\nc\n")), "Label Studio's YOLO export"),
    (lambda f: (f / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"), "no 'names'"),
    (lambda f: (f / "data.yaml").write_text("train: ../train/images\nnames: [a, b, c]\n"), "no 'val:' entry"),
    (lambda f: (f / "data.yaml").write_text("train: imgs\nval: ../valid/images\nnames: [a, b, c]\n"), "'imgs' does not exist"),
    (lambda f: [p.unlink() for p in (f / "train" / "labels").iterdir()], "has a label file"),
    (lambda f: (f / "valid" / "labels" / "000000.txt").write_text("7 0.5 0.5 0.2 0.2\n"), r"000000.txt, line 1"),
    (lambda f: (f / "valid" / "labels" / "000001.txt").write_text("0 120 80 30 30\n"), "coordinates in 0-1"),
])
def test_a_wrong_learner_folder_says_what_is_wrong(tmp_path, break_it, message):
    folder = _learner_folder(tmp_path)
    break_it(folder)
    with pytest.raises(cu.BadParameter, match=message) as err:
        yolo.check_yolo_folder(folder)
    assert "Expected a folder with a data.yaml" in str(err.value), "the error should show the expected layout"


# ------------------------------------------------------------------------------------ agreement and latency

def test_match_detections():
    boxes = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], dtype=float)
    classes = np.array([0, 2])
    assert yolo.match_detections(boxes, classes, boxes[::-1], classes[::-1]) == 1.0
    assert yolo.match_detections(boxes, classes, boxes + 0.5, classes) == 1.0
    assert yolo.match_detections(boxes, classes, boxes + 8, classes) == 0.0, "a box shifted by 8 px has IoU < 0.9"
    assert yolo.match_detections(boxes, classes, boxes, np.array([1, 2])) == 0.5, "a class mismatch is no match"
    assert yolo.match_detections(boxes, classes, boxes[:1], classes[:1]) == 0.5, "a box missing from b counts"
    assert yolo.match_detections(boxes[:1], classes[:1], boxes, classes) == 1.0, "extra boxes in b do not count"
    twice = np.concatenate([boxes[:1], boxes[:1]])
    assert yolo.match_detections(twice, [0, 0], boxes, classes) == 0.5, "one box in b matches only one box in a"
    assert yolo.match_detections(np.zeros((0, 4)), [], boxes, classes) == 1.0
    assert yolo.match_detections(boxes, classes, np.zeros((0, 4)), []) == 0.0


def test_box_iou():
    iou = yolo.box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert np.allclose(iou, [[1.0, 1 / 3, 0.0]])


def test_measure_latency_warms_up_then_times_each_run():
    calls = []
    times = yolo.measure_latency_ms(lambda: calls.append(1), warmup=3, repeats=7)
    assert len(calls) == 10 and len(times) == 7 and all(t >= 0 for t in times)
