"""Smoke-mode stand-ins for lesson 11: a tiny LLaVA (CLIP vision tower + Llama language model, random weights) with
the real ``LlavaProcessor`` built offline, and a generated visual-question-answering set of coloured shapes whose
exact answers follow from what was drawn, every answer equally often (used in both modes: it is the task the lesson's
QLoRA learns, and a model that ignores the picture can only score chance on it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter
from course_utils.smoke.shapes import COLORS as _PALETTE
from course_utils.smoke.shapes import SHAPES, draw_shape
from course_utils.topics.spec import LLAVA_CHAT_TEMPLATE, SHORT_ANSWER

TINY_VERSION = "v5"  # bump when the tiny model's recipe changes: a new cache folder is built
TINY_IMAGE_SIZE = 56  # 4 x 4 patches of 14 px -> 16 image tokens (the real model: 24 x 24 = 576)


# --------------------------------------------------------------------------------------------------------------------
# The tiny LLaVA
# --------------------------------------------------------------------------------------------------------------------

def tiny_llava_dir() -> Path:
    """The tiny LLaVA's folder (model + processor), built on first use under ``cache_dir()`` and reused."""
    from course_utils.core.paths import cache_dir

    folder = cache_dir("tiny-models") / f"tiny-llava-{TINY_VERSION}"
    if not (folder / "config.json").exists() or not (folder / "processor_config.json").exists():
        build_tiny_llava(folder)
    return folder


def build_tiny_llava(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny LLaVA (CLIP vision tower + Llama language model, random weights) and its processor to ``folder``.

    The processor is the real ``LlavaProcessor``: a ``CLIPImageProcessor`` at 56 px, the course's tiny byte-level BPE
    tokenizer (``smoke.llm.train_tiny_tokenizer``) trained on the lesson's words with ``<image>`` as a special token, and
    LLaVA-1.5's chat template. Written atomically.
    """
    import torch
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
    )

    from course_utils.smoke.llm import train_tiny_tokenizer
    from course_utils.core.paths import atomic_dir

    tokenizer = train_tiny_tokenizer([_TOKENIZER_TEXT] * 4, vocab_size=384, extra_special_tokens=["<image>", "<pad>"],
                                     chat_template=LLAVA_CHAT_TEMPLATE, padding_side="left")  # as LLaVA-1.5's
    tokenizer.pad_token = "<pad>"
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    # as in llava-1.5: the CLS token is counted, then dropped by the "default" strategy -> (56/14)^2 = 16 tokens
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=TINY_IMAGE_SIZE, patch_size=14, projection_dim=64,
        ),
        # a wide initialisation (0.3, not 0.02) lets a frozen random LM head give confident answers, so LoRA alone
        # can bring the loss down quickly -- the smoke run's proof
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.3, rms_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(TINY_IMAGE_SIZE // 14) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    # Start the language model's attention near uniform. At the wide initialisation each position attends to one
    # arbitrary token, and a smoke run's few LoRA steps cannot turn it towards the image: the model then learns the
    # answers' frequencies and ignores the pixels. Near uniform, the answer position sees every patch from the start.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(0.1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(folder)


_TOKENIZER_TEXT = (
    "USER: ASSISTANT: What color is the circle? What color is the square? What color is the triangle? "
    "How many shapes are in the image? Is the red circle on the left or on the right? "
    "Is the blue square at the top or at the bottom? " + SHORT_ANSWER + " red green blue yellow left right top "
    "bottom 1 2 3 4 0 one two three four Describe this image in one sentence. What is in the picture? "
    "How many people are there? What is the person holding? a bus a man a woman an astronaut a cat a cup of coffee "
    "on a street, in a room, with a flag. The image shows"
)


# --------------------------------------------------------------------------------------------------------------------
# Generated visual question answering: scenes of coloured shapes
# --------------------------------------------------------------------------------------------------------------------


COLORS = {name: _PALETTE[name] for name in ("red", "green", "blue", "yellow")}  # the colours questions ask about
BACKGROUND = _PALETTE["white"]
QUESTION_KINDS = ("color", "count", "position")
#: Every answer a question kind can have. Each split cycles through them, so every answer is equally frequent and an
#: answerer that ignores the image (the majority answer per question template) scores chance: 1/4, 1/4 and 1/2.
ANSWERS = {"color": tuple(COLORS), "count": ("1", "2", "3", "4"), "position": ("left", "right", "top", "bottom")}
TEMPLATES = {  # the question types: what a question says once the object it names is left out
    "color": "What color is the {shape}?",
    "count": "How many shapes are in the image?",
    "left": "Is the {color} {shape} on the left or on the right?",
    "top": "Is the {color} {shape} at the top or at the bottom?",
}


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | square | triangle
    color: str
    cx: int
    cy: int
    size: int  # half-width of the shape's box in pixels


@dataclass(frozen=True)
class ShapeQA:
    """One image-question-answer triple; ``shapes`` is what was drawn, ``template`` the question's type."""

    image: Any  # PIL.Image
    question: str
    answer: str
    kind: str  # color | count | position
    shapes: tuple[Shape, ...]
    template: str = ""  # e.g. "What color is the {shape}?": the same for every question of one type


def draw_scene(shapes: tuple[Shape, ...], image_size: int = 336) -> Any:
    """Draw shapes on a light background; no anti-aliasing, so every pixel is exactly one of the palette's colours."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        draw_shape(draw, s.kind, (s.cx - s.size, s.cy - s.size, s.cx + s.size, s.cy + s.size), COLORS[s.color])
    return image


def _random_scene(rng: random.Random, image_size: int, n: int | None = None) -> tuple[Shape, ...]:
    """``n`` shapes (1-4 at random when None), one per quadrant, all (kind, colour) pairs different; they never touch."""
    n = n or rng.randint(1, 4)
    cell = image_size // 2
    quadrants = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], n)
    pairs = rng.sample([(k, c) for k in SHAPES for c in COLORS], n)
    shapes = []
    for (col, row), (kind, color) in zip(quadrants, pairs):
        size = rng.randint(cell // 5, cell // 3)
        slack = cell // 2 - size - 4  # keep a margin inside the quadrant
        cx = col * cell + cell // 2 + rng.randint(-slack, slack)
        cy = row * cell + cell // 2 + rng.randint(-slack, slack)
        shapes.append(Shape(kind, color, cx, cy, size))
    return tuple(shapes)


def _side(s: Shape, image_size: int) -> tuple[str, str]:
    return "left" if s.cx < image_size / 2 else "right", "top" if s.cy < image_size / 2 else "bottom"


def _question(rng: random.Random, kind: str, answer: str, image_size: int,
              max_shapes: int = 4) -> tuple[tuple[Shape, ...], str, str]:
    """A scene and a question about it whose true answer is ``answer``: (shapes, question, template)."""
    if kind == "count":
        return _random_scene(rng, image_size, int(answer)), TEMPLATES["count"], TEMPLATES["count"]
    while True:  # draw scenes until one has an object the question can name unambiguously with that answer
        shapes = _random_scene(rng, image_size, rng.randint(1, max_shapes))
        if kind == "color":  # "the circle" must be the only circle
            named = [s for s in shapes if s.color == answer and sum(t.kind == s.kind for t in shapes) == 1]
            template = TEMPLATES["color"]
        else:
            named = [s for s in shapes if answer in _side(s, image_size)]
            template = TEMPLATES["left" if answer in ("left", "right") else "top"]
        if named:
            s = rng.choice(named)
            return shapes, template.format(shape=s.kind, color=s.color), template


def generate_shape_qa(n: int, seed: int = 0, image_size: int = 336, max_shapes: int = 4,
                      kinds: tuple[str, ...] = QUESTION_KINDS) -> list[ShapeQA]:
    """``n`` examples about scenes of 1 to ``max_shapes`` shapes, question ``kinds`` in turn and each kind's answers in
    turn (``ANSWERS``; counts up to ``max_shapes``): 12 examples of the three kinds hold every answer equally often, so
    an answerer that ignores the image scores chance. The same ``seed`` gives the same examples."""
    unknown = set(kinds) - set(QUESTION_KINDS)
    if n < 0 or image_size < 64 or not 1 <= max_shapes <= 4 or unknown or not kinds:
        raise BadParameter(f"need n >= 0, image_size >= 64, 1 <= max_shapes <= 4 and question kinds among "
                           f"{QUESTION_KINDS} (got n={n}, image_size={image_size}, max_shapes={max_shapes}, kinds={kinds}).")
    rng = random.Random(seed)
    examples: list[ShapeQA] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        options = ANSWERS[kind][:max_shapes] if kind == "count" else ANSWERS[kind]
        answer = options[i // len(kinds) % len(options)]
        shapes, question, template = _question(rng, kind, answer, image_size, max_shapes)
        examples.append(ShapeQA(draw_scene(shapes, image_size), question, answer, kind, shapes, template))
    return examples


def make_shape_vqa(n_train: int = 48, n_test: int = 24, seed: int = 0, image_size: int = 336, max_shapes: int = 4,
                   kinds: tuple[str, ...] = QUESTION_KINDS) -> tuple[list[ShapeQA], list[ShapeQA]]:
    """A training split and a held-out split drawn from different random streams (no scene is in both)."""
    train = generate_shape_qa(n_train, 2 * seed, image_size, max_shapes, kinds)
    test = generate_shape_qa(n_test, 2 * seed + 1, image_size, max_shapes, kinds)
    seen = {ex.shapes for ex in train}
    return train, [ex for ex in test if ex.shapes not in seen]

