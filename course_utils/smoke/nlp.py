"""The smoke-mode stand-ins for lesson 14: a tiny DistilBERT with a WordPiece tokenizer, and the shipped sentiment set.

The tiny model is the real class (``DistilBertForMaskedLM``, what the hub's ``distilbert-base-uncased`` checkpoint
holds) with random weights, and an uncased WordPiece tokenizer built offline from the shipped training sentences,
both saved like a hub snapshot, so ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it exactly as
it loads the hub id (and adds a fresh classification head, as it does for the real checkpoint)::

    from course_utils.smoke.nlp import tiny_bert_dir, build_tiny_bert, read_sentiment_split
    folder = tiny_bert_dir()                         # built once (about a second), cached in cu.cache_dir()
    build_tiny_bert(tmp_path / "tiny-bert")          # a fresh copy anywhere (the recipe tests use this)
    rows = read_sentiment_split("train")             # [{"text": ..., "label": 0 | 1}, ...]

The sentences come from ``datasets/course/sentiment/`` (``make_sentiment.py`` wrote them; its test split uses
held-out sentence frames, made of words train has).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from course_utils.core.errors import MissingData
from course_utils.core.paths import atomic_dir, cache_dir, data_dir

#: BERT's special tokens, in BERT's id order.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: The tiny model: DistilBERT's class and layout (6 layers of 768 in the real one), a few hundred thousand weights.
TINY_BERT_CONFIG = dict(dim=64, hidden_dim=128, n_layers=2, n_heads=2, max_position_embeddings=128, dropout=0.1,
                        attention_dropout=0.1)
TINY_VOCAB_SIZE = 600
_TINY_SPEC_VERSION = "2"  # bump when the builder changes, so cached tiny models are rebuilt


def sentiment_dir() -> Path:
    """``<course data>/course/sentiment`` (``$COURSE_DATA`` or ``datasets/``)."""
    return data_dir() / "course" / "sentiment"


def read_sentiment_split(split: str, folder: str | os.PathLike[str] | None = None) -> list[dict]:
    """The shipped split ``"train"`` or ``"test"`` as a list of ``{"text", "label"}`` rows."""
    path = Path(folder or sentiment_dir()) / f"{split}.jsonl"
    if not path.is_file():
        raise MissingData(f"The sentiment set is not in {path.parent}: run `python datasets/course/sentiment/"
                          f"make_sentiment.py` from the repository root (or set DATA_DIR to the folder above course/).")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE) -> Any:
    """An uncased WordPiece tokenizer like BERT's (lower-casing, accent stripping, ``##`` continuation pieces) for
    ``texts``: the vocabulary is the special tokens, every character alone and as a ``##`` piece, then the most
    frequent whole words (ties in alphabetical order) up to ``vocab_size``. Unseen words split into known pieces, so a
    held-out word never becomes ``[UNK]`` wholesale. Returns a ``DistilBertTokenizerFast``.

    The vocabulary is chosen here rather than by ``tokenizers``' ``WordPieceTrainer``, whose tie-breaking changes from
    one process to the next (a different vocabulary, so a different tiny model and a different smoke score, each run)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import DistilBertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-") | {c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[:max(0, vocab_size - len(vocab))]
    wordpiece = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizer
    wordpiece.pre_tokenizer = pre_tokenizer
    wordpiece.decoder = decoders.WordPiece(prefix="##")
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                             special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return DistilBertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                   cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True,
                                   model_max_length=TINY_BERT_CONFIG["max_position_embeddings"])


def build_tiny_bert(folder: str | os.PathLike[str], texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Write a tiny random-weight ``DistilBertForMaskedLM`` and its tokenizer to ``folder`` (atomically)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    texts = list(texts) if texts is not None else [row["text"] for row in read_sentiment_split("train")]
    tokenizer = train_wordpiece_tokenizer(texts)
    config = DistilBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_BERT_CONFIG)
    with torch.random.fork_rng(devices=[]):  # same weights every build, without touching the caller's RNG
        torch.manual_seed(seed)
        model = DistilBertForMaskedLM(config)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def tiny_bert_dir(rebuild: bool = False) -> Path:
    """The cached tiny DistilBERT's folder, built on first use and reused; its name hashes the settings and text."""
    texts = [row["text"] for row in read_sentiment_split("train")]
    key = hashlib.sha256(json.dumps([_TINY_SPEC_VERSION, TINY_BERT_CONFIG, TINY_VOCAB_SIZE, texts],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("tiny-bert") / f"distilbert-{key}"
    if rebuild or not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        build_tiny_bert(folder, texts)
    return folder
