"""Translations of the course (French, Traditional Chinese, Japanese) kept as data, built into notebooks.

The English lessons in ``notebooks/`` are the only source of code. A translation is a catalogue per lesson and
language, ``translations/<lang>/<stem>.json`` (``translations/<lang>/solutions/<stem>.json`` for
``notebooks/solutions/<stem>.md``)::

    {"language": "fr", "source": "notebooks/05_llm_inference_4bit.ipynb",
     "cells": {"<cell key>": {"source_sha256": "<sha256 of the English text>", "text": "<the translated markdown>"}}}

* A notebook's cell key is the cell's id; a cell without an id (notebooks saved as nbformat 4.4) is keyed
  ``"<index>"`` (its position among all the notebook's cells, from 0, as a string). An entry whose key is unknown but whose
  hash matches exactly one English cell still counts for that cell (so re-keying never loses a translation).
* A solution file is split into sections at every line starting with ``#`` outside a code fence: ``s0``, ``s1``...
  Joining the sections gives the file back byte for byte.
* ``source_sha256`` is the English text the translation was made from: when the English changes, the entry is
  *stale* and the build refuses until a translator updates it.

``python -m course_utils.i18n build [--lang fr]`` writes ``notebooks-<lang>/`` (same depth as ``notebooks/``, so
relative links and paths keep working): the English notebook, code cells byte for byte, with each markdown cell
replaced by its translation. ``status`` counts what is translated; ``stubs`` prints a catalogue skeleton for a
translator. :mod:`course_utils.i18n.checks` holds what a translation must keep (code spans, links, tables...).

Importing this package is light: nbformat is imported only by the functions that read notebooks.
"""

from __future__ import annotations

from course_utils.i18n.catalog import (  # noqa: F401 (the package's API)
    LANGUAGES,
    TRANSLATIONS,
    TranslationError,
    build,
    catalogue_path,
    english_units,
    join_sections,
    label,
    lessons,
    load_catalogue,
    resolve,
    dumps,
    scope,
    sha256,
    split_sections,
    status,
    stub,
)
