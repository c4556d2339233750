"""Lesson 04's GPT for the code that uses it outside the lesson (lesson 13, ``benchmarks/gpt_speed.py``, the tests).

Decoder-only transformer in the nanoGPT mould: token embedding -> N x [LayerNorm -> causal self-attention -> residual,
LayerNorm -> MLP -> residual] -> LayerNorm -> linear head tied to the embedding; rotary embeddings (RoPE), ALiBi or
GPT-2's learned position table;
``scaled_dot_product_attention``; a KV cache for generation.

The lesson's cells are the source: what follows are marked copies of them (``make check-copies`` holds them equal;
``make fix-copies`` rewrites them). The one addition: a bad setting in :class:`GPTConfig` is the course's one-sentence
:class:`~course_utils.core.errors.BadParameter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.core.errors import BadParameter

# Copied from notebooks/04_gpt_from_scratch.ipynb#7befa40b:GPTConfig with GPTConfig->_LessonConfig
@dataclass
class _LessonConfig:
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


class GPTConfig(_LessonConfig):
    """The lesson's ``GPTConfig``; a setting it cannot use stops with one sentence naming it."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as err:
            raise BadParameter(str(err)) from None


__all__ = ["GPTConfig", "GPT", "KVCache", "Block", "MLP", "CausalSelfAttention", "rope_angles", "rotate_half",
           "apply_rope", "alibi_slopes", "sample_next"]
