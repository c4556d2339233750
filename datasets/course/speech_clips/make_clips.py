"""Make the course's speech clips: short domain sentences spoken by espeak-ng, saved as 16 kHz mono WAV.

Run once (needs Debian's `espeak-ng`: `apt-get install -y espeak-ng`); the clips and transcripts.jsonl are committed,
so nothing else in the course needs espeak-ng:

    .venv/bin/python datasets/course/speech_clips/make_clips.py

`text` is how the domain writes it (QLoRA, bitsandbytes, VRAM, 4-bit); `spoken` is how a person says it. A general
speech model hears "bits and bytes" and writes three words: that gap is what fine-tuning on your domain closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for course_utils
from course_utils.speech import SAMPLE_RATE, load_audio  # noqa: E402

# (file, split, espeak voice, words per minute, text as written, text as spoken)
CLIPS = [
    ("train_01.wav", "train", "en-us", 205, "Load it in 4-bit with bitsandbytes.", "Load it in four bit with bits and bytes."),
    ("train_02.wav", "train", "en-us+m3", 200, "QLoRA trains small adapters.", "Q Lora trains small adapters."),
    ("train_03.wav", "train", "en-us+f2", 205, "It fits in 12 GB of VRAM.", "It fits in twelve gigabytes of V RAM."),
    ("train_04.wav", "train", "en-us+m5", 200, "Gradient checkpointing saves memory.", "Gradient checkpointing saves memory."),
    ("train_05.wav", "train", "en-us+f4", 205, "LoRA adds low-rank adapters.", "Lora adds low rank adapters."),
    ("train_06.wav", "train", "en-us+m2", 205, "Merge the adapter, then export to ONNX.", "Merge the adapter, then export to onnx."),
    ("test_01.wav", "test", "en-us+m4", 200, "QLoRA keeps the base model in 4-bit.", "Q Lora keeps the base model in four bit."),
    ("test_02.wav", "test", "en-us+f3", 205, "bitsandbytes needs enough VRAM.", "Bits and bytes needs enough V RAM."),
]
PAD_S = (0.3, 0.2)  # silence before and after the speech: something for the voice-activity step to trim


def speak(text: str, voice: str, wpm: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"  # espeak-ng writes 22,050 Hz mono
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
        return load_audio(wav)  # -> 16 kHz float32


def main() -> None:
    rows = []
    for name, split, voice, wpm, text, spoken in CLIPS:
        audio = speak(spoken, voice, wpm)
        audio = audio[np.flatnonzero(np.abs(audio) > 1e-3)[0]: np.flatnonzero(np.abs(audio) > 1e-3)[-1] + 1]
        audio = 0.8 * audio / np.abs(audio).max()
        audio = np.concatenate([np.zeros(int(PAD_S[0] * SAMPLE_RATE)), audio, np.zeros(int(PAD_S[1] * SAMPLE_RATE))])
        sf.write(HERE / name, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"file": name, "text": text, "spoken": spoken, "split": split, "voice": voice,
                     "seconds": round(len(audio) / SAMPLE_RATE, 2)})
        print(f"{name}: {rows[-1]['seconds']:.2f} s  {text}")
    (HERE / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
