"""Vision-language models for lesson 11: a LLaVA loader (full and smoke), images the packages ship, and a generated
visual-question-answering set of coloured shapes with exact-match answers.

Full mode loads ``llava-hf/llava-1.5-7b-hf`` at a pinned revision in 4-bit NF4, keeping the vision tower, the
projector and the LM head in 16-bit. Smoke mode builds a tiny ``LlavaForConditionalGeneration`` from configs (random
weights) with a processor made offline, saves both once under ``cache_dir()``, and loads them back with the *same*
``AutoProcessor`` / ``LlavaForConditionalGeneration.from_pretrained`` calls full mode makes::

    from course_utils.topics.vlm import load_llava, make_shape_vqa
    model, processor = load_llava(smoke=True)
    train, test = make_shape_vqa(n_train=48, n_test=24, seed=0)
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter, MissingData

LLAVA_ID = "llava-hf/llava-1.5-7b-hf"
LLAVA_REVISION = "b234b804b114d9e37bb655e11cbbb5f5e971b7a9"  # pinned hub commit of llava-hf/llava-1.5-7b-hf

# LLaVA-1.5's own suffix for short-answer VQA (its training data used it for VQAv2/GQA-style questions).
SHORT_ANSWER = "Answer the question using a single word or phrase."

# llava-hf/llava-1.5-7b-hf's chat template (chat_template.json), reused verbatim by the tiny processor so that smoke
# mode builds exactly the prompts full mode does: "USER: <image>\n<question> ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Parts of LlavaForConditionalGeneration that stay in 16-bit when the language model is quantised. The names are
# matched from the start of a module's name (transformers' rule), so they are written in full.
SKIP_QUANTIZATION = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

# LoRA goes on the language model's projections only: the vision tower has q_proj/k_proj/v_proj too, hence a regex.
LANGUAGE_MODEL_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

TINY_VERSION = "v1"  # bump when the tiny model's recipe changes: a new cache folder is built
TINY_IMAGE_SIZE = 56  # 4 x 4 patches of 14 px -> 16 image tokens (the real model: 24 x 24 = 576)


# --------------------------------------------------------------------------------------------------------------------
# Loading LLaVA
# --------------------------------------------------------------------------------------------------------------------

def quantization_config(quantization: str | None, compute_dtype: Any = None) -> Any:
    """``llm.quantization_config`` (NF4 + double quantisation for ``"4bit"``) with the vision tower, the projector and
    the LM head kept in 16-bit. ``None`` or ``"16bit"``: no quantisation."""
    from course_utils.topics import llm

    config = llm.quantization_config("16bit" if quantization is None else quantization, compute_dtype)
    if config is not None:
        config.llm_int8_skip_modules = list(SKIP_QUANTIZATION)
    return config


def load_llava(
    smoke: bool,
    model_id: str = LLAVA_ID,
    revision: str | None = LLAVA_REVISION,
    quantization: str | None = "4bit",
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, processor)``: the hub LLaVA in full mode, the cached tiny LLaVA in smoke mode.

    Both modes make the same calls: ``AutoProcessor.from_pretrained`` and
    ``LlavaForConditionalGeneration.from_pretrained(..., quantization_config=..., dtype=..., device_map=...)``.
    Weights and 4-bit compute are bf16 on a GPU that has it (fp16 otherwise) and fp32 on the CPU.
    Offline with nothing cached, or an unknown id, raises ``MissingData`` with what to do.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from course_utils.topics import llm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadParameter("device='cuda' but PyTorch sees no GPU; use device=None (or 'cpu'), or run smoke mode.")
    if device == "cpu":
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    source = str(tiny_llava_dir()) if smoke else model_id
    kwargs: dict[str, Any] = {"revision": revision} if revision and not smoke else {}
    try:
        with llm.hub_errors_explained(source):
            config = AutoConfig.from_pretrained(source, **kwargs)  # one small file: fails fast when offline
            if not Path(source).is_dir():
                llm.check_disk_space(llm.estimate_download_gb(config), llm.hf_cache_dir(), what=source,
                                     already_gb=llm.cached_gb(source))
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            model = LlavaForConditionalGeneration.from_pretrained(
                source, quantization_config=quantization_config(quantization, dtype), dtype=dtype,
                device_map={"": device}, **kwargs,
            )
    except OSError as err:  # anything the hub helper did not recognise
        raise MissingData(
            f"Could not load {source} ({type(err).__name__}: {str(err).splitlines()[0][:200]}): download it once with "
            f"internet (`hf download {model_id} --revision {revision}`, ~14 GB) or run this lesson in smoke mode (SMOKE=1)."
        ) from None
    model.eval()
    return model, processor


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
    tokenizer (``llm.train_tiny_tokenizer``) trained on the lesson's words with ``<image>`` as a special token, and
    LLaVA-1.5's chat template. Written atomically.
    """
    import torch
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
    )

    from course_utils.topics.llm import train_tiny_tokenizer
    from course_utils.core.paths import atomic_dir

    tokenizer = train_tiny_tokenizer([_TOKENIZER_TEXT] * 4, vocab_size=384, extra_special_tokens=["<image>", "<pad>"],
                                     chat_template=LLAVA_CHAT_TEMPLATE)
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
            head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.3,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(TINY_IMAGE_SIZE // 14) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
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
# Looking inside
# --------------------------------------------------------------------------------------------------------------------

def _n_params(module: Any) -> int:
    total = 0
    for p in module.parameters():
        n = p.numel()
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            n = int(quant_state.shape.numel())  # 4-bit weights are packed two to a byte: count the real matrix
        total += n
    return total


def llava_parts(model: Any) -> dict[str, Any]:
    """The three parts of a LLaVA (plus its LM head), for a plain or a PEFT-wrapped model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "vision tower": base.model.vision_tower,
        "projector": base.model.multi_modal_projector,
        "language model": base.model.language_model,
        "LM head": base.lm_head,
    }


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters per part (4-bit layers counted at their real size, not their packed storage)."""
    return {name: _n_params(part) for name, part in llava_parts(model).items()}


# --------------------------------------------------------------------------------------------------------------------
# Images the packages ship
# --------------------------------------------------------------------------------------------------------------------

def sample_images() -> dict[str, Any]:
    """Photos that come with installed packages (no download): Ultralytics' bus and Zidane, scikit-image's samples."""
    from PIL import Image
    from skimage import data

    images: dict[str, Any] = {}
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:  # found without importing ultralytics (slow, chatty)
        assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
        for name in ("bus", "zidane"):
            if (assets / f"{name}.jpg").exists():
                images[name] = Image.open(assets / f"{name}.jpg").convert("RGB")
    images["astronaut"] = Image.fromarray(data.astronaut())
    images["coffee"] = Image.fromarray(data.coffee())
    images["cat"] = Image.fromarray(data.chelsea())
    return images


# --------------------------------------------------------------------------------------------------------------------
# Generated visual question answering: scenes of coloured shapes
# --------------------------------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (240, 200, 20),
}
BACKGROUND = (245, 245, 245)
QUESTION_KINDS = ("color", "count", "position")


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | square | triangle
    color: str
    cx: int
    cy: int
    size: int  # half-width of the shape's box in pixels


@dataclass(frozen=True)
class ShapeQA:
    """One image-question-answer triple; ``shapes`` is what was drawn."""

    image: Any  # PIL.Image
    question: str
    answer: str
    kind: str  # color | count | position
    shapes: tuple[Shape, ...]


def draw_scene(shapes: tuple[Shape, ...], image_size: int = 336) -> Any:
    """Draw shapes on a light background; no anti-aliasing, so every pixel is exactly one of the palette's colours."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        box = (s.cx - s.size, s.cy - s.size, s.cx + s.size, s.cy + s.size)
        fill = COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(s.cx, s.cy - s.size), (s.cx - s.size, s.cy + s.size), (s.cx + s.size, s.cy + s.size)], fill=fill)
    return image


def _random_scene(rng: random.Random, image_size: int) -> tuple[Shape, ...]:
    """1-4 shapes, one per quadrant, all (kind, colour) pairs different; shapes never touch."""
    n = rng.randint(1, 4)
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


def _question(rng: random.Random, shapes: tuple[Shape, ...], kind: str, image_size: int) -> tuple[str, str] | None:
    if kind == "count":
        return "How many shapes are in the image?", str(len(shapes))
    if kind == "color":
        unique = [s for s in shapes if sum(t.kind == s.kind for t in shapes) == 1]
        if not unique:
            return None  # e.g. two circles and two squares: "the circle" would be ambiguous
        s = rng.choice(unique)
        return f"What color is the {s.kind}?", s.color
    s = rng.choice(shapes)
    if rng.random() < 0.5:
        return f"Is the {s.color} {s.kind} on the left or on the right?", "left" if s.cx < image_size / 2 else "right"
    return f"Is the {s.color} {s.kind} at the top or at the bottom?", "top" if s.cy < image_size / 2 else "bottom"


def generate_shape_qa(n: int, seed: int = 0, image_size: int = 336) -> list[ShapeQA]:
    """``n`` examples, question kinds in turn (colour, count, position); the same ``seed`` gives the same examples."""
    if n < 0 or image_size < 64:
        raise BadParameter(f"need n >= 0 and image_size >= 64 (got n={n}, image_size={image_size}).")
    rng = random.Random(seed)
    examples: list[ShapeQA] = []
    while len(examples) < n:
        kind = QUESTION_KINDS[len(examples) % len(QUESTION_KINDS)]
        shapes = _random_scene(rng, image_size)
        qa = _question(rng, shapes, kind, image_size)
        if qa is None:
            continue
        examples.append(ShapeQA(draw_scene(shapes, image_size), qa[0], qa[1], kind, shapes))
    return examples


def make_shape_vqa(n_train: int = 48, n_test: int = 24, seed: int = 0,
                   image_size: int = 336) -> tuple[list[ShapeQA], list[ShapeQA]]:
    """A training split and a held-out split drawn from different random streams (no scene is in both)."""
    train = generate_shape_qa(n_train, seed=2 * seed, image_size=image_size)
    test = generate_shape_qa(n_test, seed=2 * seed + 1, image_size=image_size)
    seen = {ex.shapes for ex in train}
    return train, [ex for ex in test if ex.shapes not in seen]


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, and spell numbers as digits: "Two." -> "2", "The red" -> "red"."""
    import re

    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Share of predictions equal to the answer after ``normalize_answer`` (VQA-style exact match)."""
    if len(predictions) != len(answers):
        raise BadParameter(f"{len(predictions)} predictions for {len(answers)} answers.")
    if not answers:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)
