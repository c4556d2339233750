"""One loader for the course's causal language models (lessons 05, 06, 07); the tiny stand-in is in ``smoke.llm``.

The API, kept stable because several lessons call it::

    from course_utils.topics.llm import load_causal_lm
    model, tokenizer = load_causal_lm()                                  # Llama-3.1-8B-Instruct, pinned revision
    model, tokenizer = load_causal_lm(UNGATED_MODEL_ID)                  # Qwen2.5-7B-Instruct: no licence to accept
    model, tokenizer = load_causal_lm(smoke=True)                        # tiny Llama, built offline, same calls
    model, tokenizer = load_causal_lm(quantization="16bit", device="cuda")
    source, revision = model_source(MODEL_ID, smoke=SMOKE)               # for a from_pretrained written in a lesson

``load_causal_lm(model_id=None, smoke=False, quantization=None, revision=None, device=None) -> (model, tokenizer)``

* ``model_id``: a hub id or a local folder; ``None`` means :data:`DEFAULT_MODEL_ID`. Ignored in smoke mode.
* ``smoke``: load the tiny model from ``course_utils.smoke.llm.tiny_llm_dir()`` instead (built once, cached in
  ``cu.cache_dir()``).
* ``quantization``: ``"4bit"`` (NF4, double quantisation, bf16/fp16 compute), ``"8bit"`` (LLM.int8) or ``"16bit"``;
  ``None`` lets ``cu.safe_defaults("llm-inference")`` choose for the card (4-bit on 12 GB); or a
  ``BitsAndBytesConfig`` a lesson built itself (lesson 06 writes its NF4 config in a cell and passes it here).
* ``revision``: a commit; ``None`` uses the pinned commit for the course's models (:data:`PINNED_REVISIONS`).
* ``device``: ``"cuda"`` / ``"cuda:1"`` / ``"cpu"``; ``None`` takes the GPU if there is one.

``model_source(model_id=None, smoke=False, revision=None) -> (source, revision)`` is where those calls load from, after
the checks a course makes before a 16 GB download; lesson 06 writes its own ``from_pretrained`` call with it.

The model comes back in eval mode; the tokenizer always has a pad token (the end-of-turn token if the model has
none). ``trust_remote_code`` is never passed: only architectures transformers ships are loaded.

Failures a learner can hit become one sentence: :class:`ModelAccessError` (gated model without an accepted licence,
no token, offline with nothing cached, unknown id) and :class:`NotEnoughDisk` (the download would not fit).

The tiny offline Llama (:func:`course_utils.smoke.llm.build_tiny_llm`, ``tiny_llm_dir``, ``train_tiny_tokenizer``)
lives in ``course_utils/smoke/llm.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from course_utils import assets
from course_utils.core.errors import SMOKE_HINT, BadParameter
from course_utils.core.hub import (ModelAccessError, NotEnoughDisk, cached_gb, check_disk_space, explain_hub_error,  # noqa: F401
                                   check_revision, hf_cache_dir, hub_errors_explained)
from course_utils.core.memory import GIB


#: The course's default model (gated: accept Meta's licence on its hub page once, then log in).
DEFAULT_MODEL_ID = assets.id("llama-3.1-8b-instruct")  # the ids and pinned commits live in datasets/assets.toml
DEFAULT_REVISION = assets.revision("llama-3.1-8b-instruct")
#: The ungated alternative, one parameter away: ``load_causal_lm(UNGATED_MODEL_ID)``.
UNGATED_MODEL_ID = assets.id("qwen2.5-7b-instruct")
UNGATED_REVISION = assets.revision("qwen2.5-7b-instruct")
PINNED_REVISIONS = {DEFAULT_MODEL_ID: DEFAULT_REVISION, UNGATED_MODEL_ID: UNGATED_REVISION}
#: What a gated-model or token failure suggests instead.
UNGATED_HINT = f"use the ungated load_causal_lm({UNGATED_MODEL_ID!r})"

QUANTIZATIONS = ("4bit", "8bit", "16bit")



# ---------------------------------------------------------------------------------------------- loading


def load_causal_lm(model_id: str | None = None, smoke: bool = False, quantization: Any = None,
                   revision: str | None = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: the hub model in full mode, the tiny offline Llama in smoke mode.

    Both modes go through the same ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` calls with the same
    quantisation config; only the source differs (a hub id or the tiny model's folder). ``quantization`` may be a
    ``BitsAndBytesConfig`` object: it is used as given.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course_utils.core.defaults import safe_defaults
    from course_utils.core.gpu import bf16_native, device_type

    defaults = safe_defaults("llm-inference")
    if quantization is None:
        quantization = "4bit" if defaults.load_in_4bit else "16bit"
    given_config = None if isinstance(quantization, str) else quantization
    if given_config is not None and not hasattr(given_config, "to_dict"):
        raise BadParameter(f"quantization={quantization!r} is neither one of {QUANTIZATIONS} nor a BitsAndBytesConfig.")
    if given_config is None and quantization not in QUANTIZATIONS:
        raise BadParameter(f"quantization={quantization!r} is not one of {QUANTIZATIONS}; use '4bit' on a 12 GB card.")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device_type(device) == "cuda"  # "cuda:1" is a GPU too, never the CPU branch
    if on_gpu and not torch.cuda.is_available():
        raise BadParameter(f"device={device!r} but PyTorch sees no GPU; use device=None (or 'cpu'), or {SMOKE_HINT}.")
    # The unquantised weights (embeddings, norms, LM head) are stored in bf16 where the card has it, else fp16 — and
    # in bf16 on a CPU too, so sizes match the GPU's. The 4-bit layers compute in that dtype on a GPU; on a CPU in
    # fp32, because CPU bf16 matrix products are ~4x slower than fp32 ones on a typical desktop CPU.
    dtype = (torch.bfloat16 if bf16_native(device) else torch.float16) if on_gpu else torch.bfloat16
    quant_config = given_config or quantization_config(quantization, dtype if on_gpu else torch.float32)
    source, revision = model_source(model_id, smoke=smoke, revision=revision)
    with hub_errors_explained(source, alternative=UNGATED_HINT):
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, quantization_config=quant_config,
            device_map={"": torch.device(device).index or 0} if on_gpu else device,  # "cuda:1" -> GPU 1
        )
    if tokenizer.pad_token is None:  # Llama 3 ships without one; padding needs one for batches
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if smoke:  # the VRAM ledger counts the tiny model as the full-mode one (course_utils.core.ledger)
        from course_utils.core import ledger, memory

        full = memory.QWEN2_5_7B if "qwen" in str(model_id or DEFAULT_MODEL_ID).lower() else memory.LLAMA_3_1_8B
        ledger.register(model, full.name, shape=full, bits=ledger.quantized_bits(model, default=4))
    return model, tokenizer


def model_source(model_id: str | None = None, smoke: bool = False,
                 revision: str | None = None) -> tuple[str, str | None]:
    """Where ``from_pretrained`` loads the course's causal LM from: ``(source, revision)``, for either mode.

    Full mode: the hub id (``None``: :data:`DEFAULT_MODEL_ID`) and its pinned commit (:data:`PINNED_REVISIONS`, unless
    ``revision`` is given), once the checks a course makes before a 16 GB download have passed: a pinned revision, access
    (the small ``config.json`` is fetched first, so a gated model, a missing token or being offline is one sentence,
    :class:`ModelAccessError`) and the disk space (:class:`NotEnoughDisk`). A local folder is checked the same way.
    Smoke mode: the tiny offline Llama's folder (built once) and ``revision`` as given.
    """
    from transformers import AutoConfig

    from course_utils.smoke.llm import tiny_llm_dir

    source = str(tiny_llm_dir()) if smoke else (model_id or DEFAULT_MODEL_ID)
    if revision is None and not smoke:
        revision = PINNED_REVISIONS.get(source)
    check_revision(source, revision)  # a local folder, or a hub id pinned to a commit: else one sentence, now
    with hub_errors_explained(source, alternative=UNGATED_HINT):
        config = AutoConfig.from_pretrained(source, revision=revision)  # one small file: fails fast if gated/offline
        if not Path(source).is_dir():
            check_disk_space(estimate_download_gb(config), hf_cache_dir(), what=source, already_gb=cached_gb(source))
    return source, revision


def adapter_in_fp32_for_fp16(model: Any, compute_dtype: Any) -> int:
    """Pre-Ampere QLoRA (T4, RTX 20xx: no native bf16): fp16 compute, the LoRA weights in fp32, a gradient scaler.

    trl's ``SFTTrainer`` casts the adapter of a 4-bit model to bf16 (the QLoRA paper's choice;
    ``trl/trainer/sft_trainer.py``), and fp16 training's GradScaler cannot unscale bf16 gradients
    (``"_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'`` at the first step). Call it
    after building the trainer and before ``train()``: with fp16 the trainable weights go back to fp32 (a no-op for
    bf16 or fp32). Returns how many tensors moved. ``recipes/train_qlora.py`` holds a copy.
    """
    import torch

    if compute_dtype != torch.float16:
        return 0
    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
            moved += 1
    return moved


def quantization_config(quantization: str, compute_dtype: Any = None) -> Any:
    """The ``BitsAndBytesConfig`` for ``"4bit"`` / ``"8bit"`` (``None`` for ``"16bit"``).

    4-bit is QLoRA's recipe: NF4 (a 4-bit format whose levels follow a normal distribution, like trained weights),
    double quantisation (the per-block scales are quantised too: ~0.4 bit a weight saved), and matrix products
    computed in ``compute_dtype`` (bf16 on Ampere and newer).
    """
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "16bit":
        return None
    raise BadParameter(f"quantization={quantization!r} is not one of {QUANTIZATIONS}.")


def estimate_download_gb(config: Any) -> float:
    """Size of a model's weight files in GiB, from its config: parameters x bytes of the stored dtype (16-bit)."""
    from course_utils.core.memory import ModelShape

    shape = ModelShape.from_hf_config(config.to_dict() if hasattr(config, "to_dict") else config)
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "bfloat16")
    bytes_per_param = 4 if "float32" in stored else 2
    return shape.n_params * bytes_per_param / GIB
