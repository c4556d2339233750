"""Stable Diffusion for lesson 09: the loaders. ``load_sd_pipeline`` gives SD 1.5 (full) or the tiny pipeline of the
same classes (smoke, built by ``course_utils.smoke.diffusion``); ``caption_folder`` gives the folder of captioned
images to train a LoRA on (the learner's folder, a public set exported once, or generated shapes), always in the same
image + ``.txt`` layout, which the lesson reads itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from course_utils import assets
from course_utils.core.errors import SMOKE_HINT, MissingData
from course_utils.core.paths import atomic_dir, cache_dir
from course_utils.topics.spec import SD15_SCHEDULER_CONFIG  # noqa: F401 - public name

# The ids and pinned commits live in datasets/assets.toml.
SD15_ID = assets.id("sd-1.5")
SD15_REVISION = assets.revision("sd-1.5")  # the repo's main branch, a mirror of runwayml's
CAPTION_DATASET_ID = assets.id("naruto-blip-captions")  # 1,221 images with BLIP captions (diffusers' LoRA example)
# The data set's pin: the hub serves exactly this commit's files (the head of main since Oct 2022, "Update README.md"),
# so the download is the same every time -- the hub's commit hash is the integrity check, no archive sha256 needed.
CAPTION_DATASET_REVISION = assets.revision("naruto-blip-captions")



# --------------------------------------------------------------------------------------------- pipelines
def load_sd_pipeline(smoke: bool, model_id: str = SD15_ID, revision: str | None = SD15_REVISION,
                     dtype: Any = None, device: str | None = None) -> Any:
    """Load ``StableDiffusionPipeline``: SD 1.5 (full) or the tiny pipeline of the same classes (smoke).

    ``dtype`` defaults to fp16 on a GPU (SD 1.5's weights were released for it; fp16 halves memory) and fp32 on
    the CPU. In fp16 the ``fp16`` weight variant is downloaded (~2 GB instead of ~4 GB). Full mode keeps SD 1.5's
    safety checker. Offline without the weights in the Hugging Face cache this raises one clear ``MissingData``.

    Smoke mode on a CPU sets PyTorch to one thread: the tiny model's operations take microseconds, and with two
    threads a busy machine spends far longer synchronising them (measured: 10x slower on a loaded 2-core CPU).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if smoke and device == "cpu" and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        print("smoke mode on a CPU: PyTorch set to 1 thread (the tiny model's operations are too small to share)")
    from course_utils.smoke.diffusion import tiny_sd_folder

    source, rev = (str(tiny_sd_folder()), None) if smoke else (model_id, revision)
    variant = "fp16" if dtype == torch.float16 and not smoke else None
    from course_utils.core.hub import check_revision, hub_errors_explained  # hub failures -> one sentence
    check_revision(source, rev)  # a local folder, or a hub id pinned to a commit: else one sentence, now

    with hub_errors_explained(model_id, alternative=None):
        pipe = StableDiffusionPipeline.from_pretrained(source, revision=rev, dtype=dtype, variant=variant)
    return pipe.to(device)


# --------------------------------------------------------------------------------------------- data
def caption_folder(data_dir: str | Path | None, smoke: bool, n: int = 100, size: int = 32, seed: int = 0,
                   dataset_id: str = CAPTION_DATASET_ID, revision: str | None = CAPTION_DATASET_REVISION) -> Path:
    """The folder of captioned images to train on: ``cat.png`` next to ``cat.txt`` (the learner's data format).

    * ``data_dir``: the learner's own folder, returned as it is (the lesson reads it);
    * else smoke mode: ``n`` generated shapes of ``size`` px written to the course cache (``smoke.diffusion``);
    * else full mode: the first ``n`` rows of ``dataset_id`` from the Hugging Face hub at the pinned ``revision``
      (a commit hash: the same files every time; the hub checks each file against that commit), exported once to
      the course cache in the same image + ``.txt`` layout.

    Whatever the source, the lesson reads the folder the same way.
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise MissingData(f"The image folder {folder} does not exist: put 20-150 images with .txt captions there, "
                              f"or set DATA_DIR = None.")
        return folder
    if smoke:
        from course_utils.smoke.diffusion import write_captioned_folder

        folder = cache_dir("09_sd15_lora") / f"shapes-{n}-{size}px-seed{seed}"
        return folder if folder.is_dir() else write_captioned_folder(folder, n=n, size=size, seed=seed)
    from course_utils.core.hub import check_revision

    check_revision(dataset_id, revision)  # a hub id pinned to a 40-hex commit, or one sentence before any download
    folder = cache_dir("09_sd15_lora") / f"{dataset_id.replace('/', '--')}-{revision[:12]}-{n}"
    if folder.is_dir():
        return folder
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset_id, split=f"train[:{n}]", revision=revision)
    except Exception as err:  # offline, hub down, renamed set: all mean "no data here"
        raise MissingData(
            f"Could not load {dataset_id} ({type(err).__name__}): go online once to download it, or set DATA_DIR to a "
            f"folder of 20-150 images with .txt captions, or {SMOKE_HINT}."
        ) from None
    with atomic_dir(folder) as tmp:
        for i, (image, text) in enumerate(zip(rows["image"], rows["text"])):
            image.convert("RGB").save(tmp / f"{i:04d}.png")
            (tmp / f"{i:04d}.txt").write_text(str(text).strip() + "\n", encoding="utf-8")
    return folder
