"""The GPU receipts script measures the architectures the course's estimator and lessons use."""

from __future__ import annotations

import importlib.util
import json

import pytest

from course_utils.core import memory
from course_utils.core.paths import REPO_ROOT


def load_receipts():
    spec = importlib.util.spec_from_file_location("gpu_receipts", REPO_ROOT / "benchmarks" / "gpu_receipts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_receipts_llama_config_is_the_estimators_llama():
    shape = memory.ModelShape.from_hf_config(load_receipts().llama_config())
    assert shape.n_params == pytest.approx(memory.LLAMA_3_1_8B.n_params)
    assert (shape.n_kv_heads, shape.head_dim, shape.vocab_size) == (8, 128, 128256)


def test_receipts_refuse_to_run_without_a_gpu(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    module = load_receipts()
    monkeypatch.setattr("sys.argv", ["gpu_receipts.py", "whisper"])
    with pytest.raises(AssertionError, match="needs a CUDA GPU"):
        module.main()


def test_receipts_cap_the_allocator_at_what_a_12_gb_card_leaves_after_the_context():
    receipts = load_receipts()
    gib = memory.GIB
    assert receipts.allocator_fraction(80 * gib, 0.5) * 80 * gib == pytest.approx(11.49 * gib)  # an 80 GB card
    assert receipts.allocator_fraction(int(11.99 * gib), 0.3) * 11.99 * gib == pytest.approx(11.69 * gib)  # a real one
    assert receipts.allocator_fraction(8 * gib, 0.5) == 1.0


def test_receipts_measure_the_whole_process_on_the_card_from_nvml():
    """NVML's used memory (context, pool, bitsandbytes' paged buffers) over what other processes held before: the peak
    between two samples is kept, a drop after it is not."""
    readings = iter([1.0, 1.5, 13.2, 4.0, 4.0])
    receipts = load_receipts()
    nvml = receipts.DeviceMemory(read=lambda: next(readings) * memory.GIB)  # baseline 1.0 GiB: another process
    nvml.reset()
    nvml.peak = max(nvml.peak, nvml.read())  # what the sampling thread does between two steps
    assert nvml.peak_gb() == pytest.approx(12.2) and nvml.peak_gb() > receipts.CARD_TOTAL_GIB


def test_receipts_build_the_random_8b_in_16_bit(tmp_path, monkeypatch):
    """The 8B built in fp32 is 32 GB: it must be built in bf16 from the start (a tiny Llama of the same code here)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    receipts = load_receipts()
    tiny = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128)
    monkeypatch.setattr(receipts, "llama_config", lambda: tiny)
    built = []
    post_init = LlamaForCausalLM.post_init
    monkeypatch.setattr(LlamaForCausalLM, "post_init",
                        lambda self: (built.append(next(self.parameters()).dtype), post_init(self))[1])
    receipts.random_checkpoint(tmp_path / "llama", device="cpu")
    assert built == [torch.bfloat16] and torch.get_default_dtype() == torch.float32
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["dtype"] == "bfloat16"


def test_receipts_fp16_training_goes_through_a_grad_scaler():
    import torch

    receipts = load_receipts()
    calls = []

    class Spy:
        def scale(self, loss):
            calls.append("scale")
            return loss * 1024

        def step(self, opt):
            calls.append("step")
            for p in model.parameters():
                p.grad /= 1024
            opt.step()

        def update(self):
            calls.append("update")

    model = torch.nn.Linear(4, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    receipts.train_step(lambda: model(torch.ones(2, 4)).pow(2).mean(), opt, torch.bfloat16, Spy(), device_type="cpu")
    assert calls == ["scale", "step", "update"] and not torch.equal(model.weight, before)
    fp16 = receipts.amp(torch.float16)
    assert fp16[0] == torch.float16 and fp16[1].is_enabled() == torch.cuda.is_available()  # enabled on a GPU
    source = (REPO_ROOT / "benchmarks" / "gpu_receipts.py").read_text()
    sd = source[source.index("def bench_sd"):source.index("def main")]
    assert "amp(torch.float16)" in sd and "train_step(" in sd and ".backward()" not in sd
