"""The course's one bf16 rule (compute capability >= 8.0, never emulation): nothing asks torch's emulation-counting
``is_bf16_supported()``, the recipes' marked copies are the core's function, and faked cards at compute capability 7.5
(a T4: fp16 + GradScaler) and 8.9 (an RTX 4070 Ti: bf16) get that precision from the core, ``safe_defaults``, lesson
08's Ultralytics setting and every recipe that chooses one."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import course_utils as cu
from course_utils.core import gpu

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
GIB = 2**30
#: the pinned torch 2.14.1+cu130's kernels (torch.cuda.get_arch_list())
PINNED_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CARDS = {  # name, compute capability, GiB reported
    "T4": ("Tesla T4", (7, 5), 15.6),
    "RTX 2080 Ti": ("NVIDIA GeForce RTX 2080 Ti", (7, 5), 11.0),
    "RTX 4070 Ti": ("NVIDIA GeForce RTX 4070 Ti", (8, 9), 11.99),
    "GTX 1080 Ti": ("NVIDIA GeForce GTX 1080 Ti", (6, 1), 11.0),
}


def fake_card(monkeypatch, card: str, archs: list[str] | None = None) -> None:
    """Make torch see one CUDA card: availability, properties (hence capability), memory, name, the build's arches."""
    name, (major, minor), gib = CARDS[card]
    props = SimpleNamespace(name=name, major=major, minor=minor, total_memory=int(gib * GIB), multi_processor_count=40)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(gib * 0.9 * GIB), int(gib * GIB)))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs or PINNED_ARCHS))
    monkeypatch.setattr(gpu, "_driver_version", lambda: "580.95.05")


def load_recipe(name: str):
    module_name = f"_bf16_rule_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# ------------------------------------------------------------------------------------------- nothing else asks torch


def _code_sources() -> list[tuple[str, str]]:
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for folder in ("course_utils", "recipes")
               for p in sorted((ROOT / folder).rglob("*.py"))]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((str(nb.relative_to(ROOT)), "\n".join(line for line in code.splitlines()
                                                                 if not line.lstrip().startswith(("%", "!")))))
    return sources


def emulating_bf16_calls(source: str) -> list[int]:
    """Lines that call ``is_bf16_supported`` without saying ``including_emulation=`` (the default counts emulation)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "is_bf16_supported":
                # an explicit including_emulation=False asks the hardware; an explicit True asks on purpose whether
                # emulation is there (the doctor's diagnosis), never to choose a precision
                strict = any(k.arg == "including_emulation" and isinstance(k.value, ast.Constant)
                             and k.value.value in (False, True) for k in node.keywords) or (node.args and isinstance(node.args[0], ast.Constant)
                                                         and node.args[0].value is False)
                if not strict:
                    lines.append(node.lineno)
    return lines


def test_nothing_asks_torch_whether_bf16_is_emulated():
    offenders = {path: lines for path, source in _code_sources()
                 if "is_bf16_supported" in source and (lines := emulating_bf16_calls(source))}
    assert not offenders, (f"these ask torch.cuda.is_bf16_supported(), which says yes on a T4 or an RTX 20xx (emulated "
                           f"bf16): use course_utils.core.gpu.bf16_native (recipes: its marked copy): {offenders}")


def test_the_grep_finds_an_emulating_call():
    assert emulating_bf16_calls("import torch\nx = torch.cuda.is_bf16_supported()\n") == [2]
    assert emulating_bf16_calls("import torch\nx = torch.cuda.is_bf16_supported(including_emulation=False)\n") == []


def test_recipes_hold_marked_copies_of_the_core_rule():
    deciders = [p for p in sorted(RECIPES.glob("*.py")) if "bfloat16" in p.read_text()]
    assert len(deciders) >= 9, "the recipes that choose a precision were not found"
    for path in deciders:
        # the copy checker (course_utils.runner.copies, tests/test_copies.py) holds each marked copy to the core's
        assert "# Copied from course_utils/core/gpu.py:bf16_native\n" in path.read_text(), \
            f"{path.name} chooses bf16 without the marked copy"


# ------------------------------------------------------------------------------------------------ cards 7.5 and 8.9

EXPECTED = {"T4": torch.float16, "RTX 2080 Ti": torch.float16, "RTX 4070 Ti": torch.bfloat16}


@pytest.mark.parametrize("card", ["T4", "RTX 4070 Ti"])
def test_core_and_defaults_follow_the_card(monkeypatch, card):
    fake_card(monkeypatch, card)
    native = EXPECTED[card] == torch.bfloat16
    assert gpu.bf16_native() is native and gpu.bf16_native("cuda:0") is native and gpu.bf16_native("cpu") is False
    report = cu.gpu_report()
    assert report.bf16_supported is native
    assert ("fp16 + GradScaler" in str(report)) is not native
    for task in ("cnn-train", "llm-qlora", "whisper-finetune", "yolo-train", "vlm-qlora"):
        defaults = cu.safe_defaults(task)
        assert defaults.torch_dtype == EXPECTED[card], f"{task} on a {card}"
        assert defaults.use_grad_scaler is not native, f"{task} on a {card}: fp16 needs the scaler, bf16 does not"


@pytest.mark.parametrize("card", ["T4", "RTX 4070 Ti"])
def test_lesson_08_gives_ultralytics_bf16_only_where_native(monkeypatch, card):
    """Ultralytics raises "bfloat16 autocast requires CUDA with native bfloat16 support" on a T4 (torch_utils.autocast)."""
    cells = json.loads((ROOT / "notebooks" / "08_yolov8_detection.ipynb").read_text())["cells"]
    line = next(line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
                if line.startswith("AMP = "))
    fake_card(monkeypatch, card)
    namespace = {"defaults": cu.safe_defaults("yolo-train")}
    exec(line, namespace)  # the lesson's own mapping to Ultralytics' names
    assert namespace["AMP"] == ("bf16" if EXPECTED[card] == torch.bfloat16 else True)


@pytest.mark.parametrize("card", ["T4", "RTX 4070 Ti"])
def test_each_recipe_chooses_the_cards_precision(monkeypatch, card):
    fake_card(monkeypatch, card)
    want = EXPECTED[card]
    for name in ("train_mnist", "train_cifar10"):
        recipe = load_recipe(name)
        assert recipe.choose_dtype("auto", "cuda") == want and recipe.choose_dtype("auto", "cuda:1") == want, name
        assert recipe.choose_dtype("auto", "cpu") == torch.float32
    assert load_recipe("train_qlora").compute_dtype_for("cuda", True) == want
    assert load_recipe("train_yolo").amp_setting("0") == ("bf16" if want == torch.bfloat16 else True)
    assert load_recipe("train_yolo").amp_setting("cpu") is False
    # the others decide inline with their copy of the rule (held to the core's by the test above)
    for name in ("chat_4bit", "serve_demo", "finetune_whisper", "train_llava_qlora", "rag", "train_sd_lora"):
        assert load_recipe(name).bf16_native() is (want == torch.bfloat16), name


def test_an_asked_for_bf16_on_a_t4_is_one_sentence(monkeypatch):
    fake_card(monkeypatch, "T4")
    with pytest.raises(SystemExit) as info:
        load_recipe("train_mnist").choose_dtype("bf16", "cuda")
    assert "Tesla T4" in str(info.value) and "fp16" in str(info.value) and "\n" not in str(info.value)


def test_pre_ampere_qlora_trains_the_adapter_in_fp32():
    """trl casts a 4-bit model's LoRA weights to bf16; fp16's GradScaler cannot unscale bf16 gradients."""
    recipe = load_recipe("train_qlora")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)  # the frozen base
    assert recipe.adapter_in_fp32_for_fp16(model, torch.bfloat16) == 0 and model[1].weight.dtype == torch.bfloat16
    assert recipe.adapter_in_fp32_for_fp16(model, torch.float16) == 2
    assert model[1].weight.dtype == model[1].bias.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16


def test_the_recipe_and_lesson_06_share_the_fp32_step():
    text = (RECIPES / "train_qlora.py").read_text()  # held to its source by the copy checker
    assert "# Copied from course_utils/topics/llm.py:adapter_in_fp32_for_fp16\n" in text


def test_trl_still_casts_quantized_adapters_to_bf16():
    """Why the recipe's fp32 step exists: when a trl upgrade stops casting, it can go."""
    trl = Path(importlib.util.find_spec("trl").submodule_search_locations[0])  # read, not imported (slow)
    source = (trl / "trainer" / "sft_trainer.py").read_text()
    assert "param.data = param.data.to(torch.bfloat16)" in source and "_is_quantized_model" in source
