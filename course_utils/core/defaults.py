"""Memory-safe defaults for a task on a card, with the rule behind each choice written down.

The rules, in the order the course applies them when memory is short:

1. Precision: bf16 where the card computes it natively (compute capability 8.0, Ampere, and newer:
   :func:`course_utils.core.gpu.bf16_native`; no loss scaling needed); fp16 with a GradScaler on older cards (T4,
   RTX 20xx, GTX 16xx), never their emulated bf16; fp32 on the CPU (CPU half precision is slow and poorly supported).
2. 7-8B language models load in 4-bit NF4 (weights ~5 GiB instead of ~15 GiB in 16-bit).
3. Fine-tune large models with LoRA/QLoRA, never a full fine-tune on 12 GB.
4. Gradient checkpointing on for LLM/diffusion training (trades ~30 % speed for most activation memory).
5. Keep the micro-batch small and reach the effective batch with gradient accumulation.
6. Use SDPA / flash attention (PyTorch picks the fastest available kernel).
7. Keep context at 2-8k tokens; 2048 for training on 12 GB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from course_utils.core.cards import BOX_SIZES_GB, card_box_gb  # noqa: F401 - part of this module's public names
from course_utils.core.errors import BadParameter

Task = Literal[
    "cnn-train", "gpt-train", "llm-inference", "llm-qlora", "rag", "yolo-train", "sd-inference", "sd-lora",
    "whisper-finetune", "vlm-inference", "vlm-qlora",
]

#: The plans below are written for these boxes; a card gets the plan of the largest one that is not bigger than its box
#: (a 10 or 11 GB card the 8 GB plan, a 20 GB card the 16 GB plan, anything from 24 GB the 24 GB plan).
PLAN_BOXES_GB = (8, 12, 16, 24)

# task -> effective batch (micro-batch x accumulation; the same on every card), gradient checkpointing, and per plan
# box: (micro-batch, max sequence length). Micro-batches are powers of two; 4-bit is decided by the card below.
_EFFECTIVE: dict[str, tuple[int, bool]] = {
    "cnn-train": (512, False), "gpt-train": (64, False), "llm-inference": (1, False), "llm-qlora": (16, True),
    "rag": (1, False), "yolo-train": (64, False), "sd-inference": (1, False), "sd-lora": (4, True),
    "whisper-finetune": (16, True), "vlm-inference": (1, False), "vlm-qlora": (8, True),
}
_PLANS: dict[str, dict[int, tuple[int, int | None]]] = {
    "cnn-train": {8: (256, None), 12: (512, None), 16: (512, None), 24: (512, None)},
    "gpt-train": {8: (32, 256), 12: (64, 256), 16: (64, 256), 24: (64, 256)},
    "llm-inference": {8: (1, 2048), 12: (1, 4096), 16: (1, 8192), 24: (1, 8192)},
    # QLoRA of an 8B model: ~10.7 GiB at 2048 tokens with transformers' loss (cu.estimate_training_vram)
    "llm-qlora": {8: (1, 1024), 12: (1, 2048), 16: (1, 2048), 24: (2, 2048)},
    "rag": {8: (1, 2048), 12: (1, 4096), 16: (1, 8192), 24: (1, 8192)},
    "yolo-train": {8: (8, None), 12: (16, None), 16: (32, None), 24: (64, None)},
    "sd-inference": {8: (1, 77), 12: (1, 77), 16: (1, 77), 24: (1, 77)},
    "sd-lora": {8: (1, 77), 12: (1, 77), 16: (2, 77), 24: (4, 77)},
    "whisper-finetune": {8: (4, 448), 12: (8, 448), 16: (16, 448), 24: (16, 448)},
    "vlm-inference": {8: (1, 2048), 12: (1, 2048), 16: (1, 2048), 24: (1, 2048)},
    "vlm-qlora": {8: (1, 1024), 12: (1, 1024), 16: (2, 1024), 24: (4, 1024)},
}
#: 7-8B models: 16-bit weights (~15 GiB) only from this box up; below it, 4-bit NF4 (~5.3 GiB).
SIXTEEN_BIT_FROM_GB = 20
_FOUR_BIT_TASKS = {"llm-inference", "llm-qlora", "rag", "vlm-inference", "vlm-qlora"}
_QLORA_TASKS = {"llm-qlora", "vlm-qlora"}


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


@dataclass(frozen=True)
class SafeDefaults:
    device: str
    dtype: str  # "bfloat16" | "float16" | "float32"
    use_grad_scaler: bool
    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    load_in_4bit: bool
    max_seq_len: int | None
    reasons: tuple[str, ...]

    @property
    def torch_dtype(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return getattr(torch, self.dtype)

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = (f"{self.device}, {self.dtype}, micro-batch {self.micro_batch_size} x {self.gradient_accumulation_steps} "
                f"accumulation, checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
                f"4-bit {'on' if self.load_in_4bit else 'off'}, max length {self.max_seq_len or '-'}")
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def safe_defaults(task: Task, vram_gb: float | None = None, bf16: bool | None = None) -> SafeDefaults:
    """Defaults for ``task`` on the current card (or on a card reporting ``vram_gb`` GiB, with/without native ``bf16``:
    ``None`` asks :func:`course_utils.core.gpu.bf16_native`, through ``gpu_report``).

    ``vram_gb=0`` means the CPU. The card is taken at its box size (a 12 GB card reports ~11.99 GiB and gets the
    12 GB plan); the plans are written for 8, 12, 16 and 24 GB boxes (:data:`_PLANS`). Micro-batches are powers of
    two, and the effective batch (micro-batch x gradient accumulation) is the same on every card.
    """
    if task not in _PLANS:
        raise BadParameter(f"Unknown task {task!r}; choose one of: {', '.join(_PLANS)}.")
    if vram_gb is None or bf16 is None:
        from course_utils.core.gpu import gpu_report

        report = gpu_report()
        vram_gb = report.total_vram_gb if vram_gb is None else vram_gb
        bf16 = report.bf16_supported if bf16 is None else bf16
    if vram_gb < 0:
        raise BadParameter(f"vram_gb must be 0 (the CPU) or the card's memory in GiB, not {vram_gb}.")
    effective, ckpt = _EFFECTIVE[task]
    reasons: list[str] = []
    box = card_box_gb(vram_gb)
    if box <= 0:
        device, dtype, scaler = "cpu", "float32", False
        reasons.append("CPU: fp32 (half precision on a CPU is slow and poorly supported)")
    elif bf16:
        device, dtype, scaler = "cuda", "bfloat16", False
        reasons.append("bf16: native on this card (compute capability 8.0+), same range as fp32 so no loss scaling")
    else:
        device, dtype, scaler = "cuda", "float16", True
        reasons.append("fp16 + GradScaler: this card has no native bf16 (compute capability below 8.0)")
    four_bit = task in _FOUR_BIT_TASKS
    if box <= 0:
        micro, seq = _PLANS[task][12]
        micro = min(micro, 32)
        plan = None
    else:
        plan = max([b for b in PLAN_BOXES_GB if b <= box] or [PLAN_BOXES_GB[0]])
        micro, seq = _PLANS[task][plan]
        if box < plan:  # below the smallest plan: shrink the micro-batch with the memory
            micro = _pow2_floor(micro * box / plan)
        reasons.append(f"{vram_gb:.2f} GiB reported: a {box:g} GB card, the {plan} GB plan")
        if task in _QLORA_TASKS and plan == 8:
            reasons.append(f"max length {seq}: on a card under 12 GB the 2048-token activations and logits do not "
                           "fit next to the 4-bit model")
        if four_bit and box >= SIXTEEN_BIT_FROM_GB and task not in _QLORA_TASKS:
            four_bit = False
            reasons.append(f"16-bit weights: a 7-8B model (~15 GiB) fits in 16-bit on a card of {SIXTEEN_BIT_FROM_GB} GB or more")
    micro = min(_pow2_floor(micro), effective)
    if four_bit:
        reasons.append("4-bit NF4 weights: a 7-8B model needs ~15 GiB in 16-bit but ~5 GiB in 4-bit")
    if ckpt:
        reasons.append("gradient checkpointing: recompute activations in backward instead of storing them")
    accumulation = effective // micro
    if accumulation > 1:
        reasons.append(f"gradient accumulation {accumulation}: effective batch {micro * accumulation} from micro-batch {micro}")
    return SafeDefaults(device, dtype, scaler, micro, accumulation, ckpt, four_bit, seq, tuple(reasons))
