"""The card matrix: every lesson's setup and plan cells, run in full mode on faked cards.

No GPU has ever run the course, so what a lesson decides from the card (its device, defaults, plan, and any assert
that depends on the card's size or generation) is run here on five faked cards: 8, 12, 16 and 24 GB Ada cards and a
16 GB T4 (compute capability 7.5, no native bf16). The GPU probe is faked in-process at its boundary (torch.cuda's
``is_available``, ``get_device_properties``, ``mem_get_info``, ``get_device_capability``, ``device_count``, and the
course's ``gpu_report``); only the cells that read the card are executed (``exec`` in a namespace), never a model.

The cells: the parameters cell, the setup cell (the one that calls ``cu.choose_device``), and the cells tagged
``card`` in their metadata (plan cells and the asserts that depend on the card). Heavy steps stay out of them; where a
card check needs what a heavy cell produces (the model lesson 05 loads), that cell's heavy call is faked here.

A lesson that needs more than the card has (or an optional install it lacks: lesson 17's RAPIDS) must stop with its one
sentence (``NeedsGPU``): that is a pass. Anything else that raises — an assert that a bigger or older card makes
false — fails, naming the lesson, the card and the cell.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GIB = 2**30

# name, what it reports (GiB), compute capability, memory clock (kHz, as CUDA reports it), bus width (bits)
CARDS = {
    "8GB": ("NVIDIA GeForce RTX 4060", 7.996, (8, 9), 8_501_000, 128),           # 272 GB/s
    "12GB": ("NVIDIA GeForce RTX 4070 Ti", 11.994, (8, 9), 10_501_000, 192),     # 504 GB/s
    "16GB": ("NVIDIA GeForce RTX 4060 Ti 16GB", 15.996, (8, 9), 9_001_000, 128),  # 288 GB/s
    "24GB": ("NVIDIA GeForce RTX 4090", 23.988, (8, 9), 10_501_000, 384),        # 1008 GB/s
    "T4-16GB": ("Tesla T4", 14.748, (7, 5), 5_001_000, 256),                     # 320 GB/s, no native bf16
}


def bandwidth_gb_s(card: str) -> float:
    *_, clock_khz, bus_bits = CARDS[card]
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # DDR: two transfers a clock


def _import_card_cells_modules() -> None:
    """Import what the card cells import before any card is faked, so no library sets itself up for a GPU that is not
    there (bitsandbytes picks its backend at import) and later tests in this process see the real machine."""
    import ast
    import importlib

    for path in LESSONS:
        for _, source in card_cells(path):
            for node in ast.walk(ast.parse(source)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                for name in names:
                    try:
                        importlib.import_module(name)
                    except Exception:  # noqa: BLE001, S112 - the cell itself will say what is missing
                        continue


@pytest.fixture
def fake_card(monkeypatch):
    """Make this process see one CUDA card of ``CARDS[name]``."""
    import torch

    _import_card_cells_modules()

    import course_utils
    import course_utils.core.gpu as gpu

    real_report = gpu.gpu_report

    def use(name: str) -> None:
        label, gib, cc, clock, bus = CARDS[name]
        props = types.SimpleNamespace(name=label, total_memory=int(gib * GIB), major=cc[0], minor=cc[1],
                                      multi_processor_count=60, memory_clock_rate=clock, memory_bus_width=bus,
                                      L2_cache_size=48 * 2**20, is_integrated=False, is_multi_gpu_board=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: label)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int((gib - 0.45) * GIB), int(gib * GIB)))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",  # what torch says: yes on a T4 too (emulation)
                            lambda including_emulation=True: cc >= (8, 0) or including_emulation)
        if hasattr(gpu, "_driver_version"):
            monkeypatch.setattr(gpu, "_driver_version", lambda: "580.95")

        def report(device_index: int = 0):  # the course's probe, reading the faked torch.cuda, under both names
            return real_report(device_index)

        monkeypatch.setattr(gpu, "gpu_report", report)
        monkeypatch.setattr(course_utils, "gpu_report", report, raising=False)

    return use


def card_cells(path: Path) -> list[tuple[int, str]]:
    """(index, source) of the cells that read the card: parameters, setup (``choose_device``) and ``card``-tagged."""
    cells = json.loads(path.read_text())["cells"]
    chosen = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "code" and ("parameters" in tags or "card" in tags or "cu.choose_device(" in source):
            chosen.append((i, source))
    return chosen


class _FakeQuantLinear:
    """Stands for a bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` in the faked model's ``modules()``."""


def _fake_causal_lm(quantization: str):
    """What ``load_causal_lm`` returns on the card, without the 16 GB download: a model of Llama-3.1-8B's shape at
    the requested precision (its footprint is the estimator's, so only the card-dependent logic is under test)."""
    from course_utils.core.memory import LLAMA_3_1_8B, weights_gb

    bits = {"4bit": 4, "8bit": 8, "16bit": 16}[quantization]
    linear = type({4: "Linear4bit", 8: "Linear8bitLt"}.get(bits, "Linear"), (_FakeQuantLinear,), {})
    n_layers = LLAMA_3_1_8B.n_layers
    config = types.SimpleNamespace(  # Llama-3.1-8B's config.json, the fields the estimator reads
        model_type="llama", hidden_size=LLAMA_3_1_8B.hidden_size, num_hidden_layers=n_layers, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=LLAMA_3_1_8B.intermediate_size, vocab_size=LLAMA_3_1_8B.vocab_size,
        tie_word_embeddings=False)
    model = types.SimpleNamespace(
        is_loaded_in_4bit=bits == 4, is_loaded_in_8bit=bits == 8, config=config, device="cuda:0",
        name_or_path="meta-llama/Llama-3.1-8B-Instruct",
        get_memory_footprint=lambda: weights_gb(LLAMA_3_1_8B, bits) * GIB,
        modules=lambda: [linear() for _ in range(7 * n_layers)])
    return model, types.SimpleNamespace(pad_token_id=0)


def _fake_load_causal_lm(model_id=None, smoke=False, quantization=None, revision=None, device=None):
    """load_causal_lm's own rule for ``quantization=None`` (the card's safe defaults), then the faked model."""
    from course_utils.core.defaults import safe_defaults

    if quantization is None:
        quantization = "4bit" if safe_defaults("llm-inference").load_in_4bit else "16bit"
    return _fake_causal_lm(quantization)


#: Heavy calls the card cells of a lesson make, faked: (module, attribute) -> replacement.
FAKES = {
    "05_llm_inference_4bit": {("course_utils.topics.llm", "load_causal_lm"): _fake_load_causal_lm},
}

#: What a lesson must have derived from the card, beyond its own asserts: (what, check(namespace, card)).
CHECKS = {
    "05_llm_inference_4bit": [
        ("the bandwidth ceiling is this card's (a 4090 decodes above a 4070 Ti's 504 GB/s)",
         lambda ns, card: abs(ns.get("bandwidth_gb_s", 0) / bandwidth_gb_s(card) - 1) < 0.01),
    ],
}


def run_card_cells(path: Path, monkeypatch, **overrides) -> dict:
    """Execute a lesson's card cells in full mode in one namespace (``overrides`` set after the parameters cell, as
    papermill does); returns the namespace. Exceptions propagate, with the lesson and cell in the traceback."""
    import importlib

    for (module, name), fake in FAKES.get(path.stem, {}).items():
        monkeypatch.setattr(importlib.import_module(module), name, fake)
    namespace: dict = {"__name__": "__main__", "display": lambda *a, **k: None}
    for index, source in card_cells(path):
        exec(compile(source, f"{path.stem}[{index}]", "exec"), namespace)  # noqa: S102
        if "SMOKE = os.environ" in source:
            namespace.update(overrides)
    return namespace


@pytest.fixture
def full_mode(monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("SMOKE", "0")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    # lesson 14 pins itself to one GPU through the environment: whatever a cell sets is undone after the test
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    monkeypatch.chdir(ROOT / "notebooks")


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


@pytest.mark.parametrize("card", list(CARDS))
def test_card_cells_hold_on_every_card(card, fake_card, full_mode, monkeypatch):
    """Every lesson's card cells, in full mode on this card: they run, or stop with the lesson's one sentence."""
    import matplotlib.pyplot as plt

    from course_utils.core.errors import NeedsGPU

    fake_card(card)
    failures, outcomes = [], {}
    for path in LESSONS:
        outcome = "ran"
        try:
            namespace = run_card_cells(path, monkeypatch)
        except NeedsGPU as stop:
            outcome = "stops with its sentence"
            if not one_sentence(str(stop)):
                failures.append(f"{path.stem} on {card}: stops with more than one sentence: {stop}")
        except BaseException as err:  # noqa: BLE001 - any other exception is the defect under test
            cell = next((f.filename for f in reversed(__import__("traceback").extract_tb(err.__traceback__))
                         if f.filename.startswith(path.stem)), path.stem)
            failures.append(f"{path.stem} on {card}: {cell} raised {type(err).__name__}: {err}")
            outcome = "FAILED"
        else:
            for what, check in CHECKS.get(path.stem, []):
                if not check(namespace, card):
                    failures.append(f"{path.stem} on {card}: {what}")
                    outcome = "FAILED"
        outcomes[path.stem] = outcome
        plt.close("all")
    print(f"\n{card}: " + "; ".join(f"{k}: {v}" for k, v in outcomes.items()))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("compiler", [None, "/usr/bin/gcc"])
def test_compile_needs_a_compiler(compiler, fake_card, full_mode, monkeypatch):
    """Lesson 03's COMPILE = True: without a C compiler for Triton the setup cell stops with one sentence."""
    import shutil

    from course_utils.core.errors import BadParameter

    fake_card("12GB")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: compiler)
    lesson = ROOT / "notebooks" / "03_cifar10_fast_cnn.ipynb"
    if compiler is None:
        with pytest.raises(BadParameter) as stop:
            run_card_cells(lesson, monkeypatch, COMPILE=True)
        assert one_sentence(str(stop.value)) and "C compiler" in str(stop.value)
    else:
        assert run_card_cells(lesson, monkeypatch, COMPILE=True)["device"] == "cuda"


def test_lesson_14_trains_on_one_card_of_several(fake_card, full_mode, monkeypatch):
    """On a 2-GPU machine lesson 14 hides all but the first card before PyTorch looks (Trainer would otherwise wrap
    the model in DataParallel and double the batch)."""
    import torch

    fake_card("12GB")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    run_card_cells(ROOT / "notebooks" / "14_nlp_finetune_bert.ipynb", monkeypatch)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize("card", ["12GB", "24GB"])
def test_demo_loads_the_chat_model_it_sized(card, fake_card, monkeypatch, tmp_path):
    """The demo's budget counts the chat model at the precision it then loads, on a small card and a big one."""
    import course_utils.topics.llm as llm
    from course_utils.core.memory import LLAMA_3_1_8B, weights_gb
    from course_utils.demo.tabs import Demo

    fake_card(card)
    monkeypatch.setattr(llm, "load_causal_lm", _fake_load_causal_lm)
    demo = Demo(smoke=False, artefacts_dir=tmp_path)
    model, _ = demo._load_chat()
    bits = 4 if model.is_loaded_in_4bit else 8 if model.is_loaded_in_8bit else 16
    sized_gb = demo.manager.specs["chat"].vram_gb
    assert sized_gb >= weights_gb(LLAMA_3_1_8B, bits), (
        f"on a {card} card the chat model is sized at {sized_gb:.1f} GiB but loads in {bits}-bit "
        f"({weights_gb(LLAMA_3_1_8B, bits):.1f} GiB of weights)")


# --- lesson 05's chat cell: what a small card's out-of-memory does to a streamed reply ---------------------------

def _chat_cell_namespace(generate, timeout_s: float, max_history_tokens: int = 10_000) -> dict:
    """Lesson 05's streaming cell's namespace, with a tokenizer of one token per character and a model whose
    ``generate`` is given."""
    import queue
    import threading
    import time

    import torch
    from transformers import BatchEncoding, TextIteratorStreamer

    import course_utils as cu

    class Tokenizer:
        pad_token_id = 0

        def apply_chat_template(self, messages, add_generation_prompt=True, return_tensors=None, return_dict=True):
            ids = [ord(c) % 100 + 1 for m in messages for c in m["content"]]
            return BatchEncoding({"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids})

        def decode(self, ids, **kwargs):
            return "x" * len(ids)

    model = types.SimpleNamespace(device="cpu", generate=generate)
    return {"tokenizer": Tokenizer(), "model": model, "torch": torch, "cu": cu, "queue": queue, "threading": threading,
            "time": time, "TextIteratorStreamer": TextIteratorStreamer, "MAX_NEW_TOKENS": 8,
            "MAX_HISTORY_TOKENS": max_history_tokens, "STREAM_TIMEOUT_S": timeout_s,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}


def _chat_cell() -> str:
    cells = json.loads((ROOT / "notebooks" / "05_llm_inference_4bit.ipynb").read_text())["cells"]
    return next("".join(c["source"]) for c in cells if "def stream_reply(" in "".join(c["source"]))


@pytest.mark.parametrize("failure", ["out of memory", "silence"])
def test_chat_cell_surfaces_a_failed_generation_as_one_error(failure):
    """An OOM inside generate()'s thread, or a thread that sends nothing, ends the stream with the course's error
    at once (OOM) or after STREAM_TIMEOUT_S (silence), instead of a reader waiting forever (timeout=None)."""
    import time

    import torch

    from course_utils.core.errors import CourseError

    def generate(**kwargs):
        if failure == "out of memory":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(3)

    namespace = _chat_cell_namespace(generate, timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(CourseError) as err:
        exec(compile(_chat_cell(), "05_llm_inference_4bit[chat]", "exec"), namespace)  # noqa: S102
    assert time.perf_counter() - start < 2.5, "the reader waited for a thread that had failed"
    expected = "ran out of GPU memory" if failure == "out of memory" else "sent nothing for 0.5 s"
    assert expected in str(err.value) and "Traceback" not in str(err.value)


def test_chat_cell_bounds_the_history():
    """The oldest turns go first, question with answer; the system message and the newest question stay."""
    def generate(**kwargs):
        raise AssertionError("not called")

    namespace = _chat_cell_namespace(generate, timeout_s=5, max_history_tokens=60)
    source = _chat_cell()
    definitions = source[:source.index("streamed, streamed_ids")]  # the cell without its call
    exec(compile(definitions, "05_llm_inference_4bit[chat]", "exec"), namespace)  # noqa: S102
    system, question = namespace["messages"]
    turns = [{"role": r, "content": f"{r} {i} " + "word " * 3} for i in range(6) for r in ("user", "assistant")]
    kept = namespace["bounded_history"]([system, *turns, question])
    assert kept[0] == system and kept[-1] == question and kept[1]["role"] == "user"
    assert kept[1:-1] == turns[-(len(kept) - 2):] and len(kept) < 2 + len(turns)
    assert len(namespace["tokenizer"].apply_chat_template(kept)["input_ids"]) <= 60
