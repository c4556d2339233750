"""course_utils.topics.speech and course_utils.smoke.speech: the offline Whisper tokenizer matches openai-whisper's, audio
loads as 16 kHz mono, the energy VAD trims silence on clean audio but Silero VAD finds the pauses of a REAL recording,
WER uses Whisper's normaliser, the shipped clips are split by sentence, and the smoke/full loaders behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from course_utils.core.errors import BadParameter, MissingData
from course_utils.smoke import speech as smoke_speech
from course_utils.topics import speech

SENTENCES = [
    " Fine-tune QLoRA with bitsandbytes on 12 GB of VRAM — naïve café, 東京, 🚀!",
    "Hello world. It's 3.5 GiB; don't OOM?",
    "  Ça coûte 12 € — ¿qué tal?\nNew line\ttab",
]


@pytest.fixture(scope="module")
def tiny_folder(tiny_cache):
    """Build the smoke model (and with it the tokenizer) once, in a fresh course cache."""
    return smoke_speech.tiny_whisper_folder()


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
    kept = speech.trim_silence(audio, sr, gap_s=0.0, segments=[(0.6, 1.6)])
    assert len(kept) == sr and np.allclose(kept, audio[int(0.6 * sr): int(1.6 * sr)]), "trim_silence keeps given segments"


def _silero_segments(audio, model):
    import torch
    from silero_vad import get_speech_timestamps

    return [(s["start"], s["end"]) for s in get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=16000,
                                                                  return_seconds=True)]


def _pauses_found(segments, pauses, tolerance_s=0.3):
    """Each annotated pause must be a gap between two consecutive segments whose edges lie within tolerance."""
    gaps = [(a[1], b[0]) for a, b in zip(segments, segments[1:])]
    return [any(abs(g0 - p0) <= tolerance_s and abs(g1 - p1) <= tolerance_s for g0, g1 in gaps) for p0, p1 in pauses]


@pytest.mark.parametrize("snr_db", [None, 10.0])
def test_silero_vad_finds_the_pauses_of_a_real_recording(snr_db):
    """The real 11 s recording (room noise, three pauses): the energy VAD hears one segment; Silero VAD, loaded from
    its wheel with no network call (the guard would fail the test), finds every pause within 0.3 s — also with white
    noise added at 10 dB SNR (noise power = mean speech-recording power / 10)."""
    audio, info = speech.load_real_recording()
    assert abs(len(audio) / 16000 - info["seconds"]) < 0.01 and len(info["pauses_s"]) == 3
    if snr_db is not None:
        noise = np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32)
        audio = audio + noise * np.sqrt((audio**2).mean() / 10 ** (snr_db / 10))
    assert len(speech.speech_segments(audio)) == 1, "the energy VAD was expected to merge the whole recording"
    segments = _silero_segments(audio, speech.load_silero_vad())
    found = _pauses_found(segments, info["pauses_s"])
    assert all(found), f"Silero VAD missed pauses {info['pauses_s']} (found {found}); its segments: {segments}"
    midpoints = [(a + b) / 2 for a, b in info["pauses_s"]]
    assert not any(s <= m <= e for m in midpoints for s, e in segments), "no segment may cover a pause's middle"
    assert segments[0][0] < 0.6 and segments[-1][1] > 10.3, "the first and last words must be inside segments"


def test_pause_matching_rejects_wrong_boundaries():
    pauses = [(2.15, 3.25)]
    assert _pauses_found([(0.3, 2.3), (3.3, 4.4)], pauses) == [True]
    assert _pauses_found([(0.3, 1.7), (3.3, 4.4)], pauses) == [False], "an edge 0.45 s off is not the pause"
    assert _pauses_found([(0.3, 4.4)], pauses) == [False], "one merged segment has no gap"


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
    assert [c.split for c in clips].count("train") == 30 and [c.split for c in clips].count("test") == 24
    rows = {json.loads(line)["file"]: json.loads(line) for line in
            (clips[0].path.parent / "transcripts.jsonl").read_text().splitlines()}
    for clip in clips:
        info = sf.info(str(clip.path))
        assert info.samplerate == 16000 and info.channels == 1, f"{clip.path.name} must be 16 kHz mono"
        assert abs(clip.seconds - rows[clip.path.name]["seconds"]) < 0.01 and 1.0 < clip.seconds < 4.0
        assert rows[clip.path.name]["voice"].startswith("en-us") and rows[clip.path.name]["wpm"] in (175, 190, 205)
        assert len(speech.speech_segments(clip.audio)) == 1, f"{clip.path.name}: one utterance with silence around it"
    folder = clips[0].path.parent
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert total < 4_000_000, f"the shipped clips folder should stay small ({total:,} bytes)"
    assert speech.load_clips(split="test")[0].text == "QLoRA keeps the base model in 4-bit."


def test_held_out_sentences_are_not_in_training():
    train = {speech.normalize_text(c.text) for c in speech.load_clips(split="train")}
    test = [speech.normalize_text(c.text) for c in speech.load_clips(split="test")]
    assert len(test) >= 20 and len(set(test)) == len(test), "at least 20 distinct held-out sentences"
    assert not train & set(test), f"held-out sentences also in training: {train & set(test)}"
    domain = ("qlora", "lora", "bitsandbytes", "vram", "onnx", "pytorch", "cuda", "bf16", "fp16", "gpu", "cpu", "llava",
              "yolo", "adamw", "kv", "wer", "llm", "gb")
    assert sum(any(w in t.split() for w in domain) for t in test) >= 15, "the held-out set should test the jargon"


def test_held_out_clips_are_spoken_by_voices_never_heard_in_training():
    clips = speech.load_clips()
    train = {c.speaker for c in clips if c.split == "train"}
    test = {c.speaker for c in clips if c.split == "test"}
    assert None not in train | test, "every shipped clip records its voice in transcripts.jsonl"
    assert len(train) >= 3 and len(test) >= 2, f"several voices on each side (train {train}, test {test})"
    assert not train & test, f"voices in both splits: {sorted(train & test)}: the held-out WER would flatter the model"


def test_load_clips_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(MissingData, match="transcripts.jsonl"):
        speech.load_clips(tmp_path)
    with pytest.raises(MissingData, match="jfk_16k.json"):
        speech.load_real_recording(tmp_path)


# ---------------------------------------------------------------------------------------------- loaders


def test_smoke_whisper_loads_and_generates(tiny_folder):
    import torch

    model, processor = speech.load_whisper(smoke=True)
    assert type(model).__name__ == "WhisperForConditionalGeneration" and not model.training
    assert processor.feature_extractor.chunk_length == smoke_speech.TINY_WINDOW_S
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
