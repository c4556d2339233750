"""recipes/train_mnist.py and recipes/train_cifar10.py: they run without the course package on small arrays, learn
(held-out accuracy far above chance), write checkpoints that reload, and build the same networks as lessons 02 and 03."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from course_utils.core.paths import REPO_ROOT
from course_utils.smoke.vision import smoke_digits, smoke_shapes

NOTEBOOKS = REPO_ROOT / "notebooks"


def load_recipe(name: str):
    module_name = f"recipe_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def lesson_definitions(notebook: str, marker: str, **names) -> dict:
    """Execute the lesson's code cell that defines ``marker`` (e.g. ``def make_cnn``) and return its namespace."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])]
    assert len(code) == 1, f"{notebook}: expected one cell defining {marker}"
    source = code[0]
    for tail in ("\nmodel = ", "\ncnn = ", "\naugmented = "):  # the definitions, not what runs after them
        source = source.split(tail)[0]
    namespace = {"nn": nn, "torch": torch, **names}
    exec(compile(source, notebook, "exec"), namespace)
    return namespace


def save_npz(path, data) -> None:
    np.savez(path, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(), x_test=data.x_test.numpy(),
             y_test=data.y_test.numpy())


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Small networks gain nothing from threads; on a busy machine thread hand-offs make them several times slower.
    The recipes' processes inherit OMP_NUM_THREADS."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------ MNIST

def test_mnist_recipe_learns_held_out_digits_and_its_checkpoint_reloads(run_recipe, tmp_path):
    data = smoke_digits(seed=0)
    save_npz(tmp_path / "digits.npz", data)
    out = tmp_path / "out"
    run_recipe("train_mnist.py", "--npz", tmp_path / "digits.npz", "--epochs", "2", "--batch_size", "64", "--width", "8",
               "--device", "cpu",
               "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_train_loss"] < 0.5 * metrics["first_train_loss"], "the training loss should fall"
    assert metrics["test_accuracy"] > 0.7, f"held-out accuracy {metrics['test_accuracy']:.2f}: chance is 0.1"
    assert metrics["n_test"] == len(data.x_test)

    recipe = load_recipe("train_mnist")
    model = recipe.make_cnn(8)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    norm = metrics["normalisation"]
    x = (data.x_test.float() / 255 - norm["mean"]) / norm["std"]
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6), "the reloaded weights score what was recorded"


def test_mnist_recipe_builds_the_lessons_cnn():
    lesson = lesson_definitions("02_pytorch_mnist.ipynb", "def make_cnn", WIDTH=16)
    recipe = load_recipe("train_mnist")
    torch.manual_seed(0)
    ours, theirs = lesson["make_cnn"](16), recipe.make_cnn(16)
    theirs.load_state_dict(ours.state_dict())  # strict: same layers, names and shapes
    ours.eval(), theirs.eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_mnist_recipe_needs_one_data_source(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "recipes" / "train_mnist.py"), "--output_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--data_dir or --npz" in proc.stderr


# --------------------------------------------------------------------------------------------------- CIFAR-10

def test_cifar_recipe_learns_held_out_shapes_and_its_checkpoint_reloads(run_recipe, tmp_path):
    data = smoke_shapes(768, 256, seed=0)
    save_npz(tmp_path / "shapes.npz", data)
    out = tmp_path / "out"
    run_recipe("train_cifar10.py", "--npz", tmp_path / "shapes.npz", "--epochs", "3", "--batch_size", "64",
               "--widths", "8,16,32,64", "--device", "cpu", "--tta", "--output_dir", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_train_loss"] < 0.85 * metrics["first_train_loss"], "the training loss should fall"
    assert metrics["test_accuracy"] > 0.3, f"held-out accuracy {metrics['test_accuracy']:.2f}: chance is 0.1"
    recipe = load_recipe("train_cifar10")
    model = recipe.resnet9((8, 16, 32, 64))
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert sum(p.numel() for p in model.parameters()) > 0 and not list(out.glob(".*.tmp"))


def test_cifar_recipe_builds_the_lessons_resnet9_and_augmentation():
    lesson = lesson_definitions("03_cifar10_fast_cnn.ipynb", "def resnet9", WIDTHS=(8, 16, 32, 64))
    recipe = load_recipe("train_cifar10")
    torch.manual_seed(0)
    ours, theirs = lesson["resnet9"]((8, 16, 32, 64)), recipe.resnet9((8, 16, 32, 64))
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    augment = lesson_definitions("03_cifar10_fast_cnn.ipynb", "def augment", F=torch.nn.functional)["augment"]
    torch.manual_seed(3)
    a = augment(x)
    torch.manual_seed(3)
    assert torch.equal(a, recipe.augment(x)), "the recipe's augmentation should be the lesson's"
