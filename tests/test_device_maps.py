"""Device maps computed, not guessed: lesson 13's offload plans (Llama-3.1-8B whole-vs-offloaded, Llama-2-13B at
``GPU_BUDGET_GIB``) are the ones ``from_pretrained(device_map=...)`` computes for a 4-bit load.

``course_utils.topics.multigpu.offload_plan`` (what the lesson calls) runs transformers' own planning on a ``meta``
model; here the same plan is written out with accelerate's ``infer_auto_device_map`` from what transformers' bitsandbytes
quantiser says (``quantized_element_size``, ``adjust_max_memory``), on the published configs (no download, no GPU),
at the lesson's own parameters, and the lesson's asserts are held to the result.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from course_utils.core.paths import REPO_ROOT
from course_utils.topics.llm import quantization_config
from course_utils.topics.multigpu import layers_per_device, offload_plan, placement_bytes

LESSON = REPO_ROOT / "notebooks" / "13_beyond_one_card.ipynb"
LLAMA_8B = REPO_ROOT / "datasets" / "course" / "model_configs" / "meta-llama--Llama-3.1-8B-Instruct"
LLAMA_13B = Path(__file__).parent / "data" / "llama-2-13b-hf.config.json"


def _cells() -> dict[str, str]:
    return {c["id"]: "".join(c["source"]) for c in json.loads(LESSON.read_text())["cells"]}


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    """The lesson's full-mode parameters (its parameters cell, SMOKE off) and its cells."""
    cells = _cells()
    scope: dict = {}
    code = cells["81164275"].replace('os.environ.get("SMOKE", "0") == "1"', "False")
    exec(compile(code, "13: parameters", "exec"), scope)
    return scope, cells


def _by_hand(config, max_memory: dict, quant):
    """accelerate's infer_auto_device_map as transformers drives it for a bitsandbytes load, written out."""
    from accelerate import init_empty_weights, infer_auto_device_map
    from accelerate.utils import CustomDtype, compute_module_sizes, convert_file_size_to_int, dtype_byte_size
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(quant, pre_quantized=False)
    assert quantizer.quantized_element_size == dtype_byte_size(CustomDtype.INT4) == 0.5
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # bitsandbytes replaces every nn.Linear but the LM head; everything else keeps the load's 16-bit dtype
    quantised = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    special = {n: torch.bfloat16 for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] not in quantised}
    special.update({n: b.dtype for n, b in model.named_buffers()})  # rotary frequencies: fp32 buffers
    budget = quantizer.adjust_max_memory({k: convert_file_size_to_int(v) for k, v in max_memory.items()})
    plan = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=model._no_split_modules,
                                 dtype=CustomDtype.INT4, special_dtypes=special)
    size = compute_module_sizes(model, dtype=CustomDtype.INT4, special_dtypes=special)[""]
    return dict(plan), size


def test_the_8b_offload_plan_is_accelerates_and_moves_what_the_lesson_asserts(lesson):
    """Lesson 13 cell 17 in full mode: the 8B in 4-bit, 90 % of its bytes on the GPU. Accelerate, driven as
    transformers drives it, puts 10 of 32 layers in CPU RAM (not the 6 it gave on the loaded model without
    bitsandbytes' 90 % cut), and the lesson asserts a share it really gets."""
    from transformers import AutoConfig

    params, cells = lesson
    config = AutoConfig.from_pretrained(LLAMA_8B)
    quant = quantization_config(params["QUANTIZATION"], torch.bfloat16)
    size = placement_bytes(config, quant, torch.bfloat16)
    budget = {0: int(params["WHOLE_SHARE"] * size), "cpu": f"{params['CPU_BUDGET_GIB']}GiB"}
    plan = offload_plan(config, budget, quant, torch.bfloat16)
    hand, hand_size = _by_hand(config, budget, quant)
    assert size == hand_size, "the lesson sizes the model as accelerate does"
    assert plan == hand
    layers = layers_per_device(plan, config.num_hidden_layers)
    share = 1 - layers[0] / config.num_hidden_layers
    (asserted,) = re.findall(r"offloaded_layer_share >= ([0-9.]+)", cells["4dbf9f6b"])
    assert share >= float(asserted), f"the lesson asserts >= {asserted} of the layers offloaded; the plan moves {share:.2f}"
    assert plan["model.embed_tokens"] == 0 and plan["lm_head"] == "cpu", plan
    print(f"8B at {budget[0] / 2**30:.2f} GiB: layers {layers}, share {share:.3f}")


def test_the_13b_plan_by_hand_is_from_pretraineds_on_the_published_config(lesson):
    from transformers import LlamaConfig

    params, cells = lesson
    published = {k: v for k, v in json.loads(LLAMA_13B.read_text()).items() if not k.startswith("_")}
    call = next(n.value for n in ast.parse(cells["3452e685"]).body
                if isinstance(n, ast.Assign) and n.targets[0].id == "llama_13b")
    written = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert {k: published[k] for k in written} == written, "cell 15's LlamaConfig should be the published one"
    config = LlamaConfig(**published)
    budget = {0: f"{params['GPU_BUDGET_GIB']}GiB", "cpu": f"{params['CPU_BUDGET_GIB']}GiB"}
    quant = quantization_config("4bit", torch.bfloat16)
    plan = offload_plan(config, budget, quant, torch.bfloat16)
    assert plan == _by_hand(config, budget, quant)[0]
    layers = layers_per_device(plan, config.num_hidden_layers)
    assert layers.get("cpu", 0) > 0, "cell 18: the 13B plan puts layers in CPU RAM"
    assert "plan_13b == offload_plan(llama_13b" in cells["4dbf9f6b"], "the lesson checks its plan by hand against it"
    # exercise 4's solution: the layers at 4 GiB and at the lesson's budget are the plans', not guesses
    solution = " ".join((REPO_ROOT / "notebooks" / "solutions" / "13_beyond_one_card.md").read_text().split())
    (found,) = re.findall(r"`GPU_BUDGET_GIB = (\d+)` the plan keeps (\d+) of the 40 layers on the GPU and moves (\d+) "
                          r"to CPU RAM \(at (\d+) GiB: (\d+) and (\d+)\)", solution)
    lower, on_gpu, off, at, at_gpu, at_off = map(int, found)
    low = layers_per_device(offload_plan(config, {**budget, 0: f"{lower}GiB"}, quant, torch.bfloat16), 40)
    assert at == params["GPU_BUDGET_GIB"] and (at_gpu, at_off) == (layers[0], layers["cpu"])
    assert (on_gpu, off) == (low[0], low["cpu"]), f"solution 4 says {on_gpu}/{off} layers at {lower} GiB: the plan {low}"
    print(f"13B at {params['GPU_BUDGET_GIB']} GiB: layers {layers}; at {lower} GiB: {low}")


def test_the_whole_model_leaves_unquantised_the_layers_the_offloaded_one_does():
    """Cell 17 compares like with like: bitsandbytes loads the layers a plan puts in CPU RAM unquantised
    (llm_int8_enable_fp32_cpu_offload), so the whole model skips the same ones (a small Llama, same code path)."""
    import bitsandbytes as bnb
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.quantizers import AutoHfQuantizer

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                         num_hidden_layers=12, vocab_size=256)
    quant = quantization_config("4bit", torch.bfloat16)
    plan = offload_plan(config, {0: int(0.9 * placement_bytes(config, quant)), "cpu": "1GiB"}, quant)
    moved = [k for k, v in plan.items() if v != 0]
    assert any(".layers." in k for k in moved), plan

    def four_bit(q, device_map):
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        AutoHfQuantizer.from_config(q, pre_quantized=False).preprocess_model(model=model, dtype=torch.bfloat16,
                                                                             device_map=device_map)
        return {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}

    quant.llm_int8_enable_fp32_cpu_offload = True   # as cell 17 sets it
    whole_quant = quantization_config("4bit", torch.bfloat16)
    whole_quant.llm_int8_skip_modules = ["lm_head", *moved]
    offloaded, whole = four_bit(quant, plan), four_bit(whole_quant, {"": 0})
    assert offloaded == whole and offloaded and not any(n.startswith(tuple(moved)) for n in whole)
