"""A VRAM estimator: will this model, at this precision, sequence length and batch, fit the card?

The numbers are GiB (1024**3 bytes), the unit PyTorch's allocator and ``nvidia-smi`` report.

**Peak VRAM**, everywhere in the course, means one thing: the most memory PyTorch's allocator held from the card
during a block — ``torch.cuda.max_memory_reserved()`` since the block started (what was already held on entry, e.g.
the model's weights, included). It does not include the CUDA context (~0.3-0.6 GiB that the driver keeps outside
PyTorch) nor memory outside PyTorch's allocator (bitsandbytes' paged optimizer state). What the *card* must hold is
that peak plus the context: an estimate's ``total_gb`` (the number :func:`fits_card` compares with the card) adds the
context as its ``overhead`` part, and :attr:`VRAMEstimate.peak_vram_gb` is the estimate without it — the number to
compare a measured peak VRAM with. :func:`vram_peak` measures one block and nests safely (an inner block's reset
never loses an outer block's peak).

Rules of thumb behind the formulas (each a line in :func:`estimate_training_vram`):

* weights: params x bits / 8. 4-bit NF4 with double quantisation costs ~4.13 bits a parameter; embeddings and the
  LM head stay in 16-bit (bitsandbytes quantises only the linear layers inside the blocks).
* KV cache: 2 (K and V) x layers x KV heads x head_dim x sequence x batch x 2 bytes.
* training: trainable params pay weights + gradients + optimizer state (AdamW: 8 bytes, 8-bit AdamW: 2, SGD with
  momentum: 4); frozen params pay only their weights. Full training with 16-bit weights adds the fp32 master weights
  and the fp32 gradients the optimizer steps on (mixed precision as DeepSpeed runs it: 2 + 2 + 4 + 4 + 8 = 20 bytes a
  parameter with AdamW, DeepSpeed's own estimate on one GPU).
* activations: without checkpointing every layer keeps its intermediates for the backward pass; with
  checkpointing only each layer's input is kept, and one layer is recomputed at a time.
* logits: batch x sequence x vocab, 14 bytes each in the pinned transformers' loss path (see :func:`logits_gb`),
  or much less with a chunked cross-entropy (``chunked_loss=True``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

GIB = 1024**3
REFERENCE_CARD_GB = 12.0  # RTX 4070 Ti: the card the course is written for
CUDA_CONTEXT_GB = 0.5

Bits = Literal[4, 8, 16, 32]
Method = Literal["full", "lora", "qlora"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd", "sgd_momentum", "adafactor"]

OPTIMIZER_BYTES: dict[str, float] = {
    "adamw": 8.0,  # two fp32 moments
    "adamw_8bit": 2.0,
    "paged_adamw_8bit": 2.0,
    "sgd": 0.0,
    "sgd_momentum": 4.0,
    "adafactor": 0.1,  # factored second moment: a few bytes per row/column
}


def bytes_per_param(bits: int) -> float:
    """Storage per weight; 4-bit includes NF4 block constants with double quantisation (~0.13 bit)."""
    if bits == 4:
        return 4.127 / 8
    if bits == 8:
        return 1.0 + 4 / 4096  # LLM.int8(): int8 + one fp32 scale per row
    return bits / 8


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a model.

    For transformers, give the config dimensions (``from_hf_config``); for anything else give ``n_params`` and,
    if you know it, ``activation_gb_per_sample`` (e.g. measured once at a small batch).
    """

    name: str
    n_params: float
    n_layers: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    embedding_params: float = 0.0  # embeddings + untied LM head: never quantised
    activation_gb_per_sample: float = 0.0  # for non-transformer models
    notes: str = ""
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up and down projections (3 matrices) instead of 2
    tied_embeddings: bool = False  # the LM head shares the input embedding matrix
    #: non-transformers: the share of activation memory gradient checkpointing keeps (block inputs plus one block
    #: recomputed at a time). 0.35 is a rule of thumb for a U-Net / ResNet checkpointed block by block; measure yours.
    checkpointed_fraction: float = 0.35

    @property
    def is_transformer(self) -> bool:
        return self.n_layers > 0 and self.hidden_size > 0

    @property
    def linear_params(self) -> float:
        return self.n_params - self.embedding_params

    def lora_params(self, rank: int, targets: str = "all-linear") -> float:
        """Trainable parameters of LoRA with ``rank`` on the attention projections or on every linear layer."""
        if not self.is_transformer:
            return 0.0
        h, kv = self.hidden_size, self.n_kv_heads * self.head_dim
        attn = (h + self.n_heads * self.head_dim) * 2 + (h + kv) * 2  # q, o, k, v: r x (in + out) each
        mlp = (3 if self.gated_mlp else 2) * (h + self.intermediate_size)
        per_layer = attn + (mlp if targets == "all-linear" else 0)
        return float(rank * per_layer * self.n_layers)

    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None) -> ModelShape:
        """Build from a ``transformers`` config object or its dict (e.g. a hub ``config.json``)."""
        get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
        if get("text_config") is not None:  # vision-language models: size the language model
            text = get("text_config")
            shape = cls.from_hf_config(text, name)
            vision = get("vision_config")
            return shape if vision is None else _with_extra(shape, _vision_params(vision))
        h = int(get("hidden_size") or get("d_model") or get("n_embd"))
        layers = int(get("num_hidden_layers") or get("n_layer") or get("num_layers"))
        heads = int(get("num_attention_heads") or get("n_head"))
        kv_heads = int(get("num_key_value_heads") or heads)
        model_type = str(get("model_type") or "")
        head_dim = int(get("head_dim") or _CONFIG_DEFAULTS.get(model_type, {}).get("head_dim") or h // heads)
        inter = int(get("intermediate_size") or get("n_inner") or 4 * h)
        vocab = int(get("vocab_size"))
        tied = _tied_embeddings(get, model_type)
        gated = _gated_mlp(get, model_type)
        attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
        if model_type in _QKV_BIAS or get("attention_bias"):
            attn += heads * head_dim + 2 * kv_heads * head_dim
        mlp = (3 if gated else 2) * h * inter
        per_layer = attn + mlp + _NORMS_PER_LAYER.get(model_type, 2) * h
        emb = vocab * h * (1 if tied else 2)
        total = per_layer * layers + emb + h
        return cls(
            name=name or str(get("_name_or_path") or model_type or "model"),
            n_params=float(total), n_layers=layers, hidden_size=h, intermediate_size=inter,
            n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab, embedding_params=float(emb),
            gated_mlp=gated, tied_embeddings=tied,
        )

    @classmethod
    def from_params(cls, n_params: float, name: str = "model", activation_gb_per_sample: float = 0.0,
                    checkpointed_fraction: float = 0.35) -> ModelShape:
        return cls(name=name, n_params=float(n_params), activation_gb_per_sample=activation_gb_per_sample,
                   checkpointed_fraction=checkpointed_fraction)


# What the config's fields mean, per architecture (transformers 5.23's modeling files; no names guessed):
#: model types whose MLP is gated: down(act(gate(x)) * up(x)) — 3 matrices. Llama/Mistral/Qwen use SiLU (SwiGLU),
#: Gemma uses GELU-tanh (GeGLU): the activation alone does not tell, the architecture does.
_GATED_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "olmo", "olmo2", "cohere", "granite", "internlm2", "stablelm", "deepseek_v2", "deepseek_v3",
    "smollm3", "exaone", "glm", "helium",
}
#: model types whose MLP is a plain two-matrix up/down projection.
_PLAIN_MLP_MODEL_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "bert", "roberta",
                          "whisper", "clip", "clip_vision_model", "siglip_vision_model", "vit", "gpt_bigcode"}
#: the config class's default for ``tie_word_embeddings`` when a config.json leaves it out (Gemma's do).
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "opt", "bloom", "gpt_bigcode", "whisper"}
#: attention with q/k/v biases although the config has no ``attention_bias`` field (Qwen2's modeling code).
_QKV_BIAS = {"qwen2", "qwen2_moe"}
#: RMSNorms per decoder layer: Gemma-2/3 add a norm before and after the MLP and after attention.
_NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4, "gemma3_text": 4}
#: defaults the config class fills in when config.json omits them.
_CONFIG_DEFAULTS = {"gemma": {"head_dim": 256}, "gemma2": {"head_dim": 256}, "qwen3": {"head_dim": 128}}


def _gated_mlp(get: Any, model_type: str) -> bool:
    """Gated MLP, from the config: the architecture (model_type), else T5-style ``feed_forward_proj``, else the
    SwiGLU convention (a ``silu``/``swiglu`` activation on a decoder whose type we do not know)."""
    if model_type in _GATED_MODEL_TYPES:
        return True
    if model_type in _PLAIN_MLP_MODEL_TYPES:
        return False
    proj = get("feed_forward_proj")
    if proj:
        return str(proj).startswith("gated")
    act = get("hidden_act") or get("hidden_activation") or get("activation_function") or "silu"
    return str(act) in ("silu", "swiglu", "swish")


def _tied_embeddings(get: Any, model_type: str) -> bool:
    value = get("tie_word_embeddings")
    if value is None:
        return model_type in _TIED_BY_DEFAULT
    return bool(value)


def _vision_params(vision: Any) -> float:
    get = vision.get if isinstance(vision, dict) else (lambda key, default=None: getattr(vision, key, default))
    h, layers, inter = int(get("hidden_size")), int(get("num_hidden_layers")), int(get("intermediate_size"))
    return float(layers * (4 * h * h + 2 * h * inter))


def _with_extra(shape: ModelShape, extra_params: float) -> ModelShape:
    from dataclasses import replace

    # the vision tower is not quantised by bitsandbytes in the LLaVA recipe: count it with the embeddings
    return replace(shape, n_params=shape.n_params + extra_params, embedding_params=shape.embedding_params + extra_params)


@dataclass
class VRAMEstimate:
    """A breakdown in GiB; ``total_gb`` is what to compare with the card."""

    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        """What the card must hold: :attr:`peak_vram_gb` plus the CUDA context (the ``overhead`` part)."""
        return sum(self.parts.values())

    @property
    def peak_vram_gb(self) -> float:
        """The estimate of a measured peak VRAM (PyTorch's peak reserved memory): the total less the CUDA context."""
        return self.total_gb - self.parts.get("overhead", 0.0)

    def __str__(self) -> str:
        lines = [f"  {k:<22}{v:7.2f} GiB" for k, v in self.parts.items() if v > 0.005]
        lines.append(f"  {'total':<22}{self.total_gb:7.2f} GiB")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def weights_gb(shape: ModelShape, bits: int) -> float:
    """Weights at ``bits`` (4/8 quantise the linear layers only; embeddings stay 16-bit)."""
    if bits in (4, 8):
        return (shape.linear_params * bytes_per_param(bits) + shape.embedding_params * 2) / GIB
    return shape.n_params * bytes_per_param(bits) / GIB


def kv_cache_gb(shape: ModelShape, seq_len: int, batch_size: int = 1, bytes_per_value: int = 2) -> float:
    if not shape.is_transformer:
        return 0.0
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * batch_size * bytes_per_value / GIB


def estimate_inference_vram(
    shape: ModelShape, bits: int = 16, seq_len: int = 2048, batch_size: int = 1, overhead_gb: float = CUDA_CONTEXT_GB
) -> VRAMEstimate:
    """Weights + KV cache + activations of one forward pass over the prompt + runtime overhead."""
    est = VRAMEstimate()
    est.parts["weights"] = weights_gb(shape, bits)
    est.parts["kv cache"] = kv_cache_gb(shape, seq_len, batch_size)
    if shape.is_transformer:
        # prefill: a few hidden-sized buffers plus the MLP's intermediate, per token, for one layer at a time
        act = batch_size * seq_len * (4 * shape.hidden_size + 2 * shape.intermediate_size) * 2
        est.parts["activations"] = act / GIB
    else:
        est.parts["activations"] = shape.activation_gb_per_sample * batch_size
    if bits == 4:
        # bitsandbytes dequantises one weight matrix at a time into 16-bit
        largest = max(shape.hidden_size * shape.intermediate_size, shape.hidden_size**2) * 2
        est.parts["dequant buffer"] = largest / GIB
    est.parts["overhead"] = overhead_gb
    return est


def estimate_training_vram(
    shape: ModelShape,
    method: Method = "qlora",
    seq_len: int = 2048,
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
    optimizer: Optimizer = "paged_adamw_8bit",
    lora_rank: int = 16,
    lora_targets: str = "all-linear",
    weight_bits: int | None = None,
    overhead_gb: float = CUDA_CONTEXT_GB,
    chunked_loss: bool = False,
    loss_chunks: int = 8,
    offload_optimizer: bool = False,
    master_weights: bool | None = None,
) -> VRAMEstimate:
    """Estimate peak training memory for full fine-tuning, LoRA (16-bit base) or QLoRA (4-bit base).

    Full fine-tuning by default trains fp32 weights under autocast (4 + 4 bytes of weight and gradient a parameter).
    With ``weight_bits=16`` it is mixed precision as DeepSpeed (and Apex, Megatron) run it: 16-bit weights and
    gradients for the forward and backward passes, plus fp32 master weights and fp32 gradients the optimizer steps on
    — with AdamW 2 + (2 + 4) + (4 + 8) = 20 bytes a parameter, DeepSpeed's own estimate on one GPU
    (``estimate_zero2_model_states_mem_needs(n, 1)``, :func:`estimate_zero_model_states` at stage 0).
    ``master_weights=False`` counts pure 16-bit training instead (the optimizer steps on the 16-bit weights, e.g.
    bitsandbytes' 8-bit AdamW on a bf16 model): 2 + 2 + the optimizer's bytes. ``chunked_loss=True`` counts a chunked
    cross-entropy (torchtune's ``CEWithChunkedOutputLoss``, ``loss_chunks`` chunks) instead of transformers'
    whole-batch loss. ``offload_optimizer=True`` keeps the optimizer state in CPU RAM (DeepSpeed ZeRO-Offload on one
    GPU); in full fine-tuning the gradients go there too, bucket by bucket as the backward pass makes them, so the
    card keeps the weights (DeepSpeed's estimate with ``cpu_offload=True``); a note says how much RAM it takes.
    For several GPUs see :func:`estimate_zero_model_states`.
    """
    est = VRAMEstimate()
    opt = OPTIMIZER_BYTES[optimizer]
    grads_in_ram = 0.0  # offloaded: the gradients the CPU's optimizer steps on (16-bit ones only pass through)
    if method == "full":
        wbytes = bytes_per_param(weight_bits or 32)
        master = (weight_bits == 16) if master_weights is None else master_weights
        fp32 = ZERO_BYTES["grads32"] if master else 0  # the fp32 gradients the optimizer steps on
        est.parts["weights"] = shape.n_params * wbytes / GIB
        est.parts["gradients"] = shape.n_params * (wbytes + fp32) / GIB
        est.parts["optimizer state"] = shape.n_params * (opt + (ZERO_BYTES["master32"] if master else 0)) / GIB
        grads_in_ram = shape.n_params * (fp32 or wbytes) / GIB
    else:
        base_bits = weight_bits or (4 if method == "qlora" else 16)
        est.parts["weights (frozen)"] = weights_gb(shape, base_bits)
        trainable = shape.lora_params(lora_rank, lora_targets)
        est.parts["LoRA weights+grads"] = trainable * 8 / GIB  # fp32 adapter weights and gradients
        est.parts["optimizer state"] = trainable * opt / GIB
        if not shape.is_transformer:
            est.notes.append("LoRA size needs transformer dimensions; only the frozen weights were counted")
    if offload_optimizer:
        moved = ["optimizer state", "gradients"] if method == "full" else ["optimizer state"]
        est.notes.append(f"{' and '.join(moved)} in CPU RAM: {est.parts['optimizer state'] + grads_in_ram:.2f} GiB "
                         "there, none on the card")
        for key in moved:
            est.parts[key] = 0.0
    est.parts["activations"] = _training_activations_gb(shape, seq_len, batch_size, gradient_checkpointing)
    if not shape.is_transformer and gradient_checkpointing and shape.activation_gb_per_sample:
        est.notes.append(f"gradient checkpointing keeps ~{shape.checkpointed_fraction:.0%} of the activations "
                         "(a rule of thumb for block-wise checkpointing)")
    if shape.is_transformer and shape.vocab_size:
        est.parts["logits"] = logits_gb(shape, seq_len, batch_size, chunked_loss, loss_chunks)
        if chunked_loss:
            est.notes.append(f"chunked cross-entropy: the fp32 loss path is counted for one of {loss_chunks} chunks")
    if method == "qlora":
        largest = max(shape.hidden_size * shape.intermediate_size, shape.hidden_size**2) * 2
        est.parts["dequant buffer"] = 2 * largest / GIB
    est.parts["overhead"] = overhead_gb
    return est


#: Bytes per logit (per token, per vocabulary entry) at the peak of transformers 5.23's causal-LM loss path, read
#: from ``models/llama/modeling_llama.py`` (``LlamaForCausalLM.forward``) and ``loss/loss_utils.py``
#: (``ForCausalLMLoss`` -> ``fixed_cross_entropy`` -> ``F.cross_entropy`` = log_softmax + nll_loss):
#:
#: * 2: ``logits = self.lm_head(hidden_states)`` in bf16, returned in the model's output (a loop that keeps
#:   ``out = model(...)`` alive through ``out.loss.backward()`` holds it for the whole step);
#: * 4: ``logits = logits.float()`` — the fp32 upcast ("to avoid potential precision issues"); autograd does not
#:   save it, so it is freed when the loss function returns, but it exists while log_softmax runs;
#: * 4: log_softmax's fp32 output, saved by autograd for the backward pass;
#: * backward: nll_loss's gradient is a dense fp32 [tokens, vocab] tensor (4) and log_softmax's backward writes
#:   another (4) while its saved output (4) is still alive; then the gradient is cast back to bf16 (2).
#:
#: Forward peak: 2 + 4 + 4 = 10; backward peak: 2 (bf16 logits held) + 4 (saved log-probs) + 4 + 4 (gradients) = 14.
#: Trainer's ``compute_loss`` drops the output before ``backward``: 12 there. The estimate counts 14.
LOSS_PATH_BYTES = 14
#: With a chunked cross-entropy the bf16 logits of the whole batch still exist (2 bytes); the fp32 upcast, the
#: log-probs and the gradients (4 + 4 + 4) exist for one chunk at a time.
CHUNKED_BF16_BYTES, CHUNKED_FP32_BYTES = 2, 12


def logits_gb(shape: ModelShape, seq_len: int, batch_size: int = 1, chunked_loss: bool = False,
              loss_chunks: int = 8) -> float:
    """Peak memory of the LM head's logits and the cross-entropy on them (GiB); see :data:`LOSS_PATH_BYTES`."""
    n = batch_size * seq_len * shape.vocab_size
    if chunked_loss:
        return n * (CHUNKED_BF16_BYTES + CHUNKED_FP32_BYTES / max(1, loss_chunks)) / GIB
    return n * LOSS_PATH_BYTES / GIB


def _training_activations_gb(shape: ModelShape, seq_len: int, batch_size: int, checkpointing: bool) -> float:
    if not shape.is_transformer:
        # measured (or guessed) per sample without checkpointing; checkpointing keeps a share of it
        factor = shape.checkpointed_fraction if checkpointing else 1.0
        return shape.activation_gb_per_sample * batch_size * factor
    tokens = seq_len * batch_size
    h, i = shape.hidden_size, shape.intermediate_size
    # one layer's saved tensors in 16-bit with SDPA (no seq x seq matrix): norms, q/k/v/o, MLP in/out, and the
    # gated MLP's gate/up/product (4 intermediate-sized tensors; 2 for a plain MLP)
    per_layer = tokens * (10 * h + (4 if shape.gated_mlp else 2) * i) * 2
    if checkpointing:
        return (shape.n_layers * tokens * h * 2 + per_layer) / GIB
    return shape.n_layers * per_layer / GIB


@dataclass(frozen=True)
class FitVerdict:
    fits: bool
    needed_gb: float
    card_gb: float
    margin_gb: float

    def __bool__(self) -> bool:
        return self.fits

    def __str__(self) -> str:
        word = "fits" if self.fits else "does NOT fit"
        return f"{word}: needs ~{self.needed_gb:.1f} GiB of {self.card_gb:.1f} GiB (keeping {self.margin_gb:.1f} GiB spare)"


def fits_card(estimate: VRAMEstimate | float, card_gb: float = REFERENCE_CARD_GB, margin_gb: float = 1.0) -> FitVerdict:
    """Does the plan fit a card, keeping ``margin_gb`` for the desktop and fragmentation?"""
    needed = estimate.total_gb if isinstance(estimate, VRAMEstimate) else float(estimate)
    return FitVerdict(needed + margin_gb <= card_gb, needed, card_gb, margin_gb)


# Shapes written down from the models' published config.json files (no download needed).
LLAMA_3_1_8B = ModelShape.from_hf_config(
    dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
         head_dim=128, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, hidden_act="silu"),
    name="Llama-3.1-8B",
)
QWEN2_5_7B = ModelShape.from_hf_config(
    dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
         head_dim=128, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False, hidden_act="silu"),
    name="Qwen2.5-7B",
)
LLAVA_1_5_7B = ModelShape.from_hf_config(
    dict(text_config=dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, intermediate_size=11008, vocab_size=32064, hidden_act="silu"),
         vision_config=dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096)),
    name="LLaVA-1.5-7B",
)

#: Models the course uses, for "will it fit" tables. Non-transformer activation sizes are per image at the
#: lesson's resolution in 16-bit and are rough; the bench (``make bench``) measures the real ones.
MODEL_CATALOG: dict[str, ModelShape] = {
    "Llama-3.1-8B": LLAMA_3_1_8B,
    "Qwen2.5-7B": QWEN2_5_7B,
    "LLaVA-1.5-7B": LLAVA_1_5_7B,
    "SD 1.5 (512 px)": ModelShape.from_params(1.07e9, "SD 1.5 (512 px)", activation_gb_per_sample=1.2),
    "SDXL (1024 px)": ModelShape.from_params(3.5e9, "SDXL (1024 px)", activation_gb_per_sample=3.0),
    "YOLOv8n (640 px)": ModelShape.from_params(3.2e6, "YOLOv8n (640 px)", activation_gb_per_sample=0.15),
    "whisper-tiny": ModelShape.from_params(39e6, "whisper-tiny", activation_gb_per_sample=0.05),
    "whisper-small": ModelShape.from_params(244e6, "whisper-small", activation_gb_per_sample=0.25),
    "whisper-medium": ModelShape.from_params(769e6, "whisper-medium", activation_gb_per_sample=0.5),
    "whisper-large-v3": ModelShape.from_params(1550e6, "whisper-large-v3", activation_gb_per_sample=0.8),
    "whisper-large-v3-turbo": ModelShape.from_params(809e6, "whisper-large-v3-turbo", activation_gb_per_sample=0.6),
}


def params_human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{1 if n / size < 100 else 0}f}{unit}"
    return str(int(n))


def round_up(x: float, step: float = 0.5) -> float:
    return math.ceil(x / step) * step


# ---------------------------------------------------------------------------------------------- many cards: ZeRO
#: Bytes a parameter costs in mixed-precision AdamW training as DeepSpeed's ZeRO engine holds them: 16-bit weights
#: for the forward/backward, 16-bit gradients (reduced into an fp32 partition from stage 2 on, so stage 3 keeps only
#: the fp32 one), fp32 master weights and two fp32 moments. Stage 2 per GPU: 2 + (2 + 4 + 4 + 8) / N = DeepSpeed's
#: "2 + 18 / N"; stage 3: (2 + 4 + 4 + 8) / N = its "18 / N" (ZeRO paper, Rajbhandari et al. 2020, with K = 12 plus
#: the fp32 gradient partition DeepSpeed's optimizer steps on).
ZERO_BYTES: dict[str, int] = {"weights16": 2, "grads16": 2, "grads32": 4, "master32": 4, "moments32": 8}


@dataclass(frozen=True)
class ZeroEstimate:
    """Model-state memory (weights, gradients, optimizer state) per GPU and in CPU RAM, in GiB, for one ZeRO plan."""

    stage: int
    world_size: int
    gpu_parts: dict[str, float]
    cpu_gb: float
    notes: tuple[str, ...] = ()

    @property
    def gpu_gb(self) -> float:
        return sum(self.gpu_parts.values())

    def __str__(self) -> str:
        lines = [f"  {k:<30}{v:8.2f} GiB" for k, v in self.gpu_parts.items() if v > 0.0005]
        lines.append(f"  {'per GPU (model states)':<30}{self.gpu_gb:8.2f} GiB")
        lines.append(f"  {'CPU RAM':<30}{self.cpu_gb:8.2f} GiB")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def estimate_zero_model_states(
    n_params: float,
    world_size: int = 1,
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    largest_layer_params: float = 0.0,
    gpus_per_node: int | None = None,
    buffer_factor: float = 1.5,
) -> ZeroEstimate:
    """Per-GPU memory of the model states under ZeRO stage 0-3 on ``world_size`` GPUs, mixed precision + AdamW.

    Stage 0 is plain data parallelism (DDP: everything replicated on every GPU). Stage 1 splits the optimizer state
    (fp32 master weights, moments, the fp32 gradient it steps on) over the GPUs, stage 2 the 16-bit gradients too,
    stage 3 the 16-bit weights too (a GPU gathers one layer at a time: ``largest_layer_params`` in fp32, as DeepSpeed
    budgets it). ``offload_optimizer`` (ZeRO-Offload) keeps the optimizer state and its step in CPU RAM;
    ``offload_params`` (ZeRO-Infinity, stage 3) the weights too. Activations are not model states: add them from
    :func:`estimate_training_vram`. PyTorch FSDP full shard holds what stage 3 holds.

    The CPU side follows DeepSpeed's estimators (``estimate_zero2/3_model_states_mem_needs``, zero_init for
    stage 3): ``buffer_factor`` (1.5) covers pinned buffers, and every process on a node first loads the fp32 model.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, not {stage!r}.")
    if offload_params and stage != 3:
        raise ValueError("offload_params needs ZeRO stage 3 (only stage 3 partitions the weights).")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3.")
    n = max(1, int(world_size))
    per_node = gpus_per_node or n
    nodes = max(1, n // per_node)
    b = ZERO_BYTES

    def split(bytes_: float, partitioned: bool) -> float:
        return n_params * bytes_ / (n if partitioned else 1) / GIB

    gpu: dict[str, float] = {}
    notes: list[str] = []
    if stage == 3:
        gpu["gathered layer (fp32)"] = 4 * largest_layer_params / GIB
        if not largest_layer_params:
            notes.append("stage 3: pass largest_layer_params to count the layer a GPU gathers while computing")
    gpu["weights (16-bit)"] = 0.0 if offload_params else split(b["weights16"], stage == 3)
    if offload_optimizer:  # gradients stream to the CPU, where the optimizer steps
        gpu["gradients"] = gpu["optimizer state (fp32)"] = 0.0
        notes.append("optimizer state and its step on the CPU: each step copies gradients out and weights back")
    else:
        grads = {0: b["grads16"], 1: b["grads16"], 2: b["grads16"], 3: 0}[stage]  # stage 3 reduces into fp32
        gpu["gradients"] = split(grads, stage >= 2) + split(b["grads32"], stage >= 1)
        gpu["optimizer state (fp32)"] = split(b["master32"] + b["moments32"], stage >= 1)
    if stage == 3:
        if offload_optimizer and offload_params:
            cpu = n_params * 18 / nodes * buffer_factor
        elif offload_optimizer:
            cpu = n_params * 16 / nodes * buffer_factor
        else:
            cpu = largest_layer_params * 4 * per_node * buffer_factor
    elif offload_optimizer:
        cpu = n_params * max(4 * n, 16) * buffer_factor
    else:
        cpu = n_params * 4 * per_node * buffer_factor
    return ZeroEstimate(stage, n, gpu, cpu / GIB, tuple(notes))


def zero_stage_for_card(n_params: float, world_size: int, card_gb: float = REFERENCE_CARD_GB,
                        activations_gb: float = 0.0, margin_gb: float = 1.0,
                        largest_layer_params: float = 0.0) -> tuple[int, bool] | None:
    """The lightest ZeRO plan that fits: (stage, offload_optimizer), trying stages 0-3 on the GPUs, then
    ZeRO-Offload; None if even stage 3 with the optimizer on the CPU does not fit."""
    for offload in (False, True):
        for stage in (0, 1, 2, 3):
            if offload and stage == 0:
                continue
            est = estimate_zero_model_states(n_params, world_size, stage, offload_optimizer=offload,
                                             largest_layer_params=largest_layer_params)
            if est.gpu_gb + activations_gb + CUDA_CONTEXT_GB + margin_gb <= card_gb:
                return stage, offload
    return None


# ---------------------------------------------------------------------------------------------- measuring peaks
@dataclass
class VRAMPeak:
    """Filled in when a :func:`vram_peak` block ends: peak VRAM (PyTorch's peak reserved memory, the course's one
    meaning) and peak allocated memory of the block, and what was held on entry, in GiB. ``None`` without a GPU."""

    reserved_gb: float | None = None
    allocated_gb: float | None = None
    reserved_entry_gb: float | None = None
    allocated_entry_gb: float | None = None

    @property
    def added_gb(self) -> float | None:
        """What the block added to the peak VRAM over what was held on entry."""
        if self.reserved_gb is None or self.reserved_entry_gb is None:
            return None
        return max(0.0, self.reserved_gb - self.reserved_entry_gb)


#: Peaks (allocated, reserved; GiB) of the :func:`vram_peak` blocks still open, innermost last, and of the process.
_OPEN_PEAKS: list[list[float]] = []
_LIFETIME_PEAK: list[float] = [0.0, 0.0]


def _cuda_peaks(torch: Any, device: Any = None) -> tuple[float, float]:
    on = () if device is None else (device,)
    return torch.cuda.max_memory_allocated(*on) / GIB, torch.cuda.max_memory_reserved(*on) / GIB


def reset_vram_peak(device: Any = None) -> None:
    """Reset CUDA's peak counters, first folding the peak so far into every open :func:`vram_peak` block and into
    the process's lifetime peak (:func:`lifetime_vram_peak`), so no enclosing measurement loses it. ``device``: a
    CUDA device, None for the current one. The one place course_utils resets CUDA's peak counters (the standalone
    recipes reset them in their own process)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    now = _cuda_peaks(torch, device)
    for peaks in [*_OPEN_PEAKS, _LIFETIME_PEAK]:
        peaks[:] = [max(a, b) for a, b in zip(peaks, now, strict=True)]
    torch.cuda.reset_peak_memory_stats(*(() if device is None else (device,)))


def lifetime_vram_peak() -> tuple[float, float]:
    """The process's peak (allocated, reserved) VRAM in GiB, across every :func:`reset_vram_peak`; (0, 0) without
    CUDA."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return tuple(_LIFETIME_PEAK)
    now = _cuda_peaks(torch)
    return max(_LIFETIME_PEAK[0], now[0]), max(_LIFETIME_PEAK[1], now[1])


@contextlib.contextmanager
def vram_peak(device: Any = None) -> Iterator[VRAMPeak]:
    """Measure a block's peak VRAM on ``device`` (None: the current CUDA device). Nest-safe: blocks inside it (and
    :func:`reset_vram_peak`) fold their peaks into it before resetting CUDA's counters, so an outer block still sees
    the inner blocks' peaks. Without CUDA, or on a CPU ``device``, the fields stay None (not measured)."""
    import sys

    peak = VRAMPeak()
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available() and not str(device or "cuda").startswith("cpu")
    on = () if device is None else (device,)
    if cuda:
        torch.cuda.synchronize(*on)
        reset_vram_peak(device)
        peak.allocated_entry_gb = torch.cuda.memory_allocated(*on) / GIB
        peak.reserved_entry_gb = torch.cuda.memory_reserved(*on) / GIB
    running = [0.0, 0.0]
    _OPEN_PEAKS.append(running)
    try:
        yield peak
    finally:
        _OPEN_PEAKS[:] = [p for p in _OPEN_PEAKS if p is not running]  # by identity: equal peaks are not the same
        if cuda:
            torch.cuda.synchronize(*on)
            now = _cuda_peaks(torch, device)
            peak.allocated_gb, peak.reserved_gb = (max(a, b) for a, b in zip(running, now, strict=True))


# ---------------------------------------------------------------------------------------------- releasing models
def release_library_references() -> int:
    """Drop the references libraries keep in globals to the modules of models a lesson has finished with.

    With an 8-bit bitsandbytes optimizer (``optim="paged_adamw_8bit"`` / ``"adamw_bnb_8bit"``),
    ``Trainer.create_optimizer`` registers every ``nn.Embedding`` of the model with bitsandbytes'
    ``GlobalOptimManager`` (to keep their optimizer state in 32 bits), whose list is never cleared: without this, the
    embeddings of every model ever trained stay alive (0.98 GiB for Llama-3.1-8B's ``embed_tokens``). The optimizer
    reads the list once, at its first step, so clearing it between trainings changes nothing else; its id-keyed
    configs go too (a new parameter could reuse a dead one's id). Returns how many module references were dropped.
    Called by ``cu.free_gpu()``.
    """
    import sys

    optim = sys.modules.get("bitsandbytes.optim.optimizer")
    manager = getattr(getattr(optim, "GlobalOptimManager", None), "_instance", None)
    if manager is None:
        return 0
    dropped = len(manager.module_weight_config_triple)
    manager.module_weight_config_triple.clear()
    manager.pid2config.clear()
    manager.index2config.clear()
    return dropped
