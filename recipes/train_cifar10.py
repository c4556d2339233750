"""Train a ResNet-9 on CIFAR-10 (or your own 32x32 images) the speed-record way: lesson 03 of "Deep learning on one
12 GB GPU" in one file.

Needs only PyTorch (and torchvision for CIFAR-10 itself). The whole data set and its augmentation (random crop, flip,
cutout) live on the device, tensors are channels-last, autocast is bf16/fp16, SGD + Nesterov runs a linear one-cycle
schedule with label smoothing; the checkpoint is written atomically.

    python train_cifar10.py --data_dir data --download --epochs 24 --output_dir out/cifar10   # CIFAR-10 (170 MB)
    python train_cifar10.py --npz shapes.npz --epochs 3 --widths 8,16,32,64 --device cpu --output_dir out/mine

``--download`` uses torchvision's downloader, which checks the archive's MD5 and every file's MD5 on each load.
``--npz`` holds uint8 arrays ``x_train`` (N x 3 x 32 x 32, or N x 32 x 32 x 3), ``y_train`` (N), ``x_test``,
``y_test``; your own files are read as they are. Writes ``<output_dir>/model.pt`` (a ``state_dict`` for
``resnet9(widths)``: ``net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))``, since a
checkpoint saved on a GPU holds CUDA tensors) and ``<output_dir>/metrics.json``. The test split is never trained on.
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (one of)")
    data.add_argument("--data_dir", type=Path, default=None, help="folder with torchvision's cifar-10-batches-py/")
    data.add_argument("--npz", type=Path, default=None, help="an .npz with x_train, y_train, x_test, y_test (uint8)")
    data.add_argument("--download", action="store_true", help="download CIFAR-10 into --data_dir if it is missing")
    p.add_argument("--epochs", type=int, default=24, help="passes over the training set (default 24)")
    p.add_argument("--batch_size", type=int, default=512, help="images per optimizer step (default 512)")
    p.add_argument("--lr", type=float, default=0.4, help="peak learning rate, SGD + Nesterov (default 0.4)")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="(default 5e-4)")
    p.add_argument("--label_smoothing", type=float, default=0.2, help="(default 0.2)")
    p.add_argument("--widths", default="64,128,256,512", help="channels of the four ResNet-9 stages")
    p.add_argument("--no_augment", action="store_true", help="train without crop/flip/cutout")
    p.add_argument("--tta", action="store_true", help="also report accuracy with flip test-time augmentation")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision (auto: bf16 where supported, fp16 + GradScaler on older GPUs, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output_dir", type=Path, default=Path("out/cifar10"), help="where model.pt and metrics.json go")
    args = p.parse_args(argv)
    if (args.data_dir is None) == (args.npz is None):
        p.error("give exactly one of --data_dir or --npz")
    try:
        args.widths = tuple(int(w) for w in args.widths.split(","))
        assert len(args.widths) == 4 and min(args.widths) >= 1
    except (ValueError, AssertionError):
        p.error("--widths takes four positive integers, e.g. 64,128,256,512")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


# ------------------------------------------------------------------------------------------------ the model

WIDTHS = (64, 128, 256, 512)  # channels of the four stages (--widths)

# Copied from notebooks/03_cifar10_fast_cnn.ipynb#a390c22c:conv_bn
def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


# Copied from notebooks/03_cifar10_fast_cnn.ipynb#a390c22c:Residual
class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


# Copied from notebooks/03_cifar10_fast_cnn.ipynb#a390c22c:Scale
class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


# Copied from notebooks/03_cifar10_fast_cnn.ipynb#a390c22c:resnet9
def resnet9(widths=WIDTHS, num_classes=10):
    w0, w1, w2, w3 = widths
    return nn.Sequential(
        conv_bn(3, w0),
        conv_bn(w0, w1), nn.MaxPool2d(2), Residual(w1),   # 32 -> 16
        conv_bn(w1, w2), nn.MaxPool2d(2),                 # 16 -> 8
        conv_bn(w2, w3), nn.MaxPool2d(2), Residual(w3),   # 8 -> 4
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(w3, num_classes, bias=False), Scale(0.125),
    )


def augment(images: torch.Tensor, pad: int = 4, cutout: int = 8) -> torch.Tensor:
    """Per-image random crop (reflect-padded), horizontal flip and cutout, on the images' own device."""
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), device=dev)
    rows = (dy + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    out = torch.where(torch.rand(n, 1, 1, 1, device=dev) < 0.5, out.flip(3), out)
    y0, x0 = torch.randint(0, h - cutout + 1, (2, n, 1, 1), device=dev)
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    square = (ys >= y0) & (ys < y0 + cutout) & (xs >= x0) & (xs < x0 + cutout)
    return out.masked_fill(square[:, None], 0)


# ------------------------------------------------------------------------------------------------- the data

def load_arrays(args: argparse.Namespace):
    """uint8 images N x 3 x 32 x 32 and int64 labels, train and test."""
    if args.npz is not None:
        import numpy as np

        with np.load(args.npz) as z:
            arrays = [torch.from_numpy(z[k]) for k in ("x_train", "y_train", "x_test", "y_test")]
    else:
        from torchvision.datasets import CIFAR10  # its own MD5 checks stay on

        try:
            train = CIFAR10(args.data_dir, train=True, download=args.download)
            test = CIFAR10(args.data_dir, train=False, download=args.download)
        except RuntimeError as err:
            raise SystemExit(f"CIFAR-10 is not in {args.data_dir} or fails its checksums ({err}); add --download, "
                             "or use --npz for your own arrays") from None
        arrays = [torch.from_numpy(train.data), torch.tensor(train.targets), torch.from_numpy(test.data),
                  torch.tensor(test.targets)]
    x_train, y_train, x_test, y_test = arrays
    if x_train.shape[-1] == 3:  # N x H x W x C -> N x C x H x W
        x_train, x_test = x_train.permute(0, 3, 1, 2).contiguous(), x_test.permute(0, 3, 1, 2).contiguous()
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


# Copied from recipes/train_mnist.py:choose_device
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


# Copied from recipes/train_mnist.py:choose_dtype
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
def evaluate(net, images, labels, dtype, tta=False, batch_size=1000) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (no label smoothing)."""
    net.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size]
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = net(x).float()
            if tta:
                logits = (logits + net(x.flip(3)).float()) / 2
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return correct / len(labels), loss_sum / len(labels)


# Copied from recipes/train_mnist.py:atomic_save
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
    mean = (x_train.float() / 255).mean(dim=(0, 2, 3), keepdim=True)
    std = (x_train.float() / 255).std(dim=(0, 2, 3), keepdim=True)
    data_dtype = dtype if dtype != torch.float32 else torch.float32
    to_device = lambda x: ((x.float() / 255 - mean) / std).to(device, data_dtype)  # noqa: E731
    x_train, x_test, y_train, y_test = to_device(x_train), to_device(x_test), y_train.to(device), y_test.to(device)

    model = resnet9(args.widths).to(device, memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(x_train) // args.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                    pct_start=0.2, anneal_strategy="linear", cycle_momentum=False)
    device_type = torch.device(device).type  # autocast and the scaler want "cuda", also for --device cuda:1
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    history = {"step": [], "train_loss": [], "test_loss": [], "test_accuracy": []}
    train_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x_train), device=device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            images = x_train[idx] if args.no_augment else augment(x_train[idx])
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(images), y_train[idx], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
        if device_type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - start
        test_acc, test_loss = evaluate(model, x_test, y_test, dtype)
        for key, value in zip(history, (epoch * steps_per_epoch, loss_sum.item() / steps_per_epoch, test_loss, test_acc)):
            history[key].append(value)
        print(f"epoch {epoch:2d}: train loss {history['train_loss'][-1]:.3f} (label-smoothed), test loss {test_loss:.3f}, "
              f"test accuracy {test_acc:.4f}, {train_seconds:.1f} s of training", flush=True)

    metrics = {"first_train_loss": history["train_loss"][0], "last_train_loss": history["train_loss"][-1],
               "test_loss": history["test_loss"][-1], "test_accuracy": history["test_accuracy"][-1],
               "history": history, "train_seconds": train_seconds,
               "images_per_s": args.epochs * steps_per_epoch * args.batch_size / train_seconds,
               "widths": list(args.widths), "device": device, "dtype": str(dtype).replace("torch.", ""), "seed": args.seed}
    if args.tta:
        metrics["test_accuracy_tta"] = evaluate(model, x_test, y_test, dtype, tta=True)[0]
    atomic_save(model.state_dict(), args.output_dir / "model.pt")
    atomic_save(json.dumps(metrics, indent=2).encode(), args.output_dir / "metrics.json")
    print(f"saved {args.output_dir / 'model.pt'}; test accuracy {metrics['test_accuracy']:.4f}")
    return metrics


if __name__ == "__main__":
    main()
