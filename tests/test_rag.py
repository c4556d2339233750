"""course_utils.topics.rag (lesson 07's plumbing) and the shipped notes, questions and gold answers.

The algorithm (chunking, BM25, dense search, fusion, reranking, prompt, answer scoring) lives in the lesson's cells
and is checked there and in tests/test_recipes_rag.py; here: reading notes, the question set, gold-chunk lookup, the
bundled embedder's checksum and the reranker loaders.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple

import nbformat
import pytest

from course_utils.core.errors import BadParameter, CourseError, MissingData
from course_utils.topics import rag

Chunk = namedtuple("Chunk", "id source heading text")  # what the lesson's chunks look like to the plumbing


def sections(text: str) -> dict[str, str]:
    """'## heading' -> its text, for the data checks below (headings are plain in the shipped notes)."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def normalize(text: str) -> str:
    """The lesson's answer normalisation (lower case, digits and letters split, punctuation out)."""
    text = re.sub(r"(?<=[0-9])(?=[a-z])|(?<=[a-z])(?=[0-9])", " ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


# ------------------------------------------------------------------------------------------------- ingest


def test_notebooks_are_read_as_markdown_and_fenced_code_without_outputs(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# My notebook\nSome notes."),
        nbformat.v4.new_code_cell("print('hello')", outputs=[nbformat.v4.new_output("stream", text="OUTPUT-TEXT")]),
    ])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    (tmp_path / "note.md").write_text("# A note\nText.")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "note-checkpoint.md").write_text("# stale copy")
    docs = {d.source: d.text for d in rag.load_documents(tmp_path)}
    assert set(docs) == {"nb.ipynb", "note.md"}, "hidden folders (checkpoints) must be skipped"
    assert docs["nb.ipynb"] == "# My notebook\nSome notes.\n\n```python\nprint('hello')\n```"


def test_missing_or_empty_notes_folder_says_what_to_do(tmp_path):
    with pytest.raises(MissingData, match="NOTES_DIR"):
        rag.load_documents(tmp_path / "nope")
    with pytest.raises(MissingData, match="NOTES_DIR"):
        rag.load_documents(tmp_path)


def test_the_course_notes_are_twenty_files_with_sections():
    docs = rag.load_documents()
    assert len(docs) == 20 and all(d.source.endswith(".md") for d in docs)
    assert all(len(sections(d.text)) >= 3 for d in docs), "every note has a few '## ' sections"


# ------------------------------------------------------------------------------------------ question set


@pytest.fixture(scope="module")
def questions():
    return rag.load_questions()


def test_shipped_questions_point_at_real_passages(questions):
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]
    assert len(answerable) == 50 and len(unanswerable) >= 8
    notes = rag.notes_dir()
    for q in answerable:
        text = (notes / q.source).read_text()
        assert q.passage in text, f"{q.id}: passage not in {q.source}"
        assert q.heading in sections(text), f"{q.id}: heading {q.heading!r} not in {q.source}"
        assert q.passage in sections(text)[q.heading], f"{q.id}: passage is not under '## {q.heading}'"


def test_every_key_fact_is_stated_in_the_gold_section_and_the_gold_answer(questions):
    """A key fact nobody could read in the notes would make the answer metrics unfair."""
    for q in (q for q in questions if q.answerable):
        section = f" {normalize(sections((rag.notes_dir() / q.source).read_text())[q.heading])} "
        for fact in q.key_facts:
            options = [f" {normalize(o)} " for o in fact.split("|")]
            assert any(o in section for o in options), f"{q.id}: key fact {fact!r} is not in its gold section"
            assert any(o in f" {normalize(q.answer)} " for o in options), f"{q.id}: the gold answer lacks {fact!r}"


def test_unanswerable_questions_have_no_source_and_the_refusal_as_answer(questions):
    for q in (q for q in questions if not q.answerable):
        assert not (q.source or q.passage or q.key_facts), f"{q.id}: an unanswerable question has no gold passage"
        assert q.answer == "The notes do not say.", f"{q.id}: its gold answer is the lesson's refusal phrase"


def test_dev_questions_are_separate_from_the_test_questions(questions):
    dev = rag.load_questions(dev=True)
    assert {q.answerable for q in dev} == {True, False}, "the dev set calibrates a threshold: it needs both kinds"
    assert not {q.id for q in dev} & {q.id for q in questions}
    assert not {q.question for q in dev} & {q.question for q in questions}, "a dev question is also a test question"


def test_bad_question_file_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "?"}) + "\n")
    with pytest.raises(BadParameter, match="line 1"):
        rag.load_questions(path)
    path.write_text(json.dumps({"id": "a", "question": "?", "answer": "x", "source": "s", "heading": "h",
                                "passage": "p", "key_facts": []}) + "\n")
    with pytest.raises(BadParameter, match="key_facts"):
        rag.load_questions(path)
    path.write_text(json.dumps({"id": "a", "question": "?", "answer": "no", "answerable": False}) + "\n"
                    + json.dumps({"id": "a", "question": "??", "answer": "no", "answerable": False}) + "\n")
    with pytest.raises(BadParameter, match="unique"):
        rag.load_questions(path)
    with pytest.raises(MissingData, match="QUESTIONS_FILE"):
        rag.load_questions(tmp_path / "none.jsonl")


def test_gold_chunks_hold_the_passage_and_fall_back_to_the_heading():
    chunks = [Chunk("a.md#0", "a.md", "T > Part", "first half of the pass"),
              Chunk("a.md#1", "a.md", "T > Part", "age and the rest"),
              Chunk("a.md#2", "a.md", "T > Other", "the passage   and the REST, whole"),
              Chunk("b.md#0", "b.md", "T > Part", "the passage and the rest")]
    whole = rag.Question("q", "?", "x", source="a.md", heading="Part", passage="the passage and the rest",
                         key_facts=("x",))
    assert rag.relevant_chunks(whole, chunks) == {2}, "whitespace and case do not matter; other files do not count"
    cut = rag.Question("q", "?", "x", source="a.md", heading="Part", passage="the passage that was cut in two",
                       key_facts=("x",))
    assert rag.relevant_chunks(cut, chunks) == {0, 1}
    none = rag.Question("u", "?", "The notes do not say.", answerable=False)
    assert rag.gold_chunks([whole, none], chunks) == {"q": {2}, "u": set()}
    stray = rag.Question("x1", "?", "x", source="not_there.md", heading="Nowhere", passage="nothing", key_facts=("x",))
    with pytest.raises(BadParameter, match="QUESTIONS_FILE"):
        rag.gold_chunks([whole, stray], chunks)


# ------------------------------------------------------------------------------------------------- models


def test_bundled_embedder_is_the_hubs_file(monkeypatch):
    folder = rag.bundled_embedder_path()
    from course_utils.core.download import file_hash
    assert file_hash(folder / "model.safetensors") == rag.EMBEDDER_SHA256
    assert not list(folder.rglob("*.py")), "the model folder should hold no code"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config, "no remote code may be involved"
    modules = json.loads((folder / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.models.") for m in modules), \
        "sentence-transformers imports each module's 'type': only its own classes are acceptable"
    from course_utils.topics import spec

    monkeypatch.setattr(spec, "EMBEDDER_SHA256", "0" * 64)  # where bundled_embedder_path reads it
    with pytest.raises(MissingData, match="SHA-256"):
        rag.bundled_embedder_path()


def test_tiny_reranker_is_a_cross_encoder_that_says_it_is_random(tiny_cache):
    from course_utils.smoke.rag import tiny_cross_encoder_dir

    cross_encoder = rag.load_reranker(smoke=True, device="cpu")
    assert rag.is_random_reranker(cross_encoder)
    assert tiny_cross_encoder_dir() == tiny_cross_encoder_dir(), "built once, then reused"
    scores = cross_encoder.predict([("what is NF4?", "NF4 is a 4-bit type"), ("what is NF4?", "cats")],
                                   show_progress_bar=False)
    assert len(scores) == 2 and scores[0] != scores[1], "one score per (question, passage) pair"


@pytest.mark.parametrize("load", [lambda: rag.load_reranker(device="cpu"),
                                  lambda: rag.load_embedder("BAAI/bge-small-en-v1.5", device="cpu")],
                         ids=["reranker", "embedder"])
def test_hub_models_offline_fail_with_one_sentence(load, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CourseError, match="smoke mode"):
        load()
