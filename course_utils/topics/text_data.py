"""Text for lesson 04: TinyShakespeare (full mode) or the course's own short play (smoke mode), and a char tokenizer.

Full mode reads ``<data dir>/tinyshakespeare/input.txt`` (the data dir is ``DATA_DIR``, else ``$COURSE_DATA``, else
``datasets/``) and downloads it there when missing — 1.1 MB, checked against its published sha256.
Smoke mode reads ``datasets/course/tiny_corpus/lamplighter.txt``, an original text written for the course.
"""

from __future__ import annotations

import os
from pathlib import Path

from course_utils import assets
from course_utils.core.download import download as download_file
from course_utils.core.download import file_hash
from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.core.paths import REPO_ROOT, atomic_write, data_dir

TINYSHAKESPEARE_URL = assets.url("tinyshakespeare")  # URL and sha256 live in datasets/assets.toml
TINYSHAKESPEARE_SHA256 = assets.checksum("tinyshakespeare", "input.txt")
TINY_CORPUS = REPO_ROOT / "datasets" / "course" / "tiny_corpus" / "lamplighter.txt"


def tinyshakespeare_path(data_dir_: str | os.PathLike[str] | None = None) -> Path:
    return Path(data_dir_ or data_dir()).expanduser() / "tinyshakespeare" / "input.txt"


def load_tinyshakespeare(data_dir_: str | os.PathLike[str] | None = None, download: bool = True) -> str:
    """The TinyShakespeare corpus as one string (1,115,394 characters), downloaded once if allowed."""
    path = tinyshakespeare_path(data_dir_)
    if not path.exists():
        if not download:
            raise MissingData(f"TinyShakespeare is not at {path}: download {TINYSHAKESPEARE_URL} to that path "
                              f"(or set DOWNLOAD = True), or {SMOKE_HINT}.")
        print(f"downloading TinyShakespeare (1.1 MB) to {path}")
        download_file(TINYSHAKESPEARE_URL, path, sha256=TINYSHAKESPEARE_SHA256)
    elif file_hash(path) != TINYSHAKESPEARE_SHA256:
        print(f"note: {path} differs from the published TinyShakespeare (sha256); results may differ from the lesson's.")
    return path.read_text(encoding="utf-8")


def load_tiny_corpus() -> str:
    """The course's own short play (~22 KB), written for smoke runs of lesson 04."""
    if not TINY_CORPUS.exists():
        raise MissingData(f"The course's small text is missing ({TINY_CORPUS}); restore it with `git checkout datasets/course`.")
    return TINY_CORPUS.read_text(encoding="utf-8")


def load_text(smoke: bool, data_dir_: str | os.PathLike[str] | None = None, download: bool = True) -> tuple[str, str]:
    """(text, name): the course's tiny play in smoke mode, TinyShakespeare in full mode."""
    if smoke:
        return load_tiny_corpus(), "the course's tiny play (smoke mode)"
    return load_tinyshakespeare(data_dir_, download), "TinyShakespeare"


class CharTokenizer:
    """One token per character: the vocabulary is the set of characters in the training text."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise BadParameter(f"characters not in the vocabulary: {''.join(unknown)!r}; use only characters of the training text.")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids) -> str:  # ids: list of ints or a 1-D tensor
        return "".join(self.chars[int(i)] for i in ids)
