"""Measure what the course's heavy full-mode configurations really need on a GPU capped to what a 12 GB card leaves.

Real architectures built from their published config values with random weights (no download): memory and speed
are real, accuracy is not claimed. Prints one JSON line per measurement and writes them all to --out.

A "12 GB" card has 11.99 GiB in all (:data:`CARD_TOTAL_GIB`), and the CUDA context takes its share of that before
PyTorch allocates anything. On a bigger card the script caps PyTorch's allocator at 11.99 GiB minus the context it
measured, and also reads the device's used memory from NVML (what nvidia-smi shows: the context, PyTorch's pool and
what bitsandbytes' paged optimizer and the CUDA libraries hold outside it), sampled for its peak: ``nvml_peak_gb``
is this process's peak on the card, and ``fits_12gb_card`` says whether a real 12 GB card would have held it.

    python benchmarks/gpu_receipts.py --out receipts.json llm whisper sd
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from course_utils.core import memory  # noqa: E402

from course_utils.core.gpu import bf16_native  # noqa: E402
from course_utils.core.memory import GIB  # noqa: E402

#: All the memory a "12 GB" card has (an RTX 4070 Ti / 3060 12 GB reports 12,282 MiB), the CUDA context included.
CARD_TOTAL_GIB = 11.99
#: Free memory above which the random 8B checkpoint is built on the GPU (16 GB in bf16), else in CPU RAM.
BUILD_ON_GPU_GIB = 20.0
RESULTS: list[dict] = []


class DeviceMemory:
    """The card's used memory as NVML reports it (``torch.cuda.device_memory_used``: nvidia-smi's "used"), sampled in
    a thread for its peak. ``baseline`` is what was in use before this process touched the card (other processes), so
    :meth:`peak_gb` is this process's own peak: the CUDA context, PyTorch's pool and everything outside it."""

    def __init__(self, read=None, interval_s: float = 0.002):
        self.read = read or (lambda: torch.cuda.device_memory_used(0))  # an index: asks NVML, not CUDA
        self.interval_s = interval_s
        self.baseline = self.peak = self.read()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.read())

    def start(self) -> DeviceMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.read())

    def reset(self) -> None:
        self.peak = self.read()

    def used_gb(self) -> float:
        return (self.read() - self.baseline) / GIB

    def peak_gb(self) -> float:
        self.peak = max(self.peak, self.read())
        return (self.peak - self.baseline) / GIB


NVML: DeviceMemory | None = None  # set in main(), before the CUDA context exists
CONTEXT_GIB = 0.0  # what the CUDA context (and CUDA's own buffers) took on the card, measured in main()


def allocator_fraction(total_bytes: int, context_gib: float, card_gib: float = CARD_TOTAL_GIB) -> float:
    """The share of this card PyTorch's allocator may use so that allocator + context stay within a ``card_gib`` card."""
    return max(0.0, min(1.0, (card_gib - context_gib) * GIB / total_bytes))


def cap_card() -> None:
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(allocator_fraction(total, CONTEXT_GIB))
    torch.cuda.reset_peak_memory_stats()
    if NVML is not None:
        NVML.reset()


def uncap() -> None:
    torch.cuda.set_per_process_memory_fraction(1.0)


def emit(**row) -> None:
    row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    if NVML is not None:  # the whole process on the card: context + pool + paged and library buffers
        row["nvml_peak_gb"] = round(NVML.peak_gb(), 2)
        row["fits_12gb_card"] = row["nvml_peak_gb"] <= CARD_TOTAL_GIB
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def amp(dtype: torch.dtype | None = None) -> tuple[torch.dtype, torch.amp.GradScaler]:
    """The autocast dtype and its gradient scaler: bf16 where the card computes it natively (no scaler needed), else
    fp16 with a GradScaler (fp16 gradients underflow without one). ``dtype`` forces one."""
    dtype = dtype or (torch.bfloat16 if bf16_native(0) else torch.float16)
    return dtype, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and torch.cuda.is_available())


def train_step(loss_fn, opt, dtype: torch.dtype, scaler, device_type: str = "cuda") -> torch.Tensor:
    """One mixed-precision step: forward under autocast, backward and step through ``scaler`` (a no-op when disabled)."""
    with torch.autocast(device_type, dtype=dtype):
        loss = loss_fn()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def mean_step_seconds(loss_fn, opt, steps: int) -> float:
    """Run ``steps`` mixed-precision training steps (:func:`amp`); mean seconds per step, the first (warm-up) left out."""
    dtype, scaler = amp()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(loss_fn, opt, dtype, scaler)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / len(times[1:])


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
                       eos_token_id=128009)


def random_checkpoint(folder: Path, device: str | None = None) -> Path:
    """Save a random Llama-3.1-8B-shaped checkpoint (bf16) once, so loading goes through from_pretrained.

    Built in bf16 from the start (16 GB; fp32 would be 32 GB), on the GPU when it has room, else in CPU RAM."""
    from transformers import LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    if device is None:
        uncap()
        device = "cuda" if torch.cuda.mem_get_info(0)[0] / GIB >= BUILD_ON_GPU_GIB else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama_config(), dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def bench_llm(workdir: Path) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    ckpt = random_checkpoint(workdir / "llama8b")
    shape = memory.LLAMA_3_1_8B
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    cap_card()
    model = AutoModelForCausalLM.from_pretrained(ckpt, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0})
    model.generation_config.eos_token_id = None
    emit(lesson="05", what="Llama-3.1-8B nf4: weights loaded", footprint_gb=round(model.get_memory_footprint() / GIB, 2),
         estimate_weights_gb=round(memory.weights_gb(shape, 4), 2))
    for ctx in (512, 4096):
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, 128000, (1, ctx), device="cuda")
        model.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        new = 128
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        est = memory.estimate_inference_vram(shape, 4, seq_len=ctx + new)
        emit(lesson="05", what=f"Llama-3.1-8B nf4 generate, context {ctx} + {new}", tokens_per_s=round(new / seconds, 1),
             estimate_gb=round(est.peak_vram_gb, 2), estimate_card_gb=round(est.total_gb, 2))
    # batch generation
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, 128000, (8, 256), device="cuda")
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    torch.cuda.synchronize()
    emit(lesson="05", what="Llama-3.1-8B nf4 batch 8 x (256 + 64)", tokens_per_s=round(8 * 64 / (time.perf_counter() - start), 1),
         estimate_gb=round(memory.estimate_inference_vram(shape, 4, seq_len=320, batch_size=8).peak_vram_gb, 2))
    del model
    torch.cuda.empty_cache()
    for prepare in (False, True):
        bench_qlora(ckpt, quant, prepare)


def bench_qlora(ckpt: Path, quant, prepare: bool, seq: int = 2048, steps: int = 4) -> None:
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    cap_card()
    model = AutoModelForCausalLM.from_pretrained(ckpt, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0})
    if prepare:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(0, 128000, (1, seq), device="cuda")
    seconds = mean_step_seconds(lambda: model(input_ids=ids, labels=ids).loss, opt, steps)
    est = memory.estimate_training_vram(memory.LLAMA_3_1_8B, "qlora", seq_len=seq)
    emit(lesson="06", what=f"QLoRA 8B seq {seq} batch 1, r16 all-linear, ckpt, paged AdamW 8-bit"
         + (", prepare_model_for_kbit_training" if prepare else ", no fp32 upcast"),
         tokens_per_s=round(seq / seconds, 1), estimate_gb=round(est.peak_vram_gb, 2), estimate_card_gb=round(est.total_gb, 2))
    del model, opt
    torch.cuda.empty_cache()


def bench_whisper(batch: int = 8, label_len: int = 128, steps: int = 4) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cap_card()
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=768, encoder_layers=12, decoder_layers=12,
                           encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                           decoder_ffn_dim=3072, max_source_positions=1500, max_target_positions=448)
    model = WhisperForConditionalGeneration(config).cuda()
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    feats = torch.randn(batch, 80, 3000, device="cuda")
    labels = torch.randint(0, 50000, (batch, label_len), device="cuda")
    seconds = mean_step_seconds(lambda: model(input_features=feats, labels=labels).loss, opt, steps)
    n = sum(p.numel() for p in model.parameters())
    emit(lesson="10", what=f"whisper-small fine-tune, batch {batch}, labels {label_len}, {amp()[0]} autocast, ckpt, AdamW",
         params_m=round(n / 1e6, 1), it_per_s=round(1 / seconds, 2))
    del model, opt
    torch.cuda.empty_cache()


def sd15_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    return unet, vae, text


def bench_sd(steps: int = 6) -> None:
    import bitsandbytes as bnb
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from transformers import CLIPTokenizer  # noqa: F401  (tokenizer not needed: we feed ids)

    cap_card()
    unet, vae, text = sd15_parts()
    n = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    unet, vae, text = (m.to("cuda", torch.float16) for m in (unet, vae, text))
    # Part 1: inference 512x512, 25 DPM-Solver++ steps, fp16
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", algorithm_type="dpmsolver++")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    emb = torch.randn(1, 77, 768, device="cuda", dtype=torch.float16)
    pipe(prompt_embeds=emb, negative_prompt_embeds=emb, num_inference_steps=2, output_type="latent")
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(prompt_embeds=emb, negative_prompt_embeds=emb, num_inference_steps=25, height=512, width=512, output_type="np")
    torch.cuda.synchronize()
    emit(lesson="09", what="SD 1.5 fp16 512x512, 25 DPM-Solver++ steps, CFG", params_m=round(n / 1e6),
         seconds_per_image=round(time.perf_counter() - start, 2))
    # Part 2: LoRA training step the train_text_to_image_lora.py way
    torch.cuda.reset_peak_memory_stats()
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(params, lr=1e-4)
    dtype, scaler = amp(torch.float16)  # diffusers' LoRA script in fp16: fp32 LoRA weights, a GradScaler
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pixels = torch.randn(1, 3, 512, 512, device="cuda", dtype=torch.float16)
    ids = torch.randint(0, 49407, (1, 77), device="cuda")
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * 0.18215
            cond = text(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,), device="cuda")
        noisy = noise_sched.add_noise(latents, noise, t)
        train_step(lambda: torch.nn.functional.mse_loss(unet(noisy, t, cond).sample.float(), noise.float()),
                   opt, dtype, scaler)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    emit(lesson="09", what="SD 1.5 LoRA r8 training step 512px batch 1, fp16 + GradScaler, ckpt, AdamW 8-bit",
         trainable_m=round(sum(p.numel() for p in params) / 1e6, 2), it_per_s=round(1 / (sum(times[1:]) / len(times[1:])), 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("parts", nargs="+", choices=("llm", "whisper", "sd"))
    parser.add_argument("--out", type=Path, default=Path("receipts.json"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/receipts"))
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    global NVML, CONTEXT_GIB
    try:
        NVML = DeviceMemory()  # before the context exists: the baseline is the other processes' memory
    except Exception as err:  # no nvidia-ml-py: the allocator's figures only, and say so
        print(json.dumps({"nvml": f"unavailable ({type(err).__name__}: {err}); nvml_peak_gb not measured"}), flush=True)
    torch.empty(1, device="cuda")  # creates the CUDA context
    props = torch.cuda.get_device_properties(0)
    if NVML is not None:
        CONTEXT_GIB = max(0.0, NVML.used_gb() - torch.cuda.memory_reserved(0) / GIB)
        NVML.start()
    else:
        CONTEXT_GIB = memory.CUDA_CONTEXT_GB  # the estimator's figure
    header = {"gpu": props.name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "card_total_gib": CARD_TOTAL_GIB, "cuda_context_gib": round(CONTEXT_GIB, 3),
              "allocator_cap_gib": round(allocator_fraction(props.total_memory, CONTEXT_GIB) * props.total_memory / GIB, 3),
              "nvml": NVML is not None, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(header), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        try:
            {"llm": lambda: bench_llm(args.workdir), "whisper": bench_whisper, "sd": bench_sd}[part]()
        except Exception as err:  # keep measuring the other parts
            RESULTS.append({"part": part, "error": f"{type(err).__name__}: {err}"[:500]})
            print(json.dumps(RESULTS[-1]), flush=True)
        finally:
            torch.cuda.empty_cache()
        args.out.write_text(json.dumps({"header": header, "results": RESULTS}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
