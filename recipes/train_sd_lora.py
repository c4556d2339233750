#!/usr/bin/env python
"""Train a Stable Diffusion 1.5 LoRA on a folder of captioned images (lesson 09 of the course, as one script).

The data format: a folder where every image has a caption file of the same name (``cat.png`` + ``cat.txt``).
A few images are held out (``--num_heldout``) and never trained on: the noise-prediction loss on them, with fixed
noise and timesteps, is measured before and after training. The LoRA goes on the UNet's attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``), like diffusers' ``train_text_to_image_lora.py``, whose flags this script
keeps. Needs only pip packages: torch, torchvision, diffusers, transformers, peft, safetensors (bitsandbytes for
``--use_8bit_adam``).

    python train_sd_lora.py --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir my_images --resolution 512 --rank 8 --learning_rate 1e-4 --max_train_steps 600 \\
        --train_batch_size 1 --gradient_accumulation_steps 4 --mixed_precision fp16 --gradient_checkpointing \\
        --use_8bit_adam --seed 0 --output_dir sd-lora

Writes ``<output_dir>/pytorch_lora_weights.safetensors`` (load it with ``pipe.load_lora_weights(output_dir)``) and
``<output_dir>/metrics.json``, each atomically (a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

# Copied from notebooks/09_sd15_lora.ipynb#fc7a0fa0:IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Copied from notebooks/09_sd15_lora.ipynb#6a3de5d9:LORA_TARGET_MODULES
LORA_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]


# ------------------------------------------------------------------ the same functions as the lesson's cells
# Copied from notebooks/09_sd15_lora.ipynb#fc7a0fa0:read_caption_folder
def read_caption_folder(folder):
    """(image path, caption) pairs from a folder where each image has a same-name .txt caption: cat.png + cat.txt."""
    pairs = []
    for image_path in sorted(Path(folder).iterdir()):
        if image_path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        caption_path = image_path.with_suffix(".txt")
        if not caption_path.exists():
            raise FileNotFoundError(f"{image_path.name} has no caption: write one in {caption_path.name} next to it")
        pairs.append((image_path, caption_path.read_text(encoding="utf-8").strip()))
    if len(pairs) < 3:
        raise ValueError(f"found {len(pairs)} captioned images in {folder}; a LoRA needs at least 3 (20-150 is useful)")
    return pairs


# Copied from notebooks/09_sd15_lora.ipynb#fc7a0fa0:split_heldout
def split_heldout(pairs, num_heldout, seed):
    """Shuffle the pairs with a seed and keep the last ``num_heldout`` apart: they are never trained on."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    train = [pairs[i] for i in order[: len(pairs) - num_heldout]]
    heldout = [pairs[i] for i in order[len(pairs) - num_heldout:]]
    return train, heldout


def unet_lora_config(rank):
    """LoRA on the UNet's attention projections; B starts at zero, so training starts from the base model."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGET_MODULES)


def noise_prediction_loss(unet, text_encoder, noise_scheduler, latents, input_ids, noise, timesteps):
    """Diffusion training: noise the latents to `timesteps`, ask the UNet for the noise, score it by MSE."""
    import torch.nn.functional as F

    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids.to(latents.device), return_dict=False)[0]
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    return F.mse_loss(model_pred.float(), noise.float(), reduction="mean")


# Copied from course_utils/core/gpu.py:bf16_native
def bf16_native(device: object = None) -> bool:
    """The course's one bf16 rule: bf16 only where the card computes it natively, compute capability 8.0 (Ampere) or
    newer. ``torch.cuda.is_bf16_supported()`` also says yes on a T4 or an RTX 20xx (it counts emulation), where bf16
    is slow and Ultralytics refuses it; those cards get fp16 with a gradient scaler. ``device`` is a CUDA device (index,
    ``"cuda:1"``, ``torch.device``) or None for the current one; a CPU device, or no GPU, is False."""
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None:
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if device.type != "cuda":
            return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


# ------------------------------------------------------------------ the script
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model_name_or_path", required=True,
                   help="hub id (stable-diffusion-v1-5/stable-diffusion-v1-5) or a local folder saved by save_pretrained")
    p.add_argument("--revision", default=None, help="hub commit to pin the weights to (recommended)")
    p.add_argument("--variant", default=None, help="weight variant to download, e.g. fp16 (half the download)")
    p.add_argument("--train_data_dir", required=True, help="folder of images, each with a same-name .txt caption")
    p.add_argument("--num_heldout", type=int, default=4, help="images kept apart to measure the loss on (never trained on)")
    p.add_argument("--resolution", type=int, default=512, help="images are resized and centre-cropped to this (SD 1.5: 512)")
    p.add_argument("--random_flip", action="store_true", help="flip images left-right at random (free extra data)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank: 4-16 for a style or a subject")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW learning rate (1e-4 for SD 1.5)")
    p.add_argument("--max_train_steps", type=int, default=600, help="optimizer steps")
    p.add_argument("--train_batch_size", type=int, default=1, help="micro-batch per step (1 on a 12 GB card)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="fp16",
                   help="dtype of the frozen weights and of autocast on a GPU (ignored on a CPU: fp32)")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    p.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes AdamW8bit: a quarter of AdamW's state memory")
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    p.add_argument("--validation_steps", type=int, default=None, help="held-out loss every N steps (default: 10 times a run)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the noise and the LoRA's initialisation")
    p.add_argument("--output_dir", required=True, help="where pytorch_lora_weights.safetensors and metrics.json go")
    args = p.parse_args(argv)
    if args.max_train_steps < 1 or args.train_batch_size < 1 or args.gradient_accumulation_steps < 1 or args.rank < 1:
        p.error("--max_train_steps, --train_batch_size, --gradient_accumulation_steps and --rank must be >= 1")
    return args


# Copied from recipes/train_llava_qlora.py:write_json_atomically
def write_json_atomically(path, data):
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2)
    os.replace(handle.name, path)


def save_lora_atomically(unet, output_dir):
    """The LoRA matrices in diffusers' format, as one .safetensors file written whole or not at all."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, safe_serialization=True)
        target = Path(output_dir) / "pytorch_lora_weights.safetensors"
        os.replace(Path(tmp) / "pytorch_lora_weights.safetensors", target)
    return target


def main(argv=None):
    args = parse_args(argv)
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    if device == "cpu" and weight_dtype != torch.float32:
        print(f"no GPU: --mixed_precision {args.mixed_precision} ignored, training in fp32")
        weight_dtype = torch.float32
    if weight_dtype == torch.bfloat16 and not bf16_native():
        raise SystemExit(f"--mixed_precision bf16 needs a card that computes bf16 natively (compute capability 8.0+); "
                         f"the {torch.cuda.get_device_name()} would emulate it slowly: use --mixed_precision fp16.")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # The data: images with same-name captions; a held-out part never trained on.
    pairs = read_caption_folder(args.train_data_dir)
    if not 1 <= args.num_heldout < len(pairs):
        raise SystemExit(f"--num_heldout must be between 1 and {len(pairs) - 1} for {len(pairs)} images")
    train_pairs, heldout_pairs = split_heldout(pairs, args.num_heldout, args.seed)
    print(f"{len(train_pairs)} training and {len(heldout_pairs)} held-out captioned images from {args.train_data_dir}")

    # The model: SD 1.5's parts, frozen, in the training dtype.
    load = {"revision": args.revision, "variant": args.variant}
    path = args.pretrained_model_name_or_path
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=args.revision)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **load)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **load)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load)
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", revision=args.revision)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
        model.to(device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config(args.rank))
    cast_training_params(unet, dtype=torch.float32)  # trainable LoRA weights in fp32, frozen base in fp16/bf16
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    n_lora_params = sum(p.numel() for p in params)
    print(f"LoRA rank {args.rank}: {n_lora_params:,} trainable parameters")
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=args.learning_rate, weight_decay=1e-2)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(device, enabled=weight_dtype == torch.float16)

    eval_transforms = transforms.Compose([
        transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
    ])
    train_transforms = transforms.Compose([transforms.RandomHorizontalFlip()] * args.random_flip + [eval_transforms])

    def tokenize(texts):
        return tokenizer(texts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids

    def encode(pixel_values, sample=True):
        dist = vae.encode(pixel_values.to(device, dtype=weight_dtype)).latent_dist
        return (dist.sample() if sample else dist.mode()) * vae.config.scaling_factor

    def autocast():
        return torch.autocast(device_type=device, dtype=weight_dtype, enabled=weight_dtype != torch.float32)

    # The held-out loss: fixed images, noise and timesteps, so only the weights can change it.
    heldout_images = [Image.open(p).convert("RGB") for p, _ in heldout_pairs]
    with torch.no_grad():
        eval_latents = encode(torch.stack([eval_transforms(im) for im in heldout_images]), sample=False)
    eval_ids = tokenize([c for _, c in heldout_pairs])
    eval_noise = torch.randn(eval_latents.shape, generator=torch.Generator().manual_seed(args.seed)).to(device, weight_dtype)
    eval_timesteps = torch.linspace(50, 950, len(heldout_pairs), device=device).long()

    def heldout_loss():
        unet.eval()
        with torch.no_grad(), autocast():
            return noise_prediction_loss(unet, text_encoder, noise_scheduler, eval_latents, eval_ids, eval_noise,
                                         eval_timesteps).item()

    train_images = [Image.open(p).convert("RGB") for p, _ in train_pairs]
    train_captions = [c for _, c in train_pairs]
    generator = torch.Generator().manual_seed(args.seed)
    eval_every = args.validation_steps or max(1, args.max_train_steps // 10)
    history = {"step": [], "train_loss": [], "eval_step": [0], "eval_loss": [heldout_loss()]}
    print(f"held-out loss before training: {history['eval_loss'][0]:.4f}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(1, args.max_train_steps + 1):
        unet.train()
        step_loss = 0.0
        for _ in range(args.gradient_accumulation_steps):
            idx = torch.randint(len(train_images), (args.train_batch_size,), generator=generator).tolist()
            pixel_values = torch.stack([train_transforms(train_images[i]) for i in idx])
            input_ids = tokenize([train_captions[i] for i in idx])
            with autocast():
                with torch.no_grad():
                    latents = encode(pixel_values)
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
                loss = noise_prediction_loss(unet, text_encoder, noise_scheduler, latents, input_ids, noise, timesteps)
                loss = loss / args.gradient_accumulation_steps
            scaler.scale(loss).backward()
            step_loss += loss.item()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise SystemExit(f"the loss is {step_loss} at step {step}: lower --learning_rate, or use --mixed_precision bf16")
        history["step"].append(step)
        history["train_loss"].append(step_loss)
        if step % eval_every == 0 or step == args.max_train_steps:
            history["eval_step"].append(step)
            history["eval_loss"].append(heldout_loss())
            print(f"step {step}/{args.max_train_steps}: train loss {step_loss:.4f}, held-out loss {history['eval_loss'][-1]:.4f}",
                  flush=True)
    seconds = time.perf_counter() - start

    unet.eval()
    lora_file = save_lora_atomically(unet, output_dir)
    k = max(1, len(history["train_loss"]) // 5)
    metrics = {
        "model": path, "steps": args.max_train_steps, "rank": args.rank, "resolution": args.resolution,
        "train_images": len(train_pairs), "heldout_images": len(heldout_pairs),
        "train_loss_first": sum(history["train_loss"][:k]) / k, "train_loss_last": sum(history["train_loss"][-k:]) / k,
        "eval_loss_before": history["eval_loss"][0], "eval_loss_after": history["eval_loss"][-1],
        "lora_parameters": n_lora_params, "lora_file_bytes": lora_file.stat().st_size,
        "seconds": round(seconds, 2), "images_per_s": round(args.max_train_steps * args.gradient_accumulation_steps
                                                            * args.train_batch_size / seconds, 3),
        "peak_vram_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if device == "cuda" else None,
        "history": history,
    }
    write_json_atomically(output_dir / "metrics.json", metrics)
    print(f"saved {lora_file} ({lora_file.stat().st_size / 1e6:.2f} MB); held-out loss "
          f"{metrics['eval_loss_before']:.4f} -> {metrics['eval_loss_after']:.4f}; {seconds:.1f} s")
    return metrics


if __name__ == "__main__":
    main()
