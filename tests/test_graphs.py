"""course_utils.topics.graphs and course_utils.smoke.graphs: the generated graph is Cora-shaped and deterministic, PyG's
own Planetoid reader loads it through the full-mode loader, and missing or broken data is one course sentence."""

from __future__ import annotations

import pytest

from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.smoke.graphs import CORA_CLASS_SHARES, GraphSpec, make_citation_graph, write_planetoid_folder
from course_utils.topics.graphs import load_planetoid, majority_class_accuracy

SMALL = GraphSpec(test_nodes=200)


@pytest.fixture(scope="module")
def graph():
    return make_citation_graph(SMALL)


def test_generated_graph_is_deterministic_and_shaped_like_cora(graph):
    import numpy as np

    again = make_citation_graph(SMALL)
    assert all(np.array_equal(graph[k], again[k]) for k in ("x", "y", "edges")), "same spec, same graph"
    other = make_citation_graph(GraphSpec(test_nodes=200, seed=1))
    assert not np.array_equal(graph["edges"], other["edges"]), "the seed should change the graph"
    y, edges, n_classes = graph["y"], graph["edges"], len(CORA_CLASS_SHARES)
    assert np.bincount(y[: 20 * n_classes], minlength=n_classes).tolist() == [20] * n_classes
    assert (edges[:, 0] < edges[:, 1]).all() and len({tuple(e) for e in edges}) == len(edges), "undirected, no duplicates"
    same = (y[edges[:, 0]] == y[edges[:, 1]]).mean()
    assert 0.65 < same < 0.9, f"edge homophily {same:.2f} should be Cora-like (0.81)"
    assert abs(2 * len(edges) / len(y) - SMALL.mean_degree) < 0.1


def test_full_mode_loader_reads_planetoid_files_with_the_public_split(graph, tmp_path):
    import numpy as np

    write_planetoid_folder(tmp_path, "Cora", SMALL)  # a local folder named like the real data set
    dataset = load_planetoid("Cora", data_dir=tmp_path, download=False)
    data = dataset[0]
    assert dataset.num_classes == len(CORA_CLASS_SHARES)
    assert int(data.train_mask.sum()) == 140 and int(data.val_mask.sum()) == 500 and int(data.test_mask.sum()) == 200
    assert not (data.train_mask & data.val_mask).any() and not (data.val_mask & data.test_mask).any()
    assert np.array_equal(data.x.numpy(), graph["x"]) and np.array_equal(data.y.numpy(), graph["y"])
    assert data.num_edges == 2 * len(graph["edges"]), "every edge stored in both directions"
    expected = (data.y[data.test_mask] == int(np.bincount(graph["y"][:640]).argmax())).float().mean().item()
    assert majority_class_accuracy(data) == pytest.approx(expected)


def test_missing_data_offline_says_where_the_files_go(tmp_path):
    with pytest.raises(MissingData) as err:
        load_planetoid("Cora", data_dir=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "Cora" / "raw") in message and "ind.cora.x" in message and message.endswith(f"{SMOKE_HINT}.")


def test_a_failed_download_is_one_sentence(tmp_path, monkeypatch):
    from torch_geometric.datasets import Planetoid

    def offline(self):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(Planetoid, "download", offline)
    with pytest.raises(MissingData, match="could not be downloaded"):
        load_planetoid("CiteSeer", data_dir=tmp_path)


def test_unreadable_files_and_unknown_names(tmp_path):
    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"):
        (raw / f"ind.cora.{name}").write_bytes(b"not a pickle")
    with pytest.raises(MissingData, match="cannot be read"):
        load_planetoid("Cora", data_dir=tmp_path, download=False)
    with pytest.raises(BadParameter, match="Planetoid"):
        load_planetoid("Karate", data_dir=tmp_path)


def test_smoke_loader_builds_once_and_reuses(tiny_cache):
    from course_utils.smoke.graphs import NAME, planetoid_stand_in

    dataset = load_planetoid(smoke=True)
    root, name = planetoid_stand_in()
    stamp = (root / NAME / "processed").stat().st_mtime_ns
    assert name == NAME and dataset[0].num_nodes == 1140 and (root / NAME / "raw" / "ind.corasbm.graph").is_file()
    assert planetoid_stand_in()[0] == root and (root / NAME / "processed").stat().st_mtime_ns == stamp, "rebuilt"
