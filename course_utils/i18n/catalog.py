"""Catalogues: read them, match them to the English lessons by cell key and hash, build the translated lessons."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.core.errors import CourseError
from course_utils.core.paths import REPO_ROOT, atomic_write

#: The course's translation languages (BCP 47 tags, as in ``translations/<lang>/``).
LANGUAGES = ("fr", "zh-Hant", "ja")
TRANSLATIONS = REPO_ROOT / "translations"
NOTEBOOKS = REPO_ROOT / "notebooks"
_FENCE = re.compile(r"^\s*```")


class TranslationError(CourseError):
    """A catalogue is missing, incomplete or was made from an older English text."""

    kind = "translation"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_sections(text: str) -> list[str]:
    """A solution file's sections: a new one starts at each line beginning with ``#`` outside a ``` fence.

    ``"".join(split_sections(text)) == text`` always.
    """
    sections: list[str] = []
    current: list[str] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        elif line.startswith("#") and not fenced and current:
            sections.append("".join(current))
            current = []
        current.append(line)
    if current:
        sections.append("".join(current))
    return sections


def join_sections(sections: list[str]) -> str:
    return "".join(sections)


def lessons(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Every translatable English file: the lessons, then their solutions."""
    notebooks = Path(notebooks)
    return (sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
            + sorted((notebooks / "solutions").glob("[0-9][0-9]_*.md")))


def _is_solution(source: Path) -> bool:
    return Path(source).suffix == ".md"


def label(source: Path) -> str:
    """How reports name a file: the lesson stem, or solutions/<stem>."""
    source = Path(source)
    return f"solutions/{source.stem}" if _is_solution(source) else source.stem


def cell_key(cell, index: int) -> str:
    """A cell's catalogue key: its id, or its index among all cells (``"3"``) in a notebook saved without ids."""
    return cell.get("id") or str(index)


def english_units(source: Path) -> dict[str, str]:
    """The English texts to translate, by key, in source order: markdown cells, or a solution's sections."""
    source = Path(source)
    if _is_solution(source):
        return {f"s{i}": text for i, text in enumerate(split_sections(source.read_text(encoding="utf-8")))}
    import nbformat

    nb = nbformat.read(source, as_version=4)
    return {cell_key(cell, i): cell.source for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"}


def _relative(source: Path) -> str:
    source = Path(source).resolve()
    try:
        return source.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return source.as_posix()


def catalogue_path(lang: str, source: Path, root: Path = TRANSLATIONS) -> Path:
    source = Path(source)
    sub = ("solutions",) if _is_solution(source) else ()
    return Path(root, lang, *sub, f"{source.stem}.json")


def load_catalogue(lang: str, source: Path, root: Path = TRANSLATIONS) -> dict | None:
    """The catalogue of ``source`` in ``lang``, or None if there is none."""
    path = catalogue_path(lang, source, root)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise TranslationError(f"{_relative(path)} is not valid JSON ({err}); fix the file.") from None
    if not isinstance(data.get("cells"), dict):
        raise TranslationError(f"{_relative(path)} has no \"cells\" object; see course_utils/i18n/__init__.py "
                               "for the format.")
    return data


def scope(root: Path = TRANSLATIONS) -> list[str]:
    """Stems that must be fully translated in every language (``translations/SCOPE.json``), solutions included."""
    path = Path(root) / "SCOPE.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


#: What a built notebook shows above an English cell that waits for its translation (never a stale translation).
PENDING_NOTE = {
    "fr": "> *Traduction en attente : cette cellule est affichée en anglais.*",
    "zh-Hant": "> *翻譯待更新：這個儲存格暫時以英文顯示。*",
    "ja": "> *翻訳待ち：このセルは英語のまま表示しています。*",
}


def has_prose(text: str) -> bool:
    """Whether a text holds words a translator would change (code spans, URLs, tables and markup aside)."""
    import re

    text = re.sub(r"```.*?```|`[^`]*`|\]\([^)]*\)|https?://\S+|^\s*\|.*$", " ", text, flags=re.S | re.M)
    return bool(re.search(r"[^\W\d_]{3,}", text))


def pending(lang: str, english: str) -> str:
    """The English text of a cell whose translation is pending, under the language's visible note."""
    return f"{PENDING_NOTE[lang]}\n\n{english}"


@dataclass
class Resolution:
    """How a catalogue covers its English file."""

    source: Path
    lang: str
    exists: bool
    english: dict[str, str]
    texts: dict[str, str] = field(default_factory=dict)  # key -> translation made from the current English text
    stale: list[str] = field(default_factory=list)  # keys whose translation was made from another English text
    missing: list[str] = field(default_factory=list)  # keys with no entry at all
    orphans: list[str] = field(default_factory=list)  # catalogue keys that match no English cell
    copies: list[str] = field(default_factory=list)  # current hash, but the English prose itself: not translated

    @property
    def complete(self) -> bool:
        return self.exists and not self.stale and not self.missing and not self.copies

    @property
    def pending(self) -> list[str]:
        """Keys the built notebook shows in English under :data:`PENDING_NOTE` (stale, missing or copied)."""
        order = list(self.english)
        return sorted(set(self.stale) | set(self.missing) | set(self.copies), key=order.index)

    def problem(self) -> str | None:
        """One course sentence for the first problem, or None."""
        where = _relative(catalogue_path(self.lang, self.source))
        name = label(self.source)
        stub = f"python -m course_utils.i18n stubs --lang {self.lang} {_relative(self.source)}"
        if not self.exists:
            return (f"Lesson {name} has no {self.lang} translation: write {where} (`{stub}` prints a skeleton "
                    "with the English texts and their hashes).")
        for kind, keys in (("stale", self.stale), ("missing", self.missing), ("copied", self.copies)):
            if keys:
                key = keys[0]
                first = self.english[key].strip().splitlines()[0][:60] if self.english[key].strip() else ""
                what = {"stale": "was translated from an older English text (source_sha256 does not match)",
                        "missing": "has no entry",
                        "copied": "is the English text itself (a stub with the right hash is not a translation)"}[kind]
                more = f" (and {len(keys) - 1} more {kind})" if len(keys) > 1 else ""
                return (f"Lesson {name}, cell {key} ({first!r}): the {self.lang} translation {what}{more}; "
                        f"update it in {where} (`{stub}` shows the current English text and hash).")
        return None


def resolve(lang: str, source: Path, root: Path = TRANSLATIONS) -> Resolution:
    source = Path(source)
    english = english_units(source)
    data = load_catalogue(lang, source, root)
    res = Resolution(source, lang, data is not None, english)
    if data is None:
        res.missing = list(english)
        return res
    entries = data["cells"]
    unknown = {}
    for key, entry in entries.items():
        if key in english:
            if entry.get("source_sha256") == sha256(english[key]):
                res.texts[key] = entry["text"]
            else:
                res.stale.append(key)
        else:
            unknown[key] = entry
    # an entry under an unknown key still counts when its hash matches exactly one English text left uncovered
    uncovered = {}
    for key, text in english.items():
        if key not in entries:
            uncovered.setdefault(sha256(text), []).append(key)
    for key, entry in unknown.items():
        keys = uncovered.get(entry.get("source_sha256"), [])
        if keys:
            res.texts[keys.pop(0)] = entry["text"]
        else:
            res.orphans.append(key)
    res.missing = [k for k in english if k not in res.texts and k not in res.stale]
    res.copies = [k for k, text in res.texts.items() if text.strip() == english[k].strip() and has_prose(text)]
    for key in res.copies:
        del res.texts[key]
    order = list(english)
    res.copies.sort(key=order.index)
    res.stale.sort(key=order.index)
    return res


def _selected(notebooks: Path, selection: list[str] | None) -> list[Path]:
    files = lessons(notebooks)
    if not selection:
        return files
    wanted = [s.zfill(2) if s.isdigit() else s for s in selection]
    chosen = [p for p in files if p.stem in wanted or p.stem.split("_")[0] in wanted]
    if not chosen:
        raise TranslationError(f"No lesson matches {' '.join(selection)}; lessons: "
                               f"{', '.join(p.stem for p in files if p.suffix == '.ipynb')}.")
    return chosen


def build(lang: str, out: Path | None = None, notebooks: Path = NOTEBOOKS, selection: list[str] | None = None,
          root: Path = TRANSLATIONS, log=print, sources: list[Path] | None = None) -> list[Path]:
    """Write ``<out>/notebooks-<lang>/`` (default: next to ``notebooks/``); returns the files written.

    A cell whose translation is missing, stale (made from an older English text) or the English text itself is
    built in English under :data:`PENDING_NOTE` — never as a stale translation — and ``log`` counts them.
    Refuses (:class:`TranslationError`) when a lesson listed in ``translations/SCOPE.json`` has no catalogue. A lesson outside the scope with no catalogue yet is
    copied in English (and ``log`` says so), so links between lessons keep working. ``sources``: build only these
    English files (paths in ``notebooks``) instead of the ``selection``.
    """
    import nbformat

    if lang not in LANGUAGES:
        raise TranslationError(f"Unknown language {lang!r}; the course is translated into {', '.join(LANGUAGES)}.")
    notebooks = Path(notebooks)
    target = Path(out or notebooks.parent) / f"notebooks-{lang}"
    in_scope = set(scope(root))
    plans, pending_cells = [], []
    for source in [Path(p) for p in sources] if sources else _selected(notebooks, selection):
        res = resolve(lang, source, root)
        if not res.exists and source.stem not in in_scope:
            plans.append((source, None))
            continue
        if not res.exists:
            raise TranslationError(res.problem())
        texts = dict(res.texts)
        for key in res.pending:
            texts[key] = pending(lang, res.english[key])
            pending_cells.append(f"{label(source)}:{key}")
        plans.append((source, texts))
    written, english_only = [], []
    for source, texts in plans:
        rel = source.relative_to(notebooks)
        dest = target / rel
        if source.suffix == ".md":
            sections = split_sections(source.read_text(encoding="utf-8"))
            text = join_sections([texts[f"s{i}"] for i in range(len(sections))]) if texts else "".join(sections)
            with atomic_write(dest, "w") as fh:
                fh.write(text)
        else:
            nb = nbformat.read(source, as_version=4)
            if texts is not None:
                for i, cell in enumerate(nb.cells):
                    if cell.cell_type == "markdown":
                        cell.source = texts[cell_key(cell, i)]
                nb.metadata["language"] = lang
                if "course" in nb.metadata:
                    nb.metadata["course"]["language"] = lang
            with atomic_write(dest, "w") as fh:
                fh.write(nbformat.writes(nb) + "\n")
        if texts is None:
            english_only.append(label(source))
        written.append(dest)
    if english_only and log:
        log(f"{lang}: no translation yet for {', '.join(english_only)}: copied in English.")
    if pending_cells and log:
        log(f"{lang}: {len(pending_cells)} cell(s) shown in English under a 'translation pending' note "
            f"(`python -m course_utils.i18n status -v --lang {lang}` lists them): {', '.join(pending_cells[:5])}"
            + (" ..." if len(pending_cells) > 5 else ""))
    return written


def status(lang: str, notebooks: Path = NOTEBOOKS, root: Path = TRANSLATIONS) -> dict:
    """Counts for one language: translated / total texts, stale and missing keys per file, files without catalogue."""
    report = {"language": lang, "translated": 0, "total": 0, "stale": [], "missing": [], "copies": [],
              "no_catalogue": [], "orphans": [], "files": {}}
    for source in lessons(notebooks):
        res = resolve(lang, source, root)
        name = label(source)
        report["translated"] += len(res.texts)
        report["total"] += len(res.english)
        report["files"][name] = (len(res.texts), len(res.english))
        report["stale"] += [f"{name}:{k}" for k in res.stale]
        report["copies"] += [f"{name}:{k}" for k in res.copies]
        report["orphans"] += [f"{name}:{k}" for k in res.orphans]
        if not res.exists:
            report["no_catalogue"].append(name)
        else:
            report["missing"] += [f"{name}:{k}" for k in res.missing]
    return report


def stub(lang: str, source: Path) -> dict:
    """A catalogue skeleton for a translator: every English text with its hash (replace each text)."""
    source = Path(source)
    return {"language": lang, "source": _relative(source),
            "cells": {key: {"source_sha256": sha256(text), "text": text} for key, text in english_units(source).items()}}


def dumps(catalogue: dict) -> str:
    """The catalogue file format: UTF-8, indent 1, keys in source order, trailing newline."""
    return json.dumps(catalogue, indent=1, ensure_ascii=False) + "\n"
