"""What a translation must keep from its English text: code, links, URLs, tables, the heading outline.

:func:`problems` compares one English markdown text with its translation and lists what was lost or changed:

* fenced code blocks (```...```): identical, in order;
* code spans (`` `x` ``): the same ones, the same number of times (their order may change with the sentence);
* link targets (``](target)``) and URLs: the same ones, the same number of times (a figure may point to its
  translated copy: ``docs/figures/x.svg`` in English, ``docs/figures/x.fr.svg`` in French);
* tables: the same number of tables, each with the same rows and columns;
* headings: the same sequence of levels (``#``, ``##``...).
"""

from __future__ import annotations

import re
from collections import Counter

_FENCE_BLOCK = re.compile(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_LINK_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_URL = re.compile(r"https?://[^\s)<>\]\"'`]+")
_HEADING = re.compile(r"^(#{1,6})\s", re.M)


def fenced_blocks(text: str) -> list[str]:
    return _FENCE_BLOCK.findall(text)


def _prose(text: str) -> str:
    """The text without its fenced blocks."""
    return _FENCE_BLOCK.sub("", text)


def code_spans(text: str) -> Counter:
    return Counter(m.group(0) for m in _CODE_SPAN.finditer(_prose(text)))


def _without_code(text: str) -> str:
    return _CODE_SPAN.sub("", _prose(text))


_FIGURE_LANG = re.compile(r"(docs/figures/[\w.-]+?)\.(?:fr|zh-Hant|ja)\.svg$")


def link_targets(text: str) -> Counter:
    return Counter(_FIGURE_LANG.sub(r"\1.svg", t) for t in _LINK_TARGET.findall(_without_code(text)))


def urls(text: str) -> Counter:
    return Counter(u.rstrip(".,;:!?") for u in _URL.findall(_without_code(text)))


def tables(text: str) -> list[list[int]]:
    """Each table as the number of cells in each of its rows."""
    found: list[list[int]] = []
    current: list[int] = []
    for line in _prose(text).splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            row = _CODE_SPAN.sub("x", stripped).replace("\\|", "")
            current.append(len(row.strip("|").split("|")))
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def headings(text: str) -> list[int]:
    return [len(m.group(1)) for m in _HEADING.finditer(_prose(text))]


def problems(english: str, translated: str) -> list[str]:
    """What the translation lost or changed, one phrase each (empty: it keeps everything it must)."""
    found = []
    if fenced_blocks(english) != fenced_blocks(translated):
        found.append("its fenced code blocks differ from the English ones")
    for what, get in (("code span", code_spans), ("link target", link_targets), ("URL", urls)):
        want, got = get(english), get(translated)
        lost, extra = want - got, got - want
        if lost:
            found.append(f"lost {what}(s) {sorted(lost)}")
        if extra:
            found.append(f"has {what}(s) the English has not {sorted(extra)}")
    if tables(english) != tables(translated):
        found.append(f"its tables (cells per row) {tables(translated)} differ from the English {tables(english)}")
    if headings(english) != headings(translated):
        found.append(f"its heading levels {headings(translated)} differ from the English {headings(english)}")
    return found
