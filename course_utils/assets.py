"""One lock for every download: ``datasets/assets.toml`` read here, and ``make fetch`` to download ahead.

The topic modules take their hub ids, pinned revisions, URLs and checksums from the lock, so each lives in one place::

    from course_utils import assets
    MODEL_ID = assets.id("llama-3.1-8b-instruct")          # "meta-llama/Llama-3.1-8B-Instruct"
    REVISION = assets.revision("llama-3.1-8b-instruct")    # its pinned 40-hex commit
    assets.for_lessons(["05", "06"])                       # the names of what those lessons download

``make fetch LESSONS="05 06"`` (``python -m course_utils.assets fetch 05 06``) downloads what those lessons need ahead,
for a slow or metered connection: hub models with ``huggingface_hub.snapshot_download`` at the pinned revision and only
the files the lessons load (it resumes an interrupted download by itself), hub data sets with ``datasets.load_dataset``
at the pinned revision (what the lessons' own call then finds offline), and plain files with a resumable HTTP download
(a ``Range`` request continues ``<file>.part``) checked against the lock's checksum before it takes its final name.
Everything lands where the lessons look (the Hugging Face cache, the course data folder, the course cache), so the
lessons then run offline. ``UNGATED=1`` (``--ungated``) takes each gated model's ungated fallback instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from course_utils.core.download import download_resumable, record_sha256
from course_utils.core.errors import BadParameter, CourseError
from course_utils.core.paths import REPO_ROOT

LOCK = REPO_ROOT / "datasets" / "assets.toml"
KINDS = ("model", "dataset", "url")


@functools.cache
def lock(path: str | os.PathLike[str] = LOCK) -> dict[str, dict[str, Any]]:
    """Every asset of the lock, by name (the TOML tables, as read by ``tomllib``)."""
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def asset(name: str) -> dict[str, Any]:
    """The lock's entry ``name``; an unknown name is one sentence naming the known ones."""
    entries = lock()
    if name not in entries:
        raise BadParameter(f"{name!r} is not in the course's lock ({LOCK.name}): use one of {', '.join(entries)}.")
    return entries[name]


def id(name: str) -> str:  # noqa: A001  (assets.id("...") reads as the lock's field)
    """The hub id of asset ``name``."""
    return asset(name)["id"]


def revision(name: str) -> str:
    """The pinned hub commit of asset ``name``."""
    return asset(name)["revision"]


def url(name: str) -> str:
    """The address of a one-file ``url`` asset."""
    return asset(name)["url"]


def checksum(name: str, file: str, algorithm: str = "sha256") -> str:
    """The checksum the course verifies for ``file`` of asset ``name`` (``algorithm``: ``"sha256"`` or ``"md5"``)."""
    return asset(name)["files"][file][algorithm]


def lessons_known() -> list[str]:
    """The two-digit numbers of the course's lessons (``notebooks/NN_*.ipynb``)."""
    return sorted(p.name[:2] for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def for_lessons(lessons: Iterable[str], ungated: bool = False) -> list[str]:
    """The names of the assets ``lessons`` download (in the lock's order), without those marked ``fetch = false``.

    ``lessons``: two-digit numbers (``"05"``, ``"5"`` and ``"05_llm_inference_4bit"`` work too), a week of the
    course (``"week4"``: the lessons its metadata puts there) or ``"all"``.
    ``ungated``: a gated model is replaced by its ``fallback``.
    """
    known = lessons_known()
    wanted: set[str] = set()
    for lesson in lessons:
        lesson = str(lesson).strip()
        if lesson == "all":
            wanted.update(known)
            continue
        week = re.fullmatch(r"(?:week|w)(\d+)", lesson.lower())
        if week:  # a week of the course: the lessons whose metadata says so
            weeks = {p.name[:2]: json.loads(p.read_text())["metadata"].get("course", {}).get("week")
                     for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
            in_week = [number for number, w in weeks.items() if w == int(week.group(1))]
            if not in_week:
                raise BadParameter(f"No lesson is in week {week.group(1)}: the weeks are "
                                   f"{', '.join(map(str, sorted({w for w in weeks.values() if w is not None})))}.")
            wanted.update(in_week)
            continue
        number = lesson.split("_")[0].zfill(2)
        if number not in known:
            raise BadParameter(f"There is no lesson {lesson!r}: give two-digit lesson numbers ({known[0]}-{known[-1]}), "
                               f'e.g. make fetch LESSONS="05 06", or LESSONS=all.')
        wanted.add(number)
    names: list[str] = []
    for name, entry in lock().items():
        if entry.get("fetch", True) is False or not wanted & set(entry.get("lessons", [])):
            continue
        if ungated and entry.get("gated") and entry.get("fallback"):
            name = entry["fallback"]
        if name not in names:
            names.append(name)
    return names


def size_gb(names: Iterable[str]) -> float:
    """What downloading ``names`` costs in decimal GB (entries without a declared size count 0)."""
    return sum(asset(name).get("size_gb", 0.0) for name in names)


# ------------------------------------------------------------------------------------------------ fetching


def _target(folder: str) -> Path:
    """``data/...`` -> the course data folder; ``cache/...`` -> the course cache (where the loaders look)."""
    from course_utils.core.paths import cache_dir, data_dir

    root, _, rest = folder.partition("/")
    if root == "data":
        return data_dir() / rest
    if root == "cache":
        return cache_dir(*Path(rest).parts)
    raise BadParameter(f"folder={folder!r} in {LOCK.name} must start with 'data' or 'cache'.")




def _fetch_url(name: str, entry: dict[str, Any], log: Callable[[str], None], progress: bool) -> list[Path]:
    from course_utils.core.download import verify

    folder = _target(entry["folder"])
    done = []
    for file, sums in entry["files"].items():
        dest = folder / file
        algorithm, expected = next(iter(sums.items()), (None, None))
        record = dest.with_name(dest.name + ".sha256")
        if entry.get("first_use") and expected is None and record.is_file():
            algorithm, expected = "sha256", (record.read_text().split() or [""])[0]
        if dest.is_file():
            if expected is not None:
                verify(dest, **{algorithm: expected})
            log(f"{name}: {dest} is already there{' and checked' if expected else ''}")
        else:
            urls = [entry["url"]] if "url" in entry else [base.rstrip("/") + "/" + file for base in entry["base_urls"]]
            download_resumable(urls, dest, algorithm, expected, progress=progress)
            if entry.get("first_use") and not record.is_file():  # no published checksum: record this first download
                record_sha256(dest)
            log(f"{name}: {dest}{f' ({algorithm} checked)' if expected else ''}")
        done.append(dest)
    return done


def _fetch_hub(name: str, entry: dict[str, Any], log: Callable[[str], None]) -> list[Path]:
    from course_utils.core.hub import cached_gb, check_disk_space, check_revision, hf_cache_dir, hub_errors_explained

    repo, rev = entry["id"], entry.get("revision")
    check_revision(repo, rev)  # only pinned commits are fetched
    fallback = entry.get("fallback")
    instead = f'`make fetch ... UNGATED=1` for {id(fallback)}' if fallback else None
    with hub_errors_explained(repo, alternative=instead):
        if entry["kind"] == "model":
            from huggingface_hub import snapshot_download

            check_disk_space(entry.get("size_gb", 0.0), hf_cache_dir(), what=repo, already_gb=cached_gb(repo))
            path = Path(snapshot_download(repo_id=repo, revision=rev, allow_patterns=entry.get("allow_patterns")))
        else:
            from datasets import load_dataset

            load_dataset(repo, entry.get("config"), revision=rev)  # prepares what the lesson's own call finds offline
            path = hf_cache_dir()
    log(f"{name}: {repo} at {rev[:12]} in {path}")
    return [path]


def fetch(lessons: Iterable[str], ungated: bool = False, log: Callable[[str], None] = print,
          progress: bool = True) -> list[Path]:
    """Download ahead what ``lessons`` need (see the module's docstring); returns the paths written or found."""
    names = for_lessons(lessons, ungated=ungated)
    log(f"fetching {len(names)} assets (~{_size(size_gb(names))}): {', '.join(names) or 'nothing to download'}")
    paths: list[Path] = []
    for name in names:
        entry = asset(name)
        if entry["kind"] == "url":
            paths += _fetch_url(name, entry, log, progress)
        else:
            paths += _fetch_hub(name, entry, log)
    if names:
        log("done: these lessons now run offline (HF_HUB_OFFLINE=1 works)")
    return paths


def _size(gb: float) -> str:
    if gb >= 1:
        return f"{gb:.1f} GB"
    return f"{gb * 1000:.0f} MB" if gb >= 0.01 else f"{gb * 1000:.1f} MB"


def downloads_table() -> str:
    """The README's per-lesson table of downloads, sizes and licences, generated from the lock (tests hold them equal)."""
    rows = ["| lesson | full mode downloads | size | licences |", "|---|---|---|---|"]
    for lesson in lessons_known():
        names = for_lessons([lesson])
        if not names:
            continue
        entries = [asset(name) for name in names]
        what = ", ".join(f"`{e['id']}`{' (gated)' if e.get('gated') else ''}" if "id" in e else name
                         for name, e in zip(names, entries))
        size = _size(size_gb(names))
        if any("size_gb" not in e for e in entries):
            size = "≥ " + size
        licences = "; ".join(dict.fromkeys(e["licence"] for e in entries))
        rows.append(f"| {lesson} | {what} | {size} | {licences} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="download ahead what the given lessons need")
    get.add_argument("lessons", nargs="+", help='two-digit lesson numbers ("05 06"), a week ("week4"), or "all"')
    get.add_argument("--ungated", action="store_true", help="take each gated model's ungated fallback instead")
    show = sub.add_parser("list", help="what the given lessons would download, with sizes and licences")
    show.add_argument("lessons", nargs="*", default=["all"])
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name in for_lessons(args.lessons):
                entry = asset(name)
                print(f"{name:<24} {entry.get('size_gb', 0):>7.2f} GB  {entry['licence']}"
                      f"{'  (gated)' if entry.get('gated') else ''}")
            return 0
        fetch(args.lessons, ungated=args.ungated)
    except CourseError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
