"""Out-of-memory recovery frees what the failed step held before it frees the card or tries again (issue 25, item 6).

While an exception is handled, its traceback keeps the failed step's frames — its activations, the model — alive:
memory released then frees nothing of theirs. Each test leaves a big object (in a reference cycle, as autograd graphs
and modules often are) in the frame that raises, and checks it is gone when the card's cache is emptied (the CUDA
calls are faked: no GPU here) and when the retry starts.
"""

from __future__ import annotations

import weakref

import pytest

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


class _Big:
    def __init__(self):
        self.me = self  # a cycle: only the garbage collector frees it, once nothing else holds it


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA that records, at each empty_cache(), whether the objects in ``watch`` were already freed."""
    import torch

    state = {"watch": [], "at_empty_cache": []}

    def empty_cache():
        state["at_empty_cache"].append([ref() is None for ref in state["watch"]])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "ipc_collect", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (8 * 2**30, 12 * 2**30))
    return state


def test_find_max_batch_size_frees_the_failed_step_before_the_next_try(fake_cuda):
    from course_utils.core.oom import find_max_batch_size

    dead_at_retry = []

    def step(batch: int) -> None:
        dead_at_retry.append([ref() is None for ref in fake_cuda["watch"]])
        activations = _Big()  # what the step holds when it runs out of memory
        fake_cuda["watch"].append(weakref.ref(activations))
        if batch > 4:
            raise RuntimeError(OOM)

    assert find_max_batch_size(step, start=16, verbose=False) == 4
    assert all(all(seen) for seen in fake_cuda["at_empty_cache"][:2]), \
        "the failed step's frame was alive when the cache was emptied"
    assert all(all(seen) for seen in dead_at_retry), "the failed step's objects were alive when the next try started"


def test_explain_oom_frees_the_failed_step_before_emptying_the_cache(fake_cuda):
    from course_utils.core.oom import OutOfMemory, explain_oom

    def forward() -> None:
        activations = _Big()
        fake_cuda["watch"].append(weakref.ref(activations))
        raise RuntimeError(OOM)

    with pytest.raises(OutOfMemory):
        with explain_oom("a step"):
            forward()
    assert fake_cuda["at_empty_cache"] == [[True]], "the failed step's frame was alive when the cache was emptied"


def test_the_demo_manager_frees_the_failed_request_before_evicting(fake_cuda):
    from course_utils.core.oom import OutOfMemory
    from course_utils.demo.models import ModelManager, ModelSpec

    manager = ModelManager({"chat": ModelSpec("chat", lambda: {"weights": bytearray(10)}, 1.0, "fake")}, 10.0)

    def generate(bundle) -> None:
        activations = _Big()
        fake_cuda["watch"].append(weakref.ref(activations))
        raise RuntimeError(OOM)

    with pytest.raises(OutOfMemory, match="keeps serving"):
        with manager.use("chat") as bundle:
            generate(bundle)
    assert manager.loaded == [] and fake_cuda["at_empty_cache"] == [[True]], \
        "the failed request's frame was alive when the models were evicted"


def test_the_demo_manager_retries_a_load_only_after_the_failed_load_is_freed(fake_cuda):
    from course_utils.demo.models import ModelManager, ModelSpec

    tries = []

    def load_chat():
        tries.append([ref() is None for ref in fake_cuda["watch"]])
        half_loaded = _Big()  # the part of the model loaded when the card ran out
        fake_cuda["watch"].append(weakref.ref(half_loaded))
        if len(tries) == 1:
            raise RuntimeError(OOM)
        return {"name": "chat"}

    specs = {"chat": ModelSpec("chat", load_chat, 1.0, "fake"), "image": ModelSpec("image", dict, 1.0, "fake")}
    manager = ModelManager(specs, 10.0)
    with manager.use("image"):
        pass
    with manager.use("chat") as bundle:
        assert bundle == {"name": "chat"}
    assert tries == [[], [True]], "the retry started while the failed load's objects were alive"
    assert fake_cuda["at_empty_cache"][-1] == [True] and manager.loaded == ["chat"]
