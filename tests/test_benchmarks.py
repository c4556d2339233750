"""The GPU receipts script measures the architectures the course's estimator and lessons use."""

from __future__ import annotations

import importlib.util

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
