"""Speech helpers for the Whisper lesson: audio loading, an offline Whisper, voice activity and WER.

* :func:`load_audio` — any WAV/FLAC (any sample rate, mono or stereo) as 16 kHz mono float32, what Whisper expects.
* :func:`load_whisper` — ``openai/whisper-small`` at a pinned revision (full mode), or the tiny
  ``WhisperForConditionalGeneration`` that :mod:`course_utils.smoke.speech` builds with the *real* multilingual
  tokenizer (smoke mode). Both load through the same ``from_pretrained`` calls.
* :func:`speech_segments` — a simple energy-based voice-activity detector (the baseline lesson 10 shows failing on
  real speech); :func:`load_silero_vad` — the trained Silero VAD whose weights ship in the ``silero-vad`` wheel;
  :func:`trim_silence` — keep only the speech of either.
* :func:`wer` — word error rate with ``jiwer`` after Whisper's English text normaliser.
* :func:`load_clips` — the course's domain clips, 30 training and 24 held-out sentences (or your own folder in the
  same layout); :func:`load_real_recording` — a real 11-second speech recording with annotated pauses.
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

from course_utils import assets
from course_utils.core.errors import BadParameter, MissingData
from course_utils.topics.spec import english_spelling as _english_spelling

SAMPLE_RATE = 16_000  # Whisper's feature extractor works at 16 kHz
WHISPER_SMALL = assets.id("whisper-small")  # the id and its pinned commit live in datasets/assets.toml
WHISPER_SMALL_REVISION = assets.revision("whisper-small")  # pinned: the lesson's numbers are for this one
CLIPS_FOLDER = ("course", "speech_clips")

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


def trim_silence(audio: Any, sr: int = SAMPLE_RATE, gap_s: float = 0.2,
                 segments: Sequence[tuple[float, float]] | None = None, **kwargs: Any) -> Any:
    """Keep only the speech: ``segments`` (``(start_s, end_s)`` pairs from any VAD; default: the energy VAD's
    :func:`speech_segments`) joined with ``gap_s`` of silence between them."""
    import numpy as np

    audio = np.asarray(audio, dtype=np.float32)
    segments = speech_segments(audio, sr, **kwargs) if segments is None else segments
    if not segments:
        return audio[:0]
    gap = np.zeros(int(gap_s * sr), dtype=np.float32)
    pieces = []
    for start, end in segments:
        pieces += [audio[int(start * sr): int(end * sr)], gap]
    return np.concatenate(pieces[:-1])


def load_silero_vad() -> Any:
    """The Silero VAD model (ONNX, run by onnxruntime) from the files inside the ``silero-vad`` wheel: no download.

    Use it with ``silero_vad.get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=16000,
    return_seconds=True)``. A small network trained on thousands of hours of speech and noise: it tells a voice from
    a noise floor that an energy threshold cannot (see lesson 10).
    """
    try:
        import silero_vad
    except ImportError:
        raise MissingData("silero-vad is not installed: run `make setup` (requirements.txt pins it).") from None
    return silero_vad.load_silero_vad(onnx=True)


# ------------------------------------------------------------------------------------------ WER and text


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
    """One utterance: its file, the text a person would write, its split, the 16 kHz audio, and who spoke it (the
    line's ``speaker`` or ``voice``; None when transcripts.jsonl does not say)."""

    path: Path
    text: str
    split: str
    audio: Any
    speaker: str | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def load_clips(folder: str | os.PathLike[str] | None = None, split: str | None = None) -> list[Clip]:
    """Clips listed in ``folder/transcripts.jsonl`` (``{"file": ..., "text": ..., "split": "train"|"test"}``, and
    optionally ``"speaker"``).

    ``folder=None`` is the course's clips (``datasets/course/speech_clips``, or under ``$COURSE_DATA``): 30 training
    and 24 held-out sentences, split by sentence and by voice (their ``voice`` is the clip's speaker). Point it at your own folder of recordings in the same layout to
    fine-tune on your domain.
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
                                  load_audio(folder / row["file"]), row.get("speaker", row.get("voice"))))
    if not clips:
        raise MissingData(f"{index} lists no clips{f' in split {split!r}' if split else ''}: add some lines to it.")
    return clips


def load_real_recording(folder: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(audio, info)``: the course's real 11-second speech recording (``jfk_16k.flac``: room noise, three clear
    pauses) at 16 kHz, and its ``jfk_16k.json`` (text, the hand-checked ``pauses_s``, source and licence)."""
    from course_utils.core.paths import data_dir

    folder = Path(folder) if folder is not None else data_dir().joinpath(*CLIPS_FOLDER)
    info_path = folder / "jfk_16k.json"
    if not info_path.exists():
        raise MissingData(f"No jfk_16k.json in {folder}: the course's clips folder is incomplete; restore it from git.")
    info = json.loads(info_path.read_text())
    return load_audio(folder / info["file"]), info


# ------------------------------------------------------------------------------------------------ model


def load_whisper(smoke: bool, model_id: str = WHISPER_SMALL, revision: str | None = WHISPER_SMALL_REVISION,
                 device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """``(model, processor)``: the hub model ``model_id`` at ``revision`` (full) or the tiny offline one (smoke).

    Both go through ``WhisperProcessor.from_pretrained`` and ``WhisperForConditionalGeneration.from_pretrained``;
    only the folder differs. Offline without the weights in the Hugging Face cache you get one
    :class:`~course_utils.core.errors.MissingData` sentence, not a traceback.
    """
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if smoke:
        from course_utils.smoke.speech import tiny_whisper_folder

        source, kwargs = str(tiny_whisper_folder()), {}
    else:
        source, kwargs = model_id, ({"revision": revision} if revision else {})
    from course_utils.core.hub import check_revision, hub_errors_explained  # hub failures -> one sentence
    check_revision(source, kwargs.get("revision"))  # a local folder, or a hub id pinned to a commit: else one sentence

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
    of what was already held (the course's one meaning of peak VRAM, :mod:`course_utils.core.memory`; an enclosing
    ``cu.track_peak_memory()`` keeps its own peak).
    """
    import time

    import torch
    from transformers import WhisperForConditionalGeneration

    from course_utils.core.gpu import device_type, free_gpu
    from course_utils.core.memory import vram_peak

    gpu = device_type(device) == "cuda"  # "cuda:1" too
    dtype = dtype or (torch.float16 if gpu else torch.float32)
    best = float("inf")
    with vram_peak(device if gpu else None) as vram:
        with torch.device(device):
            model = WhisperForConditionalGeneration._from_config(config, dtype=dtype).eval()
        features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions, device=device, dtype=dtype)
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
                if gpu:
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - start)
    peak = vram.added_gb if gpu and vram.added_gb is not None else float("nan")
    del model, encoded, past
    free_gpu()
    return {"seconds_per_window": best, "peak_vram_gb": peak}
