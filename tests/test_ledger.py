"""The VRAM ledger (course_utils.core.ledger), bitsandbytes' global list, and the one meaning of peak VRAM (issue 25).

The lessons' own ledgers are read where tests/test_notebooks.py runs them (``check_smoke_ledger``); these tests hold
the pieces to what they promise, on tiny models, in well under a second each.
"""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from course_utils.core import ledger
from course_utils.core.memory import GIB, LLAMA_3_1_8B, weights_gb


def _tiny_llama():
    """A module named like a Llama (embeddings, 2 layers of 7 projections and 2 norms, LM head): torch only."""
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(32, 32, bias=False) for _ in range(4))
            self.gate_proj, self.up_proj = nn.Linear(32, 64, bias=False), nn.Linear(32, 64, bias=False)
            self.down_proj = nn.Linear(64, 32, bias=False)
            self.input_layernorm = nn.LayerNorm(32, bias=False)
            self.post_attention_layernorm = nn.LayerNorm(32, bias=False)

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(128, 32)
            self.layers = nn.ModuleList([Layer(), Layer()])

    class TinyLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Body()
            self.lm_head = nn.Linear(32, 128, bias=False)

    return TinyLlama()


@pytest.fixture(autouse=True)
def _fresh_ledger():
    ledger.clear()
    yield
    ledger.clear()


def test_a_registered_model_counts_its_full_size_until_its_weights_die():
    model = _tiny_llama()
    ledger.register(model, "Llama-3.1-8B", shape=LLAMA_3_1_8B, bits=4)
    total, by_name = ledger.live_gb()
    assert total == pytest.approx(weights_gb(LLAMA_3_1_8B, 4)) and set(by_name) == {"Llama-3.1-8B"}
    assert ledger.leaked_gb()[0] == 0.0
    del model
    gc.collect()
    assert ledger.live_gb()[0] == 0.0


def test_layers_kept_alive_count_by_their_share_and_are_a_leak():
    model = _tiny_llama()
    ledger.register(model, "Llama-3.1-8B", shape=LLAMA_3_1_8B, bits=4)
    linear = [m for name, m in model.named_modules() if type(m).__name__ == "Linear" and name != "lm_head"]  # 06's
    embedding = model.model.embed_tokens
    del model
    gc.collect()
    embeddings_gb = LLAMA_3_1_8B.embedding_params * 2 / GIB  # 16-bit: bitsandbytes quantises the linear layers only
    body_gb = weights_gb(LLAMA_3_1_8B, 4) - embeddings_gb
    live, _ = ledger.live_gb()
    leaked, leaks = ledger.leaked_gb()
    assert embeddings_gb / 2 + 0.95 * body_gb < live < embeddings_gb / 2 + body_gb  # the body less its norms
    assert leaked == live and set(leaks) == {"Llama-3.1-8B"}
    del linear
    assert ledger.live_gb()[0] == pytest.approx(embeddings_gb / 2)  # embed_tokens: half the 8B's embeddings, 0.98 GiB
    del embedding
    assert ledger.live_gb()[0] == 0.0


def test_bitsandbytes_registration_is_released():
    """With an 8-bit bitsandbytes optimizer, transformers' Trainer.create_optimizer registers every nn.Embedding with
    bitsandbytes' GlobalOptimManager (``manager.register_module_override(module, "weight", {"optim_bits": 32})``,
    transformers/trainer.py), a list bitsandbytes never clears; release_library_references (called by
    cu.free_gpu) lets them go."""
    import bitsandbytes

    from course_utils.core.memory import release_library_references

    model = _tiny_llama()
    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    manager.register_module_override(model.model.embed_tokens, "weight", {"optim_bits": 32})  # what Trainer does
    embedding = weakref.ref(model.model.embed_tokens)
    del model
    gc.collect()
    assert embedding() is not None, "bitsandbytes no longer keeps the embeddings: release_library_references may go"
    assert release_library_references() >= 1
    gc.collect()
    assert embedding() is None and manager.module_weight_config_triple == []


class _Events:
    def __init__(self):
        self.hooks = []

    def register(self, event, hook):
        assert event == "post_run_cell"
        self.hooks.append(hook)


class _Result:
    def __init__(self, count, source):
        self.execution_count = count
        self.info = type("Info", (), {"raw_cell": source})()


def _lesson(tmp_path, min_vram_gb: int):
    cells = [{"cell_type": "code", "source": "SMOKE = True", "metadata": {"tags": ["parameters"]}},
             {"cell_type": "code", "source": "", "metadata": {"tags": ["injected-ledger"]}},
             {"cell_type": "markdown", "source": "## Setup", "metadata": {}},
             {"cell_type": "code", "source": f"device = cu.choose_device(SMOKE, min_vram_gb={min_vram_gb}, why='x')",
              "metadata": {}},
             {"cell_type": "code", "source": "model = load()", "metadata": {}},
             {"cell_type": "code", "source": "second = load()", "metadata": {}}]
    for count, cell in enumerate([c for c in cells if c["cell_type"] == "code"], 1):
        cell["execution_count"] = count
    path = tmp_path / "99_lesson.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    return path


def test_the_cell_hook_writes_the_ledger_and_the_check_fails_over_a_card_s_budget(tmp_path, monkeypatch):
    lesson = _lesson(tmp_path, min_vram_gb=8)
    monkeypatch.setenv("COURSE_METRICS_FILE", str(tmp_path / "99_lesson.metrics.json"))
    events = type("IP", (), {"events": _Events(), "user_ns": {}})()
    assert ledger.install_cell_hook(events) == tmp_path / "99_lesson.ledger.json"
    hook = events.events.hooks[0]
    hook(_Result(3, "device = ..."))
    models = [ledger.register(_tiny_llama(), "Llama-3.1-8B", shape=LLAMA_3_1_8B, bits=4)]
    hook(_Result(4, "model = load()"))
    assert ledger.check_smoke_ledger(tmp_path, lesson).cell == 3  # 5.3 GiB: fits 12 GB and 8 GB cards
    # a model no loader registered (from_pretrained in the lesson) is found among the variables by its class
    second = type("LlamaForCausalLM", (type(models[0]),), {})()
    second.config = type("Config", (), {"quantization_config": {"load_in_4bit": True}})()
    peft = type("PeftModelForCausalLM", (), {"get_base_model": lambda self: self.base})()  # a wrapper: its base counts
    peft.base = second
    events.user_ns.update(model=models[0], tuned=peft)
    del second
    hook(_Result(5, "second = load()"))
    assert ledger.discover(events.user_ns) == [], "a model is registered once"
    peak = ledger.ledger_peak(tmp_path, lesson)
    assert (peak.cell, peak.cards_gb) == (4, (8.0, 12.0)) and peak.peak_gb == pytest.approx(10.62, abs=0.01)
    with pytest.raises(AssertionError, match=r"after cell 4 .* over the 6.5 GiB a 8 GB card"):
        ledger.check_smoke_ledger(tmp_path, lesson)


def test_peak_vram_is_peak_reserved_without_the_context_and_nests(monkeypatch):
    import torch

    from course_utils.core.memory import CUDA_CONTEXT_GB, estimate_training_vram, lifetime_vram_peak, vram_peak

    plan = estimate_training_vram(LLAMA_3_1_8B, "qlora")
    assert plan.total_gb - plan.peak_vram_gb == pytest.approx(CUDA_CONTEXT_GB)

    class FakeAllocator:  # PyTorch's counters: what is reserved now, and its peak since the last reset
        now, peak = 0.0, 0.0

        def use(self, gb):
            self.now = gb
            self.peak = max(self.peak, gb)

    card = FakeAllocator()
    counters = {"is_available": lambda: True, "synchronize": lambda d=None: None,
                "memory_reserved": lambda d=None: card.now * GIB, "memory_allocated": lambda d=None: card.now * GIB,
                "max_memory_reserved": lambda d=None: card.peak * GIB,
                "max_memory_allocated": lambda d=None: card.peak * GIB,
                "reset_peak_memory_stats": lambda d=None: setattr(card, "peak", card.now)}
    for name, value in counters.items():
        monkeypatch.setattr(torch.cuda, name, value)
    with vram_peak() as outer:
        with vram_peak() as first:  # opened at the same peaks as the outer block: each keeps its own
            pass
        card.use(6.0)   # the outer block's own peak
        card.use(2.0)
        with vram_peak() as inner:  # resets the counters: the outer block must keep its 6 GiB
            card.use(4.0)
        card.use(1.0)
    assert first.reserved_gb == 0.0 and (inner.reserved_gb, inner.reserved_entry_gb, inner.added_gb) == (4.0, 2.0, 2.0)
    assert outer.reserved_gb == 6.0, "an inner measurement's reset lost the outer block's peak"
    assert lifetime_vram_peak()[1] >= 6.0
