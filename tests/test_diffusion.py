"""course_utils.topics.diffusion and course_utils.smoke.diffusion: the offline CLIP tokenizer, the tiny SD pipeline, the
captioned folder (generated shapes as image + .txt pairs), LoRA round trips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from course_utils.smoke import diffusion as smoke_diffusion
from course_utils.topics import diffusion
from course_utils.core.errors import BadParameter, MissingData

SAMPLES = [
    "a red circle on a blue background",
    "A photo of an astronaut riding a horse on Mars, 4k, trending on ArtStation!!",
    "don't stop—it's 12:30pm #tags café naïve 日本",
    "   extra   spaces\tand\nnewlines  ",
    "word " * 100,  # longer than 77 tokens: truncated
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return smoke_diffusion.build_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.fixture(scope="module")
def pipe():
    import torch

    threads = torch.get_num_threads()
    p = diffusion.load_sd_pipeline(True, device="cpu")
    p.set_progress_bar_config(disable=True)
    yield p
    torch.set_num_threads(threads)  # smoke loading sets 1 thread; leave the test process as it was


def _without_padding(ids: list[int], eot: int) -> list[int]:
    return ids[: ids.index(eot) + 1]


def test_tokenizer_matches_open_clip(tokenizer):
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()  # open_clip's own CLIP tokenizer: the reference, offline
    assert len(tokenizer) == reference.vocab_size == 49408
    assert tokenizer.bos_token_id == reference.sot_token_id == 49406
    assert tokenizer.eos_token_id == reference.eot_token_id == 49407
    ours = tokenizer(SAMPLES, padding="max_length", max_length=77, truncation=True).input_ids
    theirs = reference(SAMPLES).tolist()  # pads with 0 where SD 1.5's tokenizer pads with <|endoftext|>
    for text, a, b in zip(SAMPLES, ours, theirs):
        assert len(a) == 77, text
        assert _without_padding(a, 49407) == _without_padding(b, 49407), f"token ids differ for {text!r}"
        assert set(a[len(_without_padding(a, 49407)):]) <= {49407}, "SD 1.5 pads with <|endoftext|>"
    assert ours[0][:9] == [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407]


def test_tiny_pipeline_is_sd15_shaped_and_cached(pipe):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = smoke_diffusion.tiny_sd_folder()
    assert (folder / "model_index.json").exists()
    assert smoke_diffusion.tiny_sd_folder() == folder  # built once, then reused
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert len(pipe.tokenizer) == pipe.text_encoder.config.vocab_size == 49408
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer.pad_token_id == 49407
    assert pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.num_train_timesteps == 1000
    image = pipe("a red circle on a blue background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_full_mode_offline_says_what_to_do():
    # conftest sets HF_HUB_OFFLINE=1 and an empty HF_HOME: the weights cannot be there
    with pytest.raises(MissingData, match="smoke mode"):
        diffusion.load_sd_pipeline(False, device="cpu")
    with pytest.raises(MissingData, match="DATA_DIR"):
        diffusion.caption_folder(None, smoke=False, n=4)


def test_shapes_are_deterministic():
    a, b = smoke_diffusion.make_shapes_dataset(12, 32, seed=3), smoke_diffusion.make_shapes_dataset(12, 32, seed=3)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    c = smoke_diffusion.make_shapes_dataset(12, 32, seed=4)
    assert [x.caption for x in a] != [x.caption for x in c]
    folder = diffusion.caption_folder(None, smoke=True, n=12, size=32, seed=3)
    assert diffusion.caption_folder(None, smoke=True, n=12, size=32, seed=3) == folder, "written once, then reused"
    captions = [t.read_text().strip() for t in sorted(folder.glob("*.txt"))]
    assert captions == [x.caption for x in a] and len(list(folder.glob("*.png"))) == 12


@pytest.mark.parametrize("size", [32, 64, 512])
def test_captions_match_the_drawn_content(size):
    expected_fill = {"circle": (0.70, 0.86), "square": (0.97, 1.0), "triangle": (0.40, 0.62)}
    for item in smoke_diffusion.make_shapes_dataset(30, size, seed=1):
        a, b = ("an" if w[0] in "aeiou" else "a" for w in (item.color, item.background))
        assert item.caption == f"{a} {item.color} {item.shape} on {b} {item.background} background"
        pixels = np.asarray(item.image)
        assert pixels.shape == (size, size, 3)
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 < size and 0 <= y0 < y1 < size, "the shape must lie inside the image"
        codes = np.unique((pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2])
        named = {(r << 16) | (g << 8) | b for r, g, b in (smoke_diffusion.COLORS[item.color], smoke_diffusion.COLORS[item.background])}
        assert set(codes.tolist()) == named, "exactly the two named colours"
        is_shape = np.all(pixels == smoke_diffusion.COLORS[item.color], axis=-1)
        ys, xs = np.nonzero(is_shape)
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1, "shape pixels stay in its box"
        fill = is_shape[y0 : y1 + 1, x0 : x1 + 1].mean()
        low, high = expected_fill[item.shape]
        assert low <= fill <= high, f"{item.caption}: fills {fill:.2f} of its box, a {item.shape} should fill {low}-{high}"
        assert is_shape[(y0 + y1) // 2 + (y1 - y0) // 4, (x0 + x1) // 2], "the shape's centre area has the shape's colour"


def test_caption_folder_returns_the_learners_folder_or_says_what_to_do(tmp_path):
    with pytest.raises(MissingData, match="does not exist"):
        diffusion.caption_folder(tmp_path / "nowhere", smoke=True)
    assert diffusion.caption_folder(tmp_path, smoke=True) == tmp_path, "DATA_DIR wins over the generated set"
    with pytest.raises(BadParameter):
        smoke_diffusion.make_shapes_dataset(0, 32)
    assert re.fullmatch(r"[0-9a-f]{40}", diffusion.CAPTION_DATASET_REVISION), "the default caption set is pinned"
    with pytest.raises(BadParameter, match="not pinned"):  # before any download
        diffusion.caption_folder(None, smoke=False, n=4, revision="main")


def test_lora_save_reload_changes_output_and_unload_restores_base(pipe, tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from course_utils.core.paths import atomic_dir

    def sample():
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red circle on a blue background", num_inference_steps=2, generator=generator, output_type="np").images[0]

    base = sample()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name="t")
    assert np.array_equal(sample(), base), "a fresh LoRA (B = 0) must not change the output"
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # stand-in for training
    with_lora = sample()
    assert np.abs(with_lora - base).max() > 1e-3, "the LoRA must change the output"

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="t"))
    with atomic_dir(tmp_path / "lora") as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, safe_serialization=True)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"

    pipe.unload_lora_weights()
    assert np.array_equal(sample(), base), "unloading must restore the base output exactly"
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="reloaded")
    assert np.allclose(sample(), with_lora, atol=1e-6), "the reloaded LoRA must reproduce the saved one"
    pipe.set_adapters(["reloaded"], adapter_weights=[0.0])
    assert np.allclose(sample(), base, atol=1e-6), "adapter weight 0 is the base model"
    pipe.unload_lora_weights()
    assert np.array_equal(sample(), base), "unloading must restore the base output exactly"


def test_write_captioned_folder_round_trips(tmp_path):
    from PIL import Image

    folder = smoke_diffusion.write_captioned_folder(tmp_path / "shapes", n=5, size=64, seed=2)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.png"))]
    expected = smoke_diffusion.make_shapes_dataset(5, 64, seed=2)
    assert captions == [it.caption for it in expected]
    assert all(np.array_equal(np.asarray(a), np.asarray(b.image)) for a, b in zip(images, expected)), "PNG is lossless"
