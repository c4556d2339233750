"""Smoke stand-ins for lesson 13: a tiny SDXL pipeline of the real classes (two CLIP text encoders, a UNet with SDXL's
``text_time`` conditioning), built from configs with random weights, offline."""

from __future__ import annotations

import tempfile
from typing import Any


def build_tiny_sdxl_pipeline(image_size: int = 32, seed: int = 0) -> Any:
    """A ~2 M-parameter ``StableDiffusionXLPipeline`` with random weights.

    SDXL's structure at a small scale: two text encoders (``CLIPTextModel`` and ``CLIPTextModelWithProjection``)
    whose hidden states are concatenated for cross-attention, the pooled text embedding and the size/crop "time ids"
    added to the timestep embedding (``addition_embed_type="text_time"``), a VAE with SDXL's scaling factor.
    The VAE's ``sample_size`` is ``image_size``: images larger than that are decoded in tiles when tiling is on.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from course_utils.smoke.diffusion import build_clip_tokenizer

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=77, projection_dim=32, hidden_act="gelu", bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids x 8 + the pooled text (32)
            cross_attention_dim=64,  # the two encoders' hidden states side by side (32 + 32)
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            sample_size=image_size, scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
