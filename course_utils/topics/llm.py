"""One loader for the course's causal language models (lessons 05, 06, 07), and the tiny offline stand-in.

The API, kept stable because several lessons call it::

    from course_utils.topics.llm import load_causal_lm
    model, tokenizer = load_causal_lm()                                  # Llama-3.1-8B-Instruct, pinned revision
    model, tokenizer = load_causal_lm(UNGATED_MODEL_ID)                  # Qwen2.5-7B-Instruct: no licence to accept
    model, tokenizer = load_causal_lm(smoke=True)                        # tiny Llama, built offline, same calls
    model, tokenizer = load_causal_lm(quantization="16bit", device="cuda")

``load_causal_lm(model_id=None, smoke=False, quantization=None, revision=None, device=None) -> (model, tokenizer)``

* ``model_id``: a hub id or a local folder; ``None`` means :data:`DEFAULT_MODEL_ID`. Ignored in smoke mode.
* ``smoke``: load the tiny model from :func:`tiny_llm_dir` instead (built once, cached in ``cu.cache_dir()``).
* ``quantization``: ``"4bit"`` (NF4, double quantisation, bf16/fp16 compute), ``"8bit"`` (LLM.int8) or ``"16bit"``;
  ``None`` lets ``cu.safe_defaults("llm-inference")`` choose for the card (4-bit on 12 GB).
* ``revision``: a commit; ``None`` uses the pinned commit for the course's models (:data:`PINNED_REVISIONS`).
* ``device``: ``"cuda"`` / ``"cpu"``; ``None`` takes the GPU if there is one.

The model comes back in eval mode; the tokenizer always has a pad token (the end-of-turn token if the model has
none). ``trust_remote_code`` is never passed: only architectures transformers ships are loaded.

Failures a learner can hit become one sentence: :class:`ModelAccessError` (gated model without an accepted licence,
no token, offline with nothing cached, unknown id) and :class:`NotEnoughDisk` (the download would not fit).

Reusable pieces (the vision-language lesson builds its tiny LLaVA from them): :func:`train_tiny_tokenizer`,
:func:`build_tiny_llm`, :func:`tiny_llm_dir`, :data:`CHAT_TEMPLATE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter, CourseError, MissingData
from course_utils.core.hub import (ModelAccessError, NotEnoughDisk, cached_gb, check_disk_space, explain_hub_error,  # noqa: F401
                                   hf_cache_dir, hub_errors_explained)
from course_utils.core.memory import GIB
from course_utils.core.paths import REPO_ROOT, atomic_dir, cache_dir, data_dir


#: The course's default model (gated: accept Meta's licence on its hub page once, then log in).
DEFAULT_MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"
#: The ungated alternative, one parameter away: ``load_causal_lm(UNGATED_MODEL_ID)``.
UNGATED_MODEL_ID = "Qwen/Qwen2.5-7B-Instruct"
UNGATED_REVISION = "a09a35458c702b33eeacc393d103063234e8bc28"
PINNED_REVISIONS = {DEFAULT_MODEL_ID: DEFAULT_REVISION, UNGATED_MODEL_ID: UNGATED_REVISION}
#: What a gated-model or token failure suggests instead.
UNGATED_HINT = f"use the ungated load_causal_lm({UNGATED_MODEL_ID!r})"

QUANTIZATIONS = ("4bit", "8bit", "16bit")

#: Llama-3-style chat template (the tiny tokenizer uses it; the real models ship their own).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

#: The tiny model: the real Llama class, a few hundred thousand random weights. head_dim is set on purpose
#: (LlamaConfig's default is 128, far too big for a 128-wide model).
TINY_LLAMA_CONFIG = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
)
TINY_VOCAB_SIZE = 1024
_TINY_SPEC_VERSION = "1"  # bump when the builder changes, so cached tiny models are rebuilt


# ---------------------------------------------------------------------------------------------- loading


def load_causal_lm(model_id: str | None = None, smoke: bool = False, quantization: str | None = None,
                   revision: str | None = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: the hub model in full mode, the tiny offline Llama in smoke mode.

    Both modes go through the same ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` calls with the same
    quantisation config; only the source differs (a hub id or the tiny model's folder).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from course_utils.core.defaults import safe_defaults

    defaults = safe_defaults("llm-inference")
    if quantization is None:
        quantization = "4bit" if defaults.load_in_4bit else "16bit"
    if quantization not in QUANTIZATIONS:
        raise BadParameter(f"quantization={quantization!r} is not one of {QUANTIZATIONS}; use '4bit' on a 12 GB card.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadParameter("device='cuda' but PyTorch sees no GPU; use device=None (or 'cpu'), or run smoke mode.")
    source = str(tiny_llm_dir()) if smoke else (model_id or DEFAULT_MODEL_ID)
    if revision is None and not smoke:
        revision = PINNED_REVISIONS.get(source)
    # The unquantised weights (embeddings, norms, LM head) are stored in bf16 where the card has it, else fp16 — and
    # in bf16 on a CPU too, so sizes match the GPU's. The 4-bit layers compute in that dtype on a GPU; on a CPU in
    # fp32, because CPU bf16 matrix products are ~4x slower than fp32 ones on a typical desktop CPU.
    dtype = defaults.torch_dtype if device == "cuda" else torch.bfloat16
    quant_config = quantization_config(quantization, dtype if device == "cuda" else torch.float32)
    with hub_errors_explained(source, alternative=UNGATED_HINT):
        config = AutoConfig.from_pretrained(source, revision=revision)  # one small file: fails fast if gated/offline
        if not Path(source).is_dir():
            check_disk_space(estimate_download_gb(config), hf_cache_dir(), what=source, already_gb=cached_gb(source))
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, quantization_config=quant_config,
            device_map={"": 0} if device == "cuda" else device,
        )
    if tokenizer.pad_token is None:  # Llama 3 ships without one; padding needs one for batches
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


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



# ------------------------------------------------------------------------------- the tiny offline model


def default_corpus() -> list[str]:
    """Local text for the tiny tokenizer: the course's own writing (CONTRIBUTING.md and the shipped JSONL/markdown)."""
    files = [REPO_ROOT / "CONTRIBUTING.md"]
    files += sorted((data_dir() / "course" / "run_notes_json").glob("*.jsonl"))
    lines: list[str] = []
    for path in files:
        if path.is_file():
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:  # a bare checkout still gets a working tokenizer
        lines = [CHAT_TEMPLATE, "The quick brown fox jumps over the lazy dog. 0123456789 {\"key\": 1.5}"]
    return lines


def train_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = TINY_VOCAB_SIZE,
                         extra_special_tokens: Sequence[str] = (), chat_template: str = CHAT_TEMPLATE) -> Any:
    """Train a byte-level BPE tokenizer (like GPT-2's and Llama 3's) on local text, offline, in well under a second.

    Returns a ``PreTrainedTokenizerFast`` with Llama-3-style special tokens, a chat template, BOS added to plain
    text, no pad token (like Llama 3; :func:`load_causal_lm` sets one) and ``extra_special_tokens`` (e.g. ``"<image>"``).
    Byte-level means every string can be encoded: unseen characters fall back to their bytes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts) if texts is not None else default_corpus(), trainer)
    bos = SPECIAL_TOKENS[0]
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token="<|eot_id|>", model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
        extra_special_tokens=list(extra_special_tokens) or None,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_llm(folder: str | os.PathLike[str], texts: Iterable[str] | None = None, seed: int = 0,
                   **config_overrides: Any) -> Path:
    """Write a tiny random-weight ``LlamaForCausalLM`` and its tokenizer to ``folder`` (atomically).

    The folder looks like a hub snapshot (config.json, model.safetensors, tokenizer files, generation_config.json),
    so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it exactly as it loads a hub id.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(texts)
    eot, end = tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eot],
                         **{**TINY_LLAMA_CONFIG, **config_overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # the instruct models' sampling defaults (Llama 3.1: temperature 0.6, top-p 0.9), stopping at end of turn
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eot],
                                               do_sample=True, temperature=0.6, top_p=0.9)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def tiny_llm_dir(rebuild: bool = False) -> Path:
    """The cached tiny model's folder, built on first use (about a second) and reused afterwards.

    The folder name carries a hash of the builder's settings and its training text, so a change rebuilds it.
    """
    key = hashlib.sha256(json.dumps([_TINY_SPEC_VERSION, TINY_LLAMA_CONFIG, TINY_VOCAB_SIZE, default_corpus()],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("tiny-llm") / f"llama-{key}"
    if rebuild or not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        build_tiny_llm(folder)
    return folder
