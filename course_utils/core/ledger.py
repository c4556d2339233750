"""The VRAM ledger: which full-mode models a smoke run keeps alive, cell by cell, and would they fit the card.

A smoke run has no GPU and tiny models, so it cannot run out of memory — but it keeps models alive exactly as the
full run would (a forgotten variable, a list of layers, a library's global list). The ledger turns that into
full-mode gigabytes:

* a smoke loader that builds a tiny stand-in for a full-mode model calls :func:`register` with the full model's
  name, shape and precision: the ledger keeps a *weak* reference to each of the tiny model's parameter tensors and
  gives each the share of the full model's weights it stands for (embeddings and LM head: the full model's
  embeddings, which bitsandbytes never quantises; the other parameters: the rest, by size);
* :func:`live_gb` sums the full-mode GiB of what is still alive, parameter by parameter: a model whose top object
  is gone but whose layers something still holds counts by the share of its parameters that are alive — and that
  share is a *leak* (a list of layers, a library's global list), which the check reports whatever the budget;
* models no loader registered (a ``from_pretrained`` written in the lesson, a pipeline) are found after each cell
  among the notebook's variables by their class (:data:`STAND_INS`: in a smoke run, a ``LlavaForConditionalGeneration``
  is the tiny stand-in for LLaVA-1.5-7B) and registered then;
* in a smoke run the course runner injects a cell right after the parameters cell that calls
  :func:`install_cell_hook`: after each cell the sum is written to ``<lesson>.ledger.json`` next to the executed
  notebook, and :func:`check_smoke_ledger` fails when a cell's sum exceeds the models' budget on a card the lesson
  starts on (its ``min_vram_gb`` and the 12 GB reference card), or when a cell ends with a leak.

The hook does not run the garbage collector (a full collection costs a second with transformers loaded): a model
only a reference cycle keeps counts as alive until something collects it — as its memory stays on the card until
then. The lessons free models with ``cu.free_gpu()``, which collects.

The ledger counts weights only (activations, KV cache and optimizer state come on top: the estimator's business),
so its budget is the one the demo gives models: the card less the CUDA context and the course's 1 GiB margin.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.core.memory import (CUDA_CONTEXT_GB, GIB, LLAMA_3_1_8B, LLAVA_1_5_7B, MODEL_CATALOG, QWEN2_5_7B,
                                      REFERENCE_CARD_GB, ModelShape, bytes_per_param)

#: Parameter names that stand for the full model's unquantised part (embeddings, LM head, a VLM's vision tower).
_EMBEDDING_NAMES = ("embed", "lm_head", "vision", "projector")


def model_budget_gb(card_gb: float) -> float:
    """What models' weights may hold on a card: the card less the CUDA context and the course's 1 GiB margin
    (``fits_card``), as the demo's manager budgets them."""
    return card_gb - CUDA_CONTEXT_GB - 1.0


@dataclass
class _Entry:
    name: str
    full_gb: float
    model: weakref.ref
    refs: list[tuple[weakref.ref, float]]  # (parameter tensor, the full-mode GiB it stands for)

    def live_gb(self) -> float:
        return sum(gb for ref, gb in self.refs if ref() is not None)

    def leaked_gb(self) -> float:
        """What is still alive of a model whose top object is gone."""
        return 0.0 if self.model() is not None else self.live_gb()


_ENTRIES: list[_Entry] = []


def register(model: Any, name: str, full_gb: float | None = None, shape: ModelShape | None = None,
             bits: int = 16) -> Any:
    """Count ``model`` (a tiny smoke stand-in: a module, or a pipeline with ``components``) as the full-mode model
    ``name`` while its parameters live.

    ``full_gb`` is the full model's weights in GiB; if None it is computed from ``shape`` at ``bits`` (4/8: the
    linear layers quantised, embeddings in 16-bit, as bitsandbytes loads them). Returns ``model``."""
    from course_utils.core.memory import weights_gb

    if full_gb is None:
        if shape is None:
            raise ValueError("ledger.register needs full_gb or shape")
        full_gb = weights_gb(shape, bits)
    params = _named_parameters(model)
    embedding_gb = 0.0
    if shape is not None and shape.embedding_params:
        embedding_gb = min(full_gb, shape.embedding_params * (2.0 if bits in (4, 8) else bytes_per_param(bits)) / GIB)
    # two groups when the full model's embeddings are known and the stand-in has both kinds; else one, by size
    group = {pname: _is_embedding(pname) for pname, _ in params}
    if not embedding_gb or len(set(group.values())) < 2:
        group = dict.fromkeys(group, False)
        embedding_gb = 0.0
    numel = {True: 0, False: 0}
    for pname, p in params:
        numel[group[pname]] += p.numel()
    share = {True: embedding_gb, False: full_gb - embedding_gb}
    # parameters on "meta" are the ones a device map offloaded to disk: never on the card
    refs = [(weakref.ref(p), share[group[pname]] * p.numel() / numel[group[pname]]) for pname, p in params
            if p.device.type != "meta"]
    _ENTRIES[:] = [e for e in _ENTRIES if e.live_gb() > 0]
    _ENTRIES.append(_Entry(name, float(full_gb), weakref.ref(model), refs))
    return model


def _named_parameters(model: Any) -> list[tuple[str, Any]]:
    """A module's parameters, or those of every module of a pipeline (diffusers' ``components``), each once."""
    if hasattr(model, "named_parameters"):
        return list(model.named_parameters())
    seen: set[int] = set()
    found = []
    for part, module in (getattr(model, "components", None) or {}).items():
        for name, p in getattr(module, "named_parameters", lambda: [])():
            if id(p) not in seen:
                seen.add(id(p))
                found.append((f"{part}.{name}", p))
    if not found:
        raise TypeError(f"ledger.register: {type(model).__name__} has no parameters to follow")
    return found


def _is_embedding(param_name: str) -> bool:
    return any(key in param_name for key in _EMBEDDING_NAMES)


def live_gb() -> tuple[float, dict[str, float]]:
    """Full-mode GiB of the registered models still alive, in total and by model name."""
    return _by_name(_Entry.live_gb)


def leaked_gb() -> tuple[float, dict[str, float]]:
    """Full-mode GiB still alive of registered models whose top object is gone, in total and by model name."""
    return _by_name(_Entry.leaked_gb)


def _by_name(measure: Any) -> tuple[float, dict[str, float]]:
    by_name: dict[str, float] = {}
    for entry in _ENTRIES:
        gb = measure(entry)
        if gb > 0:
            by_name[entry.name] = by_name.get(entry.name, 0.0) + gb
    return sum(by_name.values()), {k: round(v, 3) for k, v in by_name.items()}


#: Classes that, in a smoke run, are the tiny stand-ins of the course's full-mode models: the full model's name, its
#: shape, and the bits of its weights in full mode unless its quantisation config says 8-bit. The 7-8B models load in
#: 4-bit on every card the ledger checks (16-bit only from 20 GB: ``core.defaults.SIXTEEN_BIT_FROM_GB``), whatever
#: precision the tiny stand-in has on a CPU; Whisper is fine-tuned in fp32; the pipelines run in fp16.
STAND_INS: dict[str, tuple[str, ModelShape, int]] = {
    "LlamaForCausalLM": ("Llama-3.1-8B", LLAMA_3_1_8B, 4),
    "Qwen2ForCausalLM": ("Qwen2.5-7B", QWEN2_5_7B, 4),
    "LlavaForConditionalGeneration": ("LLaVA-1.5-7B", LLAVA_1_5_7B, 4),
    "WhisperForConditionalGeneration": ("whisper-small", MODEL_CATALOG["whisper-small"], 32),
    "StableDiffusionPipeline": ("SD 1.5", MODEL_CATALOG["SD 1.5 (512 px)"], 16),
    "StableDiffusionXLPipeline": ("SDXL", MODEL_CATALOG["SDXL (1024 px)"], 16),
}


def quantized_bits(model: Any, default: int = 16) -> int:
    """4 or 8 for a bitsandbytes-quantised transformers model (from its quantisation config), else ``default``
    (a 7-8B stand-in passes 4: see :data:`STAND_INS`)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return default
    get = config.get if isinstance(config, dict) else (lambda key, d=None: getattr(config, key, d))
    return 4 if get("load_in_4bit") else 8 if get("load_in_8bit") else default


def discover(namespace: dict) -> list[str]:
    """Register the stand-ins (:data:`STAND_INS`) among ``namespace``'s values that nothing registered yet (a peft
    wrapper counts as its base model). Returns the names of the variables registered."""
    found = []
    for var, value in list(namespace.items()):
        if var.startswith("_"):
            continue
        base = value.get_base_model() if type(value).__name__.startswith("Peft") else value  # by class: no getattr
        known = STAND_INS.get(type(base).__name__)                                            # on arbitrary objects
        if known is None or any(entry.model() is base for entry in _ENTRIES):
            continue
        name, shape, bits = known
        register(base, name, shape=shape, bits=quantized_bits(base, bits))
        found.append(var)
    return found


def clear() -> None:
    """Forget every registration (tests)."""
    _ENTRIES.clear()


# ---------------------------------------------------------------------------------------------- the kernel's hook
def ledger_file() -> Path | None:
    """``<lesson>.ledger.json`` next to the runner's metrics file (None outside a runner run)."""
    metrics = os.environ.get("COURSE_METRICS_FILE")
    if not metrics:
        return None
    path = Path(metrics)
    stem = path.name.removesuffix(".metrics.json")
    return path.with_name(f"{stem}.ledger.json")


class _CellHook:
    def __init__(self, path: Path, namespace: dict):
        self.path = path
        self.namespace = namespace
        self.cells: list[dict] = []

    def __call__(self, result: Any) -> None:
        source = (getattr(getattr(result, "info", None), "raw_cell", "") or "").strip().splitlines()
        row = {"execution_count": getattr(result, "execution_count", None),
               "first_line": source[0][:100] if source else ""}
        try:
            discover(self.namespace)
            total, models = live_gb()
            leaked, leaks = leaked_gb()
            row.update(live_gb=round(total, 3), models=models, leaked_gb=round(leaked, 3), leaks=leaks)
        except Exception as err:  # never break the lesson: the check reports it instead
            row.update(live_gb=0.0, models={}, error=f"{type(err).__name__}: {err}")
        self.cells.append(row)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"cells": self.cells}, indent=1))
        os.replace(tmp, self.path)


def install_cell_hook(ipython: Any = None) -> Path | None:
    """Write the ledger after every cell of this IPython kernel (the runner injects the call in smoke runs)."""
    path = ledger_file()
    if path is None:
        return None
    if ipython is None:
        from IPython import get_ipython

        ipython = get_ipython()
    ipython.events.register("post_run_cell", _CellHook(path, ipython.user_ns))
    return path


# ---------------------------------------------------------------------------------------------- reading it back
def lesson_cards_gb(notebook: str | os.PathLike[str]) -> list[float]:
    """Card sizes (GB) the lesson starts on, for the ledger: its ``min_vram_gb`` (the smallest card it accepts,
    from its setup cell) and the 12 GB reference card."""
    cards = {REFERENCE_CARD_GB}
    cells = json.loads(Path(notebook).read_text())["cells"]
    for cell in cells:
        found = re.search(r"min_vram_gb=(\d+(?:\.\d+)?)", "".join(cell.get("source", "")))
        if cell.get("cell_type") == "code" and found:
            cards.add(float(found.group(1)))
            break
    return sorted(cards)


@dataclass(frozen=True)
class LedgerPeak:
    """The worst cell of a smoke run's ledger, and its worst leak."""

    lesson: str
    peak_gb: float
    cell: int | None           # the lesson's cell index (in notebooks/, injected cells not counted)
    models: dict[str, float]
    cards_gb: tuple[float, ...]
    leaked_gb: float = 0.0
    leak_cell: int | None = None
    leaks: dict[str, float] | None = None

    def problems(self) -> list[str]:
        found = [f"{self.lesson}: after cell {self.cell} the live models would hold {self.peak_gb:.2f} GiB of weights "
                 f"in full mode ({self.models}), over the {model_budget_gb(card):.1f} GiB a {card:g} GB card leaves "
                 "them: free what the lesson no longer needs (del it, then cu.free_gpu())"
                 for card in self.cards_gb if self.peak_gb > model_budget_gb(card) + 1e-9]
        if self.leaked_gb > LEAK_TOLERANCE_GB:
            found.append(f"{self.lesson}: after cell {self.leak_cell}, {self.leaked_gb:.2f} GiB of the weights of a "
                         f"model that is gone are still alive in full mode ({self.leaks}): something keeps its layers "
                         "(a list of modules, a library's global list)")
        return found

    def __str__(self) -> str:
        where = f"after cell {self.cell}" if self.cell is not None else "(no model registered)"
        leak = f"; leak {self.leaked_gb:.2f} GiB after cell {self.leak_cell}" if self.leaked_gb else ""
        return (f"{self.lesson}: ledger peak {self.peak_gb:.2f} GiB {where} {self.models}{leak}; models' budget "
                f"{model_budget_gb(REFERENCE_CARD_GB):.1f} GiB on a 12 GB card, cards checked {list(self.cards_gb)} GB")


#: Full-mode GiB a gone model may leave alive before the check calls it a leak (rounding of tiny shares).
LEAK_TOLERANCE_GB = 0.01


def ledger_peak(out_dir: str | os.PathLike[str], notebook: str | os.PathLike[str]) -> LedgerPeak:
    """The worst cell of a smoke run's ledger (written by :func:`install_cell_hook` into ``out_dir``)."""
    notebook = Path(notebook)
    path = Path(out_dir) / f"{notebook.stem}.ledger.json"
    if not path.is_file():
        raise FileNotFoundError(f"{notebook.stem}: no VRAM ledger at {path}: was the lesson run in smoke mode by "
                                "course_utils.runner.run.run_lesson?")
    cells = json.loads(path.read_text())["cells"]
    errors = [c["error"] for c in cells if c.get("error")]
    if errors:
        raise AssertionError(f"{notebook.stem}: the VRAM ledger's hook failed after a cell: {errors[0]}")
    cards = tuple(lesson_cards_gb(notebook))
    if not cells:
        return LedgerPeak(notebook.stem, 0.0, None, {}, cards)
    worst = max(cells, key=lambda c: c["live_gb"])
    leak = max(cells, key=lambda c: c.get("leaked_gb", 0.0))
    return LedgerPeak(notebook.stem, worst["live_gb"],
                      _lesson_cell(out_dir, notebook, worst["execution_count"]) if worst["live_gb"] else None,
                      worst["models"], cards, leak.get("leaked_gb", 0.0),
                      _lesson_cell(out_dir, notebook, leak["execution_count"]) if leak.get("leaked_gb") else None,
                      leak.get("leaks", {}))


def _lesson_cell(out_dir: str | os.PathLike[str], notebook: Path, execution_count: int | None) -> int | None:
    executed = Path(out_dir) / notebook.name
    if execution_count is None or not executed.is_file():
        return None
    index = 0
    for cell in json.loads(executed.read_text())["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if any(t.startswith("injected-") for t in tags):
            continue
        if cell.get("cell_type") == "code" and cell.get("execution_count") == execution_count:
            return index
        index += 1
    return None


def check_smoke_ledger(out_dir: str | os.PathLike[str], notebook: str | os.PathLike[str]) -> LedgerPeak:
    """Fail (AssertionError) when, after some cell, the models a smoke run kept alive would not fit the budget of a
    card the lesson starts on in full mode. Prints and returns the peak."""
    peak = ledger_peak(out_dir, notebook)
    print(peak)
    problems = peak.problems()
    assert not problems, "; ".join(problems)
    return peak
