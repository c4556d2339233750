"""Smoke-mode stand-in for lesson 10: a tiny random Whisper with the REAL multilingual tokenizer, offline.

* :func:`build_whisper_tokenizer` — the hub's 51,865-id tokenizer, rebuilt from the tiktoken file that ``openai-whisper``
  ships, with the special and timestamp tokens in the hub's id order.
* :func:`whisper_generation_config` — a hub-like ``GenerationConfig`` (``generate(language=..., task=...)`` reads it).
* :func:`tiny_whisper_config` / :func:`build_tiny_whisper` / :func:`tiny_whisper_folder` — a ~3.7 M-parameter
  ``WhisperForConditionalGeneration`` saved like a hub checkpoint in the course cache, so smoke mode loads it through
  the same ``from_pretrained`` calls full mode makes with ``openai/whisper-small``.

The loaders live in :mod:`course_utils.topics.speech`; this module only builds. Light to import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from course_utils.core.errors import MissingData
from course_utils.topics.spec import english_spelling as _english_spelling

NUM_LANGUAGES = 99  # whisper tiny ... large-v2 (large-v3 adds Cantonese: 100)
_TINY_VERSION = "v2"  # bump to rebuild the cached smoke model
TINY_WINDOW_S = 5  # the smoke model hears 5 s windows (the real ones: 30 s; every course clip is under 4 s)


def whisper_special_tokens(num_languages: int = NUM_LANGUAGES) -> list[str]:
    """Whisper's special tokens in id order, after the 50,257 byte-level BPE tokens (as on the hub)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]],
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def build_whisper_tokenizer(folder: str | os.PathLike[str], num_languages: int = NUM_LANGUAGES) -> Any:
    """Rebuild the hub's multilingual Whisper tokenizer (51,865 ids) offline and save it in ``folder``.

    The BPE ranks come from ``whisper/assets/multilingual.tiktoken`` (shipped in openai-whisper), converted with
    transformers' ``TikTokenConverter``; then the special tokens in id order, then the 1,501 timestamp tokens
    ``<|0.00|>`` ... ``<|30.00|>`` (not "special", as on the hub, so the tokenizer can find where they begin).
    ``normalizer.json`` (Whisper's spelling map) is written too. Reload with ``WhisperTokenizer.from_pretrained``.
    """
    import importlib.util

    from transformers import AddedToken, WhisperTokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise MissingData("openai-whisper is not installed (it ships the tokenizer files): run `make setup`.")
    ranks = Path(list(spec.submodule_search_locations)[0], "assets", "multilingual.tiktoken")
    vocab, merges = TikTokenConverter(vocab_file=str(ranks)).extract_vocab_merges_from_model(str(ranks))
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")  # as on the hub
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in whisper_special_tokens(num_languages)]})
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    (folder / "normalizer.json").write_text(json.dumps(_english_spelling(), indent=2, sort_keys=True) + "\n")
    return WhisperTokenizer.from_pretrained(str(folder))


def whisper_generation_config(tokenizer: Any, alignment_heads: list[list[int]] | None = None) -> Any:
    """A ``GenerationConfig`` laid out like the hub checkpoints' (what ``generate(language=..., task=...)``,
    language detection and timestamps read)."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in list(LANGUAGES)[:NUM_LANGUAGES]}
    task_to_id = {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")}
    non_speech = _non_speech_tokens()
    suppress = sorted(set(non_speech) | {ids(t) for t in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                                                           "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>")})
    return GenerationConfig(
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=ids("<|startoftranscript|>"),
        max_length=448, begin_suppress_tokens=[tokenizer.encode(" ", add_special_tokens=False)[0], eot], suppress_tokens=suppress,
        is_multilingual=True, lang_to_id=lang_to_id, task_to_id=task_to_id,
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, return_timestamps=False, alignment_heads=alignment_heads or [],
    )


def _non_speech_tokens() -> list[int]:
    """Symbols Whisper is told never to emit (speaker tags, music notes, brackets), as openai-whisper lists them."""
    from whisper.tokenizer import get_tokenizer

    return sorted(get_tokenizer(multilingual=True).non_speech_tokens)


def tiny_whisper_config(vocab_size: int = 51865, window_s: int = TINY_WINDOW_S) -> Any:
    """A ~3.7 M-parameter Whisper (2+2 layers, width 64) with the real vocabulary and 80 mel bins, random weights.

    It listens to ``window_s``-second windows (50 encoder positions a second) instead of Whisper's 30 s: a sixth of
    the encoder's work, which keeps smoke-mode fine-tuning inside its time budget. It only has to learn a few clips.
    """
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_source_positions=50 * window_s, max_target_positions=448,
        pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258,
    )


def build_tiny_whisper(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random Whisper, the real tokenizer, the feature extractor and a hub-like generation config
    into ``folder`` (a folder that loads exactly like a hub checkpoint)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    folder = Path(folder)
    tokenizer = build_whisper_tokenizer(folder)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80, chunk_length=TINY_WINDOW_S), tokenizer=tokenizer)
    config = tiny_whisper_config(len(tokenizer))
    with torch.random.fork_rng(devices=[]):  # same weights every build, without touching the caller's RNG
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    last = config.decoder_layers - 1
    model.generation_config = whisper_generation_config(
        tokenizer, alignment_heads=[[last, h] for h in range(config.decoder_attention_heads)])
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    (folder / "normalizer.json").write_text(json.dumps(_english_spelling(), indent=2, sort_keys=True) + "\n")
    return folder


def tiny_whisper_folder() -> Path:
    """The smoke model's folder in the course cache, built on first use (~5 s) and reused afterwards."""
    from course_utils.core.paths import atomic_dir, cache_dir

    folder = cache_dir() / f"whisper-tiny-random-{_TINY_VERSION}"
    if not (folder / "model.safetensors").exists():
        with atomic_dir(folder) as tmp:
            build_tiny_whisper(tmp)
    return folder
