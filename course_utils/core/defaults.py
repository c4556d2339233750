"""Memory-safe defaults for a task on a card, with the rule behind each choice written down.

The rules, in the order the course applies them when memory is short:

1. Precision: bf16 where the card supports it (Ampere and newer: no loss scaling needed); fp16 with a GradScaler
   on older cards; fp32 on the CPU (CPU half precision is slow and poorly supported).
2. 7-8B language models load in 4-bit NF4 (weights ~5 GiB instead of ~15 GiB in 16-bit).
3. Fine-tune large models with LoRA/QLoRA, never a full fine-tune on 12 GB.
4. Gradient checkpointing on for LLM/diffusion training (trades ~30 % speed for most activation memory).
5. Keep the micro-batch small and reach the effective batch with gradient accumulation.
6. Use SDPA / flash attention (PyTorch picks the fastest available kernel).
7. Keep context at 2-8k tokens; 2048 for training on 12 GB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from course_utils.core.errors import BadParameter

Task = Literal[
    "cnn-train", "gpt-train", "llm-inference", "llm-qlora", "rag", "yolo-train", "sd-inference", "sd-lora",
    "whisper-finetune", "vlm-inference", "vlm-qlora",
]

# task -> (micro-batch per 12 GB, effective batch, max sequence length, gradient checkpointing, 4-bit)
_RULES: dict[str, tuple[int, int, int | None, bool, bool]] = {
    "cnn-train": (512, 512, None, False, False),
    "gpt-train": (64, 64, 256, False, False),
    "llm-inference": (1, 1, 4096, False, True),
    "llm-qlora": (1, 16, 2048, True, True),
    "rag": (1, 1, 4096, False, True),
    "yolo-train": (16, 64, None, False, False),
    "sd-inference": (1, 1, 77, False, False),
    "sd-lora": (1, 4, 77, True, False),
    "whisper-finetune": (8, 16, 448, True, False),
    "vlm-inference": (1, 1, 2048, False, True),
    "vlm-qlora": (1, 8, 1024, True, True),
}


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
    """Defaults for ``task`` on the current card (or on a card of ``vram_gb`` GiB with/without ``bf16``).

    ``vram_gb=0`` means the CPU. Memory-bound settings scale with the card relative to the 12 GB reference.
    """
    if task not in _RULES:
        raise BadParameter(f"Unknown task {task!r}; choose one of: {', '.join(_RULES)}.")
    if vram_gb is None or bf16 is None:
        from course_utils.core.gpu import gpu_report

        report = gpu_report()
        vram_gb = report.total_vram_gb if vram_gb is None else vram_gb
        bf16 = report.bf16_supported if bf16 is None else bf16
    micro, effective, seq, ckpt, four_bit = _RULES[task]
    reasons: list[str] = []
    if vram_gb <= 0:
        device, dtype, scaler = "cpu", "float32", False
        reasons.append("CPU: fp32 (half precision on a CPU is slow and poorly supported)")
    elif bf16:
        device, dtype, scaler = "cuda", "bfloat16", False
        reasons.append("bf16: supported by this card, same range as fp32 so no loss scaling")
    else:
        device, dtype, scaler = "cuda", "float16", True
        reasons.append("fp16 + GradScaler: this card has no bf16")
    if vram_gb > 0:
        scale = vram_gb / 12.0
        if scale < 1:
            micro = max(1, int(micro * scale))
            if seq and task in ("llm-qlora", "vlm-qlora") and vram_gb < 10:
                seq = 1024
                reasons.append(f"max length {seq}: under 10 GiB the 2048-token activations do not fit with the model")
        if vram_gb >= 20 and task in ("llm-inference", "rag", "vlm-inference"):
            four_bit = False
            reasons.append("16-bit weights: a 7-8B model fits in 16-bit on a card of 20 GiB or more")
    else:
        micro = min(micro, 32)
    if four_bit:
        reasons.append("4-bit NF4 weights: a 7-8B model needs ~15 GiB in 16-bit but ~5 GiB in 4-bit")
    if ckpt:
        reasons.append("gradient checkpointing: recompute activations in backward instead of storing them")
    accumulation = max(1, effective // micro)
    if accumulation > 1:
        reasons.append(f"gradient accumulation {accumulation}: effective batch {micro * accumulation} from micro-batch {micro}")
    return SafeDefaults(device, dtype, scaler, micro, accumulation, ckpt, four_bit, seq, tuple(reasons))
