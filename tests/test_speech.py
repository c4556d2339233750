"""course_utils.topics.speech: the offline Whisper tokenizer matches openai-whisper's, audio loads as 16 kHz mono, the VAD
trims silence, WER uses Whisper's normaliser, and the smoke/full loaders behave."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from course_utils.topics import speech
from course_utils.core.errors import BadParameter, MissingData

SENTENCES = [
    " Fine-tune QLoRA with bitsandbytes on 12 GB of VRAM — naïve café, 東京, 🚀!",
    "Hello world. It's 3.5 GiB; don't OOM?",
    "  Ça coûte 12 € — ¿qué tal?\nNew line\ttab",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Build the smoke model (and with it the tokenizer) once, in a fresh course cache."""
    old = os.environ.get("COURSE_CACHE")
    os.environ["COURSE_CACHE"] = str(tmp_path_factory.mktemp("course-cache"))
    try:
        yield speech.tiny_whisper_folder()
    finally:
        if old is None:
            os.environ.pop("COURSE_CACHE", None)
        else:
            os.environ["COURSE_CACHE"] = old


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(str(tiny_folder))


@pytest.fixture(scope="module")
def reference():
    from whisper.tokenizer import get_tokenizer

    return get_tokenizer(multilingual=True, language="en", task="transcribe")


# ------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_match_openai_whisper(tokenizer, reference):
    assert len(tokenizer) == 51865, "the multilingual Whisper vocabulary has 51,865 ids"
    for text in SENTENCES:
        ours = tokenizer.encode(text, add_special_tokens=False)
        assert ours == reference.encode(text), f"token ids differ from openai-whisper's for {text!r}"
        assert tokenizer.decode(ours) == text, "decoding must give the text back"


def test_special_tokens_have_openai_whisper_ids(tokenizer, reference):
    ids = tokenizer.convert_tokens_to_ids
    assert ids("<|endoftext|>") == reference.eot == 50257
    assert ids("<|startoftranscript|>") == reference.sot == 50258
    assert ids("<|en|>") == reference.special_tokens["<|en|>"] == 50259
    assert ids("<|translate|>") == reference.translate == 50358
    assert ids("<|transcribe|>") == reference.transcribe == 50359
    assert ids("<|nocaptions|>") == reference.no_speech == 50362  # openai calls it <|nospeech|>
    assert ids("<|notimestamps|>") == reference.no_timestamps == 50363
    assert ids("<|0.00|>") == reference.timestamp_begin == 50364 and ids("<|30.00|>") == 51864
    assert tokenizer.pad_token == "<|endoftext|>"
    tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    expected = [*reference.sot_sequence_including_notimestamps, *reference.encode(" hello"), reference.eot]
    assert tokenizer(" hello").input_ids == expected, "the prompt prefix must match openai-whisper's"


def test_timestamps_decode_and_normaliser_is_saved(tokenizer, tiny_folder):
    ids = [50364, *tokenizer.encode(" hi", add_special_tokens=False), 50364 + 50]
    assert tokenizer.decode(ids, output_offsets=True)["offsets"][0]["timestamp"] == (0.0, 1.0)
    spelling = json.loads((tiny_folder / "normalizer.json").read_text())
    assert spelling["colour"] == "color", "normalizer.json should hold Whisper's British -> American map"
    assert tokenizer.normalize("The colour of 12 GB.") == "the color of 12 gb"


def test_generation_config_is_hub_like(tiny_folder, tokenizer, reference):
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(str(tiny_folder))
    assert len(gen.lang_to_id) == 99 and gen.lang_to_id["<|en|>"] == 50259 and gen.lang_to_id["<|su|>"] == 50357
    assert gen.task_to_id == {"translate": 50358, "transcribe": 50359}
    assert gen.no_timestamps_token_id == 50363 and gen.decoder_start_token_id == 50258
    assert gen.begin_suppress_tokens == [220, 50257]
    assert set(reference.non_speech_tokens) <= set(gen.suppress_tokens)


# ----------------------------------------------------------------------------------------------------- audio


def _tone(sr: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def _peak_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("sr, fmt, subtype", [(22050, "WAV", "PCM_16"), (44100, "WAV", "PCM_24"), (48000, "FLAC", "PCM_16")])
def test_load_audio_gives_16k_mono(tmp_path, sr, fmt, subtype):
    tone = _tone(sr, 1.5)
    stereo = np.stack([0.4 * tone, 0.2 * tone], axis=1)  # mono = their mean = 0.3 x tone
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo, sr, format=fmt, subtype=subtype)
    audio = speech.load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) <= 1, f"1.5 s should be 24,000 samples at 16 kHz, got {len(audio)}"
    middle = audio[2000:-2000]
    assert abs(np.sqrt((middle**2).mean()) - 0.3 / np.sqrt(2)) < 0.005, "stereo should be averaged to mono"
    assert abs(_peak_hz(audio, 16000) - 440) < 2, "resampling must keep the pitch"


def test_load_audio_at_another_rate_and_errors(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, _tone(16000, 1.0), 16000)
    assert len(speech.load_audio(path, sr=8000)) == 8000
    with pytest.raises(MissingData, match="does not exist"):
        speech.load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(BadParameter, match="convert it"):
        speech.load_audio(bad)


# ------------------------------------------------------------------------------------------- voice activity


def test_vad_finds_speech_and_trims_silence():
    sr = 16000
    rng = np.random.default_rng(0)
    quiet = lambda s: 0.001 * rng.standard_normal(int(sr * s)).astype(np.float32)  # noqa: E731
    audio = np.concatenate([quiet(0.6), 0.5 * _tone(sr, 1.0), quiet(0.8), 0.5 * _tone(sr, 0.5, 220), quiet(0.9)])
    segments = speech.speech_segments(audio, sr)
    assert len(segments) == 2, f"two bursts of sound separated by 0.8 s of silence, got {segments}"
    (s1, e1), (s2, e2) = segments
    assert abs(s1 - 0.5) < 0.05 and abs(e1 - 1.7) < 0.05 and abs(s2 - 2.3) < 0.05 and abs(e2 - 3.0) < 0.05
    trimmed = speech.trim_silence(audio, sr, gap_s=0.2)
    assert abs(len(trimmed) / sr - (1.2 + 0.2 + 0.7)) < 0.05, "leading, trailing and long inner silence should go"
    assert np.abs(trimmed[: int(0.12 * sr)]).max() > 0.1, "trimmed audio should start at the speech (+0.1 s pad)"
    assert speech.speech_segments(audio, sr, min_silence_s=1.0) == [(s1, e2)], "gaps under min_silence_s are bridged"
    assert speech.trim_silence(np.zeros(0, np.float32)).size == 0


# -------------------------------------------------------------------------------------------------- WER


def test_wer_uses_whispers_normaliser():
    assert speech.wer(["It fits in 12 GB of VRAM."], ["it fits in twelve GB of vram"]) == 0.0
    # without it, case, punctuation and number words count: "It", "12", "VRAM." are 3 errors in 7 words
    assert speech.wer(["It fits in 12 GB of VRAM."], ["it fits in twelve GB of vram"], normalize=False) == pytest.approx(3 / 7)
    assert speech.wer(["load it in 4-bit with bitsandbytes"], ["load it in 4-bit with bits and bytes"]) == pytest.approx(3 / 7)
    with pytest.raises(BadParameter):
        speech.wer(["a", "b"], ["a"])


# ------------------------------------------------------------------------------------------ shipped clips


def test_course_clips_are_small_16k_and_listed():
    clips = speech.load_clips()
    assert [c.split for c in clips].count("train") == 6 and [c.split for c in clips].count("test") == 2
    rows = {json.loads(line)["file"]: json.loads(line) for line in
            (clips[0].path.parent / "transcripts.jsonl").read_text().splitlines()}
    for clip in clips:
        info = sf.info(str(clip.path))
        assert info.samplerate == 16000 and info.channels == 1, f"{clip.path.name} must be 16 kHz mono"
        assert abs(clip.seconds - rows[clip.path.name]["seconds"]) < 0.01 and 1.0 < clip.seconds < 4.0
        assert len(speech.speech_segments(clip.audio)) == 1, f"{clip.path.name}: one utterance with silence around it"
    total = sum(c.path.stat().st_size for c in clips)
    assert total < 1_000_000, f"the shipped clips should stay small ({total:,} bytes)"
    assert speech.load_clips(split="test")[0].text == "QLoRA keeps the base model in 4-bit."


def test_load_clips_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(MissingData, match="transcripts.jsonl"):
        speech.load_clips(tmp_path)


# ---------------------------------------------------------------------------------------------- loaders


def test_smoke_whisper_loads_and_generates(tiny_folder):
    import torch

    model, processor = speech.load_whisper(smoke=True)
    assert type(model).__name__ == "WhisperForConditionalGeneration" and not model.training
    assert processor.feature_extractor.chunk_length == speech.TINY_WINDOW_S
    audio = speech.load_clips()[0].audio
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 2 * model.config.max_source_positions)
    out = model.generate(features, language="en", task="transcribe", max_new_tokens=4)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 4, "generate should return at most max_new_tokens new ids"
    assert model.detect_language(features).shape == (1,)
    labels = torch.tensor([processor.tokenizer("QLoRA").input_ids[1:]])
    assert torch.isfinite(model(input_features=features, labels=labels).loss)


def test_full_whisper_offline_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingData, match="smoke mode"):
        speech.load_whisper(smoke=False, model_id="openai/whisper-small")


def test_whisper_sizes_match_published_parameter_counts():
    counts = {size: speech.count_parameters(speech.whisper_config(size)) for size in ("tiny", "small", "large-v3")}
    assert abs(counts["tiny"] / 37.76e6 - 1) < 0.01 and abs(counts["small"] / 241.73e6 - 1) < 0.01
    assert abs(counts["large-v3"] / 1543.5e6 - 1) < 0.01
    with pytest.raises(BadParameter):
        speech.whisper_config("huge")
