"""The copy checker (course_utils/runner/copies.py, `make check-copies`): every marked copy in the repository is its
source's text; a one-character change to any copied block fails the check, naming the copy's file:line and the first
line that differs; `fix` restores it; a marker naming a missing source is one sentence.

Mutations happen in memory or in a temporary copy of the files involved, never in the repository."""

from __future__ import annotations

import functools
import io
import json
import keyword
import shutil
import tokenize
from pathlib import Path

from course_utils.runner import copies

ROOT = Path(__file__).resolve().parent.parent
BF16 = "course_utils/core/gpu.py:bf16_native"


@functools.cache
def _repo_copies() -> list[copies.Copy]:
    found, problems = copies.check(ROOT)
    assert not problems, "\n".join(problems) + "\n`make fix-copies` rewrites the copies that differ from their sources"
    return found


def test_every_marked_copy_matches_its_source():
    found = _repo_copies()
    sources = {c.source for c in found}
    recipes_with_bf16 = {c.file for c in found if c.source == BF16}
    assert len(recipes_with_bf16) >= 11, f"the recipes' copies of {BF16} were not found: {sorted(recipes_with_bf16)}"
    assert {"course_utils/demo/app.py:FailedLogins", "course_utils/demo/tabs.py:bounded_history",
            "course_utils/topics/llm.py:adapter_in_fp32_for_fp16", "course_utils/topics/yolo.py:amp_check_offline",
            "course_utils/topics/yolo.py:AMP_BROKEN_GPUS"} <= sources
    assert any(".ipynb#" in s for s in sources), "no copy of a lesson cell was found"


def test_every_recipe_holds_a_copy_or_says_why_it_shares_no_code():
    """`check` covers every recipe: one that loses its last marker is named, and so is a listed one that has copies."""
    found = _repo_copies()
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").glob("*.py"))
    held = {c.file for c in found}
    assert copies.uncovered(ROOT, found) == []
    for recipe, reason in copies.NO_SHARED_CODE.items():
        assert recipe in recipes, f"NO_SHARED_CODE lists {recipe}, which is not a recipe"
        assert reason.strip() and "\n" not in reason, f"{recipe}: the reason is one line"
    assert (held & set(recipes)) | set(copies.NO_SHARED_CODE) == set(recipes)
    for recipe in sorted(held & set(recipes)):  # its markers gone, or listed although it has copies: both named
        assert copies.uncovered(ROOT, [c for c in found if c.file != recipe]) == [
            f"{recipe}: holds no marked copy; mark the code it shares with its lesson or course_utils, or list it in "
            "course_utils/runner/copies.py's NO_SHARED_CODE with the reason it shares none."]
        assert copies.uncovered(ROOT, found, {**copies.NO_SHARED_CODE, recipe: "shares nothing"}) == [
            f"{recipe}: is listed in NO_SHARED_CODE (shares nothing) but holds marked copies: remove it from the list."]


def _tokens_in(lines: list[str], copy: copies.Copy, kinds: set[int]) -> list[tokenize.TokenInfo]:
    """The block's tokens of these kinds, at their lines in the file."""
    block = io.StringIO("\n".join(lines[copy.start:copy.end]) + "\n")
    return [t._replace(start=(t.start[0] + copy.start, t.start[1])) for t in tokenize.generate_tokens(block.readline)
            if t.type in kinds and not keyword.iskeyword(t.string)]


def _mutate(text: str, token: tokenize.TokenInfo) -> tuple[str, int]:
    """One character of ``token`` changed (a name's last, a string's or comment's first letter or digit on its first
    line, past any prefix and quote); returns the text and the changed line."""
    lines = text.split("\n")
    row, col = token.start[0] - 1, token.start[1]
    if token.type == tokenize.NAME:
        i = col + len(token.string) - 1
    else:
        opening = len(token.string) - len(token.string.lstrip("rRbBuUfF")) + 1  # past the prefix and the quote or #
        i = col + next(k for k, ch in enumerate(token.string.split("\n")[0]) if k >= opening and ch.isalnum())
    line = lines[row]
    lines[row] = line[:i] + ("q" if line[i] != "q" else "z") + line[i + 1:]
    return "\n".join(lines), row + 1


def test_a_one_character_change_to_any_copy_fails_the_check():
    """Each copy, mutated in its last name (the block's extent reaches it: the file is read again from scratch) and in
    its first string or comment (a docstring or a comment counts as much as code)."""
    texts = {}
    for copy in _repo_copies():
        text = texts.setdefault(copy.file, (ROOT / copy.file).read_text(encoding="utf-8"))
        names = _tokens_in(text.split("\n"), copy, {tokenize.NAME})
        words = [t for t in _tokens_in(text.split("\n"), copy, {tokenize.STRING, tokenize.COMMENT})
                 if any(ch.isalnum() for ch in t.string.split("\n")[0].lstrip("rRbBuUfF")[1:])]
        mutated, line = _mutate(text, names[-1])
        found, problems = copies.copies_in(ROOT, copy.file, mutated)
        assert not problems, problems
        stale = [c for c in found if copies.difference(c, mutated.split("\n"))]
        assert [c.line for c in stale] == [copy.line], f"a change at {copy.file}:{line} was blamed on {stale}"
        why = copies.difference(stale[0], mutated.split("\n"))
        assert why.startswith(f"{copy.file}:{line}: the copy of {copy.source} "), why
        for token in words[:1]:
            mutated, line = _mutate(text, token)
            why = copies.difference(copy, mutated.split("\n"))
            assert why is not None and why.startswith(f"{copy.file}:{line}: "), \
                f"{copy.where}: a change to {token.string!r} at line {line} went unseen ({why})"


def test_a_shortened_copy_fails_and_fix_restores_copies_and_follows_a_changed_source(tmp_path):
    found = _repo_copies()
    held = {f: [c for c in found if c.file == f] for f in {c.file for c in found}}
    # the two files that hold a copy of bf16_native and the fewest others, with the sources of all their copies
    files = sorted((f for f in held if any(c.source == BF16 for c in held[f])), key=lambda f: (len(held[f]), f))[:2]
    for relative in set(files) | {c.source.split(" ")[0].split(":")[0].split("#")[0] for f in files for c in held[f]}:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    bf16 = [c for f in files for c in held[f] if c.source == BF16]
    first, second = bf16
    originals = {c.file: (tmp_path / c.file).read_text() for c in (first, second)}
    lines = originals[first.file].split("\n")
    del lines[first.end - 1]  # the copy lost its last line (the `return`)
    (tmp_path / first.file).write_text("\n".join(lines))
    lines = originals[second.file].split("\n")
    changed = next(i for i in range(second.start, second.end) if "import torch" in lines[i])
    lines[changed] = lines[changed].replace("import torch", "import numpy")
    (tmp_path / second.file).write_text("\n".join(lines))
    _, problems = copies.check(tmp_path)
    assert len(problems) == 2 and all(" differs from its source: " in p for p in problems), problems
    assert any(p.startswith(f"{first.file}:{first.end}: ") and "nothing (the copy ends)" in p for p in problems)
    assert any(p.startswith(f"{second.file}:{changed + 1}: ") and "import numpy" in p for p in problems)
    rewritten, problems = copies.fix(tmp_path)
    assert not problems and len(rewritten) == 2
    assert all((tmp_path / f).read_text() == text for f, text in originals.items()), "fix did not restore the copies"

    # a changed source: every copy of it is stale, and fix carries the change into each
    core = tmp_path / "course_utils" / "core" / "gpu.py"
    core.write_text(core.read_text().replace(">= (8, 0)", ">= (8, 9)"))
    _, problems = copies.check(tmp_path)
    assert sorted(p.split(":")[0] for p in problems) == sorted(c.file for c in bf16), problems
    assert copies.main(["fix", "--root", str(tmp_path)]) == 0
    assert copies.main(["check", "--root", str(tmp_path)]) == 0
    assert all(">= (8, 9)" in (tmp_path / c.file).read_text() for c in bf16)


# ------------------------------------------------------------------------------ lesson cells as sources (a fixture)

CELLS = {
    "setup": "%matplotlib inline\nimport math",
    "head": ("class Head:\n    \"\"\"One attention head.\"\"\"\n\n    def __init__(self, size):\n        self.size = size\n"
             "\n\ndef scale(x):\n    return x / math.sqrt(Head(4).size)"),
    "sample": "def sample(logits):\n    # the most likely token\n    return max(range(len(logits)), key=logits.__getitem__)",
}


def _notebook(path: Path, cells: dict[str, str], ids: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5 if ids else 4, "metadata": {}, "cells": [
        {"cell_type": "code", **({"id": key} if ids else {}), "metadata": {}, "execution_count": None, "outputs": [],
         "source": source.splitlines(keepends=True)} for key, source in cells.items()]}))


RECIPE = """import math


# Copied from notebooks/99_fixture.ipynb#head:Head with Head->Attention, size->width
class Attention:
    pass


class Model:
    # Copied from course_utils/fixture.py:Helper.double
    def double(self):
        pass


# Copied from notebooks/99_fixture.ipynb#sample
# End copy
"""

WANTED = """import math


# Copied from notebooks/99_fixture.ipynb#head:Head with Head->Attention, size->width
class Attention:
    \"\"\"One attention head.\"\"\"

    def __init__(self, width):
        self.width = width


class Model:
    # Copied from course_utils/fixture.py:Helper.double
    def double(self, x):
        return 2 * x


# Copied from notebooks/99_fixture.ipynb#sample
def sample(logits):
    # the most likely token
    return max(range(len(logits)), key=logits.__getitem__)
# End copy
"""


def test_copies_of_cells_and_nested_names_are_written_checked_and_rewritten(tmp_path):
    _notebook(tmp_path / "notebooks" / "99_fixture.ipynb", CELLS)
    (tmp_path / "course_utils").mkdir()
    (tmp_path / "course_utils" / "fixture.py").write_text("class Helper:\n    def double(self, x):\n        return 2 * x\n")
    recipe = tmp_path / "recipes" / "fixture.py"
    recipe.parent.mkdir()
    recipe.write_text(RECIPE)
    recipe.chmod(0o755)
    _, problems = copies.check(tmp_path)
    assert len(problems) == 3, problems
    rewritten, problems = copies.fix(tmp_path)
    assert not problems and len(rewritten) == 3
    assert recipe.stat().st_mode & 0o777 == 0o755, "fix changed the file's permissions"
    assert recipe.read_text() == WANTED  # renamed twice, re-indented (the method), the whole cell up to `# End copy`
    assert copies.check(tmp_path)[1] == []
    exec(compile(recipe.read_text(), str(recipe), "exec"), {})  # what fix wrote is Python

    # a one-character change in the lesson's cell: the copy is named at its first differing line, then rewritten
    _notebook(tmp_path / "notebooks" / "99_fixture.ipynb", {**CELLS, "sample": CELLS["sample"].replace("most", "mist")})
    _, problems = copies.check(tmp_path)
    line = WANTED.split("\n").index("    # the most likely token") + 1
    assert problems == [f"recipes/fixture.py:{line}: the copy of notebooks/99_fixture.ipynb#sample (marker at line "
                        f"{line - 2}) differs from its source: it has '    # the most likely token' where the source "
                        "has '    # the mist likely token'"], problems
    copies.fix(tmp_path)
    assert "# the mist likely token" in recipe.read_text() and copies.check(tmp_path)[1] == []


def test_a_marker_that_cannot_be_checked_is_one_sentence(tmp_path, capsys):
    _notebook(tmp_path / "notebooks" / "99_fixture.ipynb", CELLS)
    _notebook(tmp_path / "notebooks" / "98_old.ipynb", CELLS, ids=False)
    (tmp_path / "course_utils").mkdir()
    (tmp_path / "course_utils" / "fixture.py").write_text("def helper():\n    return 1\n")
    bad = {
        "course_utils/missing.py:helper": "recipes/bad.py:{}: the marker names course_utils/missing.py, which is not a "
                                          "file of the repository.",
        "course_utils/fixture.py:nothing": "recipes/bad.py:{}: course_utils/fixture.py defines no nothing (no def, "
                                           "class or assignment named nothing).",
        "notebooks/99_fixture.ipynb#gone:sample": "recipes/bad.py:{}: notebooks/99_fixture.ipynb has no cell with the "
                                                  "id gone.",
        "notebooks/98_old.ipynb#head:Head": "recipes/bad.py:{}: notebooks/98_old.ipynb has no cell ids (nbformat 4.4): "
                                            "upgrade it to nbformat 4.5, whose cells have ids, to mark a copy of one "
                                            "of its cells.",
        "course_utils.fixture.helper": "recipes/bad.py:{}: the marker's source 'course_utils.fixture.helper' is not of "
                                       "the form <file>.py:<name>, <file>.ipynb#<cell-id> or "
                                       "<file>.ipynb#<cell-id>:<name>.",
        "course_utils/fixture.py:helper (kept the same)": "recipes/bad.py:{}: after the source the marker may only say "
                                                          "`with A->B, C->D`, not '(kept the same)'.",
        "notebooks/99_fixture.ipynb#sample": "recipes/bad.py:{}: a copy of a whole cell ends at a line `# End copy` of "
                                             "the marker's indentation; there is none below it.",
    }
    text, wanted = "", []
    for source, message in bad.items():
        text += f"\n\n# Copied from {source}\ndef helper():\n    return 1\n"
        wanted.append(message.format(text.count("\n") - 2))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.py").write_text(text)
    assert copies.main(["check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == wanted + ["recipes/bad.py: holds no marked copy; mark the code it shares with its lesson or "
                                 "course_utils, or list it in course_utils/runner/copies.py's NO_SHARED_CODE with the "
                                 "reason it shares none."]
    assert out[-1] == "copies: 0 of 0 copies differ from their sources (`make fix-copies` rewrites them); 8 other " \
                      "problem(s) (markers that cannot be checked, recipes with no copy)."
    assert copies.main(["fix", "--root", str(tmp_path)]) == 1  # nothing it can rewrite; it says so, no traceback
