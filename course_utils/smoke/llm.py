"""The smoke-mode stand-in for lessons 05, 06 and 07: a tiny random-weight Llama and its tokenizer, built offline.

The same class as the full model (``LlamaForCausalLM``), a byte-level BPE tokenizer with Llama 3's special tokens and
chat template, saved like a hub snapshot so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it exactly as it
loads a hub id. The loader that picks it in smoke mode is ``course_utils.topics.llm.load_causal_lm``::

    from course_utils.smoke.llm import tiny_llm_dir, build_tiny_llm, train_tiny_tokenizer
    folder = tiny_llm_dir()                       # built once (about a second), cached in cu.cache_dir()
    build_tiny_llm(tmp_path / "tiny")             # a fresh copy anywhere (the recipe tests use this)

:func:`train_tiny_tokenizer` is reused by the vision-language stand-in (``course_utils.smoke.vlm``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from course_utils.core.paths import REPO_ROOT, atomic_dir, cache_dir, data_dir

#: Llama 3.1 Instruct's own chat template, as published with the pinned revision (shipped in
#: datasets/course/model_configs/), so smoke mode formats conversations exactly as full mode does.
LLAMA31_CONFIGS = REPO_ROOT / "datasets" / "course" / "model_configs" / "meta-llama--Llama-3.1-8B-Instruct"
CHAT_TEMPLATE: str = json.loads((LLAMA31_CONFIGS / "tokenizer_config.hub_api.json").read_text())["chat_template"]
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                  "<|eot_id|>")

#: The tiny model: the real Llama class, a few hundred thousand random weights. head_dim is set on purpose
#: (LlamaConfig's default is 128, far too big for a 128-wide model).
TINY_LLAMA_CONFIG = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
    # Llama 3.1's long-context RoPE, as in its config.json
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
)
TINY_VOCAB_SIZE = 1024
_TINY_SPEC_VERSION = "2"  # bump when the builder changes, so cached tiny models are rebuilt


def default_corpus() -> list[str]:
    """Local text for the tiny tokenizer: the course's own writing (CONTRIBUTING.md and the shipped JSONL/markdown)."""
    files = [REPO_ROOT / "CONTRIBUTING.md"]
    files += sorted((data_dir() / "course" / "run_notes_json").glob("*.jsonl"))
    lines: list[str] = []
    for path in files:
        if path.is_file():
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:  # a bare checkout still gets a working tokenizer
        lines = [CHAT_TEMPLATE, "The quick brown fox jumps over the lazy dog. 0123456789 {\"key\": 1.5}"]
    return lines


def train_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = TINY_VOCAB_SIZE,
                         extra_special_tokens: Sequence[str] = (), chat_template: str = CHAT_TEMPLATE,
                         padding_side: str = "right") -> Any:
    """Train a byte-level BPE tokenizer (like GPT-2's and Llama 3's) on local text, offline, in well under a second.

    Returns a ``PreTrainedTokenizerFast`` with Llama-3-style special tokens, a chat template, BOS added to plain
    text, no pad token (like Llama 3; :func:`load_causal_lm` sets one) and ``extra_special_tokens`` (e.g. ``"<image>"``).
    Byte-level means every string can be encoded: unseen characters fall back to their bytes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts) if texts is not None else default_corpus(), trainer)
    bos = SPECIAL_TOKENS[0]
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token="<|eot_id|>", model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
        extra_special_tokens=list(extra_special_tokens) or None, padding_side=padding_side,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_llm(folder: str | os.PathLike[str], texts: Iterable[str] | None = None, seed: int = 0,
                   **config_overrides: Any) -> Path:
    """Write a tiny random-weight ``LlamaForCausalLM`` and its tokenizer to ``folder`` (atomically).

    The folder looks like a hub snapshot (config.json, model.safetensors, tokenizer files, generation_config.json),
    so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it exactly as it loads a hub id.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(texts)
    end, eom, eot = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
    settings = copy.deepcopy({**TINY_LLAMA_CONFIG, **config_overrides})  # LlamaConfig edits rope_scaling in place
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eom, eot],
                         **settings)
    with torch.random.fork_rng(devices=[]):  # same weights every build, without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # the instruct models' sampling defaults (Llama 3.1: temperature 0.6, top-p 0.9), stopping at end of turn
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eom, eot],
                                               do_sample=True, temperature=0.6, top_p=0.9)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def tiny_llm_dir(rebuild: bool = False) -> Path:
    """The cached tiny model's folder, built on first use (about a second) and reused afterwards.

    The folder name carries a hash of the builder's settings and its training text, so a change rebuilds it.
    """
    key = hashlib.sha256(json.dumps([_TINY_SPEC_VERSION, TINY_LLAMA_CONFIG, TINY_VOCAB_SIZE, default_corpus()],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("tiny-llm") / f"llama-{key}"
    if rebuild or not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        build_tiny_llm(folder)
    return folder
