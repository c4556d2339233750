"""Speech helpers for the Whisper lesson: audio loading, an offline Whisper, voice activity and WER.

* :func:`load_audio` — any WAV/FLAC (any sample rate, mono or stereo) as 16 kHz mono float32, what Whisper expects.
* :func:`load_whisper` — ``openai/whisper-small`` at a pinned revision (full mode), or a tiny
  ``WhisperForConditionalGeneration`` from a config with the *real* multilingual tokenizer, rebuilt offline from
  the tiktoken file that ``openai-whisper`` ships (smoke mode). Both load through the same ``from_pretrained`` calls.
* :func:`speech_segments` / :func:`trim_silence` — a simple energy-based voice-activity detector.
* :func:`wer` — word error rate with ``jiwer`` after Whisper's English text normaliser.
* :func:`load_clips` — the course's short domain clips (or your own folder in the same layout).
* :data:`WHISPER_SIZES`, :func:`count_parameters`, :func:`time_whisper` — the family tiny → large-v3-turbo: exact
  parameter counts from the published configs and timings on random weights (no download).

Light to import: numpy, torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter, MissingData

SAMPLE_RATE = 16_000  # Whisper's feature extractor works at 16 kHz
WHISPER_SMALL = "openai/whisper-small"
WHISPER_SMALL_REVISION = "973afd24965f72e36ca33b3055d56a652f456b4d"  # pinned: the lesson's numbers are for this one
NUM_LANGUAGES = 99  # whisper tiny ... large-v2 (large-v3 adds Cantonese: 100)
CLIPS_FOLDER = ("course", "speech_clips")
_TINY_VERSION = "v1"  # bump to rebuild the cached smoke model
TINY_WINDOW_S = 10  # the smoke model hears 10 s windows (the real ones: 30 s)

#: Published configurations (hub config.json) of the Whisper family, and the relative speeds the openai/whisper
#: README reports (large = 1x). Build one with ``WhisperConfig(**WHISPER_SIZES[name]["config"])``.
WHISPER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"config": dict(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                            decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536), "speed": 10},
    "base": {"config": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048), "speed": 7},
    "small": {"config": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072), "speed": 4},
    "medium": {"config": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                              decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096), "speed": 2},
    "large-v3": {"config": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                                num_mel_bins=128, vocab_size=51866), "speed": 1},
    "large-v3-turbo": {"config": dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                                      decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                                      num_mel_bins=128, vocab_size=51866), "speed": 8},
}


# --------------------------------------------------------------------------------------------------- audio


def load_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> Any:
    """Read a WAV/FLAC/OGG file at any sample rate into a mono float32 NumPy array at ``sr`` Hz (range -1..1).

    Stereo is averaged to mono; resampling is polyphase (``scipy.signal.resample_poly``), which filters out what
    lies above the new Nyquist frequency instead of aliasing it.
    """
    import numpy as np
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise MissingData(f"Audio file {path} does not exist: check the path (and DATA_DIR in the parameters cell).")
    try:
        audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadParameter(f"Cannot read {path.name} as audio ({err}); convert it to WAV or FLAC, "
                           f"e.g. `ffmpeg -i {path.name} -ar 16000 -ac 1 out.wav`.") from None
    return resample(audio.mean(axis=1), file_sr, sr).astype(np.float32, copy=False)


def resample(audio: Any, orig_sr: int, target_sr: int = SAMPLE_RATE) -> Any:
    """Polyphase resampling of a 1-D signal (22,050 -> 16,000 Hz is up 320 / down 441)."""
    import math

    import numpy as np
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    g = math.gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, target_sr // g, orig_sr // g).astype(np.float32)


# ----------------------------------------------------------------------------------------- voice activity


def speech_segments(audio: Any, sr: int = SAMPLE_RATE, threshold_db: float = -35.0, frame_s: float = 0.03,
                    min_silence_s: float = 0.3, pad_s: float = 0.1) -> list[tuple[float, float]]:
    """Where someone speaks, as ``(start_s, end_s)`` pairs, from the loudness of 30 ms frames.

    A frame is speech when its RMS level is within ``-threshold_db`` dB of the loudest frame (so the detector
    adapts to the recording level). Gaps shorter than ``min_silence_s`` are bridged and every segment is padded by
    ``pad_s`` so word onsets are not clipped. Good enough for clean recordings; for noisy audio use a trained
    detector such as Silero VAD.
    """
    import numpy as np

    audio = np.asarray(audio, dtype=np.float32)
    hop = max(1, int(frame_s * sr))
    n_frames = len(audio) // hop
    if n_frames == 0:
        return []
    frames = audio[: n_frames * hop].reshape(n_frames, hop)
    level_db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-10)
    voiced = level_db > max(level_db.max() + threshold_db, -80.0)
    segments: list[list[int]] = []
    for i in np.flatnonzero(voiced):
        if segments and (i - segments[-1][1]) * frame_s <= min_silence_s:
            segments[-1][1] = i + 1
        else:
            segments.append([i, i + 1])
    duration = len(audio) / sr
    return [(max(0.0, float(a * frame_s - pad_s)), min(duration, float(b * frame_s + pad_s))) for a, b in segments]


def trim_silence(audio: Any, sr: int = SAMPLE_RATE, gap_s: float = 0.2, **kwargs: Any) -> Any:
    """Keep only the speech: the :func:`speech_segments` joined with ``gap_s`` of silence between them."""
    import numpy as np

    audio = np.asarray(audio, dtype=np.float32)
    segments = speech_segments(audio, sr, **kwargs)
    if not segments:
        return audio[:0]
    gap = np.zeros(int(gap_s * sr), dtype=np.float32)
    pieces = []
    for start, end in segments:
        pieces += [audio[int(start * sr): int(end * sr)], gap]
    return np.concatenate(pieces[:-1])


# ------------------------------------------------------------------------------------------ WER and text


def _english_spelling() -> dict[str, str]:
    """Whisper's British -> American spelling map (``english.json``, shipped in openai-whisper; no import)."""
    import importlib.util

    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise MissingData("openai-whisper is not installed: run `make setup` (it ships Whisper's text normaliser).")
    path = Path(list(spec.submodule_search_locations)[0], "normalizers", "english.json")
    return json.loads(path.read_text())


@lru_cache(maxsize=1)
def _normalizer() -> Any:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(_english_spelling())


def normalize_text(text: str) -> str:
    """Whisper's English normaliser: lower case, no punctuation, numbers as digits, US spelling, 'll -> will..."""
    return _normalizer()(text)


def wer(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Word error rate over a whole set: (substitutions + deletions + insertions) / reference words.

    With ``normalize`` (the default, as in the Whisper paper) both sides go through :func:`normalize_text` first,
    so "12 GB." and "twelve GB" count as the same words. Can exceed 1 when the hypothesis inserts many words.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise BadParameter(f"wer: {len(references)} references but {len(hypotheses)} hypotheses; pass one of each per clip.")
    refs = [normalize_text(r) if normalize else r for r in references]
    hyps = [normalize_text(h) if normalize else h for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    if not keep:
        raise BadParameter("wer: every reference is empty after normalisation; check the transcripts.")
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))


# ------------------------------------------------------------------------------------- the course's clips


@dataclass(frozen=True)
class Clip:
    """One utterance: its file, the text a person would write, its split, and the 16 kHz audio."""

    path: Path
    text: str
    split: str
    audio: Any

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def load_clips(folder: str | os.PathLike[str] | None = None, split: str | None = None) -> list[Clip]:
    """Clips listed in ``folder/transcripts.jsonl`` (``{"file": ..., "text": ..., "split": "train"|"test"}``).

    ``folder=None`` is the course's clips (``datasets/course/speech_clips``, or under ``$COURSE_DATA``). Point it at
    your own folder of recordings in the same layout to fine-tune on your domain.
    """
    from course_utils.core.paths import data_dir

    folder = Path(folder) if folder is not None else data_dir().joinpath(*CLIPS_FOLDER)
    index = folder / "transcripts.jsonl"
    if not index.exists():
        raise MissingData(f"No transcripts.jsonl in {folder}: put one JSON line per clip there "
                          '({"file": "a.wav", "text": "what is said", "split": "train"}), or leave DATA_DIR = None '
                          "for the course's clips.")
    clips = []
    for line in index.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if split is None or row.get("split", "train") == split:
                clips.append(Clip(folder / row["file"], row["text"], row.get("split", "train"),
                                  load_audio(folder / row["file"])))
    if not clips:
        raise MissingData(f"{index} lists no clips{f' in split {split!r}' if split else ''}: add some lines to it.")
    return clips


# ------------------------------------------------------------------------------------ tokenizer and model


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

    It listens to ``window_s``-second windows (50 encoder positions a second) instead of Whisper's 30 s: a third of
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


def load_whisper(smoke: bool, model_id: str = WHISPER_SMALL, revision: str | None = WHISPER_SMALL_REVISION,
                 device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """``(model, processor)``: the hub model ``model_id`` at ``revision`` (full) or the tiny offline one (smoke).

    Both go through ``WhisperProcessor.from_pretrained`` and ``WhisperForConditionalGeneration.from_pretrained``;
    only the folder differs. Offline without the weights in the Hugging Face cache you get one
    :class:`~course_utils.core.errors.MissingData` sentence, not a traceback.
    """
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if smoke:
        source, kwargs = str(tiny_whisper_folder()), {}
    else:
        source, kwargs = model_id, ({"revision": revision} if revision else {})
    from course_utils.topics.llm import hub_errors_explained  # offline / unknown id / bad revision -> one sentence

    with hub_errors_explained(model_id, alternative=None):
        processor = WhisperProcessor.from_pretrained(source, **kwargs)
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
    return model.to(device).eval(), processor


# --------------------------------------------------------------------------------------------- model sizes


def whisper_config(size: str) -> Any:
    """The published ``WhisperConfig`` of a Whisper size ("tiny" ... "large-v3-turbo"); no download."""
    from transformers import WhisperConfig

    if size not in WHISPER_SIZES:
        raise BadParameter(f"Unknown Whisper size {size!r}; choose one of: {', '.join(WHISPER_SIZES)}.")
    return WhisperConfig(**WHISPER_SIZES[size]["config"])


def count_parameters(config: Any) -> int:
    """Exact parameter count of a Whisper config, built on PyTorch's ``meta`` device (no memory, no weights)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def time_whisper(config: Any, device: str = "cpu", dtype: Any = None, new_tokens: int = 32, repeats: int = 1) -> dict:
    """Time one 30-second window through a *random-weight* model of ``config``: the encoder once, then
    ``new_tokens`` greedy decoder steps with the KV cache (speed does not depend on the weights' values).

    Returns seconds per window (best of ``repeats``) and, on a GPU, the peak VRAM in GiB that this model added on top
    of what was already allocated.
    """
    import time

    import torch
    from transformers import WhisperForConditionalGeneration

    from course_utils.core.gpu import free_gpu
    from course_utils.core.memory import GIB

    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    baseline = torch.cuda.memory_allocated() if device == "cuda" else 0  # what other models already hold
    with torch.device(device):
        model = WhisperForConditionalGeneration._from_config(config, dtype=dtype).eval()
    features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions, device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            encoded = model.model.encoder(features)
            tokens = torch.full((1, 1), config.decoder_start_token_id, device=device)
            past = None
            for _ in range(new_tokens):
                out = model(encoder_outputs=encoded, decoder_input_ids=tokens[:, -1:], past_key_values=past, use_cache=True)
                past = out.past_key_values
                tokens = torch.cat([tokens, out.logits[:, -1:].argmax(-1)], dim=1)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - baseline) / GIB if device == "cuda" else float("nan")
    del model, encoded, past
    free_gpu()
    return {"seconds_per_window": best, "peak_vram_gb": peak}
