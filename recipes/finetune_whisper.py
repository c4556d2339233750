#!/usr/bin/env python
"""Fine-tune Whisper on your own recordings and measure the word error rate before and after (lesson 10, as one script).

The data: two folders (training and held-out) of audio files (``.wav`` or ``.flac``, any sample rate, mono or
stereo), each with a ``.txt`` beside it holding the transcript as your domain writes it (``clip01.wav`` +
``clip01.txt``). Keep each clip under 30 s, and keep the held-out sentences out of the training folder: the script
counts any held-out transcript that is also a training one and writes it to metrics.json (``eval_in_train``).

WER is measured on ``--eval_dir`` with greedy decoding before training and after, the same way both times, after
Whisper's English text normaliser (lower case, no punctuation, numbers as digits, US spelling; read from the model's
``normalizer.json``). While training, the held-out loss and WER are logged every ``--eval_steps`` steps. Needs only
pip packages: torch, transformers, jiwer, soundfile, scipy (to resample), bitsandbytes (8-bit AdamW on a GPU), and
tensorboard for ``--report_to tensorboard``.

    python finetune_whisper.py --model_name_or_path openai/whisper-small \\
        --revision 973afd24965f72e36ca33b3055d56a652f456b4d --train_dir clips/train --eval_dir clips/test \\
        --language en --max_steps 200 --learning_rate 1e-5 --per_device_train_batch_size 8 \\
        --gradient_accumulation_steps 2 --output_dir whisper-mydomain

Writes ``<output_dir>/model`` (the fine-tuned model with its processor: reload it with
``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained``) and
``<output_dir>/metrics.json`` (train loss first/last, held-out loss and WER before/after, peak VRAM, times), each
written under a temporary name and moved into place, so an interrupted run never leaves a half-written model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
AUDIO_SUFFIXES = (".wav", ".flac")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example:\n" + __doc__.split("\n\n")[3])
    p.add_argument("--model_name_or_path", required=True, help="hub id (openai/whisper-small) or a local model folder")
    p.add_argument("--revision", default=None, help="hub commit to pin the model to")
    p.add_argument("--train_dir", required=True, help="folder of training clips: audio + a .txt transcript beside each")
    p.add_argument("--eval_dir", required=True, help="folder of HELD-OUT clips (other sentences), same layout")
    p.add_argument("--language", default="en", help="language code written into the prompt (default en)")
    p.add_argument("--task", default="transcribe", choices=("transcribe", "translate"), help="Whisper's task token")
    p.add_argument("--max_steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--learning_rate", type=float, default=1e-5, help="peak learning rate (default 1e-5, usual for Whisper)")
    p.add_argument("--lr_scheduler_type", default="linear", help="linear (default), constant, cosine ...")
    p.add_argument("--warmup_steps", type=int, default=None, help="warm-up steps (default: 10%% of --max_steps)")
    p.add_argument("--per_device_train_batch_size", type=int, default=8, help="clips per micro-batch (default 8: ~5 GiB for small)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=2, help="micro-batches per optimizer step (default 2)")
    p.add_argument("--eval_steps", type=int, default=None, help="held-out loss and WER every N steps (default: max_steps / 5)")
    p.add_argument("--logging_steps", type=int, default=None, help="log the mean train loss every N steps (default: --eval_steps)")
    p.add_argument("--max_new_tokens", type=int, default=128, help="longest transcript generated for one clip (default 128)")
    p.add_argument("--no_gradient_checkpointing", action="store_true", help="keep activations (faster, more memory)")
    p.add_argument("--optim", default="auto", help="auto (8-bit AdamW on a GPU with bitsandbytes, else adamw_torch) or any Trainer optim")
    p.add_argument("--report_to", default="none", choices=("none", "tensorboard"), help="tensorboard: logs under <output_dir>/runs")
    p.add_argument("--use_cpu", action="store_true", help="train on the CPU even if a GPU is there")
    p.add_argument("--output_dir", required=True, help="where model/ and metrics.json go")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation order and data shuffling")
    args = p.parse_args(argv)
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if not args.learning_rate > 0:
        p.error("--learning_rate must be positive")
    return args


# ----------------------------------------------------------------------------------------------------- data


def load_audio(path: str | os.PathLike[str]) -> Any:
    """A file as 16 kHz mono float32 (stereo averaged; polyphase resampling, which filters before decimating)."""
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, sr // g)
    return np.asarray(audio, dtype=np.float32)


def read_folder(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``[{"file", "text", "audio"}]`` for every audio file in ``folder`` that has a ``.txt`` beside it (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder: give a folder of audio files with a .txt transcript beside each")
    clips, missing = [], []
    for audio_path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        text_path = audio_path.with_suffix(".txt")
        if not text_path.exists():
            missing.append(audio_path.name)
            continue
        clips.append({"file": audio_path.name, "text": text_path.read_text(encoding="utf-8").strip(),
                      "audio": load_audio(audio_path)})
    if missing:
        print(f"warning: {len(missing)} audio files in {folder} have no .txt and are skipped: {missing[:5]}")
    if not clips:
        raise SystemExit(f"no clips in {folder}: put clip.wav (or .flac) and clip.txt (its transcript) side by side")
    long = [c["file"] for c in clips if len(c["audio"]) > 30 * SAMPLE_RATE]
    if long:
        raise SystemExit(f"{len(long)} clips are longer than Whisper's 30 s window ({long[:3]}): cut them first")
    return clips


def prepare(clip: dict[str, Any], processor: Any) -> dict[str, Any]:
    """Log-mel features of the audio and the token ids of the transcript (after the prompt tokens)."""
    return {"input_features": processor.feature_extractor(clip["audio"], sampling_rate=SAMPLE_RATE).input_features[0],
            "labels": processor.tokenizer(clip["text"]).input_ids}


@dataclass
class SpeechSeq2SeqCollator:
    """Pads log-mel features and label ids separately; label padding becomes -100 (ignored by the loss)."""
    processor: Any
    decoder_start_token_id: int

    def __call__(self, examples):
        batch = self.processor.feature_extractor.pad([{"input_features": e["input_features"]} for e in examples],
                                                     return_tensors="pt")
        labels = self.processor.tokenizer.pad([{"input_ids": e["labels"]} for e in examples], return_tensors="pt")
        label_ids = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        if (label_ids[:, 0] == self.decoder_start_token_id).all():
            label_ids = label_ids[:, 1:]  # the model prepends <|startoftranscript|> itself
        batch["labels"] = label_ids
        return batch


# ------------------------------------------------------------------------------------------------ scoring


def word_error_rate(references: list[str], hypotheses: list[str], normalize: Any) -> float:
    """WER over the whole set after ``normalize`` (Whisper's English normaliser); empty references are skipped."""
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise SystemExit("every reference transcript is empty after normalisation: check the .txt files")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def transcribe(model: Any, processor: Any, audios: list[Any], args: argparse.Namespace, batch_size: int = 16) -> list[str]:
    """Greedy transcripts of 16 kHz arrays, batch by batch."""
    import torch

    texts = []
    for i in range(0, len(audios), batch_size):
        features = processor.feature_extractor(audios[i:i + batch_size], sampling_rate=SAMPLE_RATE,
                                               return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features.to(model.device, model.dtype), language=args.language, task=args.task,
                                 max_new_tokens=args.max_new_tokens)
        texts += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return texts


# ------------------------------------------------------------------------------------------------- saving


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_model_atomic(model: Any, processor: Any, target: Path) -> None:
    """Save into a temporary folder beside ``target``, then swap it in (the old one is removed only after)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(name: str, revision: str | None = None) -> tuple[Any, Any]:
    """Whisper in fp32 master weights whatever the checkpoint stores, and its processor: the trainer's bf16/fp16 is
    autocast on top (an fp16 checkpoint loaded as it is would train fp16 weights, which fp16's GradScaler refuses)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    kwargs = {"revision": revision} if revision else {}
    processor = WhisperProcessor.from_pretrained(name, **kwargs)
    model = WhisperForConditionalGeneration.from_pretrained(name, dtype=torch.float32, **kwargs)
    return model, processor


# Copied from course_utils/core/gpu.py:bf16_native
def bf16_native(device: object = None) -> bool:
    """The course's one bf16 rule: bf16 only where the card computes it natively, compute capability 8.0 (Ampere) or
    newer. ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or an RTX 20xx (it counts emulation), where bf16
    is slow and Ultralytics refuses it; those cards get fp16 with a gradient scaler. ``device`` is a CUDA device (index,
    ``"cuda:1"``, ``torch.device``) or None for the current one; a CPU device, or no GPU, is False."""
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type != "cuda":
            return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import numpy as np
    import torch
    import transformers
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    transformers.logging.set_verbosity_error()
    set_seed(args.seed)
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    cuda = torch.cuda.is_available() and not args.use_cpu
    bf16 = cuda and bf16_native()  # else fp16 autocast + GradScaler on a GPU (T4, RTX 20xx), fp32 on a CPU
    optim = args.optim
    if optim == "auto":
        import importlib.util

        optim = "adamw_bnb_8bit" if cuda and importlib.util.find_spec("bitsandbytes") else "adamw_torch"

    model, processor = load_model(args.model_name_or_path, args.revision)
    model.to("cuda" if cuda else "cpu")
    processor.tokenizer.set_prefix_tokens(language=args.language, task=args.task, predict_timestamps=False)
    normalize = processor.tokenizer.normalize  # Whisper's EnglishTextNormalizer with the model's normalizer.json

    train_clips, eval_clips = read_folder(args.train_dir), read_folder(args.eval_dir)
    train_texts = {normalize(c["text"]) for c in train_clips}
    eval_in_train = sum(normalize(c["text"]) in train_texts for c in eval_clips)
    if eval_in_train:
        print(f"warning: {eval_in_train} held-out transcripts are also training ones: their WER is not held-out")
    references = [c["text"] for c in eval_clips]
    print(f"{len(train_clips)} training clips, {len(eval_clips)} held-out clips; model {args.model_name_or_path}")

    model.eval()
    hyps_before = transcribe(model, processor, [c["audio"] for c in eval_clips], args)
    wer_before = word_error_rate(references, hyps_before, normalize)
    print(f"held-out WER before: {wer_before:.4f}")

    train_set = [prepare(c, processor) for c in train_clips]
    eval_set = [prepare(c, processor) for c in eval_clips]
    collator = SpeechSeq2SeqCollator(processor, model.config.decoder_start_token_id)
    model.generation_config.language, model.generation_config.task = args.language, args.task
    model.generation_config.max_new_tokens = args.max_new_tokens

    def compute_metrics(prediction):
        label_ids = np.where(prediction.label_ids == -100, processor.tokenizer.pad_token_id, prediction.label_ids)
        hyps = processor.batch_decode(prediction.predictions, skip_special_tokens=True)
        refs = processor.batch_decode(label_ids, skip_special_tokens=True)
        return {"wer": word_error_rate(refs, [h.strip() for h in hyps], normalize)}

    eval_steps = args.eval_steps or max(1, args.max_steps // 5)
    if args.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(output_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")))
    with tempfile.TemporaryDirectory(prefix="whisper-trainer-") as trainer_dir:
        training_args = Seq2SeqTrainingArguments(
            output_dir=trainer_dir, per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=16, gradient_accumulation_steps=args.gradient_accumulation_steps,
            learning_rate=args.learning_rate, lr_scheduler_type=args.lr_scheduler_type,
            warmup_steps=args.warmup_steps if args.warmup_steps is not None else args.max_steps // 10,
            max_steps=args.max_steps, activation_checkpointing=not args.no_gradient_checkpointing,
            bf16=bf16, fp16=cuda and not bf16, optim=optim, use_cpu=not cuda,
            eval_strategy="steps", eval_steps=eval_steps, eval_on_start=True, logging_steps=args.logging_steps or eval_steps,
            predict_with_generate=True, save_strategy="no", report_to=args.report_to, remove_unused_columns=False,
            seed=args.seed, disable_tqdm=True,
        )
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
        trainer = Seq2SeqTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                                 data_collator=collator, compute_metrics=compute_metrics)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train_start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_start
    peak_vram_gb = torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0
    model.config.use_cache = True
    model.eval()

    log = trainer.state.log_history
    losses = [h["loss"] for h in log if "loss" in h]
    evals = [h for h in log if "eval_loss" in h]
    hyps_after = transcribe(model, processor, [c["audio"] for c in eval_clips], args)
    wer_after = word_error_rate(references, hyps_after, normalize)
    print(f"held-out WER after: {wer_after:.4f} (before {wer_before:.4f})")

    save_model_atomic(model, processor, output_dir / "model")
    metrics = {
        "model": args.model_name_or_path, "n_train": len(train_clips), "n_eval": len(eval_clips),
        "eval_in_train": eval_in_train, "max_steps": args.max_steps, "learning_rate": args.learning_rate,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "eval_loss_before": evals[0]["eval_loss"] if evals else None,
        "eval_loss_after": evals[-1]["eval_loss"] if evals else None,
        "wer_before": wer_before, "wer_after": wer_after,
        "wer_gain_over_base": wer_before - wer_after,  # the margin over the model before fine-tuning, same clips
        "eval_curve": [{"step": h["step"], "loss": h["eval_loss"], "wer": h.get("eval_wer")} for h in evals],
        "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start, "peak_vram_gb": peak_vram_gb,
        "device": "cuda" if cuda else "cpu", "optim": optim, "bf16": bf16,
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval_curve"}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
