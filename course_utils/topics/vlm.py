"""Vision-language models for lesson 11: a LLaVA loader (full and smoke), images the packages ship, and VQA scoring.

Full mode loads ``llava-hf/llava-1.5-7b-hf`` at a pinned revision in 4-bit NF4, keeping the vision tower, the
projector and the LM head in 16-bit. Smoke mode loads the tiny ``LlavaForConditionalGeneration`` that
``course_utils.smoke.vlm`` builds from configs, with the *same* ``AutoProcessor`` /
``LlavaForConditionalGeneration.from_pretrained`` calls full mode makes. The generated shape questions live in
``course_utils.smoke.vlm`` too::

    from course_utils.topics.vlm import load_llava
    from course_utils.smoke.vlm import make_shape_vqa
    model, processor = load_llava(smoke=True)
    train, test = make_shape_vqa(n_train=48, n_test=24, seed=0)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from course_utils import assets
from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.topics.spec import LLAVA_CHAT_TEMPLATE, SHORT_ANSWER  # noqa: F401 - public names

LLAVA_ID = assets.id("llava-1.5-7b")  # the id and its pinned hub commit live in datasets/assets.toml
LLAVA_REVISION = assets.revision("llava-1.5-7b")

# Parts of LlavaForConditionalGeneration that stay in 16-bit when the language model is quantised. The names are
# matched from the start of a module's name (transformers' rule), so they are written in full.
SKIP_QUANTIZATION = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

# LoRA goes on the language model's projections only: the vision tower has q_proj/k_proj/v_proj too, hence a regex.
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"



# --------------------------------------------------------------------------------------------------------------------
# Loading LLaVA
# --------------------------------------------------------------------------------------------------------------------

def quantization_config(quantization: str | None, compute_dtype: Any = None) -> Any:
    """``llm.quantization_config`` (NF4 + double quantisation for ``"4bit"``) with the vision tower, the projector and
    the LM head kept in 16-bit. ``None`` or ``"16bit"``: no quantisation."""
    from course_utils.topics import llm

    config = llm.quantization_config("16bit" if quantization is None else quantization, compute_dtype)
    if config is not None:
        config.llm_int8_skip_modules = list(SKIP_QUANTIZATION)
    return config


def load_llava(
    smoke: bool,
    model_id: str = LLAVA_ID,
    revision: str | None = LLAVA_REVISION,
    quantization: str | None = "4bit",
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, processor)``: the hub LLaVA in full mode, the cached tiny LLaVA in smoke mode.

    Both modes make the same calls: ``AutoProcessor.from_pretrained`` and
    ``LlavaForConditionalGeneration.from_pretrained(..., quantization_config=..., dtype=..., device_map=...)``.
    Weights and 4-bit compute are bf16 on a GPU that computes it natively (``bf16_native``; fp16 otherwise) and fp32
    on the CPU. ``device`` may name one GPU of several (``"cuda:1"``).
    Offline with nothing cached, or an unknown id, raises ``MissingData`` with what to do.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from course_utils.topics import llm

    from course_utils.core.gpu import bf16_native, device_type

    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device_type(device) == "cuda"  # "cuda:1" is a GPU too
    if on_gpu and not torch.cuda.is_available():
        raise BadParameter(f"device={device!r} but PyTorch sees no GPU; use device=None (or 'cpu'), or {SMOKE_HINT}.")
    if not on_gpu:
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if bf16_native(device) else torch.float16
    from course_utils.smoke.vlm import tiny_llava_dir

    source = str(tiny_llava_dir()) if smoke else model_id
    kwargs: dict[str, Any] = {"revision": revision} if revision and not smoke else {}
    llm.check_revision(source, revision)  # a local folder, or a hub id pinned to a commit: else one sentence, now
    try:
        with llm.hub_errors_explained(source):
            config = AutoConfig.from_pretrained(source, **kwargs)  # one small file: fails fast when offline
            if not Path(source).is_dir():
                llm.check_disk_space(llm.estimate_download_gb(config), llm.hf_cache_dir(), what=source,
                                     already_gb=llm.cached_gb(source))
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            model = LlavaForConditionalGeneration.from_pretrained(
                source, quantization_config=quantization_config(quantization, dtype), dtype=dtype,
                device_map={"": device}, **kwargs,
            )
    except OSError as err:  # anything the hub helper did not recognise
        raise MissingData(
            f"Could not load {source} ({type(err).__name__}: {str(err).splitlines()[0][:200]}): download it once with "
            f"internet (`hf download {model_id} --revision {revision}`, ~14 GB), or {SMOKE_HINT}."
        ) from None
    model.eval()
    return model, processor


# --------------------------------------------------------------------------------------------------------------------
# Looking inside
# --------------------------------------------------------------------------------------------------------------------

def _n_params(module: Any) -> int:
    total = 0
    for p in module.parameters():
        n = p.numel()
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            n = int(quant_state.shape.numel())  # 4-bit weights are packed two to a byte: count the real matrix
        total += n
    return total


def llava_parts(model: Any) -> dict[str, Any]:
    """The three parts of a LLaVA (plus its LM head), for a plain or a PEFT-wrapped model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "vision tower": base.model.vision_tower,
        "projector": base.model.multi_modal_projector,
        "language model": base.model.language_model,
        "LM head": base.lm_head,
    }


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters per part (4-bit layers counted at their real size, not their packed storage)."""
    return {name: _n_params(part) for name, part in llava_parts(model).items()}


# --------------------------------------------------------------------------------------------------------------------
# Images the packages ship
# --------------------------------------------------------------------------------------------------------------------

def sample_images() -> dict[str, Any]:
    """Photos that come with installed packages (no download): Ultralytics' bus and Zidane, scikit-image's samples."""
    from PIL import Image
    from skimage import data

    images: dict[str, Any] = {}
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:  # found without importing ultralytics (slow, chatty)
        assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
        for name in ("bus", "zidane"):
            if (assets / f"{name}.jpg").exists():
                images[name] = Image.open(assets / f"{name}.jpg").convert("RGB")
    images["astronaut"] = Image.fromarray(data.astronaut())
    images["coffee"] = Image.fromarray(data.coffee())
    images["cat"] = Image.fromarray(data.chelsea())
    return images


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, and spell numbers as digits: "Two." -> "2", "The red" -> "red"."""
    import re

    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Share of predictions equal to the answer after ``normalize_answer`` (VQA-style exact match)."""
    if len(predictions) != len(answers):
        raise BadParameter(f"{len(predictions)} predictions for {len(answers)} answers.")
    if not answers:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)
