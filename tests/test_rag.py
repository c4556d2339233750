"""course_utils.topics.rag: ingest, chunking, retrieval, fusion, metrics, citations, and the shipped notes + questions."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from course_utils.topics import rag
from course_utils.core.errors import BadParameter, CourseError, MissingData

PROSE = ("Alpha one is the first sentence here. Beta two follows it closely. Gamma three adds a third idea. "
         "Delta four keeps going on. Epsilon five is nearly the end. Zeta six closes the paragraph.")


# ----------------------------------------------------------------------------------------------- chunking


def test_chunks_respect_size_and_keep_sentences_whole():
    sentences = re.split(r"(?<=\.) ", PROSE)
    chunks = rag.chunk_text(PROSE, chunk_chars=80, overlap_chars=40)
    assert len(chunks) > 2 and all(len(c) <= 80 for c in chunks)
    for sentence in sentences:
        assert any(sentence in c for c in chunks), f"sentence cut in two: {sentence!r}"


def test_overlap_repeats_the_last_sentences_of_the_previous_chunk():
    chunks = rag.chunk_text(PROSE, chunk_chars=80, overlap_chars=40)
    for a, b in zip(chunks, chunks[1:]):
        first = re.split(r"(?<=\.) ", b)[0]
        assert a.endswith(first), f"chunk {b!r} should start with the end of {a!r}"
    no_overlap = rag.chunk_text(PROSE, chunk_chars=80, overlap_chars=0)
    assert sum(map(len, no_overlap)) < sum(map(len, chunks))
    assert all(not a.endswith(re.split(r"(?<=\.) ", b)[0]) for a, b in zip(no_overlap, no_overlap[1:]))


def test_code_blocks_keep_their_lines():
    body = "Some prose here.\n\n```python\nx = 1\ny = 2\n```"
    (chunk,) = rag.chunk_text(body, chunk_chars=200, overlap_chars=20)
    assert "```python\nx = 1\ny = 2\n```" in chunk


@pytest.mark.parametrize("size, overlap", [(100, 100), (100, 150), (0, 0), (100, -1)])
def test_bad_chunk_parameters_are_a_course_error(size, overlap):
    with pytest.raises(BadParameter, match="CHUNK_CHARS"):
        rag.chunk_text(PROSE, size, overlap)


def test_sections_follow_headings_but_not_comments_in_code():
    text = "# Title\nintro\n## Part A\ntext a\n```python\n# a comment, not a heading\n```\n### Deep\ndeep text\n## Part B\ntext b"
    sections = dict(rag.split_sections(text))
    assert list(sections) == ["Title", "Title > Part A", "Title > Part A > Deep", "Title > Part B"]
    assert "# a comment, not a heading" in sections["Title > Part A"]


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


# ------------------------------------------------------------------------------- the shipped notes + questions


@pytest.fixture(scope="module")
def corpus():
    chunks = rag.chunk_documents(rag.load_documents(), 600, 150)
    questions = rag.load_questions()
    return chunks, questions, rag.check_questions(questions, chunks)


def test_shipped_questions_point_at_real_passages(corpus):
    chunks, questions, gold = corpus
    assert 20 <= len(questions) <= 60
    assert len({q.id for q in questions}) == len(questions), "question ids must be unique"
    notes = rag.notes_dir()
    for q in questions:
        text = (notes / q.source).read_text()
        assert q.passage in text, f"{q.id}: passage not in {q.source}"
        assert f"## {q.heading}\n" in text, f"{q.id}: heading {q.heading!r} not in {q.source}"
        assert any(q.passage in chunks[i].text for i in gold[q.id]), f"{q.id}: the default chunking cuts its passage"


def test_questions_about_missing_files_are_a_course_error(corpus):
    chunks, questions, _ = corpus
    stray = rag.Question("x1", "?", "not_there.md", "Nowhere", "nothing")
    with pytest.raises(BadParameter, match="QUESTIONS_FILE"):
        rag.check_questions([*questions, stray], chunks)


def test_bad_question_file_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "?"}) + "\n")
    with pytest.raises(BadParameter, match="line 1"):
        rag.load_questions(path)
    with pytest.raises(MissingData, match="QUESTIONS_FILE"):
        rag.load_questions(tmp_path / "none.jsonl")


def test_relevance_falls_back_to_the_heading_when_a_passage_is_cut():
    chunks = [rag.Chunk("a.md#0", "a.md", "T > Part", "first half of the pass"),
              rag.Chunk("a.md#1", "a.md", "T > Part", "age and the rest"),
              rag.Chunk("a.md#2", "a.md", "T > Other", "unrelated")]
    q = rag.Question("q", "?", "a.md", "Part", "the passage and the rest")
    assert rag.relevant_chunks(q, chunks) == {0, 1}


def test_bm25_finds_an_exact_error_string(corpus):
    chunks, _, _ = corpus
    (top, score), *_ = rag.BM25Index(chunks).search("CUBLAS_STATUS_NOT_SUPPORTED", 3)
    assert chunks[top].source == "lab_journal.md" and score > 0


# ------------------------------------------------------------------------------------------ fusion, metrics


def test_reciprocal_rank_fusion_matches_the_formula():
    fused = dict(rag.reciprocal_rank_fusion([[7, 3, 5], [3, 9, 7]], k=60))
    assert fused[3] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[7] == pytest.approx(1 / 61 + 1 / 63)
    assert fused[9] == pytest.approx(1 / 62)
    assert rag.reciprocal_rank_fusion([[7, 3, 5], [3, 9, 7]])[0][0] == 3


def test_recall_and_mrr_on_known_ranks():
    metrics = rag.retrieval_metrics([1, 2, None, 4], ks=(1, 3, 5))
    assert metrics == pytest.approx({"recall@1": 0.25, "recall@3": 0.5, "recall@5": 0.75, "MRR": (1 + 1 / 2 + 1 / 4) / 4})
    assert rag.first_relevant_rank([5, 9, 2], {2, 9}) == 2
    with pytest.raises(BadParameter):
        rag.retrieval_metrics([])


# ----------------------------------------------------------------------------------------------- citations


def test_citations_are_parsed_and_mapped_to_chunks():
    assert rag.extract_citations("A [2], b [1, 3] and [2] again [Source 4]; not [x] or [].") == [2, 1, 3, 4]
    chunks = [rag.Chunk(f"f.md#{n}", "f.md", "H", f"text {n}") for n in range(5)]
    context = [4, 0, 2]  # the prompt's sources [1], [2], [3]
    right = rag.check_citations("Yes [2].", context, chunks, relevant={0})
    assert right.cites_right_chunk and right.cited_chunk_ids == ("f.md#0",) and right.context_has_answer
    wrong = rag.check_citations("Yes [1] [7].", context, chunks, relevant={0})
    assert not wrong.cites_right_chunk and wrong.invalid == 1 and wrong.valid == (1,)
    missed = rag.check_citations("No citation.", [4, 2], chunks, relevant={0})
    assert not missed.context_has_answer and missed.cited == ()


def test_prompt_numbers_the_sources_and_shows_where_they_come_from():
    chunks = [rag.Chunk("f.md#0", "f.md", "T > H", "alpha"), rag.Chunk("g.md#3", "g.md", "U", "beta")]
    system, user = rag.build_messages("why?", chunks)
    assert system["role"] == "system" and "[1]" in system["content"]
    assert "[1] f.md — T > H\nalpha" in user["content"] and "[2] g.md — U\nbeta" in user["content"]
    assert user["content"].rstrip().endswith("Answer with citations:") and "Question: why?" in user["content"]


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
    monkeypatch.setattr(rag, "EMBEDDER_SHA256", "0" * 64)
    with pytest.raises(MissingData, match="SHA-256"):
        rag.bundled_embedder_path()


@pytest.fixture(scope="module")
def dense(corpus):
    chunks, _, _ = corpus
    return rag.DenseIndex(chunks, rag.load_embedder(device="cpu"))


def test_dense_retrieval_matches_meaning_not_words(corpus, dense):
    chunks, questions, gold = corpus
    top, _ = dense.search("running out of VRAM", 1)[0]
    assert chunks[top].source == "out_of_memory.md"
    bm25_metrics, _ = rag.evaluate_retriever(rag.BM25Index(chunks), questions, gold)
    dense_metrics, _ = rag.evaluate_retriever(dense, questions, gold)
    hybrid_metrics, _ = rag.evaluate_retriever(rag.HybridIndex(rag.BM25Index(chunks), dense), questions, gold)
    # measured on the shipped set: BM25 MRR 0.83, dense 0.91, hybrid recall@5 1.00
    assert dense_metrics["MRR"] > bm25_metrics["MRR"]
    assert hybrid_metrics["recall@5"] >= max(bm25_metrics["recall@5"], 0.95)


def test_tiny_reranker_reorders_candidates_and_says_it_is_random(corpus, dense):
    chunks, _, _ = corpus
    cross_encoder = rag.load_reranker(smoke=True, device="cpu")
    assert rag.is_random_reranker(cross_encoder)
    first = rag.HybridIndex(rag.BM25Index(chunks), dense)
    hits = rag.Reranked(first, cross_encoder, chunks, candidates=10).search("what is NF4?", 10)
    assert {i for i, _ in hits} == {i for i, _ in first.search("what is NF4?", 10)}
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


@pytest.mark.parametrize("load", [lambda: rag.load_reranker(device="cpu"),
                                  lambda: rag.load_embedder("BAAI/bge-small-en-v1.5", device="cpu")],
                         ids=["reranker", "embedder"])
def test_hub_models_offline_fail_with_one_sentence(load, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CourseError, match="smoke mode"):
        load()
