"""Train lesson 04's GPT with one script on one process or many: lesson 13 of "Deep learning on one 12 GB GPU".

The same file runs unchanged on one process (``python train_multi.py ...``) and under ``accelerate launch`` with DDP,
FSDP (full shard) or DeepSpeed ZeRO-2/3: the engine comes from the accelerate config file, never from this code.
Every optimizer step uses the SAME global batch (``--global_batch`` sequences drawn from ``--seed`` and the step
number), split evenly across the processes, so a run on N processes follows the single-process loss curve up to float
rounding: that is the check that the engine does what it claims.

    python train_multi.py --text_file input.txt --output_dir out/one                             # one process
    accelerate launch --config_file configs/accelerate/ddp.yaml   train_multi.py --text_file input.txt
    accelerate launch --config_file configs/accelerate/fsdp.yaml  train_multi.py --text_file input.txt
    accelerate launch --config_file configs/accelerate/zero2.yaml train_multi.py --text_file input.txt
    accelerate launch --config_file configs/accelerate/zero3.yaml train_multi.py --text_file input.txt
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \\
        train_multi.py --text_file input.txt          # no GPU: two CPU processes over gloo, the same script

On CPUs, accelerate 1.15 attaches an FSDP config only to GPU-type processes (``AcceleratorState`` keeps CPU processes
as ``MULTI_CPU``, which ``prepare`` would wrap in plain DDP): the script then switches FSDP on itself, with the plugin
``accelerate launch`` built from the config file, so accelerate's own FSDP2 preparation shards the model over gloo
exactly as it does on GPUs. DeepSpeed on CPUs would JIT-compile a shared-memory all-reduce op when its communication
backend starts (a C++ compiler, about a minute); only inference's all-reduce uses it, training's collectives go through
torch.distributed (gloo), so the script marks that op unavailable and nothing is compiled. On GPUs neither applies.

The model is lesson 04's, imported from ``train_gpt.py`` in the same folder: copy both files together (needs PyTorch
and accelerate; deepspeed only for the ZeRO configs). The global batch, the schedule and the byte count are copies of
lesson 13's cells, where ``train_by_hand`` writes out what the engines do (DDP's all-reduce, FSDP/ZeRO's shards). Writes ``<output_dir>/metrics.json`` (atomically) with the loss
of every step, the validation loss, and for every rank the bytes of parameters, gradients and optimizer state it
actually holds — full copies under DDP, about 1/N of each under FSDP full shard and ZeRO-3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_gpt.py sits next to this file
from train_gpt import GPT, GPTConfig  # noqa: E402  (lesson 04's model, one copy)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text_file", type=Path, required=True, help="UTF-8 text to learn (e.g. TinyShakespeare's input.txt)")
    p.add_argument("--output_dir", type=Path, default=Path("out/multi"), help="where metrics.json goes")
    p.add_argument("--val_fraction", type=float, default=0.1, help="held-out tail of the text (default 0.1)")
    m = p.add_argument_group("model (default: lesson 04's baby GPT, 10.7 M parameters)")
    m.add_argument("--n_layer", type=int, default=6)
    m.add_argument("--n_head", type=int, default=6)
    m.add_argument("--n_embd", type=int, default=384)
    m.add_argument("--block_size", type=int, default=256, help="context length in characters")
    m.add_argument("--dropout", type=float, default=0.0,
                   help="0 by default: dropout masks differ per rank, so curves would no longer match")
    t = p.add_argument_group("training")
    t.add_argument("--max_steps", type=int, default=2000, help="optimizer steps (default 2000)")
    t.add_argument("--global_batch", type=int, default=64,
                   help="sequences per optimizer step over ALL processes; must divide by the process count")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    t.add_argument("--warmup_steps", type=int, default=100)
    t.add_argument("--weight_decay", type=float, default=0.1)
    t.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm, 0 = off")
    t.add_argument("--eval_interval", type=int, default=200, help="steps between validation losses")
    t.add_argument("--eval_batches", type=int, default=4, help="global batches per validation loss")
    t.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


# Copied from notebooks/13_beyond_one_card.ipynb#678fda71:rank_batch
def rank_batch(tokens, block_size, global_batch, seed, rank, world):
    """This rank's slice of the global batch that ``seed`` picks: every rank draws the same ``global_batch`` starting
    points from the same seed and keeps its own ``global_batch // world`` of them."""
    per_rank = global_batch // world
    starts = torch.randint(len(tokens) - block_size - 1, (global_batch,), generator=torch.Generator().manual_seed(seed))
    starts = starts[rank * per_rank:(rank + 1) * per_rank]
    x = torch.stack([tokens[s:s + block_size] for s in starts])
    y = torch.stack([tokens[s + 1:s + 1 + block_size] for s in starts])
    return x, y


# Copied from notebooks/13_beyond_one_card.ipynb#678fda71:lr_at
def lr_at(step, max_steps, lr, min_lr, warmup):
    """Linear warm-up to ``lr``, then a cosine down to ``min_lr`` at ``max_steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


# Copied from notebooks/13_beyond_one_card.ipynb#678fda71:local_bytes
def local_bytes(t):
    """Bytes this process holds for one tensor: the local shard of a DTensor (FSDP2), the partition of a ZeRO-3
    parameter, else the tensor itself."""
    if t is None:
        return 0
    if hasattr(t, "ds_tensor"):  # DeepSpeed ZeRO-3: p.data is empty, the rank's partition is p.ds_tensor
        t = t.ds_tensor
    if hasattr(t, "to_local"):  # FSDP2 DTensor
        t = t.to_local()
    return t.numel() * t.element_size()


# Copied from course_utils/core/paths.py:atomic_write
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; it replaces ``path`` only if the block finishes.

    A crash, OOM or Ctrl-C half-way leaves the previous file intact — checkpoints are never lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def inner_optimizer(opt):
    """The torch optimizer under accelerate's and DeepSpeed's wrappers (its state is what the rank holds)."""
    while hasattr(opt, "optimizer") and opt.optimizer is not opt:
        opt = opt.optimizer
    return opt


def optimizer_state_bytes(opt) -> int:
    """Bytes of the optimizer's state tensors on this rank (AdamW: two moments per parameter it updates)."""
    inner = inner_optimizer(opt)
    return sum(local_bytes(v) for state in inner.state.values() for v in state.values()
               if torch.is_tensor(v) and v.dim() > 0)  # skip the 0-d step counters


def main(argv=None) -> dict:
    args = parse_args(argv)
    from accelerate import Accelerator  # after argparse: --help stays fast
    from accelerate.utils import DistributedType

    # no GPU: processes on CPUs talk over gloo (accelerate's MULTI_CPU), whatever the config file's GPU settings;
    # DeepSpeed brings its own CPU accelerator (gloo too), and accelerate's cpu=True would switch DeepSpeed off
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if use_deepspeed and not torch.cuda.is_available():
        import deepspeed.ops  # the ops DeepSpeed may build: its comm backend skips the shm op when it is not listed
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    accelerator = Accelerator(cpu=not torch.cuda.is_available() and not use_deepspeed)
    # ranks from torch.distributed itself: accelerate 1.15 reports 1 process for DeepSpeed on CPUs
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_initialized() else 1
    backend = dist.get_backend() if dist.is_initialized() else "none"
    rank = dist.get_rank() if dist.is_initialized() else 0
    is_main = rank == 0

    def mean_over_ranks(t: torch.Tensor) -> float:
        t = t.detach().float().clone()
        if world > 1:
            dist.all_reduce(t)
            t /= world
        return t.item()
    if args.global_batch % world:
        raise SystemExit(f"--global_batch {args.global_batch} does not split over {world} processes: "
                         f"use a multiple of {world}")
    per_rank = args.global_batch // world
    fsdp_config = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if accelerator.distributed_type == DistributedType.MULTI_CPU and fsdp_config:
        # accelerate 1.15 attaches an FSDP config only to GPU-type processes: on CPUs it would quietly run DDP.
        # Switch FSDP on with the plugin accelerate launch built from the config (its FSDP_* variables); prepare()
        # then runs accelerate's own FSDP2 path (wrap policy, resharding, the optimizer on the shards) over gloo.
        from accelerate.utils import FullyShardedDataParallelPlugin
        plugin = FullyShardedDataParallelPlugin()
        if accelerator.mixed_precision != "no":  # what accelerate does for GPU processes
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
    engine = accelerator.distributed_type
    if engine == DistributedType.DEEPSPEED:  # no dataloader to infer "auto" batch sizes from: say them
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = per_rank
        ds["train_batch_size"] = args.global_batch

    text = args.text_file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
    n_train = int((1 - args.val_fraction) * len(data))
    splits = {"train": data[:n_train], "val": data[n_train:]}
    if min(len(d) for d in splits.values()) <= args.block_size + 1:
        raise SystemExit(f"{args.text_file} is too short for --block_size {args.block_size}: use a longer text "
                         "or a shorter block")

    def global_batch(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch that ``seed`` picks, on this rank's device."""
        x, y = rank_batch(splits[split], args.block_size, args.global_batch, seed, rank, world)
        return x.to(accelerator.device), y.to(accelerator.device)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = GPTConfig(vocab_size=len(chars), block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, dropout=args.dropout)
    model = GPT(config)
    n_params = model.num_params()
    full_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)  # the engine wraps, shards or partitions here
    from torch.distributed.fsdp import FSDPModule  # the classes FSDP2 made shard units of (fsdp.yaml: Block, + root)
    shard_units = sorted({type(m).__name__.removeprefix("FSDP") for m in model.modules() if isinstance(m, FSDPModule)})

    def loss_on(split: str, seed: int) -> torch.Tensor:
        x, y = global_batch(split, seed)
        _, loss = model(x, y)
        return loss

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        losses = [mean_over_ranks(loss_on("val", 10_000_000 + i)) for i in range(args.eval_batches)]
        model.train()
        return sum(losses) / len(losses)

    history: dict[str, list] = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    held = {"param_bytes": 0, "grad_bytes": 0, "optimizer_bytes": 0}
    if is_main:
        print(f"{engine.value} over {backend} on {world} process(es), {per_rank} sequences each, global batch "
              f"{args.global_batch}; {n_params / 1e6:.2f} M parameters", flush=True)
    model.train()
    start = time.perf_counter()
    for step in range(args.max_steps):
        if step % args.eval_interval == 0:
            history["val_step"].append(step)
            history["val_loss"].append(val_loss())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.max_steps, args.lr, args.lr / 10, args.warmup_steps)
        loss = loss_on("train", args.seed * 1_000_003 + step)
        accelerator.backward(loss)
        if step == 0:  # what this rank holds once gradients exist (DeepSpeed steps inside backward: grads gone)
            held["grad_bytes"] = sum(local_bytes(p.grad) for p in model.parameters())
        if args.grad_clip > 0 and engine != DistributedType.DEEPSPEED:  # DeepSpeed clips with its json's value
            accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if step == 0:  # between steps: weights resharded, optimizer state allocated
            held["param_bytes"] = sum(local_bytes(p) for p in model.parameters())
            held["optimizer_bytes"] = optimizer_state_bytes(optimizer)
            if engine == DistributedType.DEEPSPEED:  # ZeRO's fp32 master partition counts as optimizer state
                inner = getattr(optimizer, "optimizer", optimizer)
                for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
                    held["optimizer_bytes"] += sum(local_bytes(t) for t in getattr(inner, name, None) or [])
        optimizer.zero_grad(set_to_none=True)
        history["step"].append(step)
        history["loss"].append(mean_over_ranks(loss))  # the global batch's loss
        if is_main and (step % max(1, args.max_steps // 10) == 0 or step == args.max_steps - 1):
            print(f"step {step:5d}: train loss {history['loss'][-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start
    history["val_step"].append(args.max_steps)
    history["val_loss"].append(val_loss())

    # a collective's tensors live on the accelerator's device: NCCL (every GPU engine) has no backend for CPU tensors
    mine = torch.tensor([held["param_bytes"], held["grad_bytes"], held["optimizer_bytes"]], dtype=torch.long,
                        device=accelerator.device)
    per_rank_bytes = [torch.zeros_like(mine) for _ in range(world)]
    if world > 1:
        dist.all_gather(per_rank_bytes, mine)
    else:
        per_rank_bytes = [mine]
    metrics = {
        "engine": engine.value, "backend": backend, "shard_units": shard_units, "world_size": world,
        "global_batch": args.global_batch, "per_rank_batch": per_rank,
        "n_params": n_params, "full_param_bytes": full_param_bytes, "seed": args.seed,
        "first_loss": history["loss"][0], "last_loss": history["loss"][-1], "val_loss": history["val_loss"][-1],
        "first_val_loss": history["val_loss"][0], "uniform_loss": math.log(len(chars)),
        "history": history, "train_seconds": seconds,
        "tokens_per_s": args.max_steps * args.global_batch * args.block_size / seconds,
        # DeepSpeed steps inside backward and frees its gradient partitions there: none left to count (null)
        "ranks": [{"rank": r, "param_bytes": int(b[0]),
                   "grad_bytes": None if engine == DistributedType.DEEPSPEED else int(b[1]), "optimizer_bytes": int(b[2])}
                  for r, b in enumerate(t.tolist() for t in per_rank_bytes)],
        "config": {k: getattr(config, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")},
    }
    if is_main:
        with atomic_write(args.output_dir / "metrics.json", "w") as handle:  # a temp file, then os.replace
            json.dump(metrics, handle, indent=2)
        for r in metrics["ranks"]:
            grads = "freed by DeepSpeed" if r["grad_bytes"] is None else f"{r['grad_bytes'] / 1e6:.2f} MB"
            print(f"rank {r['rank']}: parameters {r['param_bytes'] / 1e6:.2f} MB, gradients {grads}, "
                  f"optimizer state {r['optimizer_bytes'] / 1e6:.2f} MB")
        print(f"val loss {metrics['val_loss']:.4f}; wrote {args.output_dir / 'metrics.json'}", flush=True)
    if world > 1:
        dist.barrier()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
    # Everything is written and the process group destroyed: leave without the interpreter's teardown. With gloo (CPU
    # processes) a worker thread of torch's process group can outlive it and abort the finished process ("terminate
    # called without an active exception", SIGABRT: about 1 run in 10 on 2 CPUs), which the launcher reports as a
    # failed run (pytorch/pytorch#179291 describes the teardown race).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
