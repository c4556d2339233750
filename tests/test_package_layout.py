"""course_utils's tree says what it is, and each idea has one home: one downloader, one hasher, one GiB, one hint."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "course_utils"
SOURCES = {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_the_tree_is_core_topics_smoke_runner():
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")}
    subs = {"core", "topics", "smoke", "runner", "demo", "i18n"}
    modules = {"__init__.py", "assets.py", "doctor.py"}  # the download lock's reader, the learner's machine check
    assert top - modules <= subs and {"core", "topics", "smoke", "runner"} <= top, \
        f"unexpected top-level entries: {sorted(top - subs - modules)}"
    for sub in sorted(top - modules):
        assert (PACKAGE / sub / "__init__.py").read_text().strip(), f"course_utils/{sub}/__init__.py says what it holds"


def _outside(pattern: str, home: str) -> list[str]:
    return [name for name, text in SOURCES.items() if name != home and re.search(pattern, text, re.M)]


def test_one_downloader_and_one_file_hasher():
    assert not _outside(r"urlopen\(", "core/download.py"), "downloads go through course_utils.core.download"
    assert not _outside(r"\.read\(1 << 20\)", "core/download.py"), "files are hashed by core.download.file_hash"


def test_one_gib():
    assert not _outside(r"^GIB\s*=|1024\s*\*\*\s*3\b(?! if sys)|2\s*\*\*\s*30", "core/memory.py"), \
        "GiB is defined once, in core/memory.py"


def test_one_wording_of_the_smoke_hint():
    wording = r"(run|running) (the|this) lesson in smoke mode|or run smoke mode|SMOKE=1\)"
    offenders = _outside(wording, "core/errors.py")
    assert not offenders, f"{offenders}: end such messages with core.errors.SMOKE_HINT instead of rewording it"
