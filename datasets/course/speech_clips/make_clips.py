"""Make the course's speech clips: deep-learning sentences spoken by espeak-ng, saved as 16 kHz mono FLAC.

Run once (needs Debian's `espeak-ng`: `apt-get install -y espeak-ng`; these files were made with eSpeak NG 1.51);
the clips and transcripts.jsonl are committed, so nothing else in the course needs espeak-ng:

    .venv/bin/python datasets/course/speech_clips/make_clips.py

`text` is how the domain writes it (QLoRA, bitsandbytes, VRAM, 4-bit); `spoken` is how a person says it. A general
speech model hears "bits and bytes" and writes three words: that gap is what fine-tuning on your domain closes.

The split is by SENTENCE and by VOICE: the 30 training sentences and the 24 held-out ("test") sentences share the
domain's words but no sentence, and the held-out clips are spoken by voices no training clip uses, so the held-out WER
measures what a new speaker saying new sentences would get. `check_split()` below refuses to write a set where a test
sentence (after Whisper's text normaliser) is also a training one, or where a voice is in both lists. Each clip's voice
and speed are drawn from its split's voices and SPEEDS with a seeded generator (SEED), and written to
transcripts.jsonl beside the text, so the set can be remade exactly.

jfk_16k.flac is not made here: it is a real recording (see README.md in this folder).
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
from course_utils.topics.speech import SAMPLE_RATE, load_audio, normalize_text  # noqa: E402

SEED = 10  # picks each clip's voice and speed
VOICES = {  # espeak-ng's American English with its voice variants; the held-out voices never speak a training clip
    "train": ["en-us", "en-us+m2", "en-us+m3", "en-us+f2", "en-us+f3"],
    "test": ["en-us+m4", "en-us+m5", "en-us+f4"],
}
SPEEDS = [175, 190, 205]  # words per minute
PAD_S = (0.3, 0.2)  # silence before and after the speech: something for the voice-activity step to trim

# (text as written, text as spoken)
TRAIN = [
    ("Load it in 4-bit with bitsandbytes.", "Load it in four bit with bits and bytes."),
    ("QLoRA trains small adapters.", "Q Lora trains small adapters."),
    ("It fits in 12 GB of VRAM.", "It fits in twelve gigabytes of V RAM."),
    ("Gradient checkpointing saves memory.", "Gradient checkpointing saves memory."),
    ("LoRA adds low-rank adapters.", "Lora adds low rank adapters."),
    ("Merge the adapter, then export to ONNX.", "Merge the adapter, then export to onnx."),
    ("PyTorch runs the model on the GPU.", "Pie torch runs the model on the G P U."),
    ("Set the micro-batch to 8 on 12 GB.", "Set the micro batch to eight on twelve gigabytes."),
    ("CUDA ran out of memory again.", "Cuda ran out of memory again."),
    ("Use bf16 when the card supports it.", "Use B F sixteen when the card supports it."),
    ("AdamW keeps two moments for every weight.", "Adam W keeps two moments for every weight."),
    ("The tokenizer splits words into pieces.", "The tokenizer splits words into pieces."),
    ("Whisper hears 30 seconds at a time.", "Whisper hears thirty seconds at a time."),
    ("LLaVA reads images with a vision encoder.", "Lava reads images with a vision encoder."),
    ("YOLO draws boxes around every object.", "Yolo draws boxes around every object."),
    ("Export the detector to ONNX for the server.", "Export the detector to onnx for the server."),
    ("bitsandbytes quantizes the weights to 4-bit.", "Bits and bytes quantizes the weights to four bit."),
    ("QLoRA fine-tunes an 8B model on one GPU.", "Q Lora fine tunes an eight B model on one G P U."),
    ("LoRA rank 16 is a good start.", "Lora rank sixteen is a good start."),
    ("Gradient accumulation keeps the effective batch.", "Gradient accumulation keeps the effective batch."),
    ("The VRAM estimate was close to the measurement.", "The V RAM estimate was close to the measurement."),
    ("fp16 needs loss scaling to stay stable.", "F P sixteen needs loss scaling to stay stable."),
    ("Paged optimizers move states to the CPU.", "Paged optimizers move states to the C P U."),
    ("The KV cache grows with every token.", "The K V cache grows with every token."),
    ("Flash attention saves memory on long sequences.", "Flash attention saves memory on long sequences."),
    ("Stable Diffusion trains a LoRA in an hour.", "Stable Diffusion trains a Lora in an hour."),
    ("Check the WER on the held-out clips.", "Check the W E R on the held out clips."),
    ("The learning rate warms up for 5 steps.", "The learning rate warms up for five steps."),
    ("Merge LoRA weights before you quantize.", "Merge Lora weights before you quantize."),
    ("Reranking puts the best chunk first.", "Reranking puts the best chunk first."),
]
TEST = [
    ("QLoRA keeps the base model in 4-bit.", "Q Lora keeps the base model in four bit."),
    ("bitsandbytes needs enough VRAM.", "Bits and bytes needs enough V RAM."),
    ("Load LLaVA in 4-bit on the GPU.", "Load Lava in four bit on the G P U."),
    ("QLoRA saves VRAM with paged AdamW.", "Q Lora saves V RAM with paged Adam W."),
    ("The ONNX model runs without PyTorch.", "The onnx model runs without Pie torch."),
    ("bitsandbytes works on CUDA cards.", "Bits and bytes works on Cuda cards."),
    ("A 12 GB card fits Whisper small.", "A twelve gigabyte card fits whisper small."),
    ("Train the LoRA adapter with bf16.", "Train the Lora adapter with B F sixteen."),
    ("YOLO finds the elephant in the photo.", "Yolo finds the elephant in the photo."),
    ("The KV cache makes generation faster.", "The K V cache makes generation faster."),
    ("fp16 overflowed, so use bf16.", "F P sixteen overflowed, so use B F sixteen."),
    ("Measure the WER before fine-tuning.", "Measure the W E R before fine tuning."),
    ("The tokenizer has a chat template.", "The tokenizer has a chat template."),
    ("CUDA reports the peak memory.", "Cuda reports the peak memory."),
    ("Quantize the 8B model to 4-bit.", "Quantize the eight B model to four bit."),
    ("Gradient checkpointing trades compute for VRAM.", "Gradient checkpointing trades compute for V RAM."),
    ("Export YOLO to ONNX and check the boxes.", "Export Yolo to onnx and check the boxes."),
    ("The adapter file is only a few megabytes.", "The adapter file is only a few megabytes."),
    ("PyTorch frees memory after the step.", "Pie torch frees memory after the step."),
    ("A LoRA of rank 8 trains in minutes.", "A Lora of rank eight trains in minutes."),
    ("Whisper writes timestamps for long audio.", "Whisper writes timestamps for long audio."),
    ("The CPU is too slow for 8B models.", "The C P U is too slow for eight B models."),
    ("Retrieval finds the chunk, the LLM answers.", "Retrieval finds the chunk, the L L M answers."),
    ("Lower the micro-batch when VRAM runs out.", "Lower the micro batch when V RAM runs out."),
]


def check_split(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> None:
    """No held-out sentence may also be a training sentence (compared after Whisper's normaliser), nor a held-out voice
    a training voice."""
    if set(VOICES["train"]) & set(VOICES["test"]):
        raise SystemExit(f"voices in both splits: {sorted(set(VOICES['train']) & set(VOICES['test']))}")
    seen = {normalize_text(text) for text, _ in train}
    shared = [text for text, _ in test if normalize_text(text) in seen]
    if shared:
        raise SystemExit(f"test sentences also in train: {shared}")
    if len({normalize_text(t) for t, _ in test}) != len(test):
        raise SystemExit("a test sentence appears twice")


def speak(text: str, voice: str, wpm: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"  # espeak-ng writes 22,050 Hz mono
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
        return load_audio(wav)  # -> 16 kHz float32 (polyphase resampling)


def main() -> None:
    check_split(TRAIN, TEST)
    rng = np.random.default_rng(SEED)
    for old in [*HERE.glob("train_*.*"), *HERE.glob("test_*.*")]:
        old.unlink()
    rows = []
    for split, sentences in (("train", TRAIN), ("test", TEST)):
        for i, (text, spoken) in enumerate(sentences, start=1):
            voice, wpm = VOICES[split][rng.integers(len(VOICES[split]))], int(SPEEDS[rng.integers(len(SPEEDS))])
            audio = speak(spoken, voice, wpm)
            voiced = np.flatnonzero(np.abs(audio) > 1e-3)
            audio = audio[voiced[0]: voiced[-1] + 1]
            audio = 0.8 * audio / np.abs(audio).max()
            audio = np.concatenate([np.zeros(int(PAD_S[0] * SAMPLE_RATE)), audio, np.zeros(int(PAD_S[1] * SAMPLE_RATE))])
            name = f"{split}_{i:02d}.flac"
            sf.write(HERE / name, audio.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            rows.append({"file": name, "text": text, "spoken": spoken, "split": split, "voice": voice, "wpm": wpm,
                         "seconds": round(len(audio) / SAMPLE_RATE, 2)})
            print(f"{name}: {rows[-1]['seconds']:.2f} s  {voice:<9} {wpm}  {text}")
    (HERE / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
