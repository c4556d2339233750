"""recipes/rag.py: standalone (no course_utils), reading the notes as the course does, chunks within their budget,
an index that is written atomically and reused, lesson 07's hybrid recall@5 target met, and an answer with citations.

The code the recipe shares with lesson 07 (sections, chunking, the BM25 tokenizer, fusion, the prompt, citations) is
held to the lesson's cells by the copy checker (tests/test_copies.py); this file tests what the recipe does.
"""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from course_utils.runner.lessons import lesson_meta
from course_utils.topics import rag

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "07_rag_assistant.ipynb"
RECIPE = ROOT / "recipes" / "rag.py"
QUESTIONS = ROOT / "datasets" / "course" / "rag_eval" / "questions.jsonl"


@pytest.fixture(scope="module")
def recipe():
    return runpy.run_path(str(RECIPE), run_name="rag_recipe")   # functions only: main() does not run


def test_recipe_imports_no_course_code():
    tree = ast.parse(RECIPE.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [m for m in modules if m.startswith("course_utils")], "a recipe imports only pip packages"


def test_recipe_reads_the_notes_as_the_course_does_and_chunks_within_budget(recipe):
    docs = recipe["read_notes"](rag.notes_dir())
    assert docs == [(d.source, d.text) for d in rag.load_documents()], "the recipe reads the notes differently"
    for size, overlap in ((600, 150), (300, 80)):
        chunks = recipe["chunk_documents"](docs, size, overlap)
        assert chunks and all(0 < len(c.text) <= size for c in chunks)
        for source, _ in docs:
            assert [c.id for c in chunks if c.source == source] == \
                [f"{source}#{n}" for n in range(sum(c.source == source for c in chunks))]
        words = {w for c in chunks for w in c.text.split()}
        assert {w for _, text in docs for _, body in recipe["split_sections"](text) for w in body.split()} <= words, \
            "a word of the notes is in no chunk"
    with pytest.raises(ValueError, match="--chunk_overlap"):
        recipe["chunk_text"]("Some text.", 100, 100)


def test_recipe_builds_reuses_and_meets_the_lessons_recall(run_recipe, recipe, tmp_path):
    from course_utils.smoke.llm import tiny_llm_dir

    embedder_path = rag.bundled_embedder_path()
    # lesson 07's smoke target for hybrid recall@5 (the same bundled embedder, notes and questions)
    target = lesson_meta(LESSON)["targets"]["smoke"]["recall_at_5_hybrid"]
    assert target[0] == ">="
    chunks = recipe["chunk_documents"](recipe["read_notes"](rag.notes_dir()))
    answerable = [q for q in rag.load_questions() if q.answerable]

    index_dir, out = tmp_path / "index", tmp_path / "out"
    common = ("--notes", rag.notes_dir(), "--embedder", embedder_path, "--index_dir", index_dir, "--top_k", "5")
    first = run_recipe("rag.py", *common, "--eval", QUESTIONS, "--output_dir", out,
                       "--llm", tiny_llm_dir(), "--question", "What is NF4?", "--max_new_tokens", "8")
    metrics = json.loads((out / "metrics.json").read_text())
    assert "built index" in first.stdout and not metrics["index_reused"]
    assert metrics["n_chunks"] == len(chunks) and metrics["n_questions"] == len(answerable)
    assert metrics["hybrid"]["recall@5"] >= target[1], \
        f"the recipe's hybrid recall@5 {metrics['hybrid']['recall@5']:.2f} misses lesson 07's target {target[1]}"
    assert metrics["hybrid"]["recall@5"] >= metrics["bm25"]["recall@5"]
    assert "Q: What is NF4?" in first.stdout and "[1] quantization.md#" in first.stdout, "sources listed with their chunks"
    assert sorted(p.name for p in index_dir.iterdir()) == ["chunks.jsonl", "meta.json", "vectors.faiss"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name], "no temporary folder left"

    # the index reloads: a second run reuses it (no re-embedding) and gives the same metrics and sources
    stamp = (index_dir / "vectors.faiss").stat().st_mtime_ns
    second = run_recipe("rag.py", *common, "--eval", QUESTIONS, "--output_dir", out, "--llm", "none",
                        "--question", "What is NF4?")
    again = json.loads((out / "metrics.json").read_text())
    assert "reusing index" in second.stdout and again["index_reused"]
    assert (index_dir / "vectors.faiss").stat().st_mtime_ns == stamp, "a current index must not be rewritten"
    assert {k: again[k] for k in ("bm25", "dense", "hybrid")} == {k: metrics[k] for k in ("bm25", "dense", "hybrid")}
    assert "A: NF4 is a 4-bit data type" in second.stdout and " *[1] quantization.md#" in second.stdout, \
        "the extractive answer quotes the NF4 sentence and cites source 1"


def test_index_is_rebuilt_when_notes_or_settings_change(recipe, tmp_path):
    import argparse

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# A\n## One\nAlpha beta gamma. Delta epsilon.")
    args = argparse.Namespace(embedder="some/model", chunk_chars=600, chunk_overlap=150)
    meta = recipe["index_meta"](recipe["read_notes"](notes), args)
    index_dir = tmp_path / "index"
    chunks = recipe["chunk_documents"](recipe["read_notes"](notes))
    recipe["write_index"](index_dir, chunks, np.eye(len(chunks), 4, dtype="float32"), meta)
    assert recipe["index_is_current"](index_dir, meta)
    reloaded, index = recipe["read_index"](index_dir)
    assert reloaded == chunks and index.ntotal == len(chunks)
    args.chunk_chars = 300
    assert not recipe["index_is_current"](index_dir, recipe["index_meta"](recipe["read_notes"](notes), args))
    (notes / "a.md").write_text("# A\n## One\nAlpha beta gamma. Changed.")
    args.chunk_chars = 600
    assert not recipe["index_is_current"](index_dir, recipe["index_meta"](recipe["read_notes"](notes), args))
    (index_dir / "meta.json").write_text("{broken")
    assert not recipe["index_is_current"](index_dir, meta)
    recipe["write_index"](index_dir, chunks, np.eye(len(chunks), 4, dtype="float32"), meta)   # replaces the old one
    assert recipe["index_is_current"](index_dir, meta)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_recipe_help_explains_the_flags(run_recipe):
    out = run_recipe("rag.py", "--help").stdout
    for flag in ("--notes", "--question", "--embedder", "--llm", "--top_k", "--index_dir", "--eval"):
        assert flag in out


def test_recipe_pins_the_courses_commits(recipe):
    from course_utils.topics import llm

    assert recipe["PINNED"] == {llm.UNGATED_MODEL_ID: llm.UNGATED_REVISION, rag.EMBEDDER_ID: rag.EMBEDDER_REVISION,
                                rag.RERANKER_ID: rag.RERANKER_REVISION}
    assert recipe["pinned"](rag.EMBEDDER_ID, None) == rag.EMBEDDER_REVISION
    assert recipe["pinned"](rag.EMBEDDER_ID, "f" * 40) == "f" * 40 and recipe["pinned"]("./my_model", None) is None
