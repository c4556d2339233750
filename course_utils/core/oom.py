"""Out-of-memory: find the largest batch that fits, and turn a CUDA OOM into advice in the course's order."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from course_utils.core.errors import BadParameter, CourseError

#: What to try, in order, when a step runs out of memory (the seeds' order).
OOM_ADVICE = (
    "use shorter sequences / smaller images (MAX_SEQ_LEN, IMAGE_SIZE)",
    "load the model in 4-bit (LOAD_IN_4BIT = True)",
    "turn on gradient checkpointing (GRADIENT_CHECKPOINTING = True)",
    "halve the micro-batch and double gradient accumulation (BATCH_SIZE, GRAD_ACCUM) — the effective batch stays the same",
)


class OutOfMemory(CourseError):
    """A step ran out of GPU memory; the message lists what to turn, in order."""

    kind = "out of memory"


def is_oom_error(err: BaseException) -> bool:
    """True for torch.OutOfMemoryError and the RuntimeErrors that older code paths raise for OOM."""
    name = type(err).__name__
    return name == "OutOfMemoryError" or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def oom_advice(what: str = "this step") -> str:
    steps = "; ".join(f"{i}) {a}" for i, a in enumerate(OOM_ADVICE, 1))
    return f"{what} ran out of GPU memory. Try, in this order: {steps}. Then restart the kernel to free the card."


def _release() -> None:
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def forget_frames(err: BaseException) -> None:
    """Clear the local variables of the finished frames an exception's traceback (and those of the exceptions it
    chains) keeps alive: the activations and the model of the step that failed. While an exception is being handled
    — and a context manager's ``__exit__`` always runs while it is — its traceback holds those frames, so memory
    freed then frees nothing of theirs (``traceback.clear_frames``; frames still running are left alone)."""
    import traceback

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


@contextlib.contextmanager
def explain_oom(what: str = "this step") -> Iterator[None]:
    """Wrap a memory-hungry block: an OOM inside becomes one :class:`OutOfMemory` sentence with advice.

    The failing step's frames are cleared first, so the memory they held goes back to the card before the
    sentence is raised."""
    try:
        yield
    except BaseException as err:
        if not is_oom_error(err):
            raise
        forget_frames(err)
    else:
        return
    _release()
    raise OutOfMemory(oom_advice(what)) from None


def find_max_batch_size(step: Callable[[int], object], start: int = 512, minimum: int = 1, verbose: bool = True) -> int:
    """Largest batch size in ``start, start/2, start/4, ...`` (down to ``minimum``) for which ``step(batch_size)``
    runs without OOM.

    ``step`` should run one full training step (forward, backward, optimizer) at that batch size. Memory is
    released between tries. At most ``log2(start / minimum) + 1`` tries: it cannot loop forever. Raises
    :class:`OutOfMemory` if even ``minimum`` does not fit, and :class:`BadParameter` for a ``start`` or ``minimum``
    that leaves nothing to try.
    """
    for name, value in (("start", start), ("minimum", minimum)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadParameter(f"find_max_batch_size: {name} must be a whole number of samples, not {value!r}.")
    if start <= 0:
        raise BadParameter(f"find_max_batch_size: start must be a batch size of 1 or more, not {start}.")
    if minimum < 1:
        raise BadParameter(f"find_max_batch_size: minimum must be 1 or more, not {minimum}.")
    if minimum > start:
        raise BadParameter(f"find_max_batch_size: minimum ({minimum}) is larger than start ({start}): nothing to try.")
    batch = start
    for _ in range(start.bit_length() + 1):  # halving from start reaches 0 within bit_length steps
        if batch < minimum:
            break
        try:
            step(batch)
        except BaseException as err:
            if not is_oom_error(err):
                raise
            forget_frames(err)
            fits = False
        else:
            fits = True
        _release()  # after the except block: the failed step's exception, and the memory its frames held, are gone
        if not fits:
            if verbose:
                print(f"batch {batch}: out of memory, halving")
            batch //= 2
            continue
        if verbose:
            print(f"batch {batch}: fits")
        return batch
    raise OutOfMemory(oom_advice(f"even batch size {minimum}"))
