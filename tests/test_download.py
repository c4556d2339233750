"""The course's one downloader and hasher (course_utils.core.download): pinned checksums, atomic, one-sentence errors."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest

import course_utils as cu
from course_utils.core import download as dl


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_download_keeps_only_the_pinned_file(tmp_path, monkeypatch, algorithm):
    payload = b"Speak, speak.\n" * 1000
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout: _FakeResponse(payload))
    target = tmp_path / "sub" / "input.txt"
    with pytest.raises(dl.CorruptDownload, match="not the expected file") as info:
        dl.download("https://example.invalid/x", target, **{algorithm: "0" * 64})
    assert isinstance(info.value, cu.MissingData)
    assert not target.exists() and not list(tmp_path.rglob("*.tmp")), "a bad download must leave nothing behind"
    good = hashlib.new(algorithm, payload).hexdigest()
    assert dl.download("https://example.invalid/x", target, **{algorithm: good}) == target
    assert target.read_bytes() == payload and dl.file_hash(target, algorithm) == good
    dl.verify(target, **{algorithm: good})
    with pytest.raises(dl.CorruptDownload, match="delete it"):
        dl.verify(target, **{algorithm: "1" * len(good)})


def test_download_needs_exactly_one_checksum(tmp_path):
    with pytest.raises(ValueError, match="exactly one pinned checksum"):
        dl.download("https://example.invalid/x", tmp_path / "f")


def test_network_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(request, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(cu.MissingData) as info:
        dl.download("https://example.invalid/x", tmp_path / "f.bin", sha256="0" * 64)
    assert str(tmp_path / "f.bin") in str(info.value) and "SMOKE" in str(info.value)
    assert not (tmp_path / "f.bin").exists()


def test_file_hash_sees_a_changed_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one")
    first = dl.file_hash(path)
    path.write_bytes(b"two, longer")
    assert dl.file_hash(path) != first == hashlib.sha256(b"one").hexdigest()


def test_an_unpinned_download_must_be_asked_for(tmp_path, monkeypatch):
    payload = b"no published checksum"
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout: _FakeResponse(payload))
    with pytest.raises(ValueError, match="pinned checksum"):
        dl.download("https://example.invalid/x", tmp_path / "a.zip")
    path = dl.download("https://example.invalid/x", tmp_path / "a.zip", unpinned=True)
    assert path.read_bytes() == payload and not list(tmp_path.glob(".*.tmp"))
