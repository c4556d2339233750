"""recipes/train_yolo.py runs as a learner would run it in their own project (no course_utils), offline, on the
course's generated shapes set: the loss falls, best.pt reloads, the test split is scored, the ONNX export runs and
agrees with PyTorch, and images copied across splits are found and left out — as the lesson's cells do."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from course_utils.core.download import file_hash
from course_utils.smoke import yolo as shapes


@pytest.fixture
def offline_ultralytics(tmp_path, monkeypatch):
    """The recipe's process: offline, no installs, a fresh config folder without a font (the recipe installs one)."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "0")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a 128 px YOLOv8n on 16 images gains nothing from sharing threads
    return tmp_path / "yolo-config"


@pytest.fixture
def leaky_shapes(tmp_path):
    """The generated set (train 16 / val 8 / test 8 at 128 px) with one training image planted in test."""
    data_yaml = shapes.make_shapes_dataset(n_images=16, n_val=8, n_test=8, imgsz=128, seed=0, root=tmp_path / "shapes")
    root = data_yaml.parent
    for kind, suffix in (("images", ".jpg"), ("labels", ".txt")):
        shutil.copyfile(root / kind / "train" / f"000003{suffix}", root / kind / "test" / f"copy_of_train_3{suffix}")
    return data_yaml


def test_recipe_help_explains_the_flags_and_the_offline_settings(run_recipe):
    out = run_recipe("train_yolo.py", "--help").stdout
    for flag in ("--data", "--model", "--epochs", "--imgsz", "--batch", "--device", "--project", "--name", "--export",
                 "--sha256", "--offline", "--font", "--amp"):
        assert flag in out, f"--help does not mention {flag}"
    for setting in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "Arial.ttf", "amp=False", "weights_only=False"):
        assert setting in out, f"--help should explain {setting}"


def test_recipe_trains_scores_the_test_split_and_exports(run_recipe, leaky_shapes, offline_ultralytics, tmp_path):
    import numpy as np
    import onnxruntime as ort
    from ultralytics import YOLO

    project = tmp_path / "runs"
    run_recipe("train_yolo.py", "--data", leaky_shapes, "--model", "yolov8n.yaml", "--epochs", "3", "--imgsz", "128",
               "--batch", "8", "--nbs", "8", "--warmup-epochs", "0", "--workers", "0", "--device", "cpu",
               "--project", project, "--name", "shapes", "--export", "onnx", timeout=180)
    run = project / "shapes"
    metrics = json.loads((run / "metrics.json").read_text())

    # the copy planted in test was found by content and left out of the score, as the lesson's check cell does
    assert metrics["cross_split_duplicates"] == 1 and metrics["eval_split"] == "test" and metrics["eval_images"] == 8
    scored = [Path(line) for line in (run / "test_clean.txt").read_text().split()]
    train_hashes = {file_hash(p) for p in (leaky_shapes.parent / "images" / "train").glob("*.jpg")}
    assert len(scored) == 8 and not {file_hash(p) for p in scored} & train_hashes

    # the loss fell (from Ultralytics' results.csv, the file the lesson plots)
    with open(run / "results.csv") as handle:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    losses = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]
    assert len(rows) == 3 and losses == pytest.approx(metrics["train_loss_per_epoch"], rel=1e-3)
    assert losses[-1] < 0.97 * losses[0], f"the training loss should fall over 3 epochs: {losses}"

    # before and after are scored on the held-out split; mAP is a fraction (no accuracy is promised this small)
    for key in ("before", "after"):
        assert 0 <= metrics[key]["map50_95"] <= metrics[key]["map50"] <= 1

    # best.pt's sha256 is recorded beside it (what lesson 12's demo checks before unpickling it)
    assert (run / "weights" / "best.pt.sha256").read_text().split() == [file_hash(run / "weights" / "best.pt"), "best.pt"]
    assert metrics["best_sha256"] == file_hash(run / "weights" / "best.pt")

    # best.pt reloads as a detector of the data set's classes
    best = YOLO(run / "weights" / "best.pt")
    assert best.names == {0: "circle", 1: "square", 2: "triangle"}
    assert len(best.predict(str(scored[0]), imgsz=128, conf=0.001, device="cpu", verbose=False)) == 1

    # the ONNX export runs in ONNX Runtime and agrees with PyTorch
    onnx_path = Path(metrics["onnx"])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 128, 128), np.float32)})[0]
    anchors = 16 * 16 + 8 * 8 + 4 * 4    # strides 8, 16 and 32 at 128 px
    assert out.shape == (1, 4 + 3, anchors) and metrics["onnx_output_shape"] == [1, 7, anchors]
    assert metrics["onnx_max_abs_diff"] < 1e-3, "ONNX raw outputs should match PyTorch's to float32 rounding"

    # offline: the recipe installed a font instead of letting Ultralytics download one
    assert (offline_ultralytics / "Ultralytics" / "Arial.ttf").stat().st_size > 100_000
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], "metrics.json is written atomically"


def test_recipe_refuses_a_checkpoint_with_another_sha256(run_recipe, tmp_path, offline_ultralytics):
    fake = tmp_path / "yolov8n.pt"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(pytest.fail.Exception, match="not the expected 0000"):  # it exits non-zero before unpickling
        run_recipe("train_yolo.py", "--data", "unused.yaml", "--model", fake, "--sha256", "0" * 64)
    # by name, without --sha256: the file Ultralytics would load (here a stray one in the run's folder) must have the
    # digest the course pins
    from course_utils.topics.yolo import WEIGHTS

    with pytest.raises(pytest.fail.Exception, match=f"not the expected {WEIGHTS['yolov8n.pt'][1]}"):
        run_recipe("train_yolo.py", "--data", "unused.yaml", "--model", "yolov8n.pt")
    with pytest.raises(pytest.fail.Exception, match="is not a file"):
        run_recipe("train_yolo.py", "--data", "unused.yaml", "--model", tmp_path / "missing.pt", "--sha256", "0" * 64)


def test_recipe_and_lesson_drop_the_same_copies(tmp_path, leaky_shapes):
    """The recipe's drop_cross_split_copies and the lesson's check cell keep the same files."""
    import runpy

    import yaml

    recipe = runpy.run_path(str(Path(__file__).resolve().parent.parent / "recipes" / "train_yolo.py"))
    spec = yaml.safe_load(leaky_shapes.read_text())
    kept, crossing = recipe["drop_cross_split_copies"](spec)
    assert crossing == 1 and [len(kept[s]) for s in ("train", "val", "test")] == [16, 8, 8]
    assert all("copy_of_train" not in p.name for p in kept["test"])
    # the lesson's cell, run on the same data
    nb = json.loads((Path(__file__).resolve().parent.parent / "notebooks" / "08_yolov8_detection.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "owner.setdefault(digest, s)" in "".join(c["source"]))
    from course_utils.topics.yolo import split_images

    RUNS = tmp_path / "lesson_runs"
    RUNS.mkdir()
    scope = {"yaml": yaml, "Path": Path, "data_yaml": leaky_shapes, "split_images": split_images,
             "file_hash": file_hash, "RUNS": RUNS}
    exec(cell, scope)
    assert scope["cross_split_duplicates"] == crossing
    assert {s: sorted(map(str, v)) for s, v in scope["kept"].items()} == {s: sorted(map(str, v)) for s, v in kept.items()}
    assert os.path.exists(scope["data_yaml"])
