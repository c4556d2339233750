"""Translations cannot drift from the English lessons (issue 16).

For every language x lesson (and solution): each English markdown text has a translation made from its current
version (the catalogue's sha256 matches), the translation keeps the English code spans, fenced blocks, links, URLs,
tables and heading outline, and the built notebook's code cells are the English ones, byte for byte, same ids and
order. Missing translations fail only for the lessons in translations/SCOPE.json; the others are reported (skipped).
One translated lesson per language (00, the cheapest) runs in smoke mode through the runner.
"""

from __future__ import annotations

import functools
import json

import pytest

from course_utils.i18n import catalog, checks
from course_utils.runner import run

SOURCES = catalog.lessons()
SCOPE = set(catalog.scope())
# lessons in the scope, and any other lesson once a catalogue for it exists (it is then checked like the others)
CASES = [(lang, src) for lang in catalog.LANGUAGES for src in SOURCES
         if src.stem in SCOPE or catalog.catalogue_path(lang, src).exists()]


def _id(case):
    lang, src = case
    return f"{lang}-{catalog.label(src)}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_translation_is_current_complete_and_keeps_the_code(case, tmp_path):
    lang, source = case
    res = catalog.resolve(lang, source)
    label = catalog.label(source)
    in_scope = source.stem in SCOPE
    assert not res.stale, res.problem()
    assert not res.orphans, (f"{lang} {label}: entries {res.orphans} match no English text (a deleted cell, or a "
                             f"translation of an older text under a wrong key); remove or fix them in "
                             f"{catalog.catalogue_path(lang, source).relative_to(catalog.REPO_ROOT)}")
    if res.exists:
        data = catalog.load_catalogue(lang, source)
        assert data.get("language") == lang, f"{label}: catalogue says language {data.get('language')!r}"
        assert data.get("source") == source.relative_to(catalog.REPO_ROOT).as_posix()
    lost = [f"{key}: {p}" for key, text in res.texts.items() for p in checks.problems(res.english[key], text)]
    assert not lost, f"{lang} {label}: the translation lost what the English has:\n" + "\n".join(lost)
    if res.missing:
        if in_scope:
            pytest.fail(res.problem())
        pytest.skip(f"{lang} {label}: translation under way ({len(res.missing)} of {len(res.english)} texts "
                    "missing; add the lesson to translations/SCOPE.json once complete)")
    # the built file: English code byte for byte, translated prose
    (dest,) = catalog.build(lang, out=tmp_path, sources=[source], log=None)
    if source.suffix == ".md":
        assert dest.read_text(encoding="utf-8") == "".join(res.texts[k] for k in res.english)
        return
    english, translated = (json.loads(p.read_text(encoding="utf-8")) for p in (source, dest))
    assert [(c["cell_type"], c.get("id")) for c in translated["cells"]] == \
        [(c["cell_type"], c.get("id")) for c in english["cells"]], f"{lang} {label}: cells, ids or order differ"
    for i, (en, tr) in enumerate(zip(english["cells"], translated["cells"])):
        if en["cell_type"] == "code":
            assert json.dumps(tr, sort_keys=True) == json.dumps(en, sort_keys=True), \
                f"{lang} {label}: code cell {en.get('id', i)} differs from the English one"
        else:
            assert "".join(tr["source"]) == res.texts[catalog.cell_key(en, i)]
    assert translated["metadata"]["language"] == lang and translated["metadata"]["course"]["language"] == lang
    del translated["metadata"]["language"], translated["metadata"]["course"]["language"]
    assert translated["metadata"] == english["metadata"]


@pytest.mark.parametrize("lang", catalog.LANGUAGES)
def test_lessons_not_yet_translated_are_reported(lang):
    todo = [catalog.label(src) for src in SOURCES if (lang, src) not in CASES]
    if todo:
        pytest.skip(f"{lang}: not yet translated: {', '.join(todo)} (outside translations/SCOPE.json; "
                    "add a lesson there once translated)")


def test_scope_lists_real_lessons():
    stems = {p.stem for p in SOURCES}
    assert SCOPE and SCOPE <= stems, f"translations/SCOPE.json names unknown lessons: {sorted(SCOPE - stems)}"


def test_solutions_split_and_join_back_byte_for_byte():
    for source in SOURCES:
        if source.suffix == ".md":
            text = source.read_text(encoding="utf-8")
            sections = catalog.split_sections(text)
            assert catalog.join_sections(sections) == text
            assert all(s.startswith("#") for s in sections[1:])
    fenced = "intro\n# A\n```bash\n# not a heading\n```\n## B\ntext\n"
    assert catalog.split_sections(fenced) == ["intro\n", "# A\n```bash\n# not a heading\n```\n", "## B\ntext\n"]


@pytest.mark.parametrize("english, translated, lost", [
    ("Run `make lab` now.", "Lancez `make lab2` maintenant.", "code span"),
    ("Use `lr=3e-4`.", "Utilisez `lr=1e-4`.", "code span"),
    ("See [the guide](../README.md).", "Voir le guide.", "link target"),
    ("See [it](solutions/05_x.md).", "Voir [ceci](solutions/06_x.md).", "link target"),
    ("From https://example.org/a.", "Depuis le site.", "URL"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "| a | b |\n|---|---|", "tables"),
    ("| a | b |\n|---|---|", "| a | b | c |\n|---|---|---|", "tables"),
    ("# T\n## A\n### B", "# T\n## A\n## B", "heading levels"),
    ("x\n```python\nn = 12\n```", "x\n```python\nn = 13\n```", "fenced code blocks"),
    ("x\n```python\nn = 12\n```", "x", "fenced code blocks"),
])
def test_checks_catch_what_a_translation_lost(english, translated, lost):
    assert checks.problems(english, english) == []
    found = checks.problems(english, translated)
    assert any(lost in p for p in found), found


def _toy(tmp_path, english_text="## Hello\n\nRun `x = 1`."):
    import nbformat

    notebooks, root = tmp_path / "notebooks", tmp_path / "translations"
    (notebooks / "solutions").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(english_text),
                                         nbformat.v4.new_code_cell("x = 1")])
    nb.metadata["course"] = {"title": "Toy"}
    nbformat.write(nb, notebooks / "00_toy.ipynb")
    (notebooks / "solutions" / "00_toy.md").write_text("# Solutions\n\ntext\n")
    (root / "fr" / "solutions").mkdir(parents=True)
    (root / "SCOPE.json").write_text('["00_toy"]')
    key = nb.cells[0].id
    return notebooks, root, key


def test_a_stale_missing_or_copied_translation_is_built_as_english_under_a_pending_note(tmp_path):
    """Never a stale translation: until a cell is re-translated, the built notebook shows the English text under a
    visible note; status and the drift check name the cell, and an English copy with the right hash is no translation."""
    import nbformat

    notebooks, root, key = _toy(tmp_path)
    english = "## Hello\n\nRun `x = 1`."
    (root / "fr" / "solutions" / "00_toy.json").write_text(json.dumps(
        {"language": "fr", "cells": {"s0": {"source_sha256": catalog.sha256("# Solutions\n\ntext\n"),
                                            "text": "# Solutions\n\ntexte\n"}}}))
    entry = {"source_sha256": catalog.sha256("## Hello\n\nRun `x = 2`."), "text": "## Bonjour\n\nLancez `x = 2`."}
    cases = {"stale": entry, "missing": None, "copies": {"source_sha256": catalog.sha256(english), "text": english}}
    for kind, value in cases.items():
        cells = {key: value} if value else {}
        (root / "fr" / "00_toy.json").write_text(json.dumps({"language": "fr", "cells": cells}))
        logged = []
        built = catalog.build("fr", out=tmp_path, notebooks=notebooks, root=root, log=logged.append)
        shown = nbformat.read(built[0], as_version=4).cells[0].source
        assert shown == catalog.PENDING_NOTE["fr"] + "\n\n" + english, kind
        assert "Bonjour" not in shown and any("translation pending" in line for line in logged), kind
        report = catalog.status("fr", notebooks=notebooks, root=root)
        assert report[kind] == [f"00_toy:{key}"] and report["translated"] == 1, (kind, report)
        res = catalog.resolve("fr", notebooks / "00_toy.ipynb", root)
        assert not res.complete and f"cell {key}" in res.problem(), kind
    entry["source_sha256"] = catalog.sha256(english)
    (root / "fr" / "00_toy.json").write_text(json.dumps({"language": "fr", "cells": {key: entry}}))
    built = catalog.build("fr", out=tmp_path, notebooks=notebooks, root=root, log=None)
    assert [p.relative_to(tmp_path).as_posix() for p in built] == ["notebooks-fr/00_toy.ipynb",
                                                                    "notebooks-fr/solutions/00_toy.md"]
    assert "Bonjour" in built[0].read_text() and "attente" not in built[0].read_text()
    assert built[1].read_text() == "# Solutions\n\ntexte\n"
    report = catalog.status("fr", notebooks=notebooks, root=root)
    assert (report["translated"], report["total"], report["stale"], report["missing"]) == (2, 2, [], [])


def test_a_text_without_prose_may_equal_its_english():
    assert not catalog.has_prose("`x = 1` | [`a`](https://example.org)")
    assert catalog.has_prose("Run `x = 1` now.")


def test_cli_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    from course_utils.i18n import __main__ as cli

    notebooks, root, key = _toy(tmp_path)
    monkeypatch.setattr(catalog, "build", functools.partial(catalog.build, notebooks=notebooks, root=root))
    assert cli.main(["build", "--lang", "fr", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("i18n: Lesson 00_toy has no fr translation")
    assert "stubs --lang fr" in err
    # the skeleton `stubs` prints is a valid catalogue (English texts, right hashes): the build accepts it
    assert cli.main(["stubs", "--lang", "fr", str(notebooks / "00_toy.ipynb")]) == 0
    (root / "fr" / "00_toy.json").write_text(capsys.readouterr().out)
    assert cli.main(["stubs", "--lang", "fr", str(notebooks / "solutions" / "00_toy.md")]) == 0
    (root / "fr" / "solutions" / "00_toy.json").write_text(capsys.readouterr().out)
    assert cli.main(["build", "--lang", "fr", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "notebooks-fr" / "00_toy.ipynb").exists()


@pytest.mark.notebook
@pytest.mark.parametrize("lang", catalog.LANGUAGES)
def test_a_translated_lesson_runs_in_smoke_mode(lang, tmp_path):
    """The code is the English code (the drift test shows it); this runs it once per language through the runner."""
    lesson = next(p for p in SOURCES if p.stem.startswith("00_"))  # setup and GPU check: the cheapest lesson
    res = catalog.resolve(lang, lesson)
    assert res.complete, res.problem()
    (built,) = catalog.build(lang, out=tmp_path, sources=[lesson], log=None)
    assert built.parent.name == f"notebooks-{lang}"
    (tmp_path / "run").mkdir()
    result = run.run_lesson(built, tmp_path / "run", "smoke", {}, progress=False)
    assert result.status == "passed" and all(t.met for t in result.targets), f"{lang}: {result.status} {result.error}"
    executed = json.loads((tmp_path / "run" / lesson.name).read_text(encoding="utf-8"))
    assert executed["metadata"]["course"]["language"] == lang
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")


def test_course_run_takes_the_translated_folder(tmp_path):
    """`make course LANG=fr` runs `course-run --notebooks notebooks-fr`: the lessons come from that folder."""
    (tmp_path / "00_toy.ipynb").write_text("{}")
    with pytest.raises(SystemExit, match="no lesson called '99'. Lessons: 00_toy"):
        run.main(["99", "--mode", "smoke", "--notebooks", str(tmp_path), "--out", str(tmp_path / "runs")])
