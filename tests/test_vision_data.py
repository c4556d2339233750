"""course_utils.topics.vision_data and course_utils.smoke.vision: smoke stand-ins with the real shapes, local files accepted, downloads verified,
and one clear sentence when the data is missing or broken. No test touches the network (file:// URLs only)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils.smoke import vision as sv
from course_utils.topics import vision_data as vd


# ------------------------------------------------------------------------------------------------- fake files

def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def _fake_mnist_payloads(n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": _idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": _idx_images(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx_labels(np.arange(n_test) % 10),
    }


def _write_gz(folder, payloads):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in payloads.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))


def _fake_cifar_folder(folder, n_per_batch: int = 4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in vd.CIFAR10_FILES[:-1]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), "labels": list(range(n_per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ smoke data

def test_smoke_digits_look_like_mnist():
    data = vd.load_mnist(smoke=True)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (1, 28, 28)
    assert data.y_train.dtype == torch.int64 and data.x_test.shape[1:] == (1, 28, 28)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert set(data.y_test.tolist()) == set(range(10)), "every digit should be in the test split"
    assert data.x_train.max() > 200 and data.x_train[:, :, :4].max() == 0, "ink should be bright, the 4-pixel frame empty"
    again = vd.load_mnist(smoke=True)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)


def test_smoke_digits_carry_a_learnable_signal():
    from sklearn.linear_model import LogisticRegression

    data = sv.smoke_digits()
    flat = lambda x: x.reshape(len(x), -1).float().numpy() / 255  # noqa: E731
    model = LogisticRegression(max_iter=300).fit(flat(data.x_train), data.y_train.numpy())
    assert model.score(flat(data.x_test), data.y_test.numpy()) > 0.9


def test_smoke_shapes_are_cifar_shaped_and_deterministic():
    data = sv.smoke_shapes(200, 50, seed=3, cache=False)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (200, 3, 32, 32)
    assert data.y_train.dtype == torch.int64 and data.x_test.shape == (50, 3, 32, 32)
    assert sorted(torch.bincount(data.y_train).tolist()) == [20] * 10, "classes should be balanced"
    again = sv.smoke_shapes(200, 50, seed=3, cache=False)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_train, again.y_train)
    other = sv.smoke_shapes(200, 50, seed=4, cache=False)
    assert not torch.equal(data.x_train, other.x_train)
    assert not torch.equal(data.x_train[:50], data.x_test), "train and test must come from different draws"


def test_smoke_shapes_colour_is_not_the_label():
    data = sv.smoke_shapes(1000, 10, seed=0, cache=False)
    mean_colour = data.x_train.float().mean(dim=(2, 3))  # N x 3
    per_class = torch.stack([mean_colour[data.y_train == c].mean(0) for c in range(10)])
    assert (per_class.max(0).values - per_class.min(0).values).max() < 40, "average colour should not give the class away"


def test_smoke_shapes_cache_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    built = sv.smoke_shapes(100, 20, seed=1)
    files = list((tmp_path / "vision").glob("shapes10-*.npz"))
    assert len(files) == 1, "the generated set should be cached once"
    loaded = sv.smoke_shapes(100, 20, seed=1)
    assert torch.equal(built.x_train, loaded.x_train) and torch.equal(built.y_test, loaded.y_test)
    files[0].write_bytes(b"not an npz")  # a damaged cache is rebuilt, not an error
    rebuilt = sv.smoke_shapes(100, 20, seed=1)
    assert torch.equal(built.x_train, rebuilt.x_train)


# --------------------------------------------------------------------------------------------------- MNIST

def test_mnist_missing_offline_says_where_files_go(tmp_path):
    with pytest.raises(cu.MissingData) as info:
        vd.load_mnist(smoke=False, data_dir=tmp_path, download=False)
    message = str(info.value)
    for name in vd.MNIST_FILES:
        assert str(tmp_path / "MNIST" / "raw" / name) in message, f"the message should name {name}"
    assert "SMOKE=1" in message and "download=True" not in message


def test_mnist_download_failure_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(vd, "MNIST_MIRRORS", [(tmp_path / "no-mirror").as_uri() + "/"])
    with pytest.raises(cu.MissingData) as info:
        vd.load_mnist(smoke=False, data_dir=tmp_path / "data", download=True)
    message = str(info.value)
    assert "could not be downloaded" in message and "MNIST/raw/train-images-idx3-ubyte.gz" in message
    assert not list((tmp_path / "data").rglob("*.gz")), "no partial file may be left behind"


def test_mnist_corrupted_download_is_deleted_and_explained(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_gz(mirror, _fake_mnist_payloads())  # real gz files, but not the official ones: checksums differ
    monkeypatch.setattr(vd, "MNIST_MIRRORS", [mirror.as_uri() + "/"])
    with pytest.raises(vd.CorruptDownload) as info:
        vd.load_mnist(smoke=False, data_dir=tmp_path / "data", download=True)
    assert isinstance(info.value, cu.MissingData) and "not the expected file" in str(info.value)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert not list(raw.glob("*")), "the corrupted file (and temporary files) must be removed"


def test_mnist_verified_download_loads(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_gz(mirror, _fake_mnist_payloads(30, 10))
    monkeypatch.setattr(vd, "MNIST_MIRRORS", [(tmp_path / "dead").as_uri() + "/", mirror.as_uri() + "/"])
    monkeypatch.setattr(vd, "MNIST_FILES", {p.name: _md5(p) for p in sorted(mirror.glob("*.gz"))})
    data = vd.load_mnist(smoke=False, data_dir=tmp_path / "data", download=True)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (10, 1, 28, 28) and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == [i % 10 for i in range(30)]


def test_mnist_local_files_need_no_download_and_no_official_checksum(tmp_path, monkeypatch):
    payloads = _fake_mnist_payloads(20, 5)
    _write_gz(tmp_path / "MNIST" / "raw", payloads)  # only .gz, like a learner's copy of the originals
    monkeypatch.setattr(vd, "download_file", lambda *a, **k: pytest.fail("must not download local files"))
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))  # the course data folder, chosen by the environment
    data = vd.load_mnist(smoke=False, data_dir=None, download=True)
    assert data.x_train.shape == (20, 1, 28, 28) and len(data.y_test) == 5
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(), "the .gz files should be unpacked"
    raw_images = np.frombuffer(payloads["train-images-idx3-ubyte"][16:], dtype=np.uint8).reshape(20, 28, 28)
    assert np.array_equal(data.x_train[:, 0].numpy(), raw_images)


def test_mnist_truncated_local_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    payloads = _fake_mnist_payloads()
    raw.mkdir(parents=True)
    for name, data in payloads.items():
        (raw / name).write_bytes(data[: len(data) // 2] if name.startswith("train-images") else data)
    with pytest.raises(cu.MissingData, match="cannot be read"):
        vd.load_mnist(smoke=False, data_dir=tmp_path, download=False)


def test_mnist_broken_gz_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_gz(raw, _fake_mnist_payloads())
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(cu.MissingData, match="not a readable .gz"):
        vd.load_mnist(smoke=False, data_dir=tmp_path, download=False)


# ------------------------------------------------------------------------------------------------ CIFAR-10

def test_cifar_missing_offline_says_where_files_go(tmp_path):
    with pytest.raises(cu.MissingData) as info:
        vd.load_cifar10(smoke=False, data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message and "test_batch" in message
    assert str(tmp_path / "cifar-10-python.tar.gz") in message and "SMOKE=1" in message


def test_cifar_corrupted_download_is_deleted_and_explained(tmp_path, monkeypatch):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"half an archive")
    monkeypatch.setattr(vd, "CIFAR10_URL", bad.as_uri())
    with pytest.raises(vd.CorruptDownload, match="not the expected file"):
        vd.load_cifar10(smoke=False, data_dir=tmp_path / "data", download=True)
    assert not list((tmp_path / "data").glob("*")), "nothing half-downloaded may stay"


def test_cifar_local_folder_is_used_as_is(tmp_path):
    _fake_cifar_folder(tmp_path / "cifar-10-batches-py", n_per_batch=4)
    data = vd.load_cifar10(smoke=False, data_dir=tmp_path, download=False)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.classes == tuple(f"class{i}" for i in range(10))


def test_cifar_local_archive_is_unpacked(tmp_path):
    src = tmp_path / "src"
    _fake_cifar_folder(src / "cifar-10-batches-py")
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = vd.load_cifar10(smoke=False, data_dir=root, download=False)
    assert len(data.x_train) == 20 and (root / "cifar-10-batches-py" / "test_batch").exists()


def test_cifar_truncated_batch_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar_folder(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(cu.MissingData, match="cannot be read"):
        vd.load_cifar10(smoke=False, data_dir=tmp_path, download=False)


def _fake_cifar_archive(path, n_per_batch: int = 4):
    src = path.parent / "src"
    _fake_cifar_folder(src / "cifar-10-batches-py", n_per_batch)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path


@pytest.fixture
def fake_cifar_download(tmp_path, monkeypatch):
    """A 'download' of a fake CIFAR archive (file:// URL, its MD5 pinned), and torchvision's per-file MD5 lists
    pointed at the fake files, as if they were the official ones."""
    from torchvision.datasets import CIFAR10

    mirror = _fake_cifar_archive(tmp_path / "mirror" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(vd, "CIFAR10_URL", mirror.as_uri())
    monkeypatch.setattr(vd, "CIFAR10_MD5", _md5(mirror))
    folder = tmp_path / "mirror" / "src" / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})
    return tmp_path / "data"


def test_cifar_downloaded_files_keep_torchvisions_integrity_checks(fake_cifar_download):
    root = fake_cifar_download
    data = vd.load_cifar10(smoke=False, data_dir=root, download=True)
    assert len(data.x_train) == 20 and vd.cifar10_downloaded_by_course(root)
    assert vd._cifar10_class(verify=True).__name__ == "CIFAR10", "downloaded files must be read by torchvision's own class"
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    raw = bytearray(batch.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the pixels: still a readable pickle, no longer the downloaded file
    batch.write_bytes(bytes(raw))
    with pytest.raises(cu.MissingData, match="integrity check") as info:
        vd.load_cifar10(smoke=False, data_dir=root, download=False)
    assert "SMOKE=1" in str(info.value)


def test_cifar_learners_own_files_skip_the_official_checksums(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar_folder(folder)
    raw = bytearray((folder / "data_batch_2").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "data_batch_2").write_bytes(bytes(raw))  # edited by the learner: their files, their call
    assert not vd.cifar10_downloaded_by_course(tmp_path)
    assert len(vd.load_cifar10(smoke=False, data_dir=tmp_path, download=False).x_train) == 20


@pytest.mark.parametrize("data_filter", [True, False], ids=["python-with-data-filter", "python-before-3.11.4"])
def test_cifar_archive_is_unpacked_safely_on_every_python(tmp_path, monkeypatch, data_filter):
    """tarfile's filter="data" exists from Python 3.10.12 / 3.11.4 on; before, the same rule is checked by hand:
    a good archive unpacks, a member that points outside the folder stops it with one sentence."""
    import io

    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter")
    good = _fake_cifar_archive(tmp_path / "good" / "cifar-10-python.tar.gz", n_per_batch=2)
    assert len(vd.load_cifar10(smoke=False, data_dir=good.parent, download=False).x_train) == 10
    evil = tmp_path / "evil" / "cifar-10-python.tar.gz"
    _fake_cifar_archive(evil, n_per_batch=2)
    with tarfile.open(evil, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(evil, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        outside = tarfile.TarInfo("../outside.txt")
        outside.size = 4
        tar.addfile(outside, io.BytesIO(b"evil"))
    with pytest.raises(cu.MissingData, match="cannot be unpacked"):
        vd.load_cifar10(smoke=False, data_dir=evil.parent, download=False)
    assert not (evil.parent / "outside.txt").exists()
