"""Node classification (MLP, GCN, GAT) and link prediction on a Planetoid graph: lesson 16 of "Deep learning on one
12 GB GPU" in one file.

Needs only PyTorch, PyTorch Geometric, scikit-learn and tqdm. The models, the full-batch loop that keeps the epoch
with the best validation accuracy (a progress bar shows the train and validation loss), the seeds averaged, and the
graph auto-encoder for link prediction are the lesson's cells, copied here (``gcn_layer`` is the lesson's graph
convolution written out, equal to ``GCNConv``); copy this file into your project and change what you need.

    python train_gnn.py --dataset Cora --root data/planetoid --epochs 200 --runs 10 --output_dir out/gnn
    python train_gnn.py --dataset CiteSeer --root data/planetoid --models gcn --link_epochs 0 --output_dir out/citeseer

``--root`` holds (or receives: Planetoid downloads ~0.4 MB from GitHub when it is missing) ``<dataset>/raw/ind.*``,
the Planetoid release's files with its public split (20 labelled nodes a class, 500 validation, 1,000 test nodes).
Any folder of files in that format works (``--dataset`` is then its name). Writes ``<output_dir>/metrics.json``
(test accuracy per model and seed, their means, the majority-class baseline, link-prediction AUC) and
``<output_dir>/gcn.pt`` (the first seed's best GCN: ``{"state_dict", "in_dim", "hidden", "classes"}``; reload with
``saved = torch.load(path, map_location="cpu", weights_only=True)`` — a checkpoint saved on a GPU holds CUDA tensors —
and rebuild with ``build_model("gcn", saved["in_dim"], saved["hidden"], saved["classes"])``). The test nodes and test edges are never used to choose anything.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_geometric.transforms as T
from sklearn.metrics import roc_auc_score
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import negative_sampling
from tqdm.auto import tqdm

MODELS = ("mlp", "gcn", "gat")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="Cora", help="Planetoid name: Cora, CiteSeer, PubMed (default Cora)")
    p.add_argument("--root", type=Path, default=Path("data/planetoid"), help="folder holding <dataset>/raw/")
    p.add_argument("--models", default="mlp,gcn,gat", help="comma-separated subset of mlp,gcn,gat (default: all)")
    p.add_argument("--epochs", type=int, default=200, help="full-batch epochs per run (default 200)")
    p.add_argument("--runs", type=int, default=10, help="seeds per model; the means are reported (default 10)")
    p.add_argument("--hidden", type=int, default=16, help="GCN/MLP hidden units (default 16)")
    p.add_argument("--lr", type=float, default=0.01, help="GCN/MLP Adam learning rate (default 0.01)")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="Adam weight decay (default 5e-4)")
    p.add_argument("--gat_hidden", type=int, default=8, help="GAT features per head (default 8)")
    p.add_argument("--gat_heads", type=int, default=8, help="GAT attention heads in the first layer (default 8)")
    p.add_argument("--gat_lr", type=float, default=0.005, help="GAT learning rate (default 0.005)")
    p.add_argument("--link_epochs", type=int, default=200, help="link-prediction epochs; 0 skips it (default 200)")
    p.add_argument("--link_test_share", type=float, default=0.10, help="share of edges held out for testing (0.10)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    p.add_argument("--output_dir", type=Path, default=Path("out/gnn"), help="where metrics.json and gcn.pt go")
    args = p.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if not args.models or set(args.models) - set(MODELS):
        p.error(f"--models must be a comma-separated subset of {','.join(MODELS)}")
    for name in ("epochs", "runs", "hidden", "gat_hidden", "gat_heads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 < args.link_test_share < 0.5:
        p.error("--link_test_share must be between 0 and 0.5")
    return args


# ------------------------------------------------------------------------------------------------ the models
# Lesson 16's cells, copied: the hand-written graph convolution (what GCNConv computes), the three models, the
# link predictor, and the full-batch loops.

# Copied from notebooks/16_graph_networks_pyg.ipynb#53e9d5b0:gcn_layer
def gcn_layer(x, edge_index, weight, bias):
    """One graph convolution: each node sums the messages of its neighbours and itself, x_j W^T / sqrt(deg_i deg_j)."""
    n = x.size(0)
    loops = torch.arange(n, device=x.device)
    source, target = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)   # A + I: an edge j -> i per column
    degree = torch.bincount(target, minlength=n).to(x.dtype)                      # messages arriving, self-loop included
    norm = (degree[source] * degree[target]).rsqrt()                              # D^-1/2 (A + I) D^-1/2, one per edge
    messages = norm[:, None] * (x @ weight.T)[source]                             # transform, then weight, each message
    return torch.zeros(n, weight.size(0), dtype=x.dtype, device=x.device).index_add_(0, target, messages) + bias


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-11:MLP
class MLP(torch.nn.Module):
    def __init__(self, in_dim, hidden, out_dim, dropout=0.5):
        super().__init__()
        self.lin1, self.lin2, self.dropout = torch.nn.Linear(in_dim, hidden), torch.nn.Linear(hidden, out_dim), dropout

    def forward(self, x, edge_index):  # edge_index is ignored: each node on its own
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.lin1(x))
        return self.lin2(F.dropout(x, self.dropout, self.training))


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-13:GCN
class GCN(torch.nn.Module):
    def __init__(self, in_dim, hidden, out_dim, dropout=0.5):
        super().__init__()
        self.conv1, self.conv2, self.dropout = GCNConv(in_dim, hidden), GCNConv(hidden, out_dim), dropout

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-15:GAT
class GAT(torch.nn.Module):
    def __init__(self, in_dim, hidden, out_dim, heads=8, dropout=0.6):
        super().__init__()
        self.conv1 = GATConv(in_dim, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, out_dim, heads=1, dropout=dropout)
        self.dropout = dropout

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


def build_model(kind: str, in_dim: int, hidden: int, classes: int, heads: int = 8) -> torch.nn.Module:
    """``"mlp"``, ``"gcn"`` or ``"gat"`` with the papers' layouts (``heads`` only for GAT)."""
    if kind == "gat":
        return GAT(in_dim, hidden, classes, heads=heads)
    return {"mlp": MLP, "gcn": GCN}[kind](in_dim, hidden, classes)


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-21:LinkPredictor
class LinkPredictor(torch.nn.Module):
    def __init__(self, in_dim, hidden=128, out_dim=64):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(in_dim, hidden), GCNConv(hidden, out_dim)

    def encode(self, x, edge_index):
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)

    def decode(self, z, pairs):  # one score (a logit) per node pair
        return (z[pairs[0]] * z[pairs[1]]).sum(-1)


# ------------------------------------------------------------------------------------------------ training

# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-09:accuracy
def accuracy(logits, y, mask):
    return (logits[mask].argmax(-1) == y[mask]).float().mean().item()


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-09:train_node_classifier
def train_node_classifier(model, data, lr, weight_decay, epochs, name, writer=None):
    """Full-batch training on `data` (on the model's device); returns the loss curves and the epoch with the best
    validation accuracy (its test accuracy and weights). Shows both losses while it runs; logs them to `writer`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"train loss": [], "val loss": []}
    best = {"val_acc": -1.0}
    progress = tqdm(range(1, epochs + 1), desc=name, leave=False)
    for epoch in progress:
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data.x, data.edge_index)[data.train_mask], data.y[data.train_mask])
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.x, data.edge_index)
        val_loss = F.cross_entropy(logits[data.val_mask], data.y[data.val_mask]).item()
        history["train loss"].append(loss.item()); history["val loss"].append(val_loss)
        if writer is not None:
            writer.add_scalar(f"{name}/train_loss", loss.item(), epoch)
            writer.add_scalar(f"{name}/val_loss", val_loss, epoch)
        progress.set_postfix(train_loss=f"{loss.item():.3f}", val_loss=f"{val_loss:.3f}")
        val_acc = accuracy(logits, data.y, data.val_mask)
        if val_acc > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val_acc, "test_acc": accuracy(logits, data.y, data.test_mask),
                    "state": copy.deepcopy(model.state_dict())}
    return history, best


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-21:link_auc
def link_auc(model, split):
    model.eval()
    with torch.no_grad():
        scores = model.decode(model.encode(split.x, split.edge_index), split.edge_label_index)
    return roc_auc_score(split.edge_label.cpu().numpy(), scores.cpu().numpy())


# Copied from notebooks/16_graph_networks_pyg.ipynb#gnn16-21:train_link_predictor
def train_link_predictor(model, train, val, epochs, lr, name="link", writer=None):
    """Each epoch: embed the nodes with the training edges, score those edges against as many fresh non-edges, one Adam
    step. Returns the loss curves and the epoch with the best validation AUC (its weights)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, best = {"train loss": [], "val loss": []}, {"val_auc": -1.0}
    for epoch in (progress := tqdm(range(1, epochs + 1), desc=name, leave=False)):
        model.train()
        optimizer.zero_grad()
        z = model.encode(train.x, train.edge_index)
        positives = train.edge_label_index
        negatives = negative_sampling(train.edge_index, num_nodes=train.num_nodes, num_neg_samples=positives.size(1))
        scores = model.decode(z, torch.cat([positives, negatives], dim=1))
        labels = torch.cat([torch.ones(positives.size(1)), torch.zeros(negatives.size(1))]).to(scores.device)
        loss = F.binary_cross_entropy_with_logits(scores, labels)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            val_scores = model.decode(model.encode(val.x, val.edge_index), val.edge_label_index)
            val_loss = F.binary_cross_entropy_with_logits(val_scores, val.edge_label).item()
        history["train loss"].append(loss.item()); history["val loss"].append(val_loss)
        if writer is not None:
            writer.add_scalar(f"{name}/train_loss", loss.item(), epoch)
            writer.add_scalar(f"{name}/val_loss", val_loss, epoch)
        progress.set_postfix(train_loss=f"{loss.item():.3f}", val_loss=f"{val_loss:.3f}")
        val_auc = roc_auc_score(val.edge_label.cpu().numpy(), val_scores.cpu().numpy())
        if val_auc > best["val_auc"]:
            best = {"epoch": epoch, "val_auc": val_auc, "state": copy.deepcopy(model.state_dict())}
    return history, best


def link_prediction(data, epochs: int, lr: float, test_share: float, seed: int) -> dict:
    """Hide ``test_share`` of the edges (and 5 % for validation), train the graph auto-encoder on the rest, and score
    the hidden edges against as many non-edges (ROC AUC)."""
    torch.manual_seed(seed)
    train, val, test = T.RandomLinkSplit(num_val=0.05, num_test=test_share, is_undirected=True,
                                         add_negative_train_samples=False)(data)
    model = LinkPredictor(data.num_features).to(data.x.device)
    history, best = train_link_predictor(model, train, val, epochs, lr)
    return {"epoch": best["epoch"], "val_auc": best["val_auc"], "test_auc": float(link_auc(model, test)),
            "train_loss_first": history["train loss"][0], "train_loss_last": history["train loss"][-1],
            "test_pairs": int(test.edge_label_index.size(1))}


# Copied from course_utils/core/paths.py:atomic_write
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; it replaces ``path`` only if the block finishes.

    A crash, OOM or Ctrl-C half-way leaves the previous file intact — checkpoints are never lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main(argv=None) -> dict:
    args = parse_args(argv)
    from torch_geometric.datasets import Planetoid

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        dataset = Planetoid(str(args.root), args.dataset, transform=T.NormalizeFeatures())
    except Exception as err:  # offline without the files, or unreadable files
        raise SystemExit(f"could not load {args.dataset} from {args.root} ({type(err).__name__}: {err}); put the "
                         f"Planetoid files in {args.root / args.dataset / 'raw'} or go online once") from None
    data = dataset[0].to(device)
    labelled = data.train_mask | data.val_mask
    majority = float((data.y[data.test_mask] == torch.bincount(data.y[labelled]).argmax()).float().mean())
    metrics: dict = {"dataset": args.dataset, "nodes": data.num_nodes, "edges": data.num_edges // 2,
                     "classes": dataset.num_classes, "runs": args.runs, "epochs": args.epochs,
                     "majority_test_accuracy": majority, "models": {}}
    # the lesson's hand-written graph convolution and PyG's GCNConv, on the same weights, must agree
    conv = GCNConv(dataset.num_features, args.hidden).to(device)
    torch.nn.init.normal_(conv.bias)  # PyG starts the bias at zero: compare a random one too
    with torch.no_grad():
        ours, theirs = gcn_layer(data.x, data.edge_index, conv.lin.weight, conv.bias), conv(data.x, data.edge_index)
    metrics["gcn_layer_max_diff"] = (ours - theirs).abs().max().item()
    print(f"gcn_layer vs GCNConv on the same weights: max |difference| {metrics['gcn_layer_max_diff']:.1e}")
    hidden = {"mlp": args.hidden, "gcn": args.hidden, "gat": args.gat_hidden}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for kind in args.models:
        runs, start = [], time.perf_counter()
        for run in range(args.runs):
            torch.manual_seed(args.seed + run)
            model = build_model(kind, dataset.num_features, hidden[kind], dataset.num_classes, args.gat_heads).to(device)
            history, best = train_node_classifier(model, data, args.gat_lr if kind == "gat" else args.lr,
                                                  args.weight_decay, args.epochs, f"{kind}-seed{args.seed + run}")
            losses = history["train loss"]
            window = max(1, min(10, args.epochs // 4))  # dropout makes single epochs noisy: compare averages
            runs.append({k: v for k, v in best.items() if k != "state"} | {
                "seed": args.seed + run, "train_loss_first": sum(losses[:window]) / window,
                "train_loss_last": sum(losses[-window:]) / window})
            if kind == "gcn" and run == 0:
                payload = {"state_dict": best["state"], "in_dim": dataset.num_features, "hidden": args.hidden,
                           "classes": dataset.num_classes}
                with atomic_write(args.output_dir / "gcn.pt") as handle:
                    torch.save(payload, handle)
        tests = torch.tensor([r["test_acc"] for r in runs])
        metrics["models"][kind] = {"test_accuracy_mean": tests.mean().item(),
                                   "test_accuracy_std": tests.std().item() if len(runs) > 1 else 0.0,
                                   "seconds_per_run": (time.perf_counter() - start) / args.runs, "runs": runs}
        print(f"{kind}: test accuracy {tests.mean():.4f} over {args.runs} seeds (majority class {majority:.4f})")
    if args.link_epochs:
        metrics["link_prediction"] = link_prediction(data, args.link_epochs, args.lr, args.link_test_share, args.seed)
        print(f"link prediction: test AUC {metrics['link_prediction']['test_auc']:.4f}")
    with atomic_write(args.output_dir / "metrics.json", "w") as handle:
        json.dump(metrics, handle, indent=1)
    return metrics


if __name__ == "__main__":
    main()
