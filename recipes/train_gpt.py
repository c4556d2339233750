"""Train a character-level GPT on any text file, then sample from it: lesson 04 of "Deep learning on one 12 GB GPU"
in one file.

Needs only PyTorch. The model is the lesson's, in marked copies of its cells (pre-norm decoder, RoPE, ALiBi or learned positions, SDPA attention, tied
embeddings, a KV cache for generation), trained the lesson's way: AdamW with decay on matrices only, linear warm-up then cosine decay,
gradient clipping, bf16 autocast on a GPU that computes it natively (fp16 and a gradient scaler on older ones). The
last 10 % of the text is held out for the validation loss.

    python train_gpt.py --text_file input.txt --max_steps 5000 --output_dir out/gpt           # the lesson's full run
    python train_gpt.py --text_file notes.txt --max_steps 200 --n_layer 2 --n_head 2 --n_embd 64 \\
        --block_size 64 --batch_size 16 --lr 3e-3 --device cpu --output_dir out/tiny             # a quick CPU run

Writes ``<output_dir>/ckpt.pt`` (config, vocabulary, weights, step; written atomically, so a crash never leaves half a
file), ``<output_dir>/metrics.json`` (losses at every evaluation, tokens/s) and ``<output_dir>/sample.txt``.
Reload: ``ckpt = torch.load(path, map_location="cpu", weights_only=True); model = GPT(GPTConfig(**ckpt["config"]));
model.load_state_dict(ckpt["model"])`` (``map_location``: a checkpoint saved on a GPU holds CUDA tensors).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# =============================================================================================== the model
# Marked copies of lesson 04's cells (notebooks/04_gpt_from_scratch.ipynb): edit the lesson, then run
# `make fix-copies` (`make check-copies` fails while a copy differs from its cell).

# Copied from notebooks/04_gpt_from_scratch.ipynb#7befa40b:GPTConfig
@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in Linear/LayerNorm: no gain at this size, a little slower
    position: str = "rope"  # "rope" (rotary embeddings), "alibi" (linear distance penalty) or "learned" (GPT-2's table)

    def __post_init__(self) -> None:
        if self.position not in ("rope", "alibi", "learned"):
            raise ValueError(f"position must be 'rope', 'alibi' or 'learned', not {self.position!r}.")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into {self.n_head} heads of an even size.")


# Copied from notebooks/04_gpt_from_scratch.ipynb#c20c102d:rope_angles
def rope_angles(head_dim, max_len, base=10000.0):
    """cos and sin of every position's angles (rows) for every channel (columns): two (max_len, head_dim). Channel j
    and channel j + head_dim/2 form a pair and turn by the same angle."""
    speeds = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)  # radians per position: fast ... slow
    angles = torch.outer(torch.arange(max_len).float(), speeds)  # (max_len, head_dim/2): one angle per pair
    angles = torch.cat([angles, angles], dim=-1)  # the same angle for both channels of a pair
    return angles.cos(), angles.sin()


# Copied from notebooks/04_gpt_from_scratch.ipynb#c20c102d:rotate_half
def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: every pair turned by 90 degrees."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# Copied from notebooks/04_gpt_from_scratch.ipynb#c20c102d:apply_rope
def apply_rope(x, cos, sin):
    """Rotate each channel pair (x[..., j], x[..., j + head_dim/2]) by its position's angle: the pair (x1, x2) becomes
    (x1 cos - x2 sin, x2 cos + x1 sin). cos and sin (from rope_angles) broadcast against x, in x's dtype."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


# Copied from notebooks/04_gpt_from_scratch.ipynb#a03e73ca:alibi_slopes
def alibi_slopes(n_head):
    """One slope per head, a geometric sequence 2^(-8/n), 2^(-16/n), ...: some heads look far, some near."""
    return torch.tensor([2 ** (-8 * (h + 1) / n_head) for h in range(n_head)])


# Copied from notebooks/04_gpt_from_scratch.ipynb#b7cf4994:CausalSelfAttention
class CausalSelfAttention(nn.Module):
    """All heads at once: one matrix product for queries, keys and values, positions (RoPE), then SDPA."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, cos=None, sin=None, mask=None, cache=None, layer=0):
        B, T, C = x.shape
        # (B, T, 3, n_head, head_dim): queries, keys and values, each head on its own slice of the channels; then
        # (B, n_head, T, head_dim) each, the layout SDPA takes (views: nothing is copied, as in nanoGPT)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2))
        if cos is not None:  # RoPE: turn queries and keys by their positions' angles (cos, sin: (T, head_dim))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # generation: prepend the keys and values of every earlier token
            k, v = cache.update(layer, k, v)
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)
        # no mask: causal among these T tokens (SDPA's built-in mask), or one new token that sees every cached key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # the heads side by side again
        return self.resid_drop(self.proj(y))


# Copied from notebooks/04_gpt_from_scratch.ipynb#96116b78:MLP
class MLP(nn.Module):
    """Each token on its own: widen to 4 x n_embd, GELU, project back."""

    def __init__(self, n_embd, dropout=0.0, bias=False):
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.down = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.down(F.gelu(self.up(x))))


# Copied from notebooks/04_gpt_from_scratch.ipynb#c548654f:Block
class Block(nn.Module):
    """The ladder's last rung with the fused attention: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config.n_embd, config.dropout, config.bias)

    def forward(self, x, cos=None, sin=None, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cos, sin, mask, cache, layer)  # tokens talk to each other
        return x + self.mlp(self.ln_2(x))  # each token thinks on its own


# Copied from notebooks/04_gpt_from_scratch.ipynb#ffafc566:KVCache
class KVCache:
    """Keys and values of every layer for the tokens seen so far, so a new token need not recompute them."""

    def __init__(self, config):
        self.max_len, self.n_layer, self.pos = config.block_size, config.n_layer, 0  # pos: tokens already cached
        self.k = self.v = None

    def update(self, layer, k, v):
        B, H, T, D = k.shape
        if self.k is None:  # allocate once, for the whole context, in the dtype the model computes in
            self.k = k.new_zeros(self.n_layer, B, H, self.max_len, D)
            self.v = torch.zeros_like(self.k)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# Copied from notebooks/04_gpt_from_scratch.ipynb#c963dc96:sample_next
def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """One next token per row of logits (batch, vocabulary); temperature 0 picks the likeliest."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature  # below 1: sharper, above 1: flatter
    if top_k is not None:  # keep the k likeliest tokens, drop the long tail
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


# Copied from notebooks/04_gpt_from_scratch.ipynb#74a0e8e6:GPT
class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        # GPT-2 (and nanoGPT): one learned vector per position, added to the token's
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying: one matrix reads and writes tokens
        # built once, sliced at every step: RoPE's angles, the causal mask, ALiBi's penalty (with the causal -inf)
        cos, sin = rope_angles(config.n_embd // config.n_head, config.block_size)
        self.register_buffer("cos", cos, persistent=False)  # (position, head_dim): the same for every head
        self.register_buffer("sin", sin, persistent=False)
        pos = torch.arange(config.block_size)
        self.register_buffer("causal", pos[None, :] <= pos[:, None], persistent=False)  # row t sees columns 0..t
        distance = (pos[:, None] - pos[None, :]).float()
        alibi = (-alibi_slopes(config.n_head)[:, None, None] * distance).masked_fill(~self.causal, float("-inf"))
        self.register_buffer("alibi", alibi if config.position == "alibi" else None, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections down by depth
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def attention_mask(self, start, T):
        """What queries at positions start..start+T-1 may see of keys 0..start+T-1. None: no mask tensor, either plain
        causal from the start (SDPA's built-in mask, the fastest kernels) or one new token, which sees every key."""
        if self.config.position == "alibi":  # additive: -slope x distance, -inf for the future
            return self.alibi[:, start:start + T, :start + T]
        return None if start == 0 or T == 1 else self.causal[start:start + T, :start + T]

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        start = cache.pos if cache is not None else 0  # position of idx[:, 0] in the text
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} tokens exceed the context of {self.config.block_size}; crop the input.")
        mask = self.attention_mask(start, T)
        cos, sin = (self.cos[start:start + T], self.sin[start:start + T]) if self.config.position == "rope" else (None, None)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:  # positions start.. : a cached step continues where the cache ends
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, layer)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Append max_new_tokens sampled tokens to idx (batch, time), one at a time."""
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.pos < self.config.block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # only the newest token; the past is cached
            else:  # first step, no cache, or a full context: (re)compute the last block_size tokens
                cache = KVCache(self.config) if use_cache else None
                logits, _ = self(idx[:, -self.config.block_size:], cache=cache)
            idx = torch.cat([idx, sample_next(logits[:, -1, :].float(), temperature, top_k, generator)], dim=1)
        return idx


# Copied from notebooks/04_gpt_from_scratch.ipynb#2ceb5fe1:CharTokenizer
class CharTokenizer:
    """One token per character: the vocabulary is the set of characters in the training text."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}; use only characters of the "
                             "training text.")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids) -> str:  # ids: a list of ints or a 1-D tensor
        return "".join(self.chars[int(i)] for i in ids)


# ============================================================================================ the training

# Copied from notebooks/04_gpt_from_scratch.ipynb#653f1f06:get_batch
def get_batch(data, block_size, batch_size, generator=None, device="cpu"):
    """batch_size random windows of block_size tokens, and the same windows shifted one token left (the targets)."""
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[s:s + block_size] for s in starts])
    y = torch.stack([data[s + 1:s + 1 + block_size] for s in starts])
    return x.to(device), y.to(device)


# Copied from notebooks/04_gpt_from_scratch.ipynb#4c6ffa50:autocast
def autocast(device, dtype):
    """Mixed precision in dtype (bf16 or fp16) on a GPU; in fp32 a context that changes nothing."""
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


# Copied from notebooks/04_gpt_from_scratch.ipynb#4c6ffa50:estimate_loss
@torch.no_grad()
def estimate_loss(model, splits, *, block_size, batch_size, eval_iters, device, dtype=torch.float32, seed=0):
    """The mean loss over eval_iters batches of each split; seeded, so every call scores the same text."""
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(eval_iters):
            x, y = get_batch(data, block_size, batch_size, g, device)
            with autocast(device, dtype):
                losses.append(model(x, y)[1].item())
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


# Copied from notebooks/04_gpt_from_scratch.ipynb#ee09f637:make_optimizer
def make_optimizer(model, lr, weight_decay):
    """AdamW, weight decay on matrices only (LayerNorm gains undecayed), the fused kernel (GPU and CPU)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # weight matrices and the (tied) embedding
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # LayerNorm gains
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), fused=True)


# Copied from notebooks/04_gpt_from_scratch.ipynb#ee09f637:lr_at
def lr_at(step, max_steps, lr, min_lr, warmup):
    """Linear warm-up to lr, then cosine decay to min_lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text_file", type=Path, required=True, help="UTF-8 text to learn (e.g. TinyShakespeare's input.txt)")
    p.add_argument("--output_dir", type=Path, default=Path("out/gpt"), help="where ckpt.pt, metrics.json, sample.txt go")
    p.add_argument("--val_fraction", type=float, default=0.1, help="held-out tail of the text (default 0.1)")
    m = p.add_argument_group("model (default: nanoGPT's baby GPT, 10.7 M parameters)")
    m.add_argument("--n_layer", type=int, default=6)
    m.add_argument("--n_head", type=int, default=6)
    m.add_argument("--n_embd", type=int, default=384)
    m.add_argument("--block_size", type=int, default=256, help="context length in characters")
    m.add_argument("--dropout", type=float, default=0.2)
    m.add_argument("--position", default="rope", choices=("rope", "alibi", "learned"))
    t = p.add_argument_group("training")
    t.add_argument("--max_steps", type=int, default=5000, help="optimizer steps (default 5000)")
    t.add_argument("--batch_size", type=int, default=64, help="sequences per micro-batch (default 64)")
    t.add_argument("--grad_accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    t.add_argument("--min_lr", type=float, default=None, help="end of the cosine decay (default lr / 10)")
    t.add_argument("--warmup_steps", type=int, default=100, help="linear warm-up steps (default 100)")
    t.add_argument("--weight_decay", type=float, default=0.1, help="AdamW decay on weight matrices (default 0.1)")
    t.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1.0)")
    t.add_argument("--eval_interval", type=int, default=500, help="steps between loss estimates (default 500)")
    t.add_argument("--eval_iters", type=int, default=100, help="batches per loss estimate (default 100)")
    t.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda if available)")
    t.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision (auto: bf16 on cards that compute it natively, fp16 + GradScaler on older GPUs, "
                        "fp32 on CPU)")
    t.add_argument("--seed", type=int, default=1337)
    s = p.add_argument_group("sampling after training")
    s.add_argument("--sample_tokens", type=int, default=500, help="characters to generate into sample.txt (0: none)")
    s.add_argument("--eval_sample_tokens", type=int, default=80,
                   help="characters of a sample printed at each evaluation, to watch the model learn (0: none)")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top_k", type=int, default=20)
    args = p.parse_args(argv)
    for name in ("max_steps", "batch_size", "grad_accum", "block_size", "eval_interval", "eval_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val_fraction must be between 0 and 1")
    return args


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


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (LayerNorm gains undecayed), the fused kernel (GPU and CPU)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), fused=True)


def lr_at(step: int, max_steps: int, lr: float, min_lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


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
    text = args.text_file.read_text(encoding="utf-8")
    tok = CharTokenizer(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    n_train = int((1 - args.val_fraction) * len(data))
    splits = {"train": data[:n_train], "val": data[n_train:]}
    if min(len(d) for d in splits.values()) <= args.block_size + 1:
        raise SystemExit(f"{args.text_file} is too short for --block_size {args.block_size} with a "
                         f"{args.val_fraction:.0%} validation split: use a longer text or a shorter block")
    device_type = torch.device(device).type  # autocast and the scaler want "cuda", also for --device cuda:1
    eval_settings = dict(block_size=args.block_size, batch_size=args.batch_size, eval_iters=args.eval_iters,
                         device=device, dtype=dtype, seed=args.seed + 1)  # the same batches every evaluation
    prompt = torch.tensor([[tok.stoi.get("\n", 0)]], device=device)  # samples start from a blank line

    config = GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, dropout=args.dropout, position=args.position)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    batches = torch.Generator().manual_seed(args.seed)
    history: dict[str, list] = {"step": [], "train_loss": [], "val_loss": []}
    print(f"{len(text):,} characters, vocabulary {tok.vocab_size}, {model.num_params() / 1e6:.2f} M parameters, "
          f"{device} {dtype}")
    eval_seconds, start = 0.0, time.perf_counter()
    model.train()
    for step in range(args.max_steps + 1):
        if step % args.eval_interval == 0 or step == args.max_steps:
            t0 = time.perf_counter()
            losses = estimate_loss(model, splits, **eval_settings)
            sample = ""
            if args.eval_sample_tokens > 0:  # a sample with the same random draws every time: only the model changes
                model.eval()
                out = model.generate(prompt, args.eval_sample_tokens, temperature=args.temperature, top_k=args.top_k,
                                     generator=torch.Generator(device).manual_seed(args.seed))
                model.train()
                sample = f" | {tok.decode(out[0, 1:])!r}"
            eval_seconds += time.perf_counter() - t0
            history["step"].append(step)
            history["train_loss"].append(losses["train"])
            history["val_loss"].append(losses["val"])
            print(f"step {step:5d}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{sample}", flush=True)
        if step == args.max_steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.max_steps, args.lr, min_lr, args.warmup_steps)
        for _ in range(args.grad_accum):
            x, y = get_batch(splits["train"], args.block_size, args.batch_size, batches, device)
            with autocast(device, dtype):
                _, loss = model(x, y)
            scaler.scale(loss / args.grad_accum).backward()
        if args.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    train_seconds = time.perf_counter() - start - eval_seconds

    atomic_save({"config": asdict(config), "chars": tok.chars, "model": model.state_dict(), "step": args.max_steps},
                args.output_dir / "ckpt.pt")
    sample = ""
    if args.sample_tokens > 0:
        model.eval()
        out = model.generate(prompt, args.sample_tokens, temperature=args.temperature, top_k=args.top_k,
                             generator=torch.Generator(device).manual_seed(args.seed))
        sample = tok.decode(out[0, 1:])
        atomic_save(sample.encode(), args.output_dir / "sample.txt")
    metrics = {"first_train_loss": history["train_loss"][0], "last_train_loss": history["train_loss"][-1],
               "first_val_loss": history["val_loss"][0], "val_loss": history["val_loss"][-1],
               "uniform_loss": math.log(tok.vocab_size), "val_perplexity": math.exp(history["val_loss"][-1]),
               "history": history, "train_seconds": train_seconds,
               "tokens_per_s": args.max_steps * args.grad_accum * args.batch_size * args.block_size / train_seconds,
               "n_params": model.num_params(), "config": asdict(config), "device": device,
               "dtype": str(dtype).replace("torch.", ""), "seed": args.seed}
    atomic_save(json.dumps(metrics, indent=2).encode(), args.output_dir / "metrics.json")
    print(f"val loss {metrics['val_loss']:.4f} (uniform {metrics['uniform_loss']:.4f}); saved {args.output_dir / 'ckpt.pt'}")
    if sample:
        print(f"--- sample ---\n{sample}")
    return metrics


if __name__ == "__main__":
    main()
