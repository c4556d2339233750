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


def test_track_peak_memory_sees_a_big_allocation():
    with cu.track_peak_memory() as peak:
        block = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        block += 1
    assert peak.rss_gb >= 0.25 and peak.seconds > 0
    assert "peak RSS" in str(peak)


def test_free_gpu_lets_a_model_go():
    import weakref

    model = torch.nn.Linear(10, 10)
    ref = weakref.ref(model)
    del model
    assert cu.free_gpu() >= 0.0 and ref() is None


# --- estimator ------------------------------------------------------------------------------------------------
def test_llama_8b_shape_matches_published_parameter_count():
    assert memory.LLAMA_3_1_8B.n_params == pytest.approx(8.03e9, rel=0.01)
    assert memory.QWEN2_5_7B.n_params == pytest.approx(7.62e9, rel=0.01)


def test_estimator_holds_to_published_figures():
    llama = memory.LLAMA_3_1_8B
    assert 4.5 <= memory.weights_gb(llama, 4) <= 5.5  # bitsandbytes footprint ~5.6 GB = 5.2 GiB
    assert memory.weights_gb(llama, 16) == pytest.approx(8.03e9 * 2 / 2**30, rel=0.01)
    assert not cu.fits_card(memory.estimate_inference_vram(llama, 16, 2048), 12)
    assert cu.fits_card(memory.estimate_inference_vram(llama, 4, 2048), 12)
    qlora = memory.estimate_training_vram(llama, "qlora", seq_len=2048, batch_size=1, gradient_checkpointing=True)
    assert qlora.total_gb < 10  # torchtune measured 7.4 GiB on a 4090
    assert qlora.total_gb > 6.0  # and not absurdly optimistic


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
    assert small.max_seq_len == 1024 and any("1024" in r for r in small.reasons)


def test_safe_defaults_scale_micro_batch_and_keep_effective_batch():
    big, small = cu.safe_defaults("cnn-train", 12, True), cu.safe_defaults("cnn-train", 6, True)
    assert small.micro_batch_size < big.micro_batch_size
    assert small.effective_batch_size == big.effective_batch_size


def test_safe_defaults_rejects_unknown_task():
    with pytest.raises(cu.BadParameter, match="choose one of"):
        cu.safe_defaults("nonsense", 12, True)


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
