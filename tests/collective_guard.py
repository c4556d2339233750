"""Run ``recipes/train_multi.py`` with torch.distributed's collectives checked, so a tensor on the wrong device fails
on a CPU machine as it would under NCCL on GPUs ("No backend type associated with device type cpu").

On CPUs every tensor is on ``cpu``, the accelerator's device included, so the device alone cannot tell a tensor the
recipe put on ``accelerator.device`` from one it forgot to. The guard therefore also tracks where tensors come from: a
tensor the recipe's own code creates without ``device=`` (``torch.tensor([...])``, ``torch.zeros(3)``) is marked, the
mark follows it through every operation (``zeros_like``, ``clone``, indexing, ``stack``), and ``.to(device)`` or a
``device=`` argument clears it. Every collective (``all_reduce``, ``all_gather``, ``broadcast``, ...) then fails with one
sentence when a tensor it gets is marked or not on the accelerator's device.

    accelerate launch ... tests/collective_guard.py ARGS...   (in place of recipes/train_multi.py ARGS...)

``COLLECTIVE_GUARD_RECIPE`` names another copy of the recipe to run (a test's mutated one).
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

MARK = "_made_without_device"
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter")
TORCH_DIR = str(Path(torch.__file__).parent)


class WrongDevice(RuntimeError):
    """A collective got a tensor NCCL would refuse."""


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _asks_for_device(func, args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    if getattr(func, "__name__", "") in ("to", "cuda"):  # t.to(device), t.to(device, dtype), t.cuda()
        return func.__name__ == "cuda" or any(isinstance(a, (torch.device, str, int)) for a in args[1:])
    return False


def _caller_file() -> str:
    """The first file outside torch and this module on the stack: the code that called the torch function."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else ""


class Provenance(TorchFunctionMode):
    """Marks tensors that code in ``files`` made without asking for a device; marks follow the data."""

    def __init__(self, files: set[str]):
        super().__init__()
        self.files = files

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        if _asks_for_device(func, args, kwargs):
            marked = False
        elif inputs:
            marked = any(getattr(t, MARK, False) for t in inputs)
        else:  # a factory: torch.tensor, zeros, arange, randint, ...
            marked = _caller_file() in self.files
        for t in _tensors(out):
            try:
                if marked:
                    setattr(t, MARK, True)
                elif getattr(t, MARK, False):
                    delattr(t, MARK)
            except (AttributeError, RuntimeError):  # a tensor type that takes no attributes
                pass
        return out


def expected_device() -> torch.device | None:
    """The accelerator's device (accelerate's shared state), ``None`` before accelerate started."""
    from accelerate.state import PartialState

    return PartialState().device if PartialState._shared_state else None


def check(name: str, args, kwargs) -> None:
    want = expected_device()
    for t in _tensors((args, kwargs)):
        if getattr(t, MARK, False) or (want is not None and t.device.type != want.type):
            raise WrongDevice(f"torch.distributed.{name} got a tensor on {t.device} that the recipe made without "
                              f"device=accelerator.device ({want}): NCCL on GPUs has no backend for it.")


def guarded(name: str, collective):
    @functools.wraps(collective)
    def wrapper(*args, **kwargs):
        check(name, args, kwargs)
        return collective(*args, **kwargs)
    wrapper.__wrapped_collective__ = collective
    return wrapper


def install(files: set[str]) -> Provenance:
    """Wrap the collectives (``torch.distributed`` and its c10d module, where libraries look them up) and start
    tracking tensors made in ``files``."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for name in COLLECTIVES:
        original = getattr(c10d, name)
        wrapper = guarded(name, getattr(original, "__wrapped_collective__", original))
        for module in (dist, c10d):
            setattr(module, name, wrapper)
    mode = Provenance(files)
    mode.__enter__()
    return mode


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "recipes" / "train_multi.py"
    recipe = Path(os.environ.get("COLLECTIVE_GUARD_RECIPE") or default).resolve()
    sys.argv = [str(recipe), *sys.argv[1:]]
    install({str(recipe)})
    runpy.run_path(str(recipe), run_name="__main__")
