"""Hub downloads a learner can act on: every loading failure of hub weights becomes one sentence.

Used by every loader of hub weights in the course (LLMs, embedders, rerankers, LLaVA, Stable Diffusion, Whisper):
a gated model without an accepted licence, no token, offline with nothing cached, an unknown id, a revision that does
not exist, or a download that would not fit on the disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from course_utils.core.errors import SMOKE_HINT, BadParameter, CourseError, MissingData
from course_utils.core.memory import GIB

DISK_MARGIN_GB = 2.0  # keep this much free after a download (temporary files, the rest of the system)


class ModelAccessError(MissingData):
    """The model's files cannot be had: a gated model, a missing token, offline with nothing cached, a wrong id."""

    kind = "model access"


class NotEnoughDisk(CourseError):
    """The download would not fit on the disk that holds the Hugging Face cache."""

    kind = "not enough disk"


# ------------------------------------------------------------------------------- pinned revisions

#: A hub commit: 40 hexadecimal digits (a branch or tag name can move under the lesson's numbers).
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
#: A hub id: ``owner/name`` (letters, digits, ``-``, ``_``, ``.``; no spaces, no third part).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def check_revision(model_id: str, revision: str | None) -> None:
    """Stop at setup, in one sentence, unless ``model_id`` is a local folder or a hub id pinned to a commit.

    Raises :class:`~course_utils.core.errors.BadParameter` for an id that cannot be a hub id (``"llama 3"``,
    ``"a/b/c"``, a folder that does not exist) and for a revision that is not a 40-hex commit (``None``, ``"main"``, a
    tag, a short hash): a branch moves, and the lesson's numbers were measured on one commit. A local folder needs no
    revision. Call it before anything is downloaded.
    """
    if isinstance(model_id, (str, os.PathLike)) and Path(model_id).expanduser().is_dir():
        return
    page = f"https://huggingface.co/{model_id}"
    if not isinstance(model_id, str) or not REPO_ID.fullmatch(model_id):
        raise BadParameter(
            f"{model_id!r} is neither a local folder nor a hub id of the form 'owner/name': check the spelling (e.g. "
            f"'meta-llama/Llama-3.1-8B-Instruct') or the folder's path, or {SMOKE_HINT}.")
    if not isinstance(revision, str) or not COMMIT_HASH.fullmatch(revision):
        raise BadParameter(
            f"{model_id} is not pinned (revision={revision!r}; a branch or tag can change under the lesson): open "
            f"{page}/commits/main, copy the full 40-character hash of the commit you want and pass "
            f"revision='<that hash>', or {SMOKE_HINT}.")


# ------------------------------------------------------------------------------- hub errors, one sentence



def explain_hub_error(err: BaseException, model_id: str, alternative: str | None = None) -> ModelAccessError | None:
    """Turn a hub/transformers/diffusers loading error into the course's one sentence (``None`` if it is something else).

    ``alternative`` is what a gated or token failure suggests instead (by default the ungated LLM); None for models
    that are not gated.
    """
    instead = f" — or {alternative}" if alternative else ""
    from huggingface_hub import errors as hf_errors

    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain).lower()

    def has(kind: type) -> bool:
        return any(isinstance(e, kind) for e in chain)

    def status(code: int) -> bool:
        return any(getattr(getattr(e, "response", None), "status_code", None) == code for e in chain)

    page = f"https://huggingface.co/{model_id}"
    if has(hf_errors.GatedRepoError) or "gated repo" in text or "gated repository" in text:
        return ModelAccessError(
            f"{model_id} is a gated model: accept its licence at {page} (same account), then run "
            f"`huggingface-cli login` or set HF_TOKEN{instead}, "
            f"or {SMOKE_HINT}.")
    if has(hf_errors.LocalTokenNotFoundError) or status(401) or ("401" in text and "unauthorized" in text):
        return ModelAccessError(
            f"The hub refused {model_id} without a valid token: run `huggingface-cli login` (or set HF_TOKEN) with an "
            f"account that accepted the licence at {page}{instead}, or {SMOKE_HINT}.")
    # transformers sometimes hides the hub error behind a plain OSError ("Can't load feature extractor for ...")
    hidden = has(OSError) and not Path(model_id).exists() and ("can't load" in text or "correct path" in text)
    if has(hf_errors.LocalEntryNotFoundError) or "couldn't connect" in text or "offline mode" in text or hidden:
        return ModelAccessError(
            f"{model_id} is not in the local Hugging Face cache and the hub cannot be reached (offline, or "
            f"HF_HUB_OFFLINE=1): download it once on a connected machine (`huggingface-cli download {model_id}`), "
            f"or {SMOKE_HINT}.")
    if has(hf_errors.RevisionNotFoundError) or "not a valid git identifier" in text:
        return ModelAccessError(
            f"The pinned revision of {model_id} was not found on the hub: pass revision='main' (or a commit listed at "
            f"{page}/commits/main), or {SMOKE_HINT}.")
    if has(hf_errors.RepositoryNotFoundError) or "not a valid model identifier" in text:
        return ModelAccessError(
            f"{model_id!r} is neither a local folder nor a model on the hub: check the spelling (e.g. "
            f"'meta-llama/Llama-3.1-8B-Instruct'), log in if it is private, or {SMOKE_HINT}.")
    return None


@contextlib.contextmanager
def hub_errors_explained(model_id: str, alternative: str | None = None) -> Iterator[None]:
    """``with hub_errors_explained(model_id): ...`` re-raises hub failures as one :class:`ModelAccessError`.

    Used by every loader of hub weights in the course (LLMs, embedders, LLaVA, Stable Diffusion, Whisper).
    """
    try:
        yield
    except CourseError:
        raise
    except Exception as err:
        explained = explain_hub_error(err, model_id, alternative)
        if explained is None:
            raise
        raise explained from None


# ------------------------------------------------------------------------------------------ disk space


def hf_cache_dir() -> Path:
    """Where the hub keeps downloads (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)



def cached_gb(model_id: str) -> float:
    """How much of ``model_id`` is already in the hub cache (GiB), so a resumed download asks only for the rest."""
    blobs = hf_cache_dir() / f"models--{model_id.replace('/', '--')}" / "blobs"
    if not blobs.is_dir():
        return 0.0
    return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file()) / GIB


def check_disk_space(needed_gb: float, folder: str | os.PathLike[str], what: str = "the model",
                     already_gb: float = 0.0, margin_gb: float = DISK_MARGIN_GB) -> float:
    """Raise :class:`NotEnoughDisk` unless ``folder``'s disk has room for ``needed_gb`` (minus what is cached).

    Returns the free space in GiB.
    """
    path = Path(folder)
    while not path.exists() and path != path.parent:  # the cache folder may not exist yet: ask its disk
        path = path.parent
    free_gb = shutil.disk_usage(path).free / GIB
    missing = max(0.0, needed_gb - already_gb)
    if missing > 0.05 * needed_gb and missing + margin_gb > free_gb:
        raise NotEnoughDisk(
            f"Downloading {what} needs about {missing + margin_gb:.1f} GiB free in {folder} ({missing:.1f} GiB of "
            f"weights + {margin_gb:.0f} GiB spare) but only {free_gb:.1f} GiB is free: free some space, or point HF_HOME "
            f"at a bigger disk, or {SMOKE_HINT}.")
    return free_gb
