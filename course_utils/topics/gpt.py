"""A small GPT you can hold in your head: the model of lesson 04, in plain PyTorch.

Decoder-only transformer in the nanoGPT mould: token embedding -> N x [LayerNorm -> causal self-attention -> residual,
LayerNorm -> MLP -> residual] -> LayerNorm -> linear head tied to the embedding. Positions come from rotary
embeddings (RoPE, the default: one complex multiplication per query/key pair of channels) or from ALiBi's distance
penalty; attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) with its built-in causal
mask whenever it can, and the masks it cannot do without are built once and sliced; a KV cache makes generation one
token per step. ``benchmarks/gpt_speed.py`` measures its training and generation speed (and nanoGPT's, side by side).

Read it top to bottom; the lesson shows each piece next to a short explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.core.errors import BadParameter


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in Linear/LayerNorm: no gain at this size, a little slower
    position: str = "rope"  # "rope" (rotary embeddings) or "alibi" (linear distance penalty)

    def __post_init__(self) -> None:
        if self.position not in ("rope", "alibi"):
            raise BadParameter(f"position must be 'rope' or 'alibi', not {self.position!r}.")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise BadParameter(f"n_embd ({self.n_embd}) must split into {self.n_head} heads of an even size.")


# --- positions -------------------------------------------------------------------------------------------------

def rope_tables(head_dim: int, max_len: int, base: float = 10000.0) -> torch.Tensor:
    """The rotation of every position (rows) and channel pair (columns), as unit complex numbers e^(i * angle).

    Pair j turns by ``position * base^(-2j / head_dim)`` radians: fast rotations in the first pairs, slow in the last.
    Stored as real (max_len, head_dim/2, 2) = (cos, sin), so ``model.to(dtype)`` cannot drop the imaginary part.
    """
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # fast ... slow rotations
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, head_dim/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def _rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Channel pairs of x as complex numbers ``x[2j] + i x[2j+1]``, times the unit complex numbers ``rot``, in fp32."""
    x = x.float()
    try:
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # a view: no copy
    except RuntimeError:  # strides a complex view cannot have: copy first
        pairs = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rot).flatten(-2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair (x[2j], x[2j+1]) of x (..., head_dim) by its position's angle.

    A rotation in the plane is a multiplication by a unit complex number: read each pair as ``x[2j] + i x[2j+1]``
    and multiply by ``cos + i sin`` from :func:`rope_tables` (``rot``: (..., head_dim/2, 2), broadcast against x).
    One complex product instead of four real products and a concatenation: the same numbers, faster.
    """
    return _rotate(x, torch.view_as_complex(rot.float().contiguous())).to(x.dtype)


class _HeadsWithRope(torch.autograd.Function):
    """The model's fast path: split the fused projections (B, T, 3, n_head, head_dim) into q, k, v heads
    (B, n_head, T, head_dim) and rotate q and k as :func:`apply_rope` does, with the gradient written out: the gradient
    of a rotation is the opposite rotation (the conjugate), and the three gradients go straight into one buffer.
    Autograd would get the same numbers through the complex views and the slices, several times slower on a CPU."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rot: torch.Tensor):
        rot = torch.view_as_complex(rot.float().contiguous())  # (T, head_dim/2): cos + i sin
        ctx.save_for_backward(rot)
        qk = _rotate(qkv[:, :, :2], rot[:, None, None]).to(qkv.dtype)  # queries and keys in one product
        return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2).clone()

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor):
        (rot,) = ctx.saved_tensors
        back = rot.conj()[:, None]  # cos - i sin: rotate back
        B, H, T, D = dv.shape
        grad = dv.new_empty(B, T, 3, H, D)
        grad[:, :, 0] = _rotate(dq.transpose(1, 2), back)
        grad[:, :, 1] = _rotate(dk.transpose(1, 2), back)
        grad[:, :, 2] = dv.transpose(1, 2)
        return grad, None


def alibi_slopes(n_head: int) -> torch.Tensor:
    """One slope per head, a geometric sequence 2^(-8/n), 2^(-16/n), ...: some heads look far, some near."""
    return torch.tensor([2 ** (-8 * (h + 1) / n_head) for h in range(n_head)])


# --- the blocks ------------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # queries, keys, values at once
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, mask, rope, cache=None, layer=0):
        B, T, C = x.shape
        # one matrix product for queries, keys and values; (B, T, C) -> (B, T, 3, n_head, head_dim)
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        # -> q, k, v of shape (B, n_head, T, head_dim): every head attends on its own slice of the channels
        if rope is not None:  # RoPE: queries and keys rotated by their positions' angles (rope: (T, head_dim/2, 2))
            q, k, v = _HeadsWithRope.apply(qkv, rope)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # prepend the keys/values of every earlier token
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask, rope, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, rope, cache, layer)  # tokens talk to each other
        return x + self.mlp(self.ln_2(x))  # each token thinks on its own


# --- the KV cache ----------------------------------------------------------------------------------------------

class KVCache:
    """Keys and values of every layer for the tokens seen so far, so a new token need not recompute them."""

    def __init__(self, config: GPTConfig) -> None:
        self.max_len, self.pos = config.block_size, 0  # pos: tokens already cached
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n_layer = config.n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        if self.k is None:  # allocate once, for the whole context, in the dtype the model computes in
            self.k = k.new_zeros(self.n_layer, B, H, self.max_len, D)
            self.v = torch.zeros_like(self.k)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# --- the model -------------------------------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying: one matrix reads and writes tokens
        # built once, sliced at every step: the rotations of RoPE, and ALiBi's distance penalty with the causal mask
        self.register_buffer("rope", rope_tables(config.n_embd // config.n_head, config.block_size), persistent=False)
        self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        pos = torch.arange(config.block_size)
        causal = pos[None, :] <= pos[:, None]  # (T, T): query row t may see key columns 0..t
        self.register_buffer("causal", causal, persistent=False)
        distance = (pos[:, None] - pos[None, :]).float()
        alibi = (-self.alibi_slopes[:, None, None] * distance).masked_fill(~causal, float("-inf"))
        self.register_buffer("alibi", alibi if config.position == "alibi" else None, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections down by depth
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def attention_mask(self, start: int, T: int) -> torch.Tensor | None:
        """What queries at positions start..start+T-1 may see of keys 0..start+T-1. None means "plain causal"
        (SDPA's built-in mask, the fastest kernels)."""
        if self.config.position == "alibi":  # additive: -slope x distance, -inf for the future
            return self.alibi[:, start:start + T, :start + T]
        return None if start == 0 else self.causal[start:start + T, :start + T]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        B, T = idx.shape
        start = cache.pos if cache is not None else 0  # position of idx[:, 0] in the text
        if start + T > self.config.block_size:
            raise BadParameter(f"{start + T} tokens exceed the context of {self.config.block_size}; crop the input.")
        mask = self.attention_mask(start, T)
        rope = self.rope[start:start + T] if self.config.position == "rope" else None
        x = self.drop(self.tok_emb(idx))
        for layer, block in enumerate(self.blocks):
            x = block(x, mask, rope, cache, layer)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T). ``temperature=0`` picks the likeliest."""
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.pos < self.config.block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # only the newest token; the past is cached
            else:  # first step, no cache, or a full context: (re)compute the last block_size tokens
                cache = KVCache(self.config) if use_cache else None
                logits, _ = self(idx[:, -self.config.block_size:], cache=cache)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:  # keep the k likeliest tokens, drop the long tail
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx
