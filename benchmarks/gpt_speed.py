"""How fast lesson 04's GPT trains and generates: tokens/s for the training step and for cached vs uncached generation.

The configuration is the issue's reference point (4 layers, 4 heads, 128 wide, context 64, batch 12, character
vocabulary of 65, no dropout, no biases), one training step = forward + backward + AdamW. With ``--nanogpt PATH`` it
also times nanoGPT's ``model.py`` (github.com/karpathy/nanoGPT; not shipped with the course: fetch it yourself) at the
same configuration, interleaving the two so that a busy machine slows both alike, and prints the ratio of medians::

    python benchmarks/gpt_speed.py                                   # ours only
    python benchmarks/gpt_speed.py --nanogpt ~/src/nanoGPT/model.py  # side by side, ratio ours / nanoGPT
    python benchmarks/gpt_speed.py --nanogpt ~/src/nanoGPT/model.py --same_optimizer  # + the models alone
    python benchmarks/gpt_speed.py --nanogpt ~/src/nanoGPT/model.py --same_optimizer --position learned  # nanoGPT's config
    python benchmarks/gpt_speed.py --device cuda --batch_size 64 --block_size 256 --n_layer 6 --n_head 6 --n_embd 384

Ours is lesson 04's model as ``course_utils.topics.gpt`` holds it: marked copies of the lesson's cells, the same code
the recipe runs. Each side trains as its own code does: ours with lesson 04's AdamW (PyTorch's fused kernel, on a GPU
and on a CPU), nanoGPT with its ``configure_optimizers`` (fused on CUDA only). ``--same_optimizer`` also times our
model with nanoGPT's optimizer choice, to compare the models alone. Prints one line per measurement and, with
``--json FILE``, writes them all there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from course_utils.topics.gpt import GPT, GPTConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", type=Path, default=None, help="path to nanoGPT's model.py, to time it side by side")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64, help="context length in tokens")
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=65)
    p.add_argument("--position", default="rope", choices=("rope", "alibi", "learned"),
                   help="our model's position scheme ('learned': GPT-2's position table, as nanoGPT)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per repeat (after 5 warm-up steps)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--gen_tokens", type=int, default=None, help="tokens generated per timing (default block_size - 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--same_optimizer", action="store_true",
                   help="with --nanogpt: also time our model with nanoGPT's optimizer choice (the models alone)")
    p.add_argument("--skip_generation", action="store_true", help="time the training step only")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements to this JSON file")
    return p.parse_args(argv)


def load_nanogpt(path: Path):
    """nanoGPT's model module, imported from a file the user fetched (never vendored into the course)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    if spec is None or not path.is_file():
        raise SystemExit(f"--nanogpt: {path} is not a file (give the path to nanoGPT's model.py)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_ours(args: argparse.Namespace) -> GPT:
    return GPT(GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                         n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=False, position=args.position))


def build_nanogpt(module, args: argparse.Namespace):
    return module.GPT(module.GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                                       n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=False))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_optimizer(model: torch.nn.Module, device: str, fused: bool | None = None) -> torch.optim.Optimizer:
    """Lesson 04's AdamW: weight decay on matrices only, betas (0.9, 0.99), fused kernel where PyTorch has one
    (CUDA, and CPU since PyTorch 2.4). ``fused=False`` gives PyTorch's default AdamW, what nanoGPT uses on a CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if fused is None:
        fused = device.startswith(("cuda", "cpu"))
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), **({"fused": True} if fused else {}))


class Trainer:
    """One model, its optimizer and a fixed stream of batches; ``timed_step()`` times one training step."""

    def __init__(self, model: torch.nn.Module, args: argparse.Namespace, seed: int = 0,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model, self.device, self.args = model.to(args.device).train(), args.device, args
        self.optimizer = optimizer or make_optimizer(self.model, args.device)
        g = torch.Generator().manual_seed(seed)
        n = 8  # a few batches, cycled: the data pipeline is not what is measured
        shape = (n, args.batch_size, args.block_size + 1)
        data = torch.randint(0, args.vocab_size, shape, generator=g).to(args.device)
        self.batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
        self.i = 0

    def step(self) -> float:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        _, loss = self.model(x, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def timed_step(self) -> float:
        """Seconds for one training step."""
        synchronize(self.device)
        start = time.perf_counter()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - start


def interleaved_speeds(trainers: dict[str, Trainer], steps: int, tokens_per_step: int) -> dict[str, float]:
    """Training tokens/s of each trainer over ``steps`` steps, taken in turns (A, B, A, B ...) so that a busy machine
    slows every model alike."""
    seconds = dict.fromkeys(trainers, 0.0)
    for _ in range(steps):
        for name, trainer in trainers.items():
            seconds[name] += trainer.timed_step()
    return {name: steps * tokens_per_step / s for name, s in seconds.items()}


def generation_speed(model: GPT, args: argparse.Namespace, use_cache: bool, n_new: int) -> tuple[float, torch.Tensor]:
    model.eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=args.device)
    model.generate(prompt, 4, use_cache=use_cache)  # warm-up
    synchronize(args.device)
    start = time.perf_counter()
    out = model.generate(prompt, n_new, temperature=0.0, use_cache=use_cache)
    synchronize(args.device)
    return n_new / (time.perf_counter() - start), out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: dict = {"config": {k: getattr(args, k) for k in ("device", "n_layer", "n_head", "n_embd", "block_size",
                                                         "batch_size", "vocab_size", "position")},
                  "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"config: {rows['config']}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    trainers = {"ours": Trainer(build_ours(args), args)}
    if args.nanogpt is not None:
        module = load_nanogpt(args.nanogpt)
        theirs = build_nanogpt(module, args).to(args.device)
        # nanoGPT as its train.py runs it: its own configure_optimizers (fused AdamW on CUDA only)
        optimizer = theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda" if args.device.startswith("cuda") else "cpu")
        trainers["nanogpt"] = Trainer(theirs, args, optimizer=optimizer)
        if args.same_optimizer:  # the models alone: our model with nanoGPT's optimizer choice
            trainers["ours_foreach_adamw"] = Trainer(build_ours(args), args, optimizer=None)
            trainers["ours_foreach_adamw"].optimizer = make_optimizer(trainers["ours_foreach_adamw"].model, args.device,
                                                                      fused=args.device.startswith("cuda"))
    for name, trainer in trainers.items():
        for _ in range(5):  # warm-up: allocator, kernels, optimizer state
            trainer.step()
        print(f"{name}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters")
    speeds: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(args.repeats):
        for name, speed in interleaved_speeds(trainers, args.steps, args.batch_size * args.block_size).items():
            speeds[name].append(speed)
        print(f"repeat {r + 1}: " + ", ".join(f"{n} {s[-1]:,.0f} tokens/s" for n, s in speeds.items()))
    for name, values in speeds.items():
        rows[f"train_tokens_per_s_{name}"] = statistics.median(values)
        print(f"training step, {name}: {statistics.median(values):,.0f} tokens/s (median of {len(values)})")
    if "nanogpt" in speeds:
        for name in speeds:  # each repeat's ratio: the two ran interleaved, so a repeat is a fair pair
            if name != "nanogpt":
                per_repeat = [a / b for a, b in zip(speeds[name], speeds["nanogpt"])]
                rows[f"train_speed_ratio_per_repeat_{name}"] = per_repeat
                print(f"{name} / nanoGPT per repeat: " + ", ".join(f"{r:.3f}" for r in per_repeat)
                      + f" (min {min(per_repeat):.3f}, max {max(per_repeat):.3f})")
        rows["train_speed_ratio_ours_over_nanogpt"] = rows["train_tokens_per_s_ours"] / rows["train_tokens_per_s_nanogpt"]
        print(f"ratio ours / nanoGPT: {rows['train_speed_ratio_ours_over_nanogpt']:.3f}")
        if "ours_foreach_adamw" in speeds:
            rows["train_speed_ratio_same_optimizer"] = (rows["train_tokens_per_s_ours_foreach_adamw"]
                                                        / rows["train_tokens_per_s_nanogpt"])
            print(f"ratio ours / nanoGPT, same optimizer: {rows['train_speed_ratio_same_optimizer']:.3f}")

    if not args.skip_generation:
        model = trainers["ours"].model
        n_new = args.gen_tokens or args.block_size - 1
        cached, uncached = [], []
        for _ in range(args.repeats):
            speed_c, out_c = generation_speed(model, args, True, n_new)
            speed_u, out_u = generation_speed(model, args, False, n_new)
            cached.append(speed_c)
            uncached.append(speed_u)
        rows["gen_tokens_per_s_cached"] = statistics.median(cached)
        rows["gen_tokens_per_s_uncached"] = statistics.median(uncached)
        rows["kv_cache_speedup"] = rows["gen_tokens_per_s_cached"] / rows["gen_tokens_per_s_uncached"]
        rows["kv_cache_token_match"] = (out_c == out_u).float().mean().item()
        print(f"generation ({n_new} tokens, batch 1, greedy): cached {rows['gen_tokens_per_s_cached']:,.0f} tokens/s, "
              f"uncached {rows['gen_tokens_per_s_uncached']:,.0f} tokens/s, speed-up {rows['kv_cache_speedup']:.2f}x, "
              f"token match {rows['kv_cache_token_match']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
