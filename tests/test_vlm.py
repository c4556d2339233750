"""course_utils.topics.vlm: the shape-VQA generator (deterministic, answers true to the pixels), the tiny LLaVA and its
processor (image tokens, chat template, 4-bit), a QLoRA adapter round-trip, and freeing a model."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

import course_utils as cu
from course_utils.smoke import vlm as smoke_vlm
from course_utils.topics import vlm
from course_utils.core.errors import BadParameter, MissingData




# ---------------------------------------------------------------------------------------------- generated data


def _pixels(example):
    return np.asarray(example.image)


def test_generator_is_deterministic_by_seed():
    a, b = smoke_vlm.generate_shape_qa(12, seed=3), smoke_vlm.generate_shape_qa(12, seed=3)
    assert [(x.question, x.answer, x.shapes) for x in a] == [(x.question, x.answer, x.shapes) for x in b]
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, b)), "same seed must draw the same pixels"
    c = smoke_vlm.generate_shape_qa(12, seed=4)
    assert [x.shapes for x in a] != [x.shapes for x in c], "a different seed should give different scenes"


def _components(image: np.ndarray):
    """What is really in the picture: one entry per connected blob (kind from its fill ratio, colour from its pixels)."""
    from skimage.measure import label, regionprops

    foreground = np.any(image != np.array(smoke_vlm.BACKGROUND, dtype=image.dtype), axis=-1)
    found = []
    for region in regionprops(label(foreground, connectivity=1)):
        rows, cols = region.coords[:, 0], region.coords[:, 1]
        rgb = tuple(int(v) for v in np.median(image[rows, cols], axis=0))
        color = min(smoke_vlm.COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(smoke_vlm.COLORS[name], rgb)))
        fill = region.area / region.area_bbox  # square ~1.0, circle ~0.79, triangle ~0.5
        kind = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        cy, cx = region.centroid
        found.append((kind, color, cx, cy))
    return found


def test_answers_match_the_drawn_scene():
    size = 336
    examples = smoke_vlm.generate_shape_qa(90, seed=0, image_size=size)
    assert {ex.kind for ex in examples} == set(smoke_vlm.QUESTION_KINDS)
    for ex in examples:
        found = _components(_pixels(ex))
        assert sorted((k, c) for k, c, _, _ in found) == sorted((s.kind, s.color) for s in ex.shapes), ex.question
        if ex.kind == "count":
            assert ex.answer == str(len(found))
        elif ex.kind == "color":
            shape = ex.question.removeprefix("What color is the ").removesuffix("?")
            matches = [c for k, c, _, _ in found if k == shape]
            assert matches == [ex.answer], f"{ex.question} -> {ex.answer}, but the picture has {matches}"
        else:
            words = ex.question.split()
            color, shape = words[2], words[3]
            (cx, cy), = [(x, y) for k, c, x, y in found if (k, c) == (shape, color)]
            truth = ("left" if cx < size / 2 else "right") if "left" in ex.question else ("top" if cy < size / 2 else "bottom")
            assert ex.answer == truth, f"{ex.question} -> {ex.answer}, but the shape's centre is at ({cx:.0f}, {cy:.0f})"


def test_splits_are_disjoint_and_balanced():
    train, test = smoke_vlm.make_shape_vqa(n_train=30, n_test=15, seed=1)
    assert len(train) == 30 and len(test) == 15
    assert not {ex.shapes for ex in train} & {ex.shapes for ex in test}
    assert sorted(ex.kind for ex in test) == sorted(list(smoke_vlm.QUESTION_KINDS) * 5)
    for bad in ({"n": -1}, {"n": 3, "max_shapes": 0}, {"n": 3, "kinds": ("shape",)}):
        with pytest.raises(BadParameter):
            smoke_vlm.generate_shape_qa(**bad)


def _blind_exact_match(train, test):
    """The lesson's image-blind answerer: the commonest training answer for each question template."""
    from collections import Counter

    majority = {t: Counter(ex.answer for ex in train if ex.template == t).most_common(1)[0][0]
                for t in {ex.template for ex in train}}
    return vlm.exact_match([majority.get(ex.template, "") for ex in test], [ex.answer for ex in test])


@pytest.mark.parametrize("kwargs, chance", [
    ({}, 1 / 3),  # colour 1/4, count 1/4, position 1/2 (left-right and top-bottom are separate question types)
    ({"max_shapes": 1, "kinds": ("color",)}, 1 / 4),  # the smoke task
])
def test_answers_are_balanced_so_answering_blind_scores_chance(kwargs, chance):
    train, test = smoke_vlm.make_shape_vqa(n_train=48, n_test=24, seed=0, **kwargs)
    for split in (train, test):
        for template in {ex.template for ex in split}:
            answers = [ex.answer for ex in split if ex.template == template]
            assert len(set(answers.count(a) for a in set(answers))) == 1, f"unbalanced answers for {template!r}: {answers}"
            assert all(ex.question == template.format(**_named(ex)) for ex in split if ex.template == template)
    assert _blind_exact_match(train, test) == pytest.approx(chance)
    if "max_shapes" in kwargs:
        assert all(len(ex.shapes) <= kwargs["max_shapes"] for ex in train + test)
        assert {ex.kind for ex in train + test} == set(kwargs["kinds"])


def _named(ex):
    """The object a question names: the words that fill its template."""
    words = ex.question.rstrip("?").split()
    if ex.kind == "color":
        return {"shape": words[-1]}
    return {"color": words[2], "shape": words[3]} if ex.kind == "position" else {}


def test_exact_match_normalises_like_vqa():
    assert vlm.normalize_answer("Two.") == "2"
    assert vlm.normalize_answer("The Red") == "red"
    assert vlm.exact_match(["Left", "3", "blue"], ["left", "three", "red"]) == pytest.approx(2 / 3)
    with pytest.raises(BadParameter):
        vlm.exact_match(["a"], [])


def test_sample_images_come_from_installed_packages():
    images = vlm.sample_images()
    assert {"bus", "zidane", "astronaut", "coffee", "cat"} <= set(images)
    assert all(img.mode == "RGB" and min(img.size) >= 200 for img in images.values())


# ---------------------------------------------------------------------------------------------- the tiny LLaVA


def test_tiny_processor_expands_image_token_and_uses_llava_template(tiny_cache):
    import torch
    from transformers import LlavaProcessor

    model, processor = vlm.load_llava(smoke=True)  # 4-bit, through AutoProcessor / from_pretrained
    assert isinstance(processor, LlavaProcessor)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat color is the circle? ASSISTANT:"
    image = smoke_vlm.generate_shape_qa(1)[0].image
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    side = processor.image_processor.crop_size["height"]
    n_image = int((inputs["input_ids"] == model.config.image_token_index).sum())
    assert n_image == (side // processor.patch_size) ** 2 == model.config.image_seq_length
    assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    # 4-bit language model, 16-bit (here fp32) vision tower and projector
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == "Linear4bit"
    assert kinds["model.multi_modal_projector.linear_1"] == "Linear"
    assert not any(k == "Linear4bit" for n, k in kinds.items() if n.startswith("model.vision_tower"))


def test_parameter_counts_see_through_4bit_packing(tiny_cache):
    quantised, _ = vlm.load_llava(smoke=True, quantization="4bit")
    full, _ = vlm.load_llava(smoke=True, quantization=None)
    assert vlm.parameter_counts(quantised) == vlm.parameter_counts(full)
    counts = vlm.parameter_counts(full)
    assert set(counts) == {"vision tower", "projector", "language model", "LM head"}
    assert sum(counts.values()) == sum(p.numel() for p in full.parameters())


def test_bad_quantization_is_a_course_error(tiny_cache):
    with pytest.raises(BadParameter):
        vlm.load_llava(smoke=True, quantization="3bit")


def test_full_mode_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(MissingData, match="smoke mode"):
        vlm.load_llava(smoke=False)


def _batch(processor, examples):
    prompts = [f"USER: <image>\n{ex.question} ASSISTANT:" for ex in examples]
    texts = [f"{p} {ex.answer}{processor.tokenizer.eos_token}" for p, ex in zip(prompts, examples)]
    batch = processor(images=[ex.image for ex in examples], text=texts, padding=True, padding_side="right",
                      return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def test_qlora_adapter_saves_atomically_and_reloads_with_identical_outputs(tiny_cache, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    model, processor = vlm.load_llava(smoke=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=vlm.LANGUAGE_MODEL_PROJECTIONS))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable), "LoRA only on the LLM"
    batch = _batch(processor, smoke_vlm.generate_shape_qa(8, seed=5))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"QLoRA loss did not fall: {losses}"

    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    adapter = tmp_path / "adapter"
    with cu.atomic_dir(adapter) as tmp:
        model.save_pretrained(tmp)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"

    base, _ = vlm.load_llava(smoke=True)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        again = reloaded(**batch).logits
    assert torch.allclose(reference, again, atol=1e-5), (reference - again).abs().max()
    with reloaded.disable_adapter(), torch.no_grad():
        without = reloaded(**batch).logits
    assert not torch.allclose(reference, without, atol=1e-3), "the adapter should change the outputs"


def test_free_gpu_releases_a_deleted_model(tiny_cache):
    import torch

    allocated_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    model, processor = vlm.load_llava(smoke=True)
    alive = weakref.ref(model)
    del model
    free = cu.free_gpu()
    assert alive() is None, "free_gpu should leave nothing holding the model"
    if torch.cuda.is_available():
        assert torch.cuda.memory_allocated() <= allocated_before + 1024**2
        assert free > 0
    else:
        assert free == 0.0
    gc.collect()
