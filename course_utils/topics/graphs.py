"""Graph data for lesson 16: Cora through PyTorch Geometric's ``Planetoid`` in full mode, a generated stand-in in smoke.

::

    from course_utils.topics.graphs import load_planetoid
    dataset = load_planetoid("Cora", smoke=False)    # torch_geometric.datasets.Planetoid(<data>/planetoid, "Cora")
    dataset = load_planetoid(smoke=True)             # the same call on a generated Cora-like graph (smoke.graphs)
    data = dataset[0]                                # x, edge_index, y, train/val/test masks (the public split)

Full mode is PyG's real path: ``Planetoid(root, name)`` reads ``root/<name>/raw/ind.<name>.*`` and downloads the eight
files of the Planetoid release (Yang et al., 2016; ~0.4 MB for Cora) from GitHub when they are missing. Offline
without them — or with ``download=False`` — it stops with one :class:`~course_utils.core.errors.MissingData`
sentence saying where the files go, instead of a traceback from deep inside fsspec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.core.paths import data_dir as course_data_dir

#: The three citation graphs of the Planetoid release, as torch_geometric names them.
PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"


def planetoid_files(name: str) -> list[str]:
    """The raw file names ``Planetoid`` reads for ``name`` (``ind.cora.x`` ...)."""
    return [f"ind.{name.lower()}.{part}" for part in PLANETOID_FILES]


def _missing(root: Path, name: str) -> list[str]:
    return [f for f in planetoid_files(name) if not (root / name / "raw" / f).is_file()]


def _where(root: Path, name: str) -> str:
    return f"{root / name / 'raw'}/ ({', '.join(planetoid_files(name)[:2])}, ... {planetoid_files(name)[-1]})"


def load_planetoid(name: str = "Cora", smoke: bool = False, data_dir: str | os.PathLike[str] | None = None,
                   download: bool = True, transform: Any = None) -> Any:
    """A ``torch_geometric.datasets.Planetoid`` with the public split (20 labelled nodes a class, 500 val, 1000 test).

    ``data_dir``: the folder holding ``planetoid/<name>/raw`` (``None``: the course data folder, ``$COURSE_DATA`` or
    ``datasets/``). ``transform``: passed to ``Planetoid`` (the lesson passes ``NormalizeFeatures()``).
    Smoke mode ignores ``name``, ``data_dir`` and ``download`` and loads the generated stand-in with the same call.
    """
    from torch_geometric.datasets import Planetoid

    if smoke:
        from course_utils.smoke.graphs import planetoid_stand_in

        root, stand_in = planetoid_stand_in()
        return Planetoid(str(root), stand_in, transform=transform)
    if name not in PLANETOID_NAMES:
        raise BadParameter(f"DATASET={name!r} is not a Planetoid citation graph: use one of {PLANETOID_NAMES}.")
    root = Path(data_dir) if data_dir is not None else course_data_dir() / "planetoid"
    missing = _missing(root, name)
    if missing and not download:
        raise MissingData(
            f"{name} is not in {root} and downloading is off (download=False): copy the eight Planetoid files to "
            f"{_where(root, name)} — they are at {PLANETOID_URL} — or point DATA_DIR at a folder that has "
            f"{name}/raw/, or {SMOKE_HINT}.")
    try:
        return Planetoid(str(root), name, transform=transform)
    except Exception as err:  # offline, DNS, HTTP error, a truncated pickle: all mean "no usable data here"
        if not missing:
            raise MissingData(
                f"The {name} files in {root / name} cannot be read ({type(err).__name__}: {err}): delete "
                f"{root / name} so they are downloaded again, or replace them with good copies, or {SMOKE_HINT}."
            ) from None
        raise MissingData(
            f"{name} is not in {root} and could not be downloaded ({type(err).__name__}): go online once (PyG fetches "
            f"~0.4 MB from {PLANETOID_URL}), or copy the eight files to {_where(root, name)}, or {SMOKE_HINT}."
        ) from None


def majority_class_accuracy(data: Any) -> float:
    """Test accuracy of always answering the most common labelled class (the baseline every model must beat)."""
    import torch

    # the public split's training set is balanced (20 a class): the most common class of train + val is the guess
    labelled = data.train_mask | data.val_mask
    majority = torch.bincount(data.y[labelled]).argmax()
    return float((data.y[data.test_mask] == majority).float().mean())
