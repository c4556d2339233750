"""The demo's model manager: load on first use, keep what fits the card, free the least recently used, one at a time.

One 12 GB card cannot hold a 4-bit 8B chat model, a 4-bit LLaVA, Stable Diffusion and Whisper together. The manager
keeps a budget (the card's memory less the course's 1 GiB margin, :func:`course_utils.core.memory.fits_card`) and a
VRAM estimate per model (the course's estimator, :func:`course_utils.core.memory.estimate_inference_vram`, for the
full-mode model, in both modes: smoke mode exercises the same eviction decisions). A request for a model that is
not loaded evicts the least recently used ones until the new one fits, then loads it.

Every request runs inside :meth:`ModelManager.use`, which holds one lock: requests from many users are served one
after the other, so two of them can never add their activations up and run the card out of memory. An OOM that
happens anyway frees every model and becomes :class:`~course_utils.core.oom.OutOfMemory` (one sentence); the next
request loads again. Light to import: torch is imported by the loaders only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from course_utils.core.errors import BadParameter, CourseError, MissingData
from course_utils.core.gpu import current_rss_gb, free_gpu, peak_rss_gb
from course_utils.core.oom import OutOfMemory, forget_frames, is_oom_error, oom_advice


@dataclass
class ModelSpec:
    """One model the app can serve: its loader, its full-mode VRAM estimate and where it comes from."""

    name: str                       # "chat", "notes", "speech", "vision", "detector", "image"
    load: Callable[[], Any]         # returns whatever the tab needs (a model and its tokenizer, a pipeline...)
    vram_gb: float                  # what the full-mode model needs on the card (the course's estimator)
    source: str                     # what a tab shows: the learner's artefact or the base model, and where
    uses_artefact: bool = False     # True when ``source`` is something the learner trained in a lesson


@dataclass
class ManagerStats:
    """What the manager did: loads, evictions, the most VRAM it let models hold, and the process's RAM."""

    loads: dict[str, int] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    evictions: list[str] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    ooms: int = 0
    peak_held_gb: float = 0.0
    peak_rss_gb: float = 0.0


class ModelManager:
    """Load on first use, evict least recently used to stay within ``budget_gb``, one request at a time.

    ``with manager.use("chat") as (model, tokenizer): ...`` — the block holds the manager's lock (so use it within
    one thread: a streaming reply generates in a worker thread that holds it, and hands tokens to the caller).
    """

    def __init__(self, specs: dict[str, ModelSpec], budget_gb: float):
        if budget_gb <= 0:
            raise BadParameter(f"The model budget must be positive, not {budget_gb} GiB.")
        self.specs = dict(specs)
        self.budget_gb = float(budget_gb)
        self._loaded: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.stats = ManagerStats()

    # ---------------------------------------------------------------------------------------------- state
    @property
    def loaded(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        return list(self._loaded)

    def held_gb(self) -> float:
        """The VRAM the loaded models need (their estimates), in GiB."""
        return sum(self.specs[name].vram_gb for name in self._loaded)

    def spec(self, name: str) -> ModelSpec:
        if name not in self.specs:
            raise MissingData(f"The app has no model called {name!r}; it serves {', '.join(self.specs)}.")
        return self.specs[name]

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the /api/status route and the lesson."""
        return {
            "budget_gb": round(self.budget_gb, 2), "held_gb": round(self.held_gb(), 2), "loaded": self.loaded,
            "peak_held_gb": round(self.stats.peak_held_gb, 2), "rss_gb": round(current_rss_gb(), 3),
            "peak_rss_gb": round(max(self.stats.peak_rss_gb, peak_rss_gb()), 3), "requests": self.stats.requests,
            "errors": self.stats.errors, "ooms": self.stats.ooms, "loads": dict(self.stats.loads),
            "evictions": list(self.stats.evictions),
            "models": {n: {"source": s.source, "uses_artefact": s.uses_artefact, "vram_gb": round(s.vram_gb, 2)}
                       for n, s in self.specs.items()},
        }

    # ---------------------------------------------------------------------------------------------- use
    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """Hold the lock, make sure ``name`` is loaded (evicting others if needed) and yield it."""
        spec = self.spec(name)
        with self._lock:
            self.stats.requests += 1
            bundle = None
            try:
                bundle = self._ensure(spec)
                yield bundle
            except BaseException as err:
                self.stats.errors += 1
                if not is_oom_error(err):
                    raise
                self.stats.ooms += 1
                forget_frames(err)  # the failed request's frames (its activations, the model) let go first
            else:
                return
            finally:
                self.stats.peak_rss_gb = max(self.stats.peak_rss_gb, current_rss_gb())
            bundle = None
            self._evict_all()  # outside the except block, the failed request's frames cleared: the models can go
            raise OutOfMemory(oom_advice(f"the {name} model") + " The app freed its models and keeps serving: try "
                              "again with a shorter input.") from None

    def unload(self, name: str) -> None:
        """Free one model now (it is loaded again on its next use)."""
        with self._lock:
            self._evict(name)

    def unload_all(self) -> None:
        with self._lock:
            self._evict_all()

    # ---------------------------------------------------------------------------------------------- inside the lock
    def _ensure(self, spec: ModelSpec) -> Any:
        if spec.name in self._loaded:
            self._loaded.move_to_end(spec.name)
            return self._loaded[spec.name]
        if spec.vram_gb > self.budget_gb:
            raise CourseError(f"The {spec.name} model needs ~{spec.vram_gb:.1f} GiB but the app's budget is "
                              f"{self.budget_gb:.1f} GiB: load it in 4-bit or use a smaller model.")
        while self._loaded and self.held_gb() + spec.vram_gb > self.budget_gb:
            self._evict(next(iter(self._loaded)))  # the least recently used
        start = time.perf_counter()
        try:
            bundle = spec.load()
        except BaseException as err:
            if not is_oom_error(err):
                raise
            retry = True  # something else holds the card: free everything and try once more, once the failed
        else:             # load's exception (and the half-loaded model its frames hold) is gone
            retry = False
        if retry:
            self._evict_all()
            bundle = spec.load()
        self._loaded[spec.name] = bundle
        self.stats.loads[spec.name] = self.stats.loads.get(spec.name, 0) + 1
        self.stats.load_seconds[spec.name] = round(time.perf_counter() - start, 3)
        self.stats.peak_held_gb = max(self.stats.peak_held_gb, self.held_gb())
        return bundle

    def _evict(self, name: str) -> None:
        bundle = self._loaded.pop(name, None)
        if bundle is not None:
            self.stats.evictions.append(name)
        del bundle
        free_gpu()  # collect the garbage and hand PyTorch's cached blocks back to the card

    def _evict_all(self) -> None:
        for name in list(self._loaded):
            self._evict(name)
