"""recipes/finetune_whisper.py: runs without course_utils on the tiny Whisper and a few shipped clips (train and held-out
folders of WAV + .txt), the training loss falls, the saved model reloads and transcribes, metrics.json holds WER before
and after; and the recipe prepares, collates and scores exactly as lesson 10's cells do."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from course_utils.smoke.speech import tiny_whisper_folder
from course_utils.topics import speech

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "10_whisper_asr.ipynb"


def _recipe_module():
    spec = importlib.util.spec_from_file_location("finetune_whisper", ROOT / "recipes" / "finetune_whisper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _write_folder(folder: Path, clips) -> Path:
    """The recipe's layout: clip.wav (16-bit PCM, 16 kHz) and clip.txt side by side."""
    folder.mkdir(parents=True)
    for clip in clips:
        stem = clip.path.stem
        sf.write(folder / f"{stem}.wav", clip.audio, speech.SAMPLE_RATE, subtype="PCM_16")
        (folder / f"{stem}.txt").write_text(clip.text + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_model(tiny_cache):
    return tiny_whisper_folder()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper-data")
    train = _write_folder(root / "train", speech.load_clips(split="train")[:2])
    held_out = _write_folder(root / "test", speech.load_clips(split="test")[:3])
    return train, held_out


def _lesson_cell(cell_id: str) -> str:
    cells = json.loads(LESSON.read_text())["cells"]
    return "".join(next(c for c in cells if c.get("id") == cell_id)["source"])


def test_recipe_fine_tunes_saves_and_reloads(run_recipe, tiny_model, data, tmp_path):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    train, held_out = data
    out = tmp_path / "run"
    proc = run_recipe("finetune_whisper.py", "--model_name_or_path", tiny_model, "--train_dir", train,
                      "--eval_dir", held_out, "--language", "en", "--max_steps", "24", "--learning_rate", "3e-3",
                      "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--per_device_train_batch_size", "2",
                      "--gradient_accumulation_steps", "1", "--eval_steps", "12", "--logging_steps", "4", "--max_new_tokens", "16",
                      "--no_gradient_checkpointing", "--output_dir", out, "--seed", "0", timeout=120)
    assert "held-out WER before" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 2 and metrics["n_eval"] == 3 and metrics["eval_in_train"] == 0
    assert metrics["train_loss_last"] < 0.5 * metrics["train_loss_first"], \
        f"train loss should fall: {metrics['train_loss_first']:.2f} -> {metrics['train_loss_last']:.2f}"
    assert abs(metrics["eval_loss_before"] - math.log(51865)) < 0.5, "a random model starts near ln(vocabulary)"
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"], "the held-out loss should fall too"
    assert [e["step"] for e in metrics["eval_curve"]] == [0, 12, 24], "held-out loss and WER at step 0 and every 12"
    assert all(np.isfinite([metrics["wer_before"], metrics["wer_after"]])) and metrics["wer_before"] > 0
    assert metrics["wer_gain_over_base"] == metrics["wer_before"] - metrics["wer_after"], "the margin over the base model"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model"], "no temporary files may be left behind"

    model = WhisperForConditionalGeneration.from_pretrained(out / "model").eval()
    processor = WhisperProcessor.from_pretrained(out / "model")
    clip = speech.load_clips(split="train")[0]
    features = processor.feature_extractor(clip.audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(features, language="en", task="transcribe", max_new_tokens=16)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert text.strip(), "the reloaded model should transcribe a clip into some text"
    base = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    assert not torch.equal(model.model.decoder.embed_tokens.weight, base.model.decoder.embed_tokens.weight), \
        "the saved model must be the trained one, not the starting weights"


def test_recipe_rejects_bad_input(run_recipe, tmp_path):
    import subprocess

    help_text = run_recipe("finetune_whisper.py", "--help").stdout
    for flag in ("--model_name_or_path", "--train_dir", "--eval_dir", "--language", "--max_steps", "--learning_rate",
                 "--per_device_train_batch_size", "--gradient_accumulation_steps", "--output_dir", "--seed"):
        assert flag in help_text, f"--help should explain {flag}"
    bad = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune_whisper.py"), "--model_name_or_path", "x",
                          "--train_dir", "a", "--eval_dir", "b", "--output_dir", str(tmp_path), "--max_steps", "0"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--max_steps must be at least 1" in bad.stderr


def test_recipe_reads_folders_like_the_course_loader(tmp_path, data):
    recipe = _recipe_module()
    train, _ = data
    clips = recipe.read_folder(train)
    course = speech.load_clips(split="train")[:2]
    assert [c["text"] for c in clips] == [c.text for c in course]
    assert all(np.abs(a["audio"] - b.audio).max() < 1e-3 for a, b in zip(clips, course)), "same 16 kHz audio"
    (tmp_path / "stereo").mkdir()
    stereo = np.stack([course[0].audio, course[0].audio], axis=1)
    from course_utils.topics.speech import resample

    sf.write(tmp_path / "stereo" / "a.flac", resample(stereo[:, 0], 16000, 44100), 44100)
    (tmp_path / "stereo" / "a.txt").write_text(course[0].text)
    (tmp_path / "stereo" / "orphan.wav").write_bytes((tmp_path / "stereo" / "a.flac").read_bytes())
    again = recipe.read_folder(tmp_path / "stereo")
    assert len(again) == 1 and abs(len(again[0]["audio"]) - len(course[0].audio)) <= 2, "44.1 kHz -> 16 kHz"
    with pytest.raises(SystemExit, match="no clips"):
        recipe.read_folder(tmp_path)


def test_recipe_and_lesson_prepare_collate_and_score_alike(tiny_model):
    """The lesson's `prepare` and collator cells, executed as written, give the same tensors as the recipe's."""
    import torch
    from transformers import WhisperProcessor

    recipe = _recipe_module()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    clips = speech.load_clips(split="train")[:3]

    from dataclasses import dataclass
    from typing import Any

    class _Config:
        decoder_start_token_id = 50258

    class _Model:
        config = _Config()

    namespace = {"processor": processor, "LANGUAGE": "en", "SAMPLE_RATE": 16000, "train_clips": clips,
                 "heldout_clips": clips[:1], "dataclass": dataclass, "Any": Any, "model": _Model()}
    exec(_lesson_cell("46b2c0d9"), namespace)  # set_prefix_tokens + prepare + train_set
    exec(_lesson_cell("606ab0da"), namespace)  # SpeechSeq2SeqCollator + one batch
    ours = [recipe.prepare({"audio": c.audio, "text": c.text}, processor) for c in clips]
    for lesson_example, recipe_example in zip(namespace["train_set"], ours):
        assert lesson_example["labels"] == recipe_example["labels"]
        assert np.array_equal(lesson_example["input_features"], recipe_example["input_features"])
    lesson_batch = namespace["collator"](namespace["train_set"])
    recipe_batch = recipe.SpeechSeq2SeqCollator(processor, 50258)(ours)
    assert lesson_batch.keys() == recipe_batch.keys()
    for key in lesson_batch:
        assert torch.equal(lesson_batch[key], recipe_batch[key]), f"{key} differs between the lesson and the recipe"

    refs = ["It fits in 12 GB of VRAM.", "Load it in 4-bit with bitsandbytes."]
    hyps = ["it fits in twelve GB of v ram", "load it in four bit with bits and bytes"]
    assert recipe.word_error_rate(refs, hyps, processor.tokenizer.normalize) == pytest.approx(speech.wer(refs, hyps))
