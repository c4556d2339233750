"""recipes/rag.py: standalone (no course_utils), the same chunks, BM25, fusion and recall@5 as lesson 07, an index
that is written atomically and reused, and an answer with citations.

The lesson's algorithm is read from its cells tagged ``export`` (definitions only) and run here, next to the recipe's
functions, on the shipped notes.
"""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path

import nbformat
import numpy as np
import pytest

from course_utils.topics import rag

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "07_rag_assistant.ipynb"
RECIPE = ROOT / "recipes" / "rag.py"
QUESTIONS = ROOT / "datasets" / "course" / "rag_eval" / "questions.jsonl"


def lesson_namespace() -> dict:
    """The lesson's Setup imports, its parameters (full recipe) and its ``export`` cells, executed in one namespace."""
    nb = nbformat.read(LESSON, as_version=4)
    ns: dict = {}
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    setup = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("import math"))
    imports = [node for node in ast.parse(setup.source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), "lesson-setup", "exec"), ns)
    exec(params.source.split("\nif SMOKE:")[0], ns)
    for cell in nb.cells:
        if "export" in cell.metadata.get("tags", []):
            exec(cell.source, ns)
    return ns


@pytest.fixture(scope="module")
def lesson():
    return lesson_namespace()


@pytest.fixture(scope="module")
def recipe():
    return runpy.run_path(str(RECIPE), run_name="rag_recipe")   # functions only: main() does not run


def test_recipe_imports_no_course_code():
    tree = ast.parse(RECIPE.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [m for m in modules if m.startswith("course_utils")], "a recipe imports only pip packages"


def test_lesson_and_recipe_cut_the_same_chunks(lesson, recipe):
    docs = rag.load_documents()
    mine = [(c.id, c.source, c.heading, c.text) for c in lesson["chunk_documents"](docs, 600, 150)]
    theirs = [(c.id, c.source, c.heading, c.text) for c in recipe["chunk_documents"]([(d.source, d.text) for d in docs], 600, 150)]
    assert mine == theirs, "recipes/rag.py and the lesson chunk the notes differently: copy the lesson's cells again"
    for size, overlap in ((300, 80), (1500, 300)):
        assert [c.text for c in lesson["chunk_documents"](docs, size, overlap)] == \
            [c.text for c in recipe["chunk_documents"]([(d.source, d.text) for d in docs], size, overlap)]
    with pytest.raises(ValueError):
        lesson["chunk_text"]("Some text.", 100, 100)


def test_lesson_bm25_and_fusion_equal_the_recipes(lesson, recipe):
    from rank_bm25 import BM25Okapi

    chunks = lesson["chunk_documents"](rag.load_documents(), 600, 150)
    texts = [c.indexed_text for c in chunks]
    ours, library = lesson["BM25"](texts), BM25Okapi([recipe["tokenize"](t) for t in texts])
    for q in rag.load_questions():
        assert np.allclose(ours.scores(q.question), library.get_scores(recipe["tokenize"](q.question))), q.id
    toy = ["gpu memory", "gpu speed", "gpu cost", "cats and dogs"]   # 'gpu' in 3 of 4: idf < 0, floored
    assert np.allclose(lesson["BM25"](toy).scores("gpu cost"), BM25Okapi([recipe["tokenize"](t) for t in toy]).get_scores(["gpu", "cost"]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        lists = [list(rng.permutation(30)[:12]) for _ in range(2)]
        assert lesson["reciprocal_rank_fusion"](lists, 60) == recipe["reciprocal_rank_fusion"](lists, 60)
    assert recipe["build_messages"]("q?", chunks[:2]) == lesson["build_messages"]("q?", chunks[:2])
    assert recipe["extract_citations"]("a [2] b [1, 3] [Source 4]") == lesson["extract_citations"]("a [2] b [1, 3] [Source 4]")


def test_recipe_builds_reuses_and_matches_the_lessons_recall(run_recipe, lesson, tmp_path):
    from sentence_transformers import SentenceTransformer

    from course_utils.smoke.llm import tiny_llm_dir

    embedder_path = rag.bundled_embedder_path()
    # the lesson's hybrid recall@5, computed with the lesson's own functions
    ns = lesson
    questions = rag.load_questions()
    ns["chunks"] = ns["chunk_documents"](rag.load_documents(), ns["CHUNK_CHARS"], ns["CHUNK_OVERLAP"])
    ns["gold"] = rag.gold_chunks(questions, ns["chunks"])
    ns["embedder"] = SentenceTransformer(str(embedder_path), device="cpu", local_files_only=True)
    vectors = ns["embed"]([c.indexed_text for c in ns["chunks"]])
    ns["index"] = ns["faiss"].IndexFlatIP(vectors.shape[1])
    ns["index"].add(vectors)
    ns["bm25"] = ns["BM25"]([c.indexed_text for c in ns["chunks"]])
    answerable = [q for q in questions if q.answerable]
    lesson_hybrid, _ = ns["evaluate"](ns["hybrid_search"], answerable)

    index_dir, out = tmp_path / "index", tmp_path / "out"
    common = ("--notes", rag.notes_dir(), "--embedder", embedder_path, "--index_dir", index_dir, "--top_k", "5")
    first = run_recipe("rag.py", *common, "--eval", QUESTIONS, "--output_dir", out,
                       "--llm", tiny_llm_dir(), "--question", "What is NF4?", "--max_new_tokens", "8")
    metrics = json.loads((out / "metrics.json").read_text())
    assert "built index" in first.stdout and not metrics["index_reused"]
    assert metrics["n_chunks"] == len(ns["chunks"]) and metrics["n_questions"] == len(answerable)
    assert metrics["hybrid"]["recall@5"] == pytest.approx(lesson_hybrid["recall@5"]), \
        "the recipe's hybrid recall@5 differs from the lesson's: same chunks, same fusion should give the same figure"
    assert metrics["hybrid"]["MRR"] == pytest.approx(lesson_hybrid["MRR"])
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
