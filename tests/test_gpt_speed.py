"""benchmarks/gpt_speed.py measures what it says (tokens/s of a training step, cached vs uncached generation, and a
side-by-side model loaded from a path) — on a tiny configuration here; the speed figures themselves come from running
the benchmark, not from a timed test."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch

from course_utils.core.paths import REPO_ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpt_speed", REPO_ROOT / "benchmarks" / "gpt_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "2",
        "--steps", "2", "--repeats", "1", "--threads", "1"]

# A stand-in with nanoGPT's interface (GPTConfig, GPT(config), forward(idx, targets) -> (logits, loss),
# configure_optimizers(weight_decay, learning_rate, betas, device_type)); nanoGPT itself is never shipped.
FAKE_NANOGPT = textwrap.dedent('''
    from dataclasses import dataclass
    import torch, torch.nn as nn, torch.nn.functional as F

    @dataclass
    class GPTConfig:
        block_size: int = 16
        vocab_size: int = 65
        n_layer: int = 1
        n_head: int = 1
        n_embd: int = 32
        dropout: float = 0.0
        bias: bool = False

    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.head = nn.Linear(config.n_embd, config.vocab_size)

        def forward(self, idx, targets=None):
            logits = self.head(self.wte(idx))
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            return logits, loss

        def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
            return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
''')


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_benchmark_reports_training_and_generation_speed(tmp_path):
    rows = load_benchmark().main([*TINY, "--json", str(tmp_path / "speed.json")])
    assert rows["train_tokens_per_s_ours"] > 0 and rows["gen_tokens_per_s_cached"] > 0
    assert rows["kv_cache_token_match"] == 1.0, "cached and uncached generation must give the same tokens"
    assert rows["kv_cache_speedup"] == pytest.approx(rows["gen_tokens_per_s_cached"] / rows["gen_tokens_per_s_uncached"])
    assert (tmp_path / "speed.json").exists()


def test_benchmark_times_a_reference_model_from_a_path_side_by_side(tmp_path):
    model_py = tmp_path / "model.py"
    model_py.write_text(FAKE_NANOGPT)
    rows = load_benchmark().main([*TINY, "--nanogpt", str(model_py), "--same_optimizer", "--skip_generation"])
    assert rows["train_speed_ratio_ours_over_nanogpt"] == pytest.approx(
        rows["train_tokens_per_s_ours"] / rows["train_tokens_per_s_nanogpt"])
    assert "train_speed_ratio_same_optimizer" in rows and "gen_tokens_per_s_cached" not in rows
    assert rows["train_speed_ratio_same_optimizer"] == pytest.approx(
        rows["train_tokens_per_s_ours_foreach_adamw"] / rows["train_tokens_per_s_nanogpt"])
    assert len(rows["train_speed_ratio_per_repeat_ours_foreach_adamw"]) == 1


def test_benchmark_refuses_a_missing_reference(tmp_path):
    with pytest.raises(SystemExit, match="not a file"):
        load_benchmark().main([*TINY, "--nanogpt", str(tmp_path / "nope.py")])
