"""Lesson 04's model (course_utils/topics/gpt.py: marked copies of the lesson's cells, as in recipes/train_gpt.py) and data
(course_utils/topics/text_data.py).

The KV cache must not change a single token; training must lower the loss; weight tying must share storage; the
tokenizer must round-trip; the data loader must fail with a course error that says what to do.
"""

from __future__ import annotations

import itertools
import urllib.error

import pytest
import torch

import course_utils as cu
from course_utils.topics import text_data
from course_utils.topics.gpt import GPT, GPTConfig, KVCache, alibi_slopes, apply_rope, rope_angles
from course_utils.topics.text_data import CharTokenizer

POSITIONS = ("rope", "alibi", "learned")  # "learned": GPT-2's (and nanoGPT's) position table


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine thread hand-offs make them 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(position: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(**{**dict(vocab_size=23, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                                  position=position), **overrides})
    return GPT(config).eval()


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.8, 5)])
def test_kv_cache_generates_identical_tokens(position, temperature, top_k):
    model = tiny_model(position)
    prompt = torch.randint(0, 23, (2, 3), generator=torch.Generator().manual_seed(1))
    # 40 new tokens overrun the 32-token context: the cached path must also fall back to recomputing correctly
    cached, uncached = (model.generate(prompt, 40, temperature=temperature, top_k=top_k, use_cache=use_cache,
                                       generator=torch.Generator().manual_seed(7)) for use_cache in (True, False))
    assert cached.shape == (2, 43)
    assert torch.equal(cached, uncached), f"{position}: the KV cache changed the generated tokens"


def test_a_single_cached_token_builds_no_mask(monkeypatch):
    """RoPE's one-token decode step passes SDPA no mask tensor (a boolean mask is converted to numbers in every layer,
    for every token: more ops per token than recomputing without a cache) and no causal flag (one query sees every
    cached key); the tokens stay those of the uncached path (test above)."""
    import torch.nn.functional as F

    model = tiny_model("rope")
    calls, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[2], k.shape[2], attn_mask, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model.generate(torch.randint(0, 23, (1, 5)), 4, temperature=0.0)
    steps = [c for c in calls if c[0] == 1]
    assert len(steps) == 3 * model.config.n_layer and all(k_len > 1 for _, k_len, _, _ in steps)
    assert all(mask is None and not causal for _, _, mask, causal in steps), "a single new token needs no mask"
    assert model.attention_mask(7, 1) is None and model.attention_mask(7, 2) is not None


@pytest.mark.parametrize("position", POSITIONS)
def test_kv_cache_logits_match_a_full_forward_pass(position):
    model = tiny_model(position)
    x = torch.randint(0, 23, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config)
        pieces = [model(x[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 6), (6, 20), (20, 32))]
    assert cache.pos == 32
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_kv_cache_refuses_tokens_past_the_context():
    model = tiny_model("rope")
    cache = KVCache(model.config)
    with torch.no_grad():
        model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exceed the context"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_position_schemes_differ_and_rope_is_relative():
    x = torch.randint(0, 23, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = {p: tiny_model(p)(x)[0] for p in POSITIONS}
    for a, b in itertools.combinations(POSITIONS, 2):
        assert not torch.allclose(outputs[a], outputs[b]), f"{a} and {b} should give different outputs"
    cos, sin = rope_angles(8, 64)
    q, k = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    score = lambda m, n: apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])  # noqa: E731
    torch.testing.assert_close(score(7, 3), score(50, 46))
    assert not torch.allclose(score(7, 3), score(7, 4)), "a different distance must give a different score"
    torch.testing.assert_close(apply_rope(q, cos[9], sin[9]).norm(), q.norm())


@pytest.mark.parametrize("position", POSITIONS)
def test_loss_decreases_on_a_tiny_batch(position):
    model = tiny_model(position).train()
    x = torch.randint(0, 23, (4, 32), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[0] == pytest.approx(torch.log(torch.tensor(23.0)).item(), abs=0.3), "an untrained model should guess uniformly"
    assert losses[-1] < 0.5 * losses[0], f"{position}: loss only went {losses[0]:.2f} -> {losses[-1]:.2f} overfitting one batch"


def test_learned_positions_are_gpt2s_table_added_to_the_tokens():
    """position="learned" is nanoGPT's configuration: one trained vector per position (block_size x n_embd), added to
    the token embeddings; a cached step reads the rows after the cache (the logits test above holds the values)."""
    learned, rope = tiny_model("learned"), tiny_model("rope")
    assert learned.pos_emb.weight.shape == (32, 32) and rope.pos_emb is None
    assert learned.num_params() - rope.num_params() == 32 * 32
    x = torch.randint(0, 23, (1, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = learned(x)[0]
        learned.pos_emb.weight[3] += 1.0  # only position 3 changes: outputs before it cannot see it
        after = learned(x)[0]
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:]), "the position table must reach the output"


def test_weight_tying_shares_storage():
    model = tiny_model("rope")
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    counted = sum(p.numel() for p in model.parameters())
    assert model.num_params() == counted
    assert counted < sum(p.numel() for p in model.state_dict().values()), "the tied matrix must be counted once"


def test_baby_gpt_size():
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384))
    assert 10.5e6 < model.num_params() < 10.8e6, "nanoGPT's baby GPT has 10.7 M parameters"


def test_top_k_one_is_greedy():
    model = tiny_model("rope")
    prompt = torch.zeros(1, 1, dtype=torch.long)
    greedy = model.generate(prompt, 20, temperature=0.0)
    top1 = model.generate(prompt, 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)


def test_bad_config_is_a_course_error():
    with pytest.raises(cu.BadParameter, match="'rope', 'alibi' or 'learned'"):
        GPTConfig(position="sinusoidal")
    with pytest.raises(cu.BadParameter, match="heads"):
        GPTConfig(n_embd=30, n_head=4)


# --- text data ---------------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_unknown_characters():
    text = text_data.load_tiny_corpus()
    tok = CharTokenizer(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode("lamp"))) == "lamp"
    assert tok.vocab_size == len(set(text))
    with pytest.raises(cu.BadParameter, match="not in the vocabulary"):
        tok.encode("lamp\u00e9")


def test_tiny_corpus_is_shipped_and_shaped_like_shakespeare():
    text = text_data.load_tiny_corpus()
    assert 20_000 <= len(text) <= 40_000
    assert "MARA:\n" in text and "\n\n" in text
    assert text_data.load_text(smoke=True)[0] == text


def test_missing_data_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(cu.MissingData) as err:
        text_data.load_tinyshakespeare(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in message
    assert "SMOKE" in message and text_data.TINYSHAKESPEARE_URL in message


def test_reads_the_corpus_from_the_data_folder(tmp_path, monkeypatch):
    path = tmp_path / "tinyshakespeare" / "input.txt"
    path.parent.mkdir()
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    text, name = text_data.load_text(smoke=False, download=False)
    assert name == "TinyShakespeare" and text.startswith("First Citizen:")


def test_download_failure_is_a_course_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(cu.MissingData) as err:
        text_data.load_tinyshakespeare(tmp_path, download=True)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in str(err.value) and "SMOKE" in str(err.value)


# --- RoPE and the masks, as the lesson shows them ----------------------------------------------------------------

def _textbook_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs (x[2j], x[2j+1]) by position * base^(-2j/d), as the RoPE paper writes it."""
    d = x.shape[-1]
    angle = positions[:, None].float() * base ** (-torch.arange(0, d, 2).float() / d)  # (T, d/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()], dim=-1)
    return out.flatten(-2)


def test_rope_is_the_textbook_rotation_with_channels_paired_by_halves():
    """The lesson's apply_rope is the rotation of the RoPE paper, with channel j paired to channel j + D/2 (the
    pairing of GPT-NeoX, Llama in Hugging Face transformers) instead of 2j to 2j + 1: interleaving the two halves
    turns one into the other. On the (q, k) view of the fused projection the model rotates, only q and k get a
    gradient, and that gradient is the upstream one rotated back."""
    B, T, H, D = 2, 12, 3, 8
    cos, sin = rope_angles(D, 32)
    cos, sin = cos[:T], sin[:T]  # as the model slices them: (T, D), the same for every head
    fused = torch.randn(B, T, 3 * H * D, generator=torch.Generator().manual_seed(0), requires_grad=True)
    qk = fused.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)[:2]  # (2, B, H, T, D): a strided view, as in the model
    out = apply_rope(qk, cos, sin)
    interleave = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], dim=-1).flatten()  # 0, D/2, 1, ...
    torch.testing.assert_close(out[..., interleave], _textbook_rope(qk[..., interleave], torch.arange(T)),
                               atol=1e-5, rtol=1e-5)
    upstream = torch.randn(2, B, H, T, D, generator=torch.Generator().manual_seed(1))
    out.backward(upstream)
    grad = fused.grad.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(grad[:2], apply_rope(upstream, cos, -sin), atol=1e-5, rtol=1e-5)
    assert grad[2].abs().max() == 0, "the values are not rotated"
    half = apply_rope(qk.detach().to(torch.bfloat16), cos, sin)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), out.detach(), atol=0.05), "bf16 in, bf16 out"


def test_attention_is_per_head_attention_over_rotated_queries_and_keys():
    """The fused attention (one projection viewed as (3, B, heads, T, head_dim), q and k rotated together)
    computes, head by head, softmax(q k^T / sqrt(d) + causal mask) v with q and k rotated by their positions."""
    model = tiny_model("rope")
    attn, (B, T, C), H = model.blocks[0].attn, (2, 10, 32), 2
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = attn(x, model.cos[:T], model.sin[:T])
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (x @ attn.qkv.weight.T).split(C, dim=-1))
        q, k = apply_rope(q, model.cos[:T], model.sin[:T]), apply_rope(k, model.cos[:T], model.sin[:T])
        scores = (q @ k.transpose(-1, -2) / (C // H) ** 0.5).masked_fill(~model.causal[:T, :T], float("-inf"))
        want = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_masks_are_built_once_and_sliced():
    rope, alibi = tiny_model("rope"), tiny_model("alibi")
    assert rope.attention_mask(0, 32) is None, "a plain causal pass uses SDPA's is_causal, no mask tensor"
    piece = rope.attention_mask(5, 3)
    assert piece.shape == (3, 8) and piece.data_ptr() >= rope.causal.data_ptr(), "a view of the stored causal mask"
    assert piece[0].tolist() == [True] * 6 + [False] * 2, "query at position 5 sees keys 0..5"
    bias = alibi.attention_mask(0, 4)
    assert bias.shape == (2, 4, 4) and torch.isinf(bias[0, 0, 1]) and bias[0, 0, 0] == 0
    assert bias[0, 3, 0] == pytest.approx(-3 * alibi_slopes(2)[0].item()), "ALiBi: -slope x distance"
