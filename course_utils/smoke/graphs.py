"""The smoke-mode stand-in for lesson 16: a Cora-like citation graph generated offline, in Planetoid's own files.

Cora is 2,708 papers (nodes) with 1,433-word bag-of-words features, 5,278 citations (edges) and 7 topics; about 81 %
of its edges join papers of the same topic. :func:`make_citation_graph` draws a graph with the same shape in small: a
stochastic block model (an edge joins two nodes of the same class with probability ``homophily``) in which some edges
close triangles (a paper cites a reference of its reference), 7 unbalanced classes, and binary "word" features in which each class uses its own topic words a little more often than the rest.
The features alone are a weak signal; the neighbours' features are a strong one, which is what a graph network uses.

:func:`write_planetoid_folder` writes it as the eight ``ind.<name>.*`` files of the Planetoid release, with the
public split's layout (20 training nodes a class first, then 500 validation nodes, the test nodes last), so smoke
mode loads it with ``torch_geometric.datasets.Planetoid(root, name)`` — the very call full mode makes for Cora::

    from course_utils.smoke.graphs import planetoid_stand_in
    root, name = planetoid_stand_in()          # built once (well under a second), cached in cu.cache_dir()
    dataset = Planetoid(root, name)            # torch_geometric's own reader
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from course_utils.core.paths import atomic_dir, cache_dir

#: Cora's class shares (largest first: 818 of 2,708 papers are "Neural_Networks"), so "always say the largest
#: class" is a baseline worth beating, as on Cora.
CORA_CLASS_SHARES = (0.302, 0.155, 0.151, 0.130, 0.110, 0.080, 0.066)
PLANETOID_VAL_NODES = 500  # torch_geometric's Planetoid reader takes the 500 nodes after the training ones
NAME = "CoraSBM"
_SPEC_VERSION = "1"  # bump when the generator changes, so cached folders are rebuilt


@dataclass(frozen=True)
class GraphSpec:
    """What :func:`make_citation_graph` draws (the defaults make a ~1,100-node Cora in small)."""

    train_per_class: int = 20      # the public split's 20 labelled nodes a class
    test_nodes: int = 500
    extra_nodes: int = 0           # unlabelled-in-every-split nodes between validation and test (Cora has 1,068)
    n_features: int = 400          # vocabulary size of the bag of words
    topic_words: int = 40          # words each class uses more often
    word_rate: float = 0.02        # chance a node uses any given word
    topic_rate: float = 0.09       # chance it uses one of its class's topic words (MLP ~0.45, GCN ~0.8 on test)
    mean_degree: float = 4.0       # Cora: 3.9
    homophily: float = 0.8         # share of edges inside a class (Cora: 0.81)
    closure: float = 0.5           # chance a new edge closes a triangle (papers cite their references' references)
    seed: int = 0


def make_citation_graph(spec: GraphSpec = GraphSpec()) -> dict[str, Any]:
    """Draw the graph: ``x`` (nodes x words, 0/1 float32), ``y`` (int64 labels), ``edges`` (undirected pairs, i<j).

    Node order is Planetoid's: ``train_per_class`` nodes of each class first, then the validation nodes, any extra
    nodes, and the test nodes last. Deterministic for a given ``spec``.
    """
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    n_classes = len(CORA_CLASS_SHARES)
    shares = np.asarray(CORA_CLASS_SHARES) / sum(CORA_CLASS_SHARES)
    train = np.repeat(np.arange(n_classes), spec.train_per_class)
    rest = rng.choice(n_classes, size=PLANETOID_VAL_NODES + spec.extra_nodes + spec.test_nodes, p=shares)
    y = np.concatenate([train, rest]).astype(np.int64)
    n = len(y)

    topics = np.stack([rng.choice(spec.n_features, spec.topic_words, replace=False) for _ in range(n_classes)])
    rates = np.full((n_classes, spec.n_features), spec.word_rate)
    for c in range(n_classes):
        rates[c, topics[c]] = spec.topic_rate
    x = (rng.random((n, spec.n_features)) < rates[y]).astype(np.float32)

    members = [np.flatnonzero(y == c) for c in range(n_classes)]
    n_edges = int(round(n * spec.mean_degree / 2))
    neighbours: list[set[int]] = [set() for _ in range(n)]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n_edges:
        u = int(rng.integers(n))
        if neighbours[u] and rng.random() < spec.closure:  # close a triangle: a neighbour's neighbour
            w = int(rng.choice(sorted(neighbours[u])))
            v = int(rng.choice(sorted(neighbours[w])))
        elif rng.random() < spec.homophily:
            v = int(rng.choice(members[y[u]]))
        else:
            v = int(rng.choice(members[rng.choice([c for c in range(n_classes) if c != y[u]])]))
        if u != v and (min(u, v), max(u, v)) not in pairs:
            pairs.add((min(u, v), max(u, v)))
            neighbours[u].add(v)
            neighbours[v].add(u)
    edges = np.array(sorted(pairs), dtype=np.int64)
    return {"x": x, "y": y, "edges": edges, "n_classes": n_classes, "spec": asdict(spec)}


def write_planetoid_folder(root: str | os.PathLike[str], name: str = NAME, spec: GraphSpec = GraphSpec()) -> Path:
    """Write the graph as Planetoid's raw files under ``root/<name>/raw`` (atomically); return ``root``.

    The files are what the Planetoid release ships for Cora: ``x``/``y`` (training nodes' features and one-hot
    labels), ``allx``/``ally`` (every node before the test block), ``tx``/``ty`` (the test nodes), ``graph`` (a dict
    node -> neighbours) and ``test.index`` (one test node id a line), pickled the same way.
    """
    import numpy as np

    graph = make_citation_graph(spec)
    x, y, edges, n_classes = graph["x"], graph["y"], graph["edges"], graph["n_classes"]
    n = len(y)
    n_train = n_classes * spec.train_per_class
    n_all = n - spec.test_nodes
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    neighbours: dict[int, list[int]] = {i: [] for i in range(n)}
    for u, v in edges:
        neighbours[int(u)].append(int(v))
        neighbours[int(v)].append(int(u))
    files = {"x": x[:n_train], "y": onehot[:n_train], "allx": x[:n_all], "ally": onehot[:n_all],
             "tx": x[n_all:], "ty": onehot[n_all:], "graph": neighbours}
    root = Path(root)
    with atomic_dir(root / name) as tmp:
        raw = tmp / "raw"
        raw.mkdir()
        for key, value in files.items():
            with open(raw / f"ind.{name.lower()}.{key}", "wb") as handle:
                pickle.dump(value, handle, protocol=2)
        (raw / f"ind.{name.lower()}.test.index").write_text("".join(f"{i}\n" for i in range(n_all, n)))
        (tmp / "spec.json").write_text(json.dumps(graph["spec"], indent=1) + "\n")
    return root


def planetoid_stand_in(spec: GraphSpec = GraphSpec(), rebuild: bool = False) -> tuple[Path, str]:
    """``(root, name)`` of the cached stand-in, built on first use; ``Planetoid(root, name)`` loads it.

    The folder is built whole in a temporary place — raw files, then Planetoid's own ``processed/`` cache — and
    renamed into place, so parallel test workers never see (or write) half of it.
    """
    key = hashlib.sha256(json.dumps([_SPEC_VERSION, asdict(spec)], sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir("16_graphs") / f"planetoid-{key}"
    if rebuild or not (root / NAME / "processed").is_dir():
        from torch_geometric.datasets import Planetoid

        with atomic_dir(root) as tmp:
            write_planetoid_folder(tmp, NAME, spec)
            Planetoid(str(tmp), NAME)  # writes processed/ inside the temporary folder
    return root, NAME
