"""The course's one downloader and one hasher: a file appears only complete and with the checksum it should have.

Every archive or weight file the course downloads (TinyShakespeare, MNIST, CIFAR-10, YOLO weights and data sets,
caption sets) goes through :func:`download` with a pinned checksum; every file it checks goes through
:func:`file_hash`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from course_utils.core.errors import SMOKE_HINT, MissingData
from course_utils.core.paths import atomic_write

_HASHES: dict[tuple[str, str, float, int], str] = {}


class CorruptDownload(MissingData):
    """A downloaded or local file is not the one the course pinned (a broken or tampered download)."""

    kind = "corrupt download"


def file_hash(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks; memoised per path, size and modification time."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), algorithm, stat.st_mtime, stat.st_size)
    if key not in _HASHES:
        digest = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def download(url: str, dest: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, unpinned: bool = False) -> Path:
    """Download ``url`` to ``dest`` and keep it only if its checksum matches (sha256, or md5 where only that is published).

    The file appears only when complete (written to a temporary name first). A network failure raises
    :class:`~course_utils.core.errors.MissingData` saying where to put the file by hand; a checksum mismatch leaves
    nothing behind and raises :class:`CorruptDownload`. ``unpinned=True`` (no checksum) is for the rare file whose
    publisher gives none: the caller must record the digest of this first download and verify later uses against it.
    """
    import urllib.error
    import urllib.request

    if (sha256 is None) == (md5 is None) and not (unpinned and sha256 is None and md5 is None):
        raise ValueError("download() needs exactly one pinned checksum: sha256=... or md5=...")
    algorithm, expected = ("sha256", sha256) if sha256 or unpinned else ("md5", md5)
    dest = Path(dest)
    digest = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    request = urllib.request.Request(url, headers={"User-Agent": "dl12gb-course"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            if expected is not None and digest.hexdigest() != expected:
                raise CorruptDownload(
                    f"The download of {dest.name} from {url} is not the expected file ({algorithm} "
                    f"{digest.hexdigest()[:12]}..., expected {str(expected)[:12]}...); nothing was saved. Run the cell "
                    f"again to retry, or put a good copy at {dest} yourself.")
    except (urllib.error.URLError, OSError) as err:
        raise MissingData(f"Could not download {url} ({err}); put the file at {dest} yourself, or "
                          f"{SMOKE_HINT}.") from None
    return dest


def verify(path: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None) -> Path:
    """Raise :class:`CorruptDownload` unless the file at ``path`` has the pinned checksum."""
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    got = file_hash(path, algorithm)
    if got != expected:
        raise CorruptDownload(f"{path} is not the file the course pinned ({algorithm} {got[:12]}..., expected "
                              f"{str(expected)[:12]}...): delete it so it is downloaded again, or replace it with a "
                              f"good copy.")
    return Path(path)


def download_resumable(urls: list[str], dest: Path, algorithm: str | None = None, expected: str | None = None,
                       timeout: float = 60.0, progress: bool = True) -> Path:
    """Download to ``dest`` from the first of ``urls`` that answers, continuing ``<dest>.part`` with a ``Range`` request.

    The file takes its name only once complete and, when ``expected`` is given, with that checksum; a mismatch
    deletes the partial file and raises :class:`~course_utils.core.download.CorruptDownload`. A cut connection keeps
    ``<dest>.part`` and raises :class:`~course_utils.core.errors.MissingData`: run it again to continue from there.
    """
    import http.client
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error: BaseException | None = None
    for address in urls:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "dl12gb-course", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(address, headers=headers), timeout=timeout) as response:
                if have and response.status != 206:  # the server ignored the range: start again
                    have = 0
                length = int(response.headers.get("Content-Length") or 0)
                got = 0
                with part.open("ab" if have else "wb") as out, tqdm(
                        total=(have + length) or None, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
                        got += len(chunk)
            if length and got < length:  # the connection closed early (http.client returns short reads, no error)
                raise http.client.IncompleteRead(b"", length - got)
            error = None
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the part is complete
                error = None
                break
            error = err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            error = err
    if error is not None:
        kept = f" ({part.stat().st_size:,} bytes kept in {part.name})" if part.exists() else ""
        raise MissingData(f"Could not download {dest.name} from {urls[0]} ({type(error).__name__}: {error}){kept}: "
                          f"run it again {'to continue' if kept else 'when online'}, or put the file at {dest} "
                          f"yourself.")
    if expected is not None:
        digest = file_hash(part, algorithm or "sha256")
        if digest != expected:
            part.unlink()
            raise CorruptDownload(f"The download of {dest.name} from {urls[0]} is not the file the course pinned "
                                  f"({algorithm} {digest[:12]}..., expected {expected[:12]}...); it was deleted: run "
                                  f"`make fetch` again, or put a good copy at {dest} yourself.")
    os.replace(part, dest)
    return dest


def record_sha256(path: str | os.PathLike[str]) -> str:
    """Write ``<path>.sha256`` (``sha256sum``'s format), atomically, right after the file was made; return the digest.

    Lesson 08 calls it on the ``best.pt`` it trained, so that what unpickles the file later (the web demo of lesson
    12) can tell it is the same file (``topics.yolo.verify_recorded``); a download with no published checksum
    records its first copy the same way (trust on first use).
    """
    path = Path(path)
    digest = sha256_now(path)
    with atomic_write(pin_record(path), "w") as out:
        out.write(f"{digest}  {path.name}\n")
    return digest


def sha256_now(path: Path) -> str:
    """The file's sha256 read now (``file_hash`` memoises by size and time, which a swapped file can keep)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def pin_record(archive: Path) -> Path:
    """Where :func:`record_sha256` writes a file's digest: ``<file>.sha256`` beside it."""
    return archive.with_name(archive.name + ".sha256")
