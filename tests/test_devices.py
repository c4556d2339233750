"""Cards, drivers and devices the course must name or handle, faked at torch's boundary: a GTX 1080 Ti (6.1) the
pinned build has no kernels for, an NVIDIA driver too old for its CUDA, ``--device cuda:1``, Ultralytics' AMP check
(never its yolo26n.pt download), Whisper's fp32 master weights, and a chat whose generation thread fails."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import course_utils as cu
from course_utils.core import gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bf16_rule import CARDS, ROOT, fake_card, load_recipe  # noqa: E402


# ------------------------------------------------------------------------------------- cards the build cannot serve


def test_a_gtx_1080_ti_is_named_with_its_capability_and_the_builds(monkeypatch):
    fake_card(monkeypatch, "GTX 1080 Ti")
    with pytest.raises(cu.NeedsGPU) as info:
        cu.choose_device(False, 8, "fine-tuning")
    message = str(info.value)
    assert "GTX 1080 Ti" in message and "6.1" in message and "sm_75" in message and "smoke" in message.lower()
    assert "\n" not in message
    assert cu.choose_device(True, 8, "x") == "cpu", "smoke mode must not start on a card with no kernels for it"
    assert cu.choose_device(False, 8, "x", allow_cpu=True) == "cpu"


@pytest.mark.parametrize("card", ["T4", "RTX 2080 Ti", "RTX 4070 Ti"])
def test_cards_the_build_serves_pass(monkeypatch, card):
    fake_card(monkeypatch, card)
    assert gpu.build_serves(CARDS[card][1])
    assert cu.choose_device(False, 8, "x") == "cuda" and cu.choose_device(True, 8, "x") == "cuda"


def test_the_rule_is_the_builds_arch_list(monkeypatch):
    """The same 6.1 card passes under a build that has sm_61 kernels (e.g. torch's cu126 wheels)."""
    fake_card(monkeypatch, "GTX 1080 Ti", archs=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])
    assert cu.choose_device(False, 8, "x") == "cuda"
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    assert not gpu.build_serves((6, 1)) and gpu.build_serves((8, 9)) and gpu.build_serves((12, 0))


@pytest.mark.parametrize("driver, cuda, expected", [
    ("550.54.14", "13.0", "driver 550.54.14 is too old for its CUDA 13.0, which needs driver 580"),
    ("580.95.05", None, "CPU-only build"),
    ("580.95.05", "13.0", "CUDA_VISIBLE_DEVICES"),
    (None, "13.0", "PyTorch sees no GPU."),
])
def test_no_gpu_says_which_it_is(monkeypatch, driver, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(gpu, "_driver_version", lambda: driver)
    with pytest.raises(cu.NeedsGPU) as info:
        cu.choose_device(False, 8, "QLoRA")
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- --device cuda:1


def test_device_type_and_one_sentence_for_a_bad_name():
    assert [gpu.device_type(d) for d in ("cuda", "cuda:1", 1, torch.device("cuda", 1), "cpu")] == \
        ["cuda", "cuda", "cuda", "cuda", "cpu"]
    with pytest.raises(cu.BadParameter, match="'gpu' is not a device"):
        gpu.device_type("gpu")


@pytest.mark.parametrize("card", ["T4", "RTX 4070 Ti"])
def test_load_causal_lm_on_cuda_1_takes_the_gpu_branch(monkeypatch, tmp_path, card):
    import transformers

    from course_utils.topics import llm

    fake_card(monkeypatch, card)
    seen = {}
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: SimpleNamespace(pad_token="<p>"))
    model = SimpleNamespace(eval=lambda: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.update(k) or model)
    llm.load_causal_lm(str(tmp_path), quantization="4bit", device="cuda:1")
    want = torch.bfloat16 if card == "RTX 4070 Ti" else torch.float16
    assert seen["device_map"] == {"": 1}, "cuda:1 must load onto GPU 1, not down the CPU branch"
    assert seen["dtype"] == want and seen["quantization_config"].bnb_4bit_compute_dtype == want


def _autocast_recorder(monkeypatch) -> list[str]:
    """torch.autocast that records its device_type and refuses anything but a device *type* ("cuda:1" is not one)."""
    real, seen = torch.autocast, []

    def autocast(device_type, *args, **kwargs):
        seen.append(device_type)
        assert device_type in ("cuda", "cpu"), f"autocast(device_type={device_type!r}): pass the type, e.g. 'cuda'"
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    return seen


@pytest.mark.parametrize("name", ["train_mnist", "train_cifar10"])
def test_recipes_pass_autocast_the_device_type(monkeypatch, tmp_path, name):
    """A device with an index (here cpu:0, as cuda:1 on a GPU box) reaches autocast and the scaler as its type."""
    import numpy as np

    shape = (1, 28, 28) if name == "train_mnist" else (3, 32, 32)
    rng = np.random.default_rng(0)
    arrays = {f"x_{s}": rng.integers(0, 255, (n, *shape), dtype=np.uint8) for s, n in (("train", 32), ("test", 16))}
    arrays |= {f"y_{s}": rng.integers(0, 10, n) for s, n in (("train", 32), ("test", 16))}
    np.savez(tmp_path / "d.npz", **arrays)
    seen = _autocast_recorder(monkeypatch)
    widths = ["--widths", "4,4,4,4"] if name == "train_cifar10" else ["--width", "4"]
    load_recipe(name).main(["--npz", str(tmp_path / "d.npz"), "--epochs", "1", "--batch_size", "16", "--device", "cpu:0",
                            "--dtype", "fp32", "--output_dir", str(tmp_path / "out"), *widths])
    assert seen and set(seen) == {"cpu"}


def test_a_bad_device_flag_is_one_sentence():
    with pytest.raises(SystemExit, match="not a device PyTorch knows"):
        load_recipe("train_mnist").choose_device("gpu0")


def test_whisper_recipe_loads_fp32_master_weights(monkeypatch):
    import transformers

    seen = {}
    monkeypatch.setattr(transformers.WhisperProcessor, "from_pretrained", lambda *a, **k: "processor")
    monkeypatch.setattr(transformers.WhisperForConditionalGeneration, "from_pretrained",
                        lambda *a, **k: seen.update(k) or "model")
    assert load_recipe("finetune_whisper").load_model("openai/whisper-small", "abc") == ("model", "processor")
    assert seen == {"dtype": torch.float32, "revision": "abc"}, "an fp16 checkpoint must not train fp16 master weights"
    assert "model, processor = load_model(args.model_name_or_path, args.revision)" in \
        (ROOT / "recipes" / "finetune_whisper.py").read_text()


# ------------------------------------------------------------------------------------- Ultralytics' AMP check


def test_ultralytics_runs_its_amp_check_only_for_fp16_and_by_module_name():
    """The pinned trainer skips check_amp for amp='bf16' and looks it up in its module: the course's replacement
    (setup_ultralytics, and the recipe's copy) is what it calls."""
    import importlib.util

    root = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0])
    trainer = (root / "engine" / "trainer.py").read_text()
    assert 'if self.amp and self.args.amp != "bf16" and RANK in {-1, 0}:' in trainer
    assert "check_amp(self.model)" in trainer and "from ultralytics.utils.checks import check_amp" in trainer
    from course_utils.topics import yolo

    assert f'r"{yolo.AMP_BROKEN_GPUS}"' in (root / "utils" / "checks.py").read_text(), \
        "Ultralytics changed its list of cards with broken AMP: copy it into AMP_BROKEN_GPUS"


def test_setup_installs_the_offline_amp_check_and_it_never_downloads(monkeypatch, tmp_path):
    import ultralytics
    import ultralytics.engine.trainer as trainer_module

    from course_utils.topics import yolo

    monkeypatch.setattr(trainer_module, "check_amp", trainer_module.check_amp)  # undone after the test
    yolo.setup_ultralytics(config_dir=tmp_path / "cfg", runs_dir=tmp_path / "runs")
    assert trainer_module.check_amp is yolo.amp_check_offline
    monkeypatch.setattr(ultralytics, "YOLO", lambda *a, **k: pytest.fail("the AMP check loaded a YOLO checkpoint"))
    fake_model = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    for name, ok in (("NVIDIA GeForce RTX 2080 Ti", True), ("Tesla T4", True), ("NVIDIA GeForce GTX 1660 SUPER", False)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert trainer_module.check_amp(fake_model) is ok, name
    cpu_model = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cpu"))]))
    assert trainer_module.check_amp(cpu_model) is False


def test_the_yolo_recipe_holds_the_course_amp_check():
    recipe = ROOT / "recipes" / "train_yolo.py"
    for name in ("amp_check_offline", "AMP_BROKEN_GPUS"):  # held to their sources by the copy checker
        assert f"# Copied from course_utils/topics/yolo.py:{name}\n" in recipe.read_text()
    assert "trainer_module.check_amp = amp_check_offline" in recipe.read_text()


# ------------------------------------------------------------------------------ a generation thread that fails


class _Tokenizer:
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=True, return_tensors=None, return_dict=True,
                            tokenize=True):
        from transformers import BatchEncoding

        ids = [t for m in messages for t in range(len(m["content"].split()) + 2)]
        return BatchEncoding({"input_ids": torch.tensor([ids]) if return_tensors else ids})

    def decode(self, ids, **kwargs):
        return " ".join(map(str, ids))


def _stream(generate, timeout_s: float):
    chat = load_recipe("chat_4bit")
    args = chat.parse_args(["--model_name", "m", "--prompt", "hi", "--greedy"])
    model = SimpleNamespace(device="cpu", generate=generate)
    messages = [{"role": "user", "content": "hi there"}]
    start = time.perf_counter()
    with pytest.raises(chat.ChatError) as info:
        chat.stream_reply(model, _Tokenizer(), messages, args, out=open("/dev/null", "w"), timeout_s=timeout_s)
    return str(info.value), time.perf_counter() - start


@pytest.mark.timeout(20)
def test_a_failing_generate_surfaces_at_once_as_one_sentence():
    def generate(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.99 GiB total)")

    message, seconds = _stream(generate, timeout_s=10)
    assert "ran out of memory" in message and "\n" not in message
    assert seconds < 5, "the reader must not wait for the streamer's timeout when the thread has failed"


@pytest.mark.timeout(20)
def test_a_stalled_generate_times_out():
    release = threading.Event()

    def generate(**kwargs):
        release.wait(10)

    message, seconds = _stream(generate, timeout_s=0.3)
    release.set()
    assert "sent nothing for 0.3 s" in message and seconds < 5


def test_the_chat_history_is_bounded():
    chat = load_recipe("chat_4bit")
    tokenizer = _Tokenizer()
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(30):
        messages += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": "answer " * 20}]
    messages.append({"role": "user", "content": "last question"})
    kept = chat.bounded_messages(messages, tokenizer, max_tokens=200)
    assert kept[0] == messages[0] and kept[-1] == messages[-1] and len(kept) < len(messages)
    assert chat.prompt_tokens(tokenizer, kept) <= 200 and [m["role"] for m in kept[1:3]] == ["user", "assistant"]
    with pytest.raises(chat.ChatError, match="over --max_history_tokens 3"):
        chat.bounded_messages(messages, tokenizer, max_tokens=3)
