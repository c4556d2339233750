#!/usr/bin/env python
"""Answer questions from your own notes, with citations (lesson 07 of the course, as one script).

Reads every ``.md`` and ``.ipynb`` file under ``--notes`` (notebooks: markdown cells, and code cells as fenced
blocks, outputs dropped), splits them at headings and then sentence by sentence into overlapping chunks, and indexes
them twice: BM25 over the words (rank-bm25) and unit-length sentence embeddings in a FAISS inner-product index
(= cosine similarity). A question is searched both ways, the two rankings are fused by reciprocal rank fusion
(1 / (60 + rank)), optionally reordered by a cross-encoder (``--reranker``), and the ``--top_k`` chunks are numbered
in the prompt of a chat model that answers with citations [1], [2], ... or says "The notes do not say."

    python rag.py --notes ~/notes --index_dir ~/notes/.rag_index \\
        --embedder sentence-transformers/all-MiniLM-L6-v2 --llm Qwen/Qwen2.5-7B-Instruct --load_in_4bit \\
        --top_k 5 --question "What is NF4?"
    python rag.py --notes ~/notes --index_dir ~/notes/.rag_index --eval questions.jsonl   # recall@k, MRR

The index (``chunks.jsonl``, ``vectors.faiss``, ``meta.json``) is built once and reused while the notes, the chunking
and the embedder are unchanged; it is written to a temporary folder and swapped in, so an interrupted build never
leaves a half-written index. ``--eval`` reads JSONL lines ``{"id", "question", "source", "heading", "passage"}``
(``"answerable": false`` lines are skipped) and writes recall@1/3/5/10 and MRR for BM25, dense, hybrid (and
reranked) retrieval to ``<output_dir>/metrics.json``. ``--llm none`` answers without a language model: the sentence
of the retrieved chunks closest to the question, or the refusal when none is close enough (``--abstain_below``).

Needs only pip packages: sentence-transformers, rank-bm25, faiss-cpu, transformers, torch (bitsandbytes for 4-bit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

# Copied from notebooks/07_rag_assistant.ipynb#1f5593e0:ABSTAIN
ABSTAIN = "The notes do not say."
# Copied from notebooks/07_rag_assistant.ipynb#1f5593e0:SYSTEM_PROMPT
SYSTEM_PROMPT = ("You answer questions about the user's notes using only the numbered sources given. After each "
                 "claim, cite the source it comes from as [1], [2], ... If the sources do not contain the answer, "
                 f"reply exactly: {ABSTAIN}")
INDEX_FORMAT = 1

# ------------------------------------------------------------------------------------------- reading notes


def notebook_to_markdown(path):
    """A notebook's text: markdown cells as they are, code cells as fenced python blocks, outputs left out."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        source = cell.get("source", [])
        source = ("".join(source) if isinstance(source, list) else source).strip()
        if source and cell.get("cell_type") == "markdown":
            parts.append(source)
        elif source and cell.get("cell_type") == "code":
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts)


def read_notes(folder):
    """[(path relative to folder, markdown text), ...] for every .md / .ipynb file (hidden folders skipped)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--notes {root}: no such folder")
    paths = sorted({p for pattern in ("*.md", "*.ipynb") for p in root.rglob(pattern)
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)})
    docs = []
    for path in paths:
        text = notebook_to_markdown(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
        if text.strip():
            docs.append((path.relative_to(root).as_posix(), text))
    if not docs:
        raise SystemExit(f"--notes {root}: no .md or .ipynb file with text")
    return docs


# ------------------------------------------------------------------------------------------------ chunking
# Copied from notebooks/07_rag_assistant.ipynb#23ccd188:HEADING
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# A piece ends at a line break or after . ! ? followed by a capital: sentences in prose, lines in code and lists.
# Copied from notebooks/07_rag_assistant.ipynb#d6e3fdc5:PIECE_END
PIECE_END = re.compile(r"(\n+|(?<=[.!?])[ \t]+(?=[A-Z`\"'(\[]))")


# Copied from notebooks/07_rag_assistant.ipynb#23ccd188:split_sections
def split_sections(text):
    """Markdown -> [(heading chain, body), ...], split at headings; '#' lines inside ``` fences are code."""
    sections, chain, body, in_code = [], [], [], False

    def close_section():
        if "".join(body).strip():
            sections.append((" > ".join(title for _, title in chain), "\n".join(body).strip()))
        body.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else HEADING.match(line)
        if heading:
            close_section()
            level = len(heading.group(1))
            chain = [(lvl, title) for lvl, title in chain if lvl < level] + [(level, heading.group(2))]
        else:
            body.append(line)
    close_section()
    return sections


# Copied from notebooks/07_rag_assistant.ipynb#d6e3fdc5:chunk_text with CHUNK_OVERLAP->--chunk_overlap, CHUNK_CHARS->--chunk_chars
def chunk_text(body, chunk_chars=600, overlap_chars=150):
    """Pack sentences into chunks of at most chunk_chars; each chunk starts with the last whole sentences
    (up to overlap_chars) of the one before."""
    if chunk_chars <= 0 or not 0 <= overlap_chars < chunk_chars:
        raise ValueError(f"need 0 <= --chunk_overlap < --chunk_chars, got {overlap_chars} and {chunk_chars}")
    parts = PIECE_END.split(body)   # [piece, separator, piece, separator, ..., piece]
    pieces = [(parts[0], "")] + list(zip(parts[2::2], parts[1::2]))   # (text, separator before it)
    pieces = [(text[i:i + chunk_chars], sep if i == 0 else "")   # a piece longer than a chunk is cut
              for text, sep in pieces for i in range(0, len(text), chunk_chars)]

    def joined(run):
        return run[0][0] + "".join(sep + text for text, sep in run[1:])

    chunks, current = [], []
    for piece in pieces:
        if current and len(joined(current + [piece])) > chunk_chars:
            chunks.append(joined(current))
            overlap = []   # carry whole pieces over, newest first, within the overlap budget
            for previous in reversed(current):
                if len(joined([previous] + overlap)) > overlap_chars or len(joined([previous] + overlap + [piece])) > chunk_chars:
                    break
                overlap.insert(0, previous)
            current = overlap
        current.append(piece)
    if current:
        chunks.append(joined(current))
    return chunks


# Copied from notebooks/07_rag_assistant.ipynb#1cbcd233:Chunk with NOTES_DIR->--notes
@dataclass(frozen=True)
class Chunk:
    id: str        # "file.md#3": the 4th chunk of file.md
    source: str    # the file, relative to --notes
    heading: str   # the chain of headings above it
    text: str

    @property
    def indexed_text(self):
        """What the retrievers see: the heading line, then the text (headings carry the topic)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def chunk_documents(docs, chunk_chars=600, overlap_chars=150):
    """docs: [(source, text)] -> [Chunk]: split each at its headings, then each section into overlapping chunks."""
    chunks = []
    for source, text in docs:
        pieces = [(heading, piece) for heading, body in split_sections(text)
                  for piece in chunk_text(body, chunk_chars, overlap_chars)]
        chunks += [Chunk(f"{source}#{n}", source, heading, piece) for n, (heading, piece) in enumerate(pieces)]
    return chunks


# ----------------------------------------------------------------------------------------------- the index
# Copied from notebooks/07_rag_assistant.ipynb#17006902:STOPWORDS
STOPWORDS = frozenset("""a an and are as at be but by do does for from has have how i if in into is it its me my
no not of on or so such than that the their then there these they this to was what when where which while who why
will with you your can should""".split())


# Copied from notebooks/07_rag_assistant.ipynb#17006902:tokenize
def tokenize(text):
    """BM25's view of a text: lower-case words and numbers, stop words dropped."""
    return [t for t in re.findall(r"[a-z0-9_]+", text.lower()) if t not in STOPWORDS]


def embed(embedder, texts, batch_size=32):
    """Unit-length embeddings (float32 rows): inner product = cosine similarity."""
    import numpy as np

    vectors = embedder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype="float32")


def index_meta(docs, args):
    """What the index depends on: the notes' contents, the chunking and the embedder."""
    digest = hashlib.sha256()
    for source, text in docs:
        digest.update(source.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
    return {"format": INDEX_FORMAT, "notes_sha256": digest.hexdigest(), "embedder": args.embedder,
            "chunk_chars": args.chunk_chars, "chunk_overlap": args.chunk_overlap}


def index_is_current(index_dir, meta):
    index_dir = Path(index_dir)
    try:
        saved = json.loads((index_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == meta and (index_dir / "chunks.jsonl").is_file() and (index_dir / "vectors.faiss").is_file()


def write_index(index_dir, chunks, vectors, meta):
    """Write the index into a temporary folder next to index_dir, then swap it in (never a half-written index)."""
    import faiss

    index_dir = Path(index_dir).expanduser().resolve()
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.tmp-", dir=index_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it private; the index gets the usual permissions
    try:
        with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in chunks)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        faiss.write_index(index, str(tmp / "vectors.faiss"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = None
        if index_dir.exists():
            old = index_dir.with_name(f".{index_dir.name}.old-{os.getpid()}")
            os.replace(index_dir, old)
        os.replace(tmp, index_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_index(index_dir):
    import faiss

    index_dir = Path(index_dir)
    chunks = [Chunk(**json.loads(line)) for line in (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    index = faiss.read_index(str(index_dir / "vectors.faiss"))
    if index.ntotal != len(chunks):
        raise SystemExit(f"{index_dir}: {index.ntotal} vectors for {len(chunks)} chunks; delete the folder to rebuild")
    return chunks, index


# ----------------------------------------------------------------------------------------------- retrieval


# Copied from notebooks/07_rag_assistant.ipynb#c96d5f52:reciprocal_rank_fusion
def reciprocal_rank_fusion(rankings, k=60):
    """[[chunk ids, best first], ...] -> [(chunk id, fused score), ...], best first (ties: lower id first)."""
    fused = defaultdict(float)
    for ranking in rankings:
        for rank, i in enumerate(ranking, 1):
            fused[i] += 1 / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


class Retriever:
    """BM25 + dense (FAISS) fused by RRF, optionally reranked by a cross-encoder. search() -> [(chunk id, score)]."""

    def __init__(self, chunks, index, embedder, cross_encoder=None, fusion_depth=50, rrf_k=60, candidates=20):
        from rank_bm25 import BM25Okapi

        self.chunks, self.index, self.embedder, self.cross_encoder = chunks, index, embedder, cross_encoder
        self.fusion_depth, self.rrf_k, self.candidates = fusion_depth, rrf_k, candidates
        self.bm25 = BM25Okapi([tokenize(c.indexed_text) for c in chunks])
        self.query_vectors = {}

    def prepare(self, questions):
        """Embed many questions in one batch (an evaluation) instead of one call each."""
        new = [q for q in dict.fromkeys(questions) if q not in self.query_vectors]
        if new:
            self.query_vectors.update(zip(new, embed(self.embedder, new)))

    def query_vector(self, question):
        self.prepare([question])
        return self.query_vectors[question]

    def bm25_search(self, question, k=10):
        import numpy as np

        scores = self.bm25.get_scores(tokenize(question))
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in top]

    def dense_search(self, question, k=10):
        scores, ids = self.index.search(self.query_vector(question)[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def hybrid_search(self, question, k=10):
        rankings = [[i for i, _ in search(question, self.fusion_depth)] for search in (self.bm25_search, self.dense_search)]
        return reciprocal_rank_fusion(rankings, self.rrf_k)[:k]

    def rerank_search(self, question, k=10):
        import numpy as np

        ids = [i for i, _ in self.hybrid_search(question, self.candidates)]
        scores = self.cross_encoder.predict([(question, self.chunks[i].indexed_text) for i in ids], batch_size=32,
                                            show_progress_bar=False)
        order = np.argsort(-np.asarray(scores), kind="stable")   # ties keep the first stage's order
        return [(ids[j], float(scores[j])) for j in order[:k]]

    def search(self, question, k=10):
        return (self.rerank_search if self.cross_encoder is not None else self.hybrid_search)(question, k)


# ---------------------------------------------------------------------------------------------- evaluation


# Copied from course_utils/topics/rag.py:_squash
def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def relevant_chunks(row, chunks):
    """Chunks of the right file that contain the passage; if the chunking cut it, those under the right heading."""
    same_file = [i for i, c in enumerate(chunks) if c.source == row["source"]]
    found = {i for i in same_file if _squash(row["passage"]) in _squash(chunks[i].text)}
    return found or {i for i in same_file if chunks[i].heading.lower().split(" > ")[-1] == row["heading"].strip().lower()}


def evaluate(retriever, questions_path, ks=(1, 3, 5, 10)):
    """recall@k and MRR of each retriever over the answerable questions of a JSONL file."""
    import numpy as np

    rows = [json.loads(line) for line in Path(questions_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("answerable", True)]
    if not rows:
        raise SystemExit(f"--eval {questions_path}: no answerable questions")
    gold = [relevant_chunks(r, retriever.chunks) for r in rows]
    missing = [r["id"] for r, g in zip(rows, gold) if not g]
    if missing:
        raise SystemExit(f"--eval: the passages of {missing[:5]} are in no chunk of --notes")
    retriever.prepare([r["question"] for r in rows])
    searches = {"bm25": retriever.bm25_search, "dense": retriever.dense_search, "hybrid": retriever.hybrid_search}
    if retriever.cross_encoder is not None:
        searches["reranked"] = retriever.rerank_search
    metrics = {"n_questions": len(rows)}
    for name, search in searches.items():
        ranks = []
        for r, relevant in zip(rows, gold):
            ranked = [i for i, _ in search(r["question"], max(ks))]
            ranks.append(next((n for n, i in enumerate(ranked, 1) if i in relevant), None))
        metrics[name] = {f"recall@{k}": float(np.mean([x is not None and x <= k for x in ranks])) for k in ks}
        metrics[name]["MRR"] = float(np.mean([1 / x if x else 0.0 for x in ranks]))
    return metrics


# ------------------------------------------------------------------------------------------------ answering


# Copied from notebooks/07_rag_assistant.ipynb#1f5593e0:build_messages
def build_messages(question, context):
    """Chat messages: numbered sources (file and heading shown), then the question."""
    sources = [f"[{n}] {c.source} — {c.heading}\n{c.text}" for n, c in enumerate(context, 1)]
    user = "Sources:\n\n" + "\n\n".join(sources) + f"\n\nQuestion: {question}\nAnswer with citations:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# Copied from notebooks/07_rag_assistant.ipynb#1f5593e0:CITATION
CITATION = re.compile(r"\[(?:sources?\s*)?(\d+(?:\s*,\s*\d+)*)\]", re.IGNORECASE)


# Copied from notebooks/07_rag_assistant.ipynb#1f5593e0:extract_citations
def extract_citations(answer):
    """Source numbers cited as [2], [1, 3] or [Source 2], in order of first appearance."""
    numbers = [int(n) for group in CITATION.findall(answer) for n in group.split(",")]
    return list(dict.fromkeys(numbers))


def extractive_answer(retriever, question, context_ids, threshold):
    """No language model: the context's sentence closest to the question, with its citation, or the refusal."""
    candidates = [(n, p.strip()) for n, i in enumerate(context_ids, 1)
                  for p in PIECE_END.split(retriever.chunks[i].text)[::2] if len(p.split()) >= 4]
    if not candidates:
        return ABSTAIN
    similarity = embed(retriever.embedder, [s for _, s in candidates]) @ retriever.query_vector(question)
    best = int(similarity.argmax())
    return ABSTAIN if similarity[best] < threshold else f"{candidates[best][1]} [{candidates[best][0]}]"


# Copied from course_utils/core/gpu.py:bf16_native
def bf16_native(device: object = None) -> bool:
    """The course's one bf16 rule: bf16 only where the card computes it natively, compute capability 8.0 (Ampere) or
    newer. ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or an RTX 20xx (it counts emulation), where bf16
    is slow and Ultralytics refuses it; those cards get fp16 with a gradient scaler. ``device`` is a CUDA device (index,
    ``"cuda:1"``, ``torch.device``) or None for the current one; a CPU device, or no GPU, is False."""
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type != "cuda":
            return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


#: Hub commits the course pins (the same as course_utils' pins); another model's commit comes from its --*_revision flag.
PINNED = {"Qwen/Qwen2.5-7B-Instruct": "a09a35458c702b33eeacc393d103063234e8bc28",
          "sentence-transformers/all-MiniLM-L6-v2": "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
          "cross-encoder/ms-marco-MiniLM-L6-v2": "233902d25c440f23af6f7d6e94d2946bac0bee0a"}


def pinned(name, revision):
    """The commit to load ``name`` at: the one given, else the course's pin (None for a local folder or another model,
    which then loads the hub's "main")."""
    return revision or PINNED.get(name)


def load_llm(name, load_in_4bit, bf16, revision=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    # --bf16 where the card computes it natively; fp16 on older GPUs (never their emulated bf16); fp32 on a CPU
    dtype = torch.bfloat16 if bf16 and bf16_native() else (torch.float16 if torch.cuda.is_available() else torch.float32)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype) if load_in_4bit else None
    revision = pinned(name, revision)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype, quantization_config=quantization,
                                                 device_map="auto" if torch.cuda.is_available() else None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def generate_answer(model, tokenizer, messages, max_new_tokens):
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example:\n  python rag.py --notes ~/notes --question \"What is NF4?\" --llm none")
    p.add_argument("--notes", required=True, help="folder of .md / .ipynb notes (read recursively)")
    p.add_argument("--question", help="a question to answer with citations")
    p.add_argument("--eval", metavar="QUESTIONS_JSONL",
                   help="JSONL of {id, question, source, heading, passage}: writes recall@k and MRR to metrics.json")
    p.add_argument("--index_dir", default="rag_index", help="where the index is kept and reused (default: ./rag_index)")
    p.add_argument("--output_dir", default=".", help="where --eval writes metrics.json (default: the current folder)")
    p.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2",
                   help="sentence-transformers model: hub id or local folder")
    p.add_argument("--reranker", default=None,
                   help="optional cross-encoder (e.g. cross-encoder/ms-marco-MiniLM-L6-v2) reordering the candidates")
    p.add_argument("--llm", default="Qwen/Qwen2.5-7B-Instruct",
                   help="chat model that writes the answer (hub id or folder); 'none': extractive answer, no model")
    p.add_argument("--llm_revision", default=None, help="hub commit of --llm (default: the course's pin for its model)")
    p.add_argument("--embedder_revision", default=None, help="hub commit of --embedder (default: the course's pin)")
    p.add_argument("--reranker_revision", default=None, help="hub commit of --reranker (default: the course's pin)")
    p.add_argument("--load_in_4bit", action="store_true", help="load the chat model in 4-bit NF4 (bitsandbytes)")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (Ampere or newer GPUs)")
    p.add_argument("--top_k", type=int, default=5, help="chunks in the prompt (default 5)")
    p.add_argument("--chunk_chars", type=int, default=600, help="largest chunk, in characters (default 600)")
    p.add_argument("--chunk_overlap", type=int, default=150, help="characters repeated from the previous chunk")
    p.add_argument("--fusion_depth", type=int, default=50, help="how far down each ranking RRF looks")
    p.add_argument("--rrf_k", type=int, default=60, help="reciprocal rank fusion constant: 1 / (k + rank)")
    p.add_argument("--rerank_candidates", type=int, default=20, help="first-stage hits the cross-encoder rescores")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest answer")
    p.add_argument("--abstain_below", type=float, default=0.45,
                   help="--llm none: refuse when the best sentence's cosine similarity is below this (default 0.45: "
                        "the lesson's cut on its dev questions with all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None, help="device for the embedder and reranker (default: cuda if present)")
    args = p.parse_args(argv)
    if not args.question and not args.eval:
        p.error("give --question, --eval, or both")
    if args.top_k < 1 or args.chunk_chars <= 0 or not 0 <= args.chunk_overlap < args.chunk_chars:
        p.error("need --top_k >= 1 and 0 <= --chunk_overlap < --chunk_chars")
    return args


def main(argv=None):
    args = parse_args(argv)
    from sentence_transformers import CrossEncoder, SentenceTransformer

    start = time.perf_counter()
    docs = read_notes(args.notes)
    meta = index_meta(docs, args)
    embedder = SentenceTransformer(args.embedder, device=args.device,
                                   revision=pinned(args.embedder, args.embedder_revision))
    reused = index_is_current(args.index_dir, meta)
    if not reused:
        chunks = chunk_documents(docs, args.chunk_chars, args.chunk_overlap)
        write_index(args.index_dir, chunks, embed(embedder, [c.indexed_text for c in chunks]), meta)
    chunks, index = read_index(args.index_dir)
    print(f"{'reusing' if reused else 'built'} index {args.index_dir}: {len(docs)} files, {len(chunks)} chunks "
          f"({time.perf_counter() - start:.1f} s)")
    cross_encoder = (CrossEncoder(args.reranker, device=args.device, revision=pinned(args.reranker, args.reranker_revision))
                     if args.reranker else None)
    retriever = Retriever(chunks, index, embedder, cross_encoder, args.fusion_depth, args.rrf_k, args.rerank_candidates)

    if args.eval:
        metrics = evaluate(retriever, args.eval)
        metrics.update(n_chunks=len(chunks), index_reused=reused, embedder=args.embedder, top_k=args.top_k)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=out, prefix=".metrics-", suffix=".json", delete=False) as f:
            json.dump(metrics, f, indent=1)
        os.chmod(f.name, 0o666 & ~_umask())
        os.replace(f.name, out / "metrics.json")
        for name in ("bm25", "dense", "hybrid", "reranked"):
            if name in metrics:
                print(f"{name:>9}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics[name].items()))
        print(f"wrote {out / 'metrics.json'}")

    if args.question:
        context_ids = [i for i, _ in retriever.search(args.question, args.top_k)]
        if args.llm.lower() == "none":
            answer = extractive_answer(retriever, args.question, context_ids, args.abstain_below)
        else:
            model, tokenizer = load_llm(args.llm, args.load_in_4bit, args.bf16, args.llm_revision)
            messages = build_messages(args.question, [chunks[i] for i in context_ids])
            answer = generate_answer(model, tokenizer, messages, args.max_new_tokens)
        print(f"\nQ: {args.question}\nA: {answer}\n\nSources:")
        cited = extract_citations(answer)
        for n, i in enumerate(context_ids, 1):
            mark = "*" if n in cited else " "
            print(f" {mark}[{n}] {chunks[i].id} — {chunks[i].heading}")
        made_up = [n for n in cited if not 1 <= n <= len(context_ids)]
        if made_up:
            print(f"warning: the answer cites {made_up}, which were not in the prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
