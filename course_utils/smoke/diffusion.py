"""Smoke-mode stand-ins for lesson 09: a tiny Stable Diffusion pipeline of SD 1.5's classes, the real CLIP tokenizer
rebuilt offline, and generated captioned shapes ("a red circle on a blue background").

The tiny pipeline (~3 M parameters, random weights) is built once, saved with ``save_pretrained`` under the course
cache, and loaded by ``course_utils.topics.diffusion.load_sd_pipeline`` with the very
``StableDiffusionPipeline.from_pretrained`` call full mode makes with the hub id. The CLIP tokenizer comes from the
BPE vocabulary that ``open_clip_torch`` ships (49,408 ids, identical to SD 1.5's).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from course_utils.core.errors import BadParameter, MissingData
from course_utils.core.paths import atomic_dir, cache_dir
from course_utils.smoke.shapes import COLORS, SHAPES
from course_utils.smoke.shapes import draw_shape as _draw
from course_utils.topics.spec import SD15_SCHEDULER_CONFIG

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

TINY_SD_NAME = "tiny-sd15-v2"  # bump when the tiny configs change so old caches are not reused


# --------------------------------------------------------------------------------------------- tokenizer
def clip_bpe_files(folder: str | Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` (49,408 ids) from open_clip's shipped BPE vocabulary.

    The layout is CLIP's own (and open_clip's ``SimpleTokenizer``'s): 256 byte symbols, the same 256 with the
    end-of-word mark ``</w>``, the 48,894 merges in rank order, then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    path = Path(default_bpe())
    if not path.exists():
        raise MissingData("open_clip's BPE vocabulary is missing: reinstall the course's packages with `make setup`.")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(folder: str | Path) -> Any:
    """SD 1.5's tokenizer (``CLIPTokenizer``, 77 tokens, pad = ``<|endoftext|>``) built without a download."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = clip_bpe_files(folder)
    return CLIPTokenizer(
        str(vocab_file), str(merges_file), model_max_length=77, bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


# --------------------------------------------------------------------------------------------- pipelines
def build_tiny_sd_pipeline(image_size: int = 32, seed: int = 0) -> Any:
    """A ~3 M-parameter ``StableDiffusionPipeline`` of SD 1.5's classes with random weights (for smoke mode).

    The shapes mirror SD 1.5 at a small scale: cross-attention blocks at the high resolution, a plain block at
    the low one, the VAE with 4 latent channels and SD's scaling factor, CLIP's text model with its 49,408-token
    vocabulary. The VAE downsamples by 4 (SD's by 8), so 32-px images become 8x8 latents (SD: 512 px -> 64x64).
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):  # same weights every build, without touching the caller's RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            sample_size=image_size, scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_random_sd15(folder: str | Path, seed: int = 0) -> Path:
    """SD 1.5's exact architecture (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text 123 M) with random weights, in fp16.

    For measuring memory and speed on a GPU that cannot download the real weights: the folder is saved with the
    ``fp16`` weight variant, so the lesson's full-mode call loads it as it loads the hub model
    (``MODEL_ID = folder``, ``REVISION = None``). It has no safety checker (the hub model's adds ~0.6 GB in fp16).
    Building takes ~1 min and ~4 GB of RAM; the folder is ~2 GB.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(  # SD 1.5's unet/config.json
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
        )
        vae = AutoencoderKL(  # SD 1.5's vae/config.json
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512, scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text model
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(tmp)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(dtype=torch.float16)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, variant="fp16")
    return Path(folder)


def write_captioned_folder(folder: str | Path, n: int = 100, size: int = 512, seed: int = 0) -> Path:
    """Write ``n`` generated shapes as ``NNNN.png`` + ``NNNN.txt`` caption pairs: the layout ``DATA_DIR`` expects."""
    with atomic_dir(folder) as tmp:
        for i, item in enumerate(make_shapes_dataset(n, size, seed)):
            item.image.save(tmp / f"{i:04d}.png")
            (tmp / f"{i:04d}.txt").write_text(item.caption + "\n", encoding="utf-8")
    return Path(folder)


def tiny_sd_folder(image_size: int = 32) -> Path:
    """The smoke pipeline's folder in the course cache, built on first use (~2 s) and written atomically."""
    path = cache_dir() / f"{TINY_SD_NAME}-{image_size}px"
    if (path / "model_index.json").exists():
        return path
    pipe = build_tiny_sd_pipeline(image_size)
    with atomic_dir(path) as tmp:
        pipe.save_pretrained(tmp)
    return path


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CaptionedShape:
    """One generated picture and what is in it (the caption is built from the other fields)."""

    image: Image.Image
    caption: str
    shape: str
    color: str
    background: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the shape, inclusive pixels


def draw_shape(shape: str, color: str, background: str, box: tuple[int, int, int, int], size: int) -> Image.Image:
    """One flat shape on a flat background (PIL, no anti-aliasing so every pixel is one of the two colours)."""
    from PIL import Image, ImageDraw

    if shape not in SHAPES or color not in COLORS or background not in COLORS:
        raise BadParameter(f"Unknown shape/colour {shape!r}/{color!r}/{background!r}; shapes: {SHAPES}, colours: {tuple(COLORS)}.")
    image = Image.new("RGB", (size, size), COLORS[background])
    draw = ImageDraw.Draw(image)
    _draw(draw, shape, box, COLORS[color])
    return image


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_shapes_dataset(n: int = 24, size: int = 32, seed: int = 0) -> list[CaptionedShape]:
    """``n`` captioned pictures like "a red circle on a blue background", the same for the same seed.

    Shapes cover 50-80 % of the side, roughly centred, so a caption stays true under a horizontal flip and a
    centre crop (the augmentations of diffusers' LoRA script).
    """
    import numpy as np

    if n < 1 or size < 16:
        raise BadParameter(f"make_shapes_dataset needs n >= 1 and size >= 16 (got n={n}, size={size}).")
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    items = []
    for _ in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color, background = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        side = int(size * rng.uniform(0.5, 0.8))
        x0 = int(rng.integers((size - side) // 4, size - side - (size - side) // 4 + 1))
        y0 = int(rng.integers((size - side) // 4, size - side - (size - side) // 4 + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        image = draw_shape(shape, color, background, box, size)
        caption = f"{_article(color)} {color} {shape} on {_article(background)} {background} background"
        items.append(CaptionedShape(image, caption, shape, color, background, box))
    return items


