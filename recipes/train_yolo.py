#!/usr/bin/env python
"""Fine-tune an Ultralytics YOLO detector, score it on the held-out test split, export it (lesson 08, as one script).

    python train_yolo.py --data data.yaml --model yolov8n.pt --epochs 30 --imgsz 640 --batch 16 --device 0 \\
        --project runs --name wildlife --export onnx

What it does, in the lesson's order:
  1. checks that no image is in two splits by content (sha256 of the file bytes) and, by default, scores val and
     test without the copies (cleaned split lists are written next to the run; --keep-leaks to skip);
  2. scores the starting point on the held-out split (the network train() starts from: pretrained tensors copied
     where their shape fits, a fresh head for your classes);
  3. trains (Ultralytics prints each epoch's losses; the val split picks best.pt and drives early stopping);
  4. scores best.pt on the test split when the data yaml has one (else on val, and says so);
  5. with --export onnx: exports, runs the ONNX file in ONNX Runtime and compares its raw outputs with PyTorch's.
Writes <project>/<name>/ (Ultralytics' run folder: weights/best.pt, results.csv, ...) and, atomically,
<project>/<name>/metrics.json: first and last training loss, mAP before and after, the ONNX check.

Offline and reproducible settings (Ultralytics reads the environment at import):
  YOLO_OFFLINE=1       no connectivity probe, update check or analytics (--offline sets it for you)
  YOLO_AUTOINSTALL=0   never pip-install at run time (--offline too); install onnx, onnxslim and onnxruntime up front
                       for --export onnx
  YOLO_CONFIG_DIR=DIR  where Ultralytics keeps its settings and fonts. It downloads Arial.ttf before every plot unless
                       DIR/Ultralytics/Arial.ttf exists: --font PATH copies a TrueType font there (by default
                       matplotlib's DejaVuSans.ttf, when matplotlib is installed and no font is there yet)
  --device cpu         mixed precision is off on the CPU (amp=False); on a GPU it is bf16 where the card computes it
                       natively (Ampere and newer), fp16 with a gradient scaler before that. Ultralytics' fp16 AMP check
                       (which downloads and unpickles yolo26n.pt) is replaced by its list of cards with broken AMP; with
                       several pre-Ampere GPUs ('0,1') Ultralytics trains in subprocesses that still run it: --no-amp
Checkpoints: Ultralytics loads .pt files with torch.load(weights_only=False) (they pickle the model class, and
unpickling can run code), so --model is checked before it is loaded, as the course's loader does: yolov8n.pt (a bare
name) is fetched by Ultralytics into its weights folder without loading it and must have the digest pinned below
(PINNED); any other .pt must match --sha256 when you give it (without it, the file is loaded as it is: only your own
checkpoints). The run writes weights/best.pt.sha256 beside best.pt (what lesson 12's demo checks before loading).
Only pip packages: ultralytics (with torch), pyyaml, and onnx + onnxslim + onnxruntime for --export onnx.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SPLITS = ("train", "val", "test")
# the checkpoint names the script fetches by name, and their sha256 (the course's pin for the v8.4.0 release)
PINNED = {"yolov8n.pt": "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36"}
# Copied from course_utils/topics/yolo.py:IMAGE_SUFFIXES
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data.yaml with train, val (and test, recommended) and names")
    p.add_argument("--model", default="yolov8n.pt",
                   help="yolov8n.pt: COCO-pretrained checkpoint to fine-tune; yolov8n.yaml: the architecture, random weights")
    p.add_argument("--sha256", default=None,
                   help="expected sha256 of the --model .pt file, checked before it is loaded (default for yolov8n.pt: "
                        "the pinned digest)")
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs (early stopping may end sooner)")
    p.add_argument("--imgsz", type=int, default=640, help="training and inference image size (a multiple of 32)")
    p.add_argument("--batch", type=int, default=16, help="images per forward/backward pass (~3 GiB at 640 px for n)")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch: gradients accumulate until this many images")
    p.add_argument("--device", default="0", help="'0' (first GPU), '0,1', or 'cpu'")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for a GPU, off for the CPU)")
    p.add_argument("--patience", type=int, default=10, help="early stopping: epochs without a better val fitness")
    p.add_argument("--warmup-epochs", type=float, default=3.0, help="learning-rate warm-up epochs")
    p.add_argument("--close-mosaic", type=int, default=None,
                   help="turn mosaic off for the last N epochs (default: a quarter of --epochs, at most 10)")
    p.add_argument("--workers", type=int, default=8, help="data-loading processes (0: in this process)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--project", default="runs", help="folder for the run folders")
    p.add_argument("--name", default="train", help="run folder name inside --project (reused if it exists)")
    p.add_argument("--export", choices=("none", "onnx"), default="none", help="export best.pt and check the export")
    p.add_argument("--keep-leaks", action="store_true",
                   help="score val/test as they are even if some of their images are copies of training images")
    p.add_argument("--offline", action="store_true", help="set YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=0 before import")
    p.add_argument("--font", default=None,
                   help="a .ttf to install as Ultralytics' Arial.ttf (default: matplotlib's DejaVuSans.ttf if none is there)")
    return p.parse_args(argv)


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


# Ultralytics' own list of GPUs whose mixed precision gives NaN losses or zero mAP (``check_amp`` in
# ``ultralytics/utils/checks.py``; tests/test_devices.py checks it is still the pinned Ultralytics' pattern).
# Copied from course_utils/topics/yolo.py:AMP_BROKEN_GPUS
AMP_BROKEN_GPUS = r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)"


# Copied from course_utils/topics/yolo.py:amp_check_offline
def amp_check_offline(model: Any) -> bool:
    """Ultralytics' ``check_amp`` without its download: AMP stays on for a GPU unless Ultralytics lists the card as
    one whose AMP is broken (GTX 16xx, some Quadro T-series), then training runs in fp32. Its other half, comparing a
    downloaded ``yolo26n.pt``'s detections in fp32 and AMP, is what the course skips (an unpinned pickle)."""
    import re

    import torch

    device = next(model.parameters()).device
    if device.type in {"cpu", "mps"}:
        return False
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if re.search(AMP_BROKEN_GPUS, name, re.IGNORECASE):
            print(f"AMP off: Ultralytics lists the {name} among the GPUs whose mixed precision gives NaN losses or "
                  "zero mAP, so this run trains in fp32.")
            return False
    return True


def amp_setting(device, amp=None):
    """Ultralytics' ``amp`` for ``--device``: ``"bf16"`` where the (first) card computes bf16 natively, ``True``
    (fp16 with a gradient scaler) on older GPUs, ``False`` on the CPU or with --no-amp."""
    if amp is False or device == "cpu":
        return False
    first = str(device).split(",")[0].strip()
    return "bf16" if bf16_native(int(first) if first.isdigit() else first) else True


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_checkpoint(model, sha256=None):
    """The path of --model once its sha256 is the expected one (--sha256, or PINNED for a bare pinned name), checked
    before anything unpickles it; exits with one sentence otherwise."""
    expected = (sha256 or (PINNED.get(model) if model == Path(model).name else None) or "").lower() or None
    path = Path(model)
    if model in PINNED and model == path.name:  # Ultralytics' own download, without loading it
        from ultralytics.utils.downloads import attempt_download_asset

        path = Path(attempt_download_asset(model))
    if not path.is_file():
        sys.exit(f"--model {model} is not a file: give the path of a .pt checkpoint, or yolov8n.pt to fetch it.")
    if expected is not None:
        got = file_sha256(path)
        if got != expected:
            sys.exit(f"{path} has sha256 {got}, not the expected {expected}: not loading it.")
    return str(path)


def write_text_atomic(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2))


def install_font(font):
    """Put a TrueType font where Ultralytics looks for Arial.ttf, so it downloads none (call after import)."""
    from ultralytics.utils import USER_CONFIG_DIR

    targets = [Path(USER_CONFIG_DIR) / n for n in ("Arial.ttf", "Arial.Unicode.ttf")]
    explicit = font is not None
    if not explicit:
        if all(t.exists() for t in targets):
            return
        try:
            import matplotlib
        except ImportError:
            return
        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in targets:
        if explicit or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(font, tmp)
            os.replace(tmp, target)


# ------------------------------------------------------------------ the same steps as the lesson's cells
def split_files(spec, split):
    """Image files of one split: a folder of images or a .txt list of image paths (relative to the yaml's path)."""
    entry = Path(spec[split])
    if not entry.is_absolute():
        raw = str(spec[split])
        entry = Path(spec["path"]) / raw
        if not entry.exists() and raw.startswith("../"):  # Roboflow exports: ../train/images next to data.yaml
            entry = Path(spec["path"]) / raw[3:]
    if entry.suffix == ".txt":
        return [Path(line.strip()) if Path(line.strip()).is_absolute() else entry.parent / line.strip()
                for line in entry.read_text().splitlines() if line.strip()]
    return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def drop_cross_split_copies(spec):
    """Keep each image (by sha256 of its bytes) only in the first split it appears in: train, then val, then test.

    Returns (kept files per split, number of distinct images found in more than one split).
    """
    splits = [s for s in SPLITS if spec.get(s)]
    files = {s: split_files(spec, s) for s in splits}
    hashes = {s: [file_sha256(p) for p in files[s]] for s in splits}
    owner, kept = {}, {s: [] for s in splits}
    for s in splits:
        for path, digest in zip(files[s], hashes[s]):
            if owner.setdefault(digest, s) == s:
                kept[s].append(path)
    crossing = len({d for d in owner if sum(d in set(hashes[s]) for s in splits) > 1})
    return kept, crossing


def main(argv=None):
    args = parse_args(argv)
    if args.offline:
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
    if Path(args.model).suffix == ".pt":
        args.model = checked_checkpoint(args.model, args.sha256)

    import yaml
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.nn.tasks import DetectionModel

    install_font(args.font)
    data_path = Path(args.data).resolve()
    spec = yaml.safe_load(data_path.read_text())
    base = Path(spec.get("path") or ".")
    spec["path"] = str(base if base.is_absolute() else (data_path.parent / base).resolve())
    names = spec["names"] if isinstance(spec["names"], dict) else dict(enumerate(spec["names"]))
    run_dir = Path(args.project).resolve() / args.name
    run_dir.mkdir(parents=True, exist_ok=True)

    # 1. no image in two splits
    kept, crossing = drop_cross_split_copies(spec)
    if crossing:
        print(f"{crossing} images are in more than one split" + ("" if args.keep_leaks else "; val/test are scored without them"))
    if crossing and not args.keep_leaks:
        for s in [s for s in SPLITS if spec.get(s)][1:]:
            listing = run_dir / f"{s}_clean.txt"
            listing.write_text("".join(f"{p.resolve()}\n" for p in kept[s]))
            spec[s] = str(listing)
    clean_yaml = run_dir / "data_checked.yaml"
    clean_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    eval_split = "test" if spec.get("test") else "val"
    if eval_split == "val":
        print("note: the data yaml has no test split; scoring on val, which also picked best.pt (optimistic)")

    device = args.device
    amp = amp_setting(device, args.amp)
    import ultralytics.engine.trainer as trainer_module

    trainer_module.check_amp = amp_check_offline  # fp16's AMP check would download and unpickle an unpinned yolo26n.pt

    def score(network, split):
        validator = DetectionValidator(args=dict(data=str(clean_yaml), split=split, imgsz=args.imgsz, batch=args.batch,
                                                 device=device, plots=False, verbose=False, project=str(run_dir.parent),
                                                 name=f"{args.name}_score_{split}", exist_ok=True))
        stats = validator(model=network)
        return {"map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"])}

    # 2. the starting point
    model = YOLO(args.model)
    start = DetectionModel(model.model.yaml, nc=len(names), verbose=False)
    if Path(args.model).suffix == ".pt":
        start.load(model.model)
    start.names = names
    before = score(start, eval_split)

    # 3. train
    close_mosaic = args.close_mosaic if args.close_mosaic is not None else min(10, args.epochs // 4)
    model.train(data=str(clean_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.nbs,
                device=device, amp=amp, patience=args.patience, warmup_epochs=args.warmup_epochs,
                close_mosaic=close_mosaic, workers=args.workers, seed=args.seed, deterministic=True,
                project=str(run_dir.parent), name=args.name, exist_ok=True, plots=False)
    save_dir = Path(model.trainer.save_dir)
    with open(save_dir / "results.csv") as handle:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    losses = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]

    # 4. best.pt on the held-out split
    best_path = save_dir / "weights" / "best.pt"
    best_sha256 = file_sha256(best_path)
    write_text_atomic(best_path.with_name("best.pt.sha256"), f"{best_sha256}  best.pt\n")
    best = YOLO(best_path)
    after = score(best.model, eval_split)
    metrics = {
        "data": str(data_path), "model": args.model, "epochs_run": len(rows), "eval_split": eval_split,
        "eval_images": len(kept.get(eval_split, [])), "cross_split_duplicates": crossing,
        "train_loss_first": losses[0], "train_loss_last": losses[-1], "train_loss_per_epoch": losses,
        "before": before, "after": after, "map50_95_gain": after["map50_95"] - before["map50_95"],
        "best": str(best_path), "best_sha256": best_sha256, "names": {int(k): v for k, v in names.items()},
    }

    # 5. export and check the export
    if args.export == "onnx":
        import numpy as np
        import onnxruntime as ort
        import torch

        onnx_path = Path(best.export(format="onnx", imgsz=args.imgsz, simplify=True, dynamic=False, device="cpu"))
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(args.seed))
        net = YOLO(best_path).model.float().eval().fuse()
        with torch.inference_mode():
            ref = net(x)[0].numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        metrics.update(onnx=str(onnx_path), onnx_output_shape=list(out.shape),
                       onnx_max_abs_diff=float(np.abs(ref - out).max()))

    write_json_atomic(save_dir / "metrics.json", metrics)
    print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}; {eval_split} mAP50-95 {before['map50_95']:.3f} -> "
          f"{after['map50_95']:.3f}; metrics in {save_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
