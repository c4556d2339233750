"""Train a small CNN on MNIST (or your own digit arrays): lesson 02 of "Deep learning on one 12 GB GPU" in one file.

Needs only PyTorch (and torchvision for MNIST itself). The network, the AdamW + one-cycle loop, mixed precision and the
atomic checkpoint are the lesson's; copy this file into your project and change what you need.

    python train_mnist.py --data_dir data --download --epochs 12 --output_dir out/mnist     # MNIST (11 MB download)
    python train_mnist.py --npz digits.npz --epochs 5 --device cpu --output_dir out/mine     # your own arrays

``--npz`` holds uint8 arrays ``x_train`` (N x 28 x 28 or N x 1 x 28 x 28), ``y_train`` (N), ``x_test``, ``y_test``.
Writes ``<output_dir>/model.pt`` (a ``state_dict``; reload with ``torch.load(path, map_location="cpu",
weights_only=True)`` into ``make_cnn(width)``: a checkpoint saved on a GPU holds CUDA tensors) and ``<output_dir>/metrics.json`` (losses per epoch, test accuracy). The test split is never
trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (one of)")
    data.add_argument("--data_dir", type=Path, default=None, help="folder with torchvision's MNIST/raw/ layout")
    data.add_argument("--npz", type=Path, default=None, help="an .npz with x_train, y_train, x_test, y_test (uint8)")
    data.add_argument("--download", action="store_true", help="download MNIST into --data_dir if it is missing")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training set (default 12)")
    p.add_argument("--batch_size", type=int, default=128, help="images per optimizer step (default 128)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule (default 3e-3)")
    p.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv block (default 32)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision (auto: bf16 where supported, fp16 + GradScaler on older GPUs, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output_dir", type=Path, default=Path("out/mnist"), help="where model.pt and metrics.json go")
    args = p.parse_args(argv)
    if (args.data_dir is None) == (args.npz is None):
        p.error("give exactly one of --data_dir or --npz")
    for name in ("epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


# ------------------------------------------------------------------------------------------------ the model

# Copied from notebooks/02_pytorch_mnist.ipynb#998b1d7e:conv_block
def conv_block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


# Copied from notebooks/02_pytorch_mnist.ipynb#998b1d7e:make_cnn
def make_cnn(width, block=conv_block):
    return nn.Sequential(
        *block(1, width), *block(width, width), nn.MaxPool2d(2),              # 28x28 -> 14x14
        *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),  # -> 7x7
        nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(2 * width * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


# ------------------------------------------------------------------------------------------------- the data

def load_arrays(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images N x 1 x 28 x 28 and int64 labels, train and test."""
    if args.npz is not None:
        import numpy as np

        with np.load(args.npz) as z:
            x_train, y_train, x_test, y_test = (torch.from_numpy(z[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    else:
        from torchvision.datasets import MNIST

        try:
            train = MNIST(args.data_dir, train=True, download=args.download)
            test = MNIST(args.data_dir, train=False, download=args.download)
        except RuntimeError as err:
            raise SystemExit(f"MNIST is not in {args.data_dir}/MNIST/raw ({err}); add --download, or put the four "
                             "files (train/t10k images/labels, .gz or unpacked) there") from None
        x_train, y_train, x_test, y_test = train.data, train.targets, test.data, test.targets
    if x_train.dim() == 3:
        x_train, x_test = x_train.unsqueeze(1), x_test.unsqueeze(1)
    return x_train, y_train.long(), x_test, y_test.long()


# ----------------------------------------------------------------------------------------------- train, eval

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


def choose_device(name: str) -> str:
    """``auto``: the GPU if there is one; else what was asked, e.g. ``cuda:1`` (the second GPU) or ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise SystemExit(f"--device {name!r} is not a device PyTorch knows: use auto, cuda, cuda:1 or cpu.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} but PyTorch sees no GPU: use --device cpu.")
    return name


def choose_dtype(name: str, device: str) -> torch.dtype:
    """auto: bf16 where the card computes it natively, fp16 (with a GradScaler) on older GPUs, fp32 on the CPU."""
    on_gpu = torch.device(device).type == "cuda"
    if name == "auto":
        if not on_gpu:
            return torch.float32
        return torch.bfloat16 if bf16_native(device) else torch.float16
    if name == "bf16" and on_gpu and not bf16_native(device):
        raise SystemExit(f"--dtype bf16: the {torch.cuda.get_device_name(device)} has no native bf16 (compute "
                         "capability below 8.0) and would emulate it slowly; use --dtype fp16 (or auto).")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


@torch.no_grad()
def evaluate(model, loader, device, dtype) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / seen, correct / seen


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file next to ``path`` and rename it: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(obj, (bytes, bytearray)):
                handle.write(obj)
            else:
                torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    x_train, y_train, x_test, y_test = load_arrays(args)
    mean, std = (x_train.float() / 255).mean().item(), (x_train.float() / 255).std().item()
    norm = lambda x: (x.float() / 255 - mean) / std  # noqa: E731  (statistics of the training set only)
    train_loader = DataLoader(TensorDataset(norm(x_train), y_train), batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
    test_loader = DataLoader(TensorDataset(norm(x_test), y_test), batch_size=1000)

    model = make_cnn(args.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader))
    device_type = torch.device(device).type  # autocast and the scaler want "cuda", also for --device cuda:1
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    history = {"step": [], "train_loss": [], "test_loss": [], "test_accuracy": []}
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        for images, labels in train_loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
        test_loss, test_acc = evaluate(model, test_loader, device, dtype)
        for key, value in zip(history, (epoch * len(train_loader), loss_sum.item() / seen, test_loss, test_acc)):
            history[key].append(value)
        print(f"epoch {epoch:2d}: train loss {history['train_loss'][-1]:.4f}, test loss {test_loss:.4f}, "
              f"test accuracy {test_acc:.4f}, {time.perf_counter() - start:.1f} s", flush=True)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(model.state_dict(), args.output_dir / "model.pt")
    metrics = {"first_train_loss": history["train_loss"][0], "last_train_loss": history["train_loss"][-1],
               "test_loss": history["test_loss"][-1], "test_accuracy": history["test_accuracy"][-1],
               "history": history, "train_seconds": time.perf_counter() - start, "n_train": len(x_train),
               "n_test": len(x_test), "width": args.width, "normalisation": {"mean": mean, "std": std},
               "device": device, "dtype": str(dtype).replace("torch.", ""), "seed": args.seed}
    atomic_save(json.dumps(metrics, indent=2).encode(), args.output_dir / "metrics.json")
    print(f"saved {args.output_dir / 'model.pt'}; test accuracy {metrics['test_accuracy']:.4f}")
    return metrics


if __name__ == "__main__":
    main()
