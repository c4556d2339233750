"""course_utils.topics.yolo and course_utils.smoke.yolo: the generated detection set is valid, deterministic and has
three disjoint splits, the offline setup really keeps Ultralytics off the network, weights and archives are checked
before use, a learner's folder is checked with a readable error, and the export checks measure what they claim.
Nothing here downloads (downloads are replaced by failures or local files, as when offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import course_utils as cu
from course_utils.core.download import CorruptDownload, file_hash
from course_utils.smoke import yolo as shapes
from course_utils.topics import yolo


@pytest.fixture(autouse=True)
def _course_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))


# ------------------------------------------------------------------------------------------- the generator

def _all_labels(root: Path, split: str) -> list[np.ndarray]:
    return [np.loadtxt(p, ndmin=2) for p in sorted((root / "labels" / split).glob("*.txt"))]


def test_generated_labels_are_normalised_and_inside_the_image(tmp_path):
    data_yaml = shapes.make_shapes_dataset(n_images=40, n_val=10, imgsz=96, seed=3, root=tmp_path / "shapes")
    root = data_yaml.parent
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == dict(enumerate(shapes.SHAPE_NAMES))
    assert Path(spec["path"]) == root.resolve() and spec["train"] == "images/train" and spec["val"] == "images/val"
    assert spec["test"] == "images/test", "the smoke set has a held-out test split"
    for split, count in (("train", 40), ("val", 10), ("test", 10)):
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
    a = shapes.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=7, root=tmp_path / "a").parent
    b = shapes.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=7, root=tmp_path / "b").parent
    c = shapes.make_shapes_dataset(n_images=12, n_val=8, imgsz=64, seed=8, root=tmp_path / "c").parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "data.yaml")
    assert len(files) == 2 * (12 + 8 + 8)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files), "same seed must give identical files"
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files), "another seed must give another set"
    # an image does not depend on the size of the set it belongs to
    image_small, labels_small = shapes.shapes_image(7, 5, "train", 64)
    assert np.array_equal(np.asarray(image_small), np.asarray(shapes.shapes_image(7, 5, "train", 64)[0]))
    assert np.allclose(np.array(labels_small), np.loadtxt(a / "labels/train/000005.txt", ndmin=2), atol=1e-6)


def test_no_image_is_in_two_splits_by_content_hash(tmp_path):
    """Each split is drawn from its own seeds: no file (sha256 of its bytes) is in two splits, and the same index in
    two splits is two different images."""
    root = shapes.make_shapes_dataset(n_images=24, n_val=12, n_test=12, imgsz=64, seed=0, root=tmp_path / "s").parent
    hashes = {split: {file_hash(p) for p in (root / "images" / split).glob("*.jpg")} for split in shapes.SPLITS}
    assert [len(hashes[s]) for s in shapes.SPLITS] == [24, 12, 12], "every image in a split should be distinct"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not hashes[a] & hashes[b], f"an image of {a} is also in {b}"
    assert not np.array_equal(np.asarray(shapes.shapes_image(0, 3, "train", 64)[0]),
                              np.asarray(shapes.shapes_image(0, 3, "test", 64)[0])), "splits must use different seeds"


def test_generated_box_frames_the_shape():
    """The label box is the shape's extent: the shape's colour fills the box centre (the box is not off target)."""
    checked = 0
    for index in range(6):
        image, labels = shapes.shapes_image(seed=0, index=index, imgsz=128)
        pixels = np.asarray(image).astype(int)
        for _cls, cx, cy, _w, _h in labels:  # the centre of a circle, square or triangle's box is inside the shape
            x, y = int(cx * 128), int(cy * 128)
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
            assert patch.std(axis=0).max() < 1, f"image {index}: the centre of a labelled box should be flat shape colour"
            checked += 1
    assert checked >= 10


def test_dataset_is_cached_in_the_course_cache():
    first = shapes.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, seed=0)
    assert Path(os.environ["COURSE_CACHE"]) in first.parents
    stamp = (first.parent / "labels/train/000000.txt").stat().st_mtime_ns
    assert shapes.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, seed=0) == first
    assert (first.parent / "labels/train/000000.txt").stat().st_mtime_ns == stamp, "a cached set is reused, not rewritten"


def test_bad_generator_parameters_are_course_errors():
    with pytest.raises(cu.BadParameter, match="n_images"):
        shapes.make_shapes_dataset(n_images=0)
    with pytest.raises(cu.BadParameter, match="n_test"):
        shapes.make_shapes_dataset(n_images=8, n_test=0)


def test_read_labels_and_label_path(tmp_path):
    root = shapes.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, root=tmp_path / "s").parent
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

def test_african_wildlife_missing_offline_is_a_course_error(monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(cu.MissingData, match="african-wildlife.zip .*smoke mode"):
        yolo.african_wildlife_yaml()
    with pytest.raises(cu.MissingData, match="download_missing=False"):
        yolo.african_wildlife_yaml(download_missing=False)
    assert not list(Path(os.environ["COURSE_DATA"]).glob("*african*")), "a failed download leaves nothing behind"


def _wildlife_zip(path: Path, top: str = "") -> Path:
    """An archive laid out like Ultralytics' african-wildlife.zip (images/ and labels/ per split), tiny."""
    import zipfile

    src = shapes.make_shapes_dataset(n_images=4, n_val=2, n_test=2, imgsz=32, root=path.parent / "src").parent
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.name != "data.yaml":
                zf.write(f, top + str(f.relative_to(src)))
    return path


@pytest.mark.parametrize("top", ["", "african-wildlife/"])
def test_african_wildlife_trust_on_first_use_then_verified(top, monkeypatch, capsys):
    """No published checksum: the first download's sha256 is recorded beside the archive and every later use is
    checked against it; a changed archive is refused before it is unpacked again."""
    import io

    staged = _wildlife_zip(Path(os.environ["COURSE_CACHE"]) / "staged.zip", top)

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):  # what the network would deliver
        assert request.full_url == yolo.AFRICAN_WILDLIFE_URL
        return Response(staged.read_bytes())

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    data_yaml = yolo.african_wildlife_yaml()
    archive = Path(os.environ["COURSE_DATA"]) / "african-wildlife.zip"
    record = archive.with_name("african-wildlife.zip.sha256").read_text().split()
    assert record == [file_hash(staged), "african-wildlife.zip"]
    assert "first use" in capsys.readouterr().out
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == {0: "buffalo", 1: "elephant", 2: "rhino", 3: "zebra"} and spec["test"] == "images/test"
    assert len(yolo.split_images(data_yaml, "test")) == 2 and len(yolo.split_images(data_yaml, "train")) == 4
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("a recorded archive is not fetched again"))
    yolo.african_wildlife_yaml()
    assert "(recorded" in capsys.readouterr().out
    archive.write_bytes(archive.read_bytes() + b"tampered")
    with pytest.raises(CorruptDownload, match="not the file the course pinned"):
        yolo.african_wildlife_yaml()


def test_a_pinned_archive_with_another_digest_is_refused():
    dest = _wildlife_zip(Path(os.environ["COURSE_DATA"]) / "african-wildlife.zip")
    with pytest.raises(CorruptDownload):
        yolo.african_wildlife_yaml(sha256="0" * 64)
    assert not (dest.parent / "african-wildlife").exists(), "a refused archive must not be unpacked"
    path, digest, how = yolo.fetch_checked("https://example.invalid/x.zip", dest, file_hash(dest))
    assert (path, digest, how) == (dest, file_hash(dest), "pinned")


def test_an_archive_escaping_its_folder_is_not_unpacked(tmp_path):
    import zipfile

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(CorruptDownload, match="outside its folder"):
        yolo._safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_yolov8n_weights_are_pinned_and_checked_before_unpickling(monkeypatch, tmp_path):
    url, sha256 = yolo.WEIGHTS["yolov8n.pt"]
    assert url.endswith("/yolov8n.pt") and len(sha256) == 64 and int(sha256, 16)
    target = Path(os.environ["COURSE_CACHE"]) / "ultralytics" / "weights" / "yolov8n.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the checkpoint")  # a tampered or truncated file already in the weights folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov8n.pt").write_bytes(b"a stray file of the same name")  # not taken instead of the pinned one
    import ultralytics

    monkeypatch.setattr(ultralytics, "YOLO", lambda *a, **k: pytest.fail("an unverified checkpoint reached YOLO()"))
    with pytest.raises(CorruptDownload):
        yolo.load_yolo("yolov8n.pt")
    with pytest.raises(cu.MissingData, match="pins no checksum for yolov8s.pt"):
        yolo.load_yolo("yolov8s.pt")


def test_missing_weights_offline_is_a_course_error(monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(cu.MissingData, match="Could not download .*yolov8n.pt"):
        yolo.load_yolo("yolov8n.pt")
    assert not (Path(os.environ["COURSE_CACHE"]) / "ultralytics" / "weights" / "yolov8n.pt").exists()
    with pytest.raises(cu.BadParameter, match="not found"):
        yolo.load_yolo("no/such/model.pt")


def _learner_folder(tmp_path: Path) -> Path:
    """A Roboflow-style export: data.yaml with ../train/images paths, train/ and valid/ folders."""
    generated = shapes.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, root=tmp_path / "src").parent
    folder = tmp_path / "my_data"
    for src, dst in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            (folder / dst / kind).mkdir(parents=True)
            for f in (generated / kind / src).iterdir():
                (folder / dst / kind / f.name).write_bytes(f.read_bytes())
    (folder / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['circle', 'square', 'triangle']\n")
    return folder


def test_a_good_learner_folder_is_accepted(tmp_path):
    spec = yaml.safe_load(yolo.check_yolo_folder(_learner_folder(tmp_path)).read_text())
    assert Path(spec["train"]).is_dir() and Path(spec["train"]).name == "images" and Path(spec["val"]).parent.name == "valid"
    assert spec["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert yolo.load_detection_data(str(tmp_path / "my_data")).is_file()
    assert "test" not in spec, "a folder without a test split stays without one"


def test_a_learner_folder_with_a_test_split_keeps_it(tmp_path):
    folder = _learner_folder(tmp_path)
    (folder / "test").mkdir()
    for kind in ("images", "labels"):
        shutil.copytree(folder / "valid" / kind, folder / "test" / kind)
    (folder / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnames: [a, b, c]\n")
    data_yaml = yolo.check_yolo_folder(folder)
    assert Path(yaml.safe_load(data_yaml.read_text())["test"]) == (folder / "test" / "images").resolve()
    assert len(yolo.split_images(data_yaml, "test")) == 8


def test_split_images_reads_txt_lists(tmp_path):
    root = shapes.make_shapes_dataset(n_images=8, n_val=8, imgsz=64, root=tmp_path / "s").parent
    keep = sorted((root / "images" / "test").glob("*.jpg"))[:3]
    (root / "test.txt").write_text("".join(f"{p}\n" for p in keep))
    (root / "clean.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\ntest: test.txt\nnames: [a, b, c]\n")
    assert yolo.split_images(root / "clean.yaml", "test") == keep
    with pytest.raises(cu.BadParameter, match="no 'tests:' split"):
        yolo.split_images(root / "clean.yaml", "tests")


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


def test_the_starting_point_keeps_every_pretrained_tensor_but_the_class_outputs(tmp_path):
    """What lesson 08 calls 'before fine-tuning' (and train() starts from): a checkpoint's tensors copied into the
    architecture with a head for the new classes; only the class-score convolutions (cv3.*.2) are left fresh."""
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    YOLO("yolov8n.yaml").save(tmp_path / "coco80.pt")   # a stand-in for yolov8n.pt: same architecture, 80 classes
    pretrained = YOLO(tmp_path / "coco80.pt")
    start = DetectionModel(pretrained.model.yaml, nc=4, verbose=False)
    start.load(pretrained.model)
    before, after = pretrained.model.state_dict(), start.state_dict()
    fresh = sorted(k for k in after if not (k in before and before[k].shape == after[k].shape
                                            and torch.equal(before[k].float(), after[k].float())))
    assert fresh == [f"model.22.cv3.{i}.2.{p}" for i in range(3) for p in ("bias", "weight")]
    assert after["model.22.cv3.0.2.weight"].shape[0] == 4, "the new head outputs one score per class"


def test_a_recorded_checkpoint_is_verified_afresh(tmp_path):
    """record_sha256 writes best.pt.sha256 beside the file; verify_recorded refuses a swapped file, even one that
    keeps the size and modification time (file_hash's memo would not notice), and a file with no record."""
    best = tmp_path / "weights" / "best.pt"
    best.parent.mkdir()
    best.write_bytes(b"checkpoint A" * 100)
    digest = yolo.record_sha256(best)
    assert (tmp_path / "weights" / "best.pt.sha256").read_text().split() == [digest, "best.pt"]
    assert digest == file_hash(best) and yolo.verify_recorded(best) == best
    stat = best.stat()
    best.write_bytes(b"checkpoint B" * 100)                 # same size
    os.utime(best, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time
    with pytest.raises(CorruptDownload, match="not the file lesson 08 recorded"):
        yolo.verify_recorded(best)
    (tmp_path / "weights" / "best.pt.sha256").unlink()
    with pytest.raises(cu.MissingData, match="no recorded sha256"):
        yolo.verify_recorded(best)
