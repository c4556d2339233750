"""Unit tests for the spine of course_utils: GPU checks, estimator, defaults, OOM, seeding, metrics, files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

import course_utils as cu
from course_utils.core import memory
from course_utils.core.gpu import GPUReport

CPU = GPUReport(False, "cpu", 0.0, 0.0, None, False, "2.14.1", None, None, True, False)
SMALL = GPUReport(True, "GeForce GTX 1660", 6.0, 5.5, (7, 5), False, "2.14.1", "13.0", "580", True, False)
BIG = GPUReport(True, "GeForce RTX 4070 Ti", 12.0, 11.2, (8, 9), True, "2.14.1", "13.0", "580", True, True)


# --- package -------------------------------------------------------------------------------------------------
def test_import_is_light_and_cli_answers_help_fast():
    code = "import sys, course_utils; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "course_utils.runner.run", "--help"], capture_output=True, text=True, check=True)
    assert "--mode" in out.stdout and time.perf_counter() - start < 5


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        cu.no_such_helper  # noqa: B018


# --- GPU -----------------------------------------------------------------------------------------------------
def test_cpu_report_says_so_clearly():
    text = str(cu.gpu_report()) if not torch.cuda.is_available() else str(CPU)
    assert "CPU only" in text and "smoke mode" in text


def test_gpu_report_table_lists_what_matters():
    text = str(BIG)
    for word in ("RTX 4070 Ti", "12.0 GiB", "8.9", "bf16", "SDPA"):
        assert word in text
    assert "| device |" in BIG._repr_markdown_()


def test_require_gpu_without_gpu_says_what_and_how():
    with pytest.raises(cu.NeedsGPU) as err:
        cu.require_gpu(10, "QLoRA on an 8B model", report=CPU)
    msg = str(err.value)
    assert "10 GiB" in msg and "QLoRA on an 8B model" in msg and "SMOKE" in msg and "\n" not in msg


def test_require_gpu_with_too_little_vram_names_the_card():
    with pytest.raises(cu.NeedsGPU, match="GTX 1660 has 6.0 GiB"):
        cu.require_gpu(10, "QLoRA", report=SMALL)
    assert cu.require_gpu(10, "QLoRA", report=BIG) is BIG


def test_course_errors_render_as_one_line_in_ipython():
    lines = cu.NeedsGPU("no GPU; run smoke mode")._render_traceback_()
    assert len(lines) == 1 and "NeedsGPU" in lines[0] and "run smoke mode" in lines[0]


def test_choose_device(monkeypatch):
    monkeypatch.setattr("course_utils.core.gpu.gpu_report", lambda: CPU)
    assert cu.choose_device(True, 10, "x") == "cpu"
    assert cu.choose_device(False, None, "runs anywhere") == "cpu"
    assert cu.choose_device(False, 10, "x", allow_cpu=True) == "cpu"
    with pytest.raises(cu.NeedsGPU):
        cu.choose_device(False, 10, "x")
    monkeypatch.setattr("course_utils.core.gpu.gpu_report", lambda: BIG)
    assert cu.choose_device(False, 10, "x") == "cuda"


def test_track_peak_memory_measures_its_own_block():
    # importing torch alone takes more RSS than any fixed threshold a test could set: measure what the block adds
    with cu.track_peak_memory() as idle:
        pass
    with cu.track_peak_memory() as peak:
        block = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        block += 1
    del block
    assert 0.24 <= peak.rss_delta_gb < 0.6, peak
    assert idle.rss_delta_gb < 0.1, idle  # an empty block adds nothing, whatever the process held before
    assert peak.rss_gb >= peak.rss_entry_gb + 0.24 and peak.seconds > 0
    assert "peak RSS" in str(peak)
    with cu.track_peak_memory() as after:  # the next block does not inherit the 256 MiB peak
        pass
    assert after.rss_delta_gb < 0.1 and cu.gpu.peak_rss_gb() >= peak.rss_gb - 0.01  # the lifetime peak is kept


def test_without_a_gpu_peak_vram_is_not_measured_rather_than_zero(monkeypatch):
    """A VRAM figure of 0.0 on a CPU would pass any "<= N GiB" target: without CUDA the GPU fields stay None."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with cu.track_peak_memory() as peak:
        pass
    assert peak.allocated_gb is None and peak.reserved_gb is None
    assert peak.allocated_entry_gb is None and peak.allocated_delta_gb is None and peak.reserved_delta_gb is None
    assert peak.rss_gb > 0 and "VRAM" not in str(peak)
    assert cu.PeakMemory().reserved_gb is None


class FakeCuda:
    """torch.cuda's memory counters, simulated: 5 GiB of weights, 3 GiB more cached by an earlier inference pass
    (reserved, not allocated), and an earlier peak of 7.5 GiB."""

    G = 1024**3

    def __init__(self):
        self.allocated, self.reserved, self.peak_allocated, self.peak_reserved = 5 * self.G, 8 * self.G, 7.5 * self.G, 8 * self.G

    def is_available(self):
        return True

    def synchronize(self):
        pass

    def empty_cache(self):
        self.reserved = self.allocated

    def reset_peak_memory_stats(self):
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def memory_allocated(self):
        return self.allocated

    def memory_reserved(self):
        return self.reserved

    def max_memory_allocated(self):
        return self.peak_allocated

    def max_memory_reserved(self):
        return self.peak_reserved

    def malloc(self, gib):
        self.allocated += gib * self.G
        self.reserved = max(self.reserved, self.allocated)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, gib):
        self.allocated -= gib * self.G


def test_track_peak_memory_resets_the_cuda_peak_and_drops_earlier_caches(monkeypatch):
    monkeypatch.setattr(cu.memory, "_LIFETIME_PEAK", [0.0, 0.0])
    fake = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    with cu.track_peak_memory() as train:
        fake.malloc(2)  # training: activations, gradients
        fake.free(2)
    assert train.allocated_gb == pytest.approx(7.0)  # not the 7.5 GiB of the earlier peak
    assert train.reserved_gb == pytest.approx(7.0)  # not the 8 GiB the earlier inference left cached
    assert train.allocated_entry_gb == pytest.approx(5.0) and train.allocated_delta_gb == pytest.approx(2.0)
    assert "+2.00 GiB over the 5.00 held on entry" in str(train)
    fake.is_initialized = lambda: True
    assert cu.gpu.peak_vram_gb() == pytest.approx((7.5, 8.0))  # the kernel's peak survives the block's reset
    fake2 = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake2)
    with cu.track_peak_memory(release_cache=False) as kept:
        fake2.malloc(1)
    assert kept.reserved_gb == pytest.approx(8.0) and kept.reserved_delta_gb == pytest.approx(0.0)


def test_free_gpu_releases_the_callers_objects():
    """free_gpu(model) must drop the notebook's own name for the model (and a reference cycle needs gc): with
    free_gpu a no-op, the weak reference below would still be alive."""
    namespace: dict = {}
    exec(
        "import weakref, torch\nimport course_utils as cu\n"
        "model = torch.nn.Linear(10, 10)\nmodel.me = [model]  # a cycle: only the garbage collector frees it\n"
        "ref = weakref.ref(model)\nother = 'kept'\nfree = cu.free_gpu(model)\n",
        namespace,
    )
    assert namespace["ref"]() is None, "free_gpu left the model alive"
    assert "model" not in namespace and namespace["other"] == "kept" and namespace["free"] >= 0.0
    history = {1: namespace["other"]}
    namespace.update(_oh=history, thing=torch.nn.Linear(2, 2))
    namespace["_oh"][2] = namespace["thing"]
    ref = __import__("weakref").ref(namespace["thing"])
    exec("cu.free_gpu(thing)", namespace)
    assert ref() is None and list(history) == [1]  # IPython's Out[2] no longer holds it


# --- estimator ------------------------------------------------------------------------------------------------
def test_llama_8b_shape_matches_published_parameter_count():
    assert memory.LLAMA_3_1_8B.n_params == pytest.approx(8.03e9, rel=0.01)
    assert memory.QWEN2_5_7B.n_params == pytest.approx(7.62e9, rel=0.01)


# Published config.json values (hub), written inline: the estimator must read gating and tying from these fields.
PUBLISHED = {
    "Llama-3.1-8B": (8.03e9, dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, hidden_act="silu",
                                  tie_word_embeddings=False)),
    "Qwen2.5-7B": (7.62e9, dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, hidden_act="silu",
                                tie_word_embeddings=False)),
    # Gemma-2's config.json has no tie_word_embeddings (Gemma2Config defaults to True) and a GELU, yet gated, MLP
    "Gemma-2-9B": (9.24e9, dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                                hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")),
    "Qwen2.5-0.5B": (0.494e9, dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, hidden_act="silu",
                                   tie_word_embeddings=True)),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_from_published_configs(name):
    published, config = PUBLISHED[name]
    shape = memory.ModelShape.from_hf_config(config, name)
    assert shape.n_params == pytest.approx(published, rel=0.01), f"{name}: {shape.n_params / 1e9:.3f} B"
    assert shape.gated_mlp  # all four are gated (SwiGLU / GeGLU)
    assert shape.tied_embeddings == (name in ("Gemma-2-9B", "Qwen2.5-0.5B"))


def test_gating_and_tying_come_from_the_config_fields():
    base = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)
    gpt2 = memory.ModelShape.from_hf_config(dict(base, model_type="gpt2", activation_function="gelu_new"))
    assert not gpt2.gated_mlp and gpt2.tied_embeddings  # GPT2Config ties by default
    gemma = memory.ModelShape.from_hf_config(dict(base, model_type="gemma", hidden_act="gelu_pytorch_tanh", head_dim=16))
    assert gemma.gated_mlp and gemma.tied_embeddings
    untied = memory.ModelShape.from_hf_config(dict(base, model_type="gemma", head_dim=16, tie_word_embeddings=False))
    assert untied.n_params - gemma.n_params == 1000 * 64  # the LM head counted once more
    t5ish = memory.ModelShape.from_hf_config(dict(base, model_type="unknown", feed_forward_proj="gated-gelu"))
    assert t5ish.gated_mlp
    assert gpt2.lora_params(8) < memory.ModelShape.from_hf_config(dict(base, model_type="llama")).lora_params(8)


def test_estimator_matches_real_transformers_models_of_each_family():
    from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=500)
    for config, model_cls in ((Gemma2Config(**small, head_dim=16), Gemma2ForCausalLM),
                              (Qwen2Config(**small, tie_word_embeddings=True), Qwen2ForCausalLM)):
        real = sum(p.numel() for p in model_cls(config).parameters())
        assert memory.ModelShape.from_hf_config(config).n_params == pytest.approx(real, rel=0.01), model_cls.__name__
        # and from the plain dict a config.json would give (no class defaults to lean on but the model type's)
        as_json = {k: v for k, v in config.to_dict().items() if k != "tie_word_embeddings" or model_cls is Qwen2ForCausalLM}
        assert memory.ModelShape.from_hf_config(as_json).n_params == pytest.approx(real, rel=0.01), model_cls.__name__
    gpt2 = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64)
    real = sum(p.numel() for p in GPT2LMHeadModel(gpt2).parameters())
    shape = memory.ModelShape.from_hf_config(gpt2)
    assert not shape.gated_mlp and shape.tied_embeddings
    assert shape.n_params == pytest.approx(real, rel=0.1)  # GPT-2's biases and position table are not modelled


def test_estimator_holds_to_published_figures():
    llama = memory.LLAMA_3_1_8B
    assert 4.5 <= memory.weights_gb(llama, 4) <= 5.5  # bitsandbytes footprint ~5.6 GB = 5.2 GiB
    assert memory.weights_gb(llama, 16) == pytest.approx(8.03e9 * 2 / 2**30, rel=0.01)
    assert not cu.fits_card(memory.estimate_inference_vram(llama, 16, 2048), 12)
    assert cu.fits_card(memory.estimate_inference_vram(llama, 4, 2048), 12)
    qlora = memory.estimate_training_vram(llama, "qlora", seq_len=2048, batch_size=1, gradient_checkpointing=True)
    assert 9.5 < qlora.total_gb < 11.5  # transformers' whole-batch loss: 14 bytes a logit (see LOSS_PATH_BYTES)
    assert cu.fits_card(qlora, 12)  # still fits a 12 GB card with 1 GB to spare
    # torchtune measured 7.4 GiB (PyTorch's peak, the CUDA context not included) with its chunked cross-entropy
    chunked = memory.estimate_training_vram(llama, "qlora", seq_len=2048, chunked_loss=True)
    assert (chunked.total_gb - chunked.parts["overhead"]) == pytest.approx(7.4, rel=0.1)
    assert qlora.total_gb - chunked.total_gb > 2  # chunking is the biggest single saver at this length


def test_logits_follow_the_pinned_transformers_loss_path():
    llama = memory.LLAMA_3_1_8B
    tokens_x_vocab = 2048 * 128256
    # bf16 logits (2) + fp32 log-softmax output saved (4) + fp32 gradient in (4) and out (4) of log_softmax's backward
    assert memory.LOSS_PATH_BYTES == 14
    assert memory.logits_gb(llama, 2048) == pytest.approx(tokens_x_vocab * 14 / 2**30)
    assert memory.logits_gb(llama, 2048, batch_size=2) == pytest.approx(2 * memory.logits_gb(llama, 2048))
    # chunked: the bf16 logits stay whole, the fp32 work is one chunk's
    assert memory.logits_gb(llama, 2048, chunked_loss=True, loss_chunks=8) == pytest.approx(
        tokens_x_vocab * (2 + 12 / 8) / 2**30)
    assert memory.logits_gb(llama, 2048, chunked_loss=True, loss_chunks=16) < memory.logits_gb(llama, 2048, chunked_loss=True)
    est = memory.estimate_training_vram(llama, "qlora", chunked_loss=True)
    assert any("chunk" in note for note in est.notes)


def test_logits_count_matches_what_the_pinned_transformers_allocates():
    """Count the bytes of every live tensor while a tiny bf16 LlamaForCausalLM runs forward and the loss's backward
    on the CPU (a dispatch mode sees each op's outputs; a tensor's bytes are freed when its last view dies). With a
    big vocabulary next to a tiny model the logits dominate: the peak per logit is LOSS_PATH_BYTES."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from transformers import LlamaConfig, LlamaForCausalLM

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self.refs: dict[int, list[int]] = {}

        def _drop(self, key):
            entry = self.refs[key]
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr():
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key in self.refs:
                        self.refs[key][0] += 1
                    else:
                        self.refs[key] = [1, storage.nbytes()]
                        self.live += storage.nbytes()
                        self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._drop, key)
            return out

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=32000, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.randint(0, 32000, (1, 256))
    with LiveBytes() as mode:
        out = model(input_ids=ids, labels=ids)  # kept alive through backward, as a hand-written loop does
        out.loss.backward()
    per_logit = mode.peak / (256 * 32000)
    assert memory.LOSS_PATH_BYTES <= per_logit <= memory.LOSS_PATH_BYTES + 0.5, per_logit  # measured: 14.15


def test_kv_cache_formula():
    # 2 x 32 layers x 8 KV heads x 128 x 8192 tokens x 2 bytes = 1 GiB
    assert memory.kv_cache_gb(memory.LLAMA_3_1_8B, 8192) == pytest.approx(1.0)


def test_training_memory_orders_as_expected():
    llama = memory.LLAMA_3_1_8B
    full = memory.estimate_training_vram(llama, "full", optimizer="adamw").total_gb
    lora = memory.estimate_training_vram(llama, "lora").total_gb
    qlora = memory.estimate_training_vram(llama, "qlora").total_gb
    assert full > lora > qlora
    assert full > 8.03e9 * 16 / 2**30  # 16 bytes a parameter before activations
    no_ckpt = memory.estimate_training_vram(llama, "qlora", gradient_checkpointing=False).total_gb
    assert no_ckpt > qlora + 5  # checkpointing is what makes 2048 tokens fit


def test_gradient_checkpointing_counts_for_non_transformer_plans():
    unet = memory.ModelShape.from_params(0.86e9, "U-Net", activation_gb_per_sample=2.0)
    off = memory.estimate_training_vram(unet, "lora", batch_size=2, gradient_checkpointing=False)
    on = memory.estimate_training_vram(unet, "lora", batch_size=2, gradient_checkpointing=True)
    assert off.parts["activations"] == pytest.approx(4.0)
    assert on.parts["activations"] == pytest.approx(4.0 * unet.checkpointed_fraction) and on.total_gb < off.total_gb
    assert any("checkpointing keeps" in note for note in on.notes)
    measured = memory.ModelShape.from_params(0.86e9, "U-Net", activation_gb_per_sample=2.0, checkpointed_fraction=0.5)
    assert memory.estimate_training_vram(measured, "full", gradient_checkpointing=True).parts["activations"] == pytest.approx(1.0)


def test_estimator_from_a_transformers_config():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=100)
    from transformers import LlamaForCausalLM

    real = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert memory.ModelShape.from_hf_config(config).n_params == pytest.approx(real, rel=0.001)


def test_lora_parameter_count_matches_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=100)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory.ModelShape.from_hf_config(config).lora_params(8) == trainable


def test_fits_card_keeps_a_margin():
    assert cu.fits_card(10.5, 12, margin_gb=1.0)
    assert not cu.fits_card(11.5, 12, margin_gb=1.0)
    assert "does NOT fit" in str(cu.fits_card(11.5, 12))


# --- defaults -------------------------------------------------------------------------------------------------
def test_safe_defaults_precision_rules():
    assert cu.safe_defaults("llm-qlora", vram_gb=12, bf16=True).dtype == "bfloat16"
    old = cu.safe_defaults("llm-qlora", vram_gb=12, bf16=False)
    assert old.dtype == "float16" and old.use_grad_scaler
    cpu = cu.safe_defaults("cnn-train", vram_gb=0, bf16=False)
    assert cpu.device == "cpu" and cpu.dtype == "float32"


def test_safe_defaults_follow_the_seeds_for_qlora():
    d = cu.safe_defaults("llm-qlora", vram_gb=12, bf16=True)
    assert d.load_in_4bit and d.gradient_checkpointing and d.max_seq_len == 2048
    assert d.micro_batch_size == 1 and d.effective_batch_size == 16
    small = cu.safe_defaults("llm-qlora", vram_gb=8, bf16=True)
    assert small.max_seq_len == 1024 and small.micro_batch_size == 1 and any("1024" in r for r in small.reasons)


@pytest.mark.parametrize("reported, box", [(11.99, 12), (12282 / 1024, 12), (12.0, 12), (7.6, 8), (7.99, 8),
                                           (10.0, 10), (10.74, 11), (15.99, 16), (23.99, 24), (14.0, 12), (0, 0)])
def test_cards_are_taken_at_their_box_size(reported, box):
    from course_utils.core.defaults import card_box_gb

    assert card_box_gb(reported) == box


@pytest.mark.parametrize("task", ["cnn-train", "gpt-train", "llm-qlora", "yolo-train", "sd-lora", "whisper-finetune",
                                  "vlm-qlora", "llm-inference"])
def test_a_12_gb_card_reporting_11_99_gib_gets_the_12_gb_plan(task):
    reported = cu.safe_defaults(task, vram_gb=12282 / 1024, bf16=True)
    boxed = cu.safe_defaults(task, vram_gb=12, bf16=True)
    assert reported.as_dict() | {"reasons": ()} == boxed.as_dict() | {"reasons": ()}


@pytest.mark.parametrize("task", ["cnn-train", "gpt-train", "llm-qlora", "yolo-train", "sd-lora", "whisper-finetune",
                                  "vlm-qlora", "llm-inference", "rag", "sd-inference", "vlm-inference"])
def test_micro_batches_are_powers_of_two_and_the_effective_batch_is_fixed(task):
    effective = {cu.safe_defaults(task, vram_gb=v, bf16=True).effective_batch_size
                 for v in (0, 3.8, 5.8, 7.6, 7.99, 9.77, 10.74, 11.99, 15.99, 19.99, 23.99, 31.8, 79.1)}
    assert len(effective) == 1, f"{task}: effective batch changes with the card: {effective}"
    for v in (0, 5.8, 7.99, 11.99, 15.99, 23.99, 79.1):
        micro = cu.safe_defaults(task, vram_gb=v, bf16=True).micro_batch_size
        assert micro >= 1 and micro & (micro - 1) == 0, f"{task} at {v} GiB: micro-batch {micro}"


def test_safe_defaults_branches_for_8_16_and_24_gb():
    from course_utils.core.defaults import safe_defaults as sd

    assert (sd("llm-qlora", 7.99, True).max_seq_len, sd("llm-qlora", 7.99, True).micro_batch_size) == (1024, 1)
    assert sd("gpt-train", 7.99, True).micro_batch_size < sd("gpt-train", 11.99, True).micro_batch_size
    assert sd("yolo-train", 15.99, True).micro_batch_size > sd("yolo-train", 11.99, True).micro_batch_size
    assert sd("llm-inference", 15.99, True).load_in_4bit and sd("llm-inference", 15.99, True).max_seq_len == 8192
    assert not sd("llm-inference", 23.99, True).load_in_4bit  # 16-bit 8B from 20 GB
    assert sd("llm-qlora", 23.99, True).micro_batch_size == 2 and sd("llm-qlora", 23.99, True).load_in_4bit
    # a 10/11 GB card gets the 8 GB plan for QLoRA: 2048 tokens need ~10.7 GiB
    assert sd("llm-qlora", 10.74, True).max_seq_len == 1024


def test_safe_defaults_scale_micro_batch_and_keep_effective_batch():
    big, small = cu.safe_defaults("cnn-train", 12, True), cu.safe_defaults("cnn-train", 6, True)
    assert small.micro_batch_size < big.micro_batch_size
    assert small.effective_batch_size == big.effective_batch_size


def test_safe_defaults_rejects_unknown_task():
    with pytest.raises(cu.BadParameter, match="choose one of"):
        cu.safe_defaults("nonsense", 12, True)


def test_require_gpu_takes_the_card_at_its_box_size():
    card_8gb = replace(BIG, device_name="RTX 4060", total_vram_gb=7.99)
    assert cu.require_gpu(8, "x", report=card_8gb) is card_8gb  # an 8 GB card passes an 8 GB minimum
    with pytest.raises(cu.NeedsGPU, match="RTX 4060 has 7.0 GiB"):
        cu.require_gpu(8, "x", report=replace(card_8gb, total_vram_gb=7.0))


# --- OOM ------------------------------------------------------------------------------------------------------
def _simulated(limit: int, calls: list[int]):
    def step(batch: int) -> None:
        calls.append(batch)
        if batch > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, batch {batch})")
    return step


def test_find_max_batch_size_halves_on_oom():
    calls: list[int] = []
    assert cu.find_max_batch_size(_simulated(100, calls), start=512, verbose=False) == 64
    assert calls == [512, 256, 128, 64]


def test_find_max_batch_size_reraises_other_errors_and_gives_advice_when_nothing_fits():
    def broken(batch: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        cu.find_max_batch_size(broken, 8, verbose=False)
    with pytest.raises(cu.CourseError, match="shorter sequences"):
        cu.find_max_batch_size(_simulated(0, []), 8, verbose=False)


@pytest.mark.parametrize("start, minimum, words", [(0, 1, "start must be"), (-8, 1, "start must be"),
                                                    (8, 0, "minimum must be"), (8, -1, "minimum must be"),
                                                    (4, 8, "nothing to try"), (8.0, 1, "whole number")])
def test_find_max_batch_size_rejects_bad_bounds(start, minimum, words):
    calls: list[int] = []
    with pytest.raises(cu.BadParameter, match=words):
        cu.find_max_batch_size(_simulated(100, calls), start=start, minimum=minimum, verbose=False)
    assert calls == []


@pytest.mark.timeout(180)  # each try collects garbage (slow on a busy machine); an endless loop would hit this
def test_find_max_batch_size_always_ends():
    calls: list[int] = []
    with pytest.raises(cu.CourseError, match="even batch size 1"):
        cu.find_max_batch_size(_simulated(0, calls), start=1024, verbose=False)  # every size runs out of memory
    assert calls == [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    calls.clear()
    assert cu.find_max_batch_size(_simulated(10**9, calls), start=4096, verbose=False) == 4096  # nothing does
    assert calls == [4096]
    calls.clear()
    with pytest.raises(cu.CourseError):
        cu.find_max_batch_size(_simulated(0, calls), start=1000, minimum=100, verbose=False)
    assert calls == [1000, 500, 250, 125]


def test_explain_oom_turns_oom_into_ordered_advice():
    with pytest.raises(cu.CourseError) as err:
        with cu.explain_oom("the training step"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    msg = str(err.value)
    assert msg.startswith("the training step ran out of GPU memory")
    order = [msg.index(word) for word in ("shorter sequences", "4-bit", "checkpointing", "micro-batch")]
    assert order == sorted(order)
    with pytest.raises(KeyError):
        with cu.explain_oom():
            raise KeyError("not an OOM")
    assert cu.is_oom_error(RuntimeError("CUDA error: out of memory"))


# --- reproducibility --------------------------------------------------------------------------------------------
def test_set_seed_reproduces_torch_and_numpy():
    import numpy as np

    cu.set_seed(123)
    a = (torch.rand(3), np.random.rand(3))
    cu.set_seed(123)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all()
    cu.set_seed(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_environment_snapshot_and_pins():
    snap = cu.environment_snapshot()
    assert snap["packages"]["torch"].startswith("2.14.1") and "gpu" in snap and snap["python"]
    assert cu.check_pins() == []


def test_check_pins_reports_drift(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("torch==0.0.1\nno-such-package-xyz==1.0\n")
    problems = cu.check_pins(str(req))
    assert any("course pins 0.0.1" in p for p in problems) and any("not installed" in p for p in problems)


# --- metrics and files ------------------------------------------------------------------------------------------
def test_record_merges_into_the_runner_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "m.json"
    monkeypatch.setenv("COURSE_METRICS_FILE", str(target))
    cu.record(accuracy=torch.tensor(0.9).item(), loss=torch.tensor(0.25))
    cu.record(epochs=3)
    data = json.loads(target.read_text())
    assert data["accuracy"] == pytest.approx(0.9) and data["loss"] == 0.25 and data["epochs"] == 3
    assert data["peak_rss_gb"] > 0
    assert "recorded: epochs=3" in capsys.readouterr().out


def test_record_by_hand_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_METRICS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cu.record(x=1)["x"] == 1 and list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    with cu.atomic_write(path) as f:
        f.write(b"good")
    with pytest.raises(RuntimeError):
        with cu.atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-save")
    assert path.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "adapter"
    with cu.atomic_dir(target) as d:
        (d / "w.safetensors").write_text("v1")
    with pytest.raises(RuntimeError):
        with cu.atomic_dir(target) as d:
            (d / "w.safetensors").write_text("v2-partial")
            raise RuntimeError("crash")
    assert (target / "w.safetensors").read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with cu.atomic_dir(target) as d:
        (d / "w.safetensors").write_text("v2")
    assert (target / "w.safetensors").read_text() == "v2"


def test_data_and_cache_dirs_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    assert cu.data_dir() == tmp_path / "data"
    assert cu.cache_dir("tiny") == tmp_path / "cache" / "tiny" and (tmp_path / "cache" / "tiny").is_dir()


def test_plots_label_their_axes():
    import matplotlib

    matplotlib.use("Agg")
    ax = cu.plot_curves({"train loss": [3, 2, 1], "val loss": [3, 2.5, 2]}, title="Loss")
    assert ax.get_title() == "Loss" and ax.get_xlabel() == "step" and len(ax.get_lines()) == 2
    fig = cu.image_grid([torch.rand(3, 8, 8), torch.rand(8, 8)], titles=["a", "b"], title="grid")
    assert len([a for a in fig.axes if a.images]) == 2


def test_plot_curves_takes_x_values():
    import matplotlib

    matplotlib.use("Agg")
    ax = cu.plot_curves({"train loss": [3, 2, 1, 0.5]}, x=[0, 100, 200, 300])
    assert list(ax.get_lines()[0].get_xdata()) == [0, 100, 200, 300]
    # train every step, val every 2 steps: one x sequence per curve
    ax = cu.plot_curves({"train loss": [4, 3, 2, 1], "val loss": [3.5, 2.2]}, x={"train loss": [1, 2, 3, 4], "val loss": [2, 4]},
                        title="Loss")
    lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert lines == {"train loss": [1, 2, 3, 4], "val loss": [2, 4]}
    ax = cu.plot_curves({"train loss": [4, 3], "val loss": [3.5]}, x={"val loss": [2]})  # missing: 1, 2, ...
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2], [2]]
    old = cu.plot_curves({"loss": [3, 2, 1]}, "Loss", "epoch")  # the old positional call still works
    assert list(old.get_lines()[0].get_xdata()) == [1, 2, 3] and old.get_xlabel() == "epoch"
    with pytest.raises(cu.BadParameter, match="'val loss' has 2 values but 3 x values"):
        cu.plot_curves({"val loss": [1, 2]}, x=[1, 2, 3])
    with pytest.raises(cu.BadParameter, match="history lacks"):
        cu.plot_curves({"val loss": [1, 2]}, x={"val loss": [1, 2], "vall loss": [1, 2]})
