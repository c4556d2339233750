"""Smoke stand-in for lesson 07: a tiny cross-encoder of the real class (random weights), built offline once."""

from __future__ import annotations

from pathlib import Path

from course_utils.core.paths import atomic_dir, cache_dir


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

    from course_utils.topics.spec import bundled_embedder_path

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_embedder_path(verify=False)))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    config.course_random_weights = True
    with torch.random.fork_rng(devices=[]):  # same weights every build, without touching the caller's RNG
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder
