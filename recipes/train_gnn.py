"""Node classification (MLP, GCN, GAT) and link prediction on a Planetoid graph: lesson 16 of "Deep learning on one
12 GB GPU" in one file.

Needs only PyTorch, PyTorch Geometric and scikit-learn. The models, the full-batch loop that keeps the epoch with the
best validation accuracy, the seeds averaged, and the graph auto-encoder for link prediction are the lesson's; copy
this file into your project and change what you need.

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
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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

class MLP(torch.nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.5):
        super().__init__()
        self.lin1, self.lin2, self.dropout = torch.nn.Linear(in_dim, hidden), torch.nn.Linear(hidden, out_dim), dropout

    def forward(self, x, edge_index):  # the edges are ignored: the baseline
        x = F.relu(self.lin1(F.dropout(x, self.dropout, self.training)))
        return self.lin2(F.dropout(x, self.dropout, self.training))


class GCN(torch.nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.5):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1, self.conv2, self.dropout = GCNConv(in_dim, hidden), GCNConv(hidden, out_dim), dropout

    def forward(self, x, edge_index):
        x = F.relu(self.conv1(F.dropout(x, self.dropout, self.training), edge_index))
        return self.conv2(F.dropout(x, self.dropout, self.training), edge_index)


class GAT(torch.nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, heads: int = 8, dropout: float = 0.6):
        super().__init__()
        from torch_geometric.nn import GATConv

        self.conv1 = GATConv(in_dim, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, out_dim, heads=1, dropout=dropout)
        self.dropout = dropout

    def forward(self, x, edge_index):
        x = F.elu(self.conv1(F.dropout(x, self.dropout, self.training), edge_index))
        return self.conv2(F.dropout(x, self.dropout, self.training), edge_index)


def build_model(kind: str, in_dim: int, hidden: int, classes: int, heads: int = 8) -> torch.nn.Module:
    """``"mlp"``, ``"gcn"`` or ``"gat"`` with the papers' layouts (``heads`` only for GAT)."""
    if kind == "gat":
        return GAT(in_dim, hidden, classes, heads=heads)
    return {"mlp": MLP, "gcn": GCN}[kind](in_dim, hidden, classes)


class LinkPredictor(torch.nn.Module):
    """A graph auto-encoder: a two-layer GCN encoder and a dot-product decoder (one logit per node pair)."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1, self.conv2 = GCNConv(in_dim, hidden), GCNConv(hidden, out_dim)

    def encode(self, x, edge_index):
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)

    def decode(self, z, pairs):
        return (z[pairs[0]] * z[pairs[1]]).sum(-1)


# ------------------------------------------------------------------------------------------------ training

def accuracy(logits, data, mask) -> float:
    return (logits[mask].argmax(-1) == data.y[mask]).float().mean().item()


def train_node_classifier(model, data, lr: float, weight_decay: float, epochs: int) -> dict:
    """Full-batch training; returns the epoch with the best validation accuracy (its test accuracy and weights)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, losses = {"val_acc": -1.0}, []
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data.x, data.edge_index)[data.train_mask], data.y[data.train_mask])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            logits = model(data.x, data.edge_index)
        val_acc = accuracy(logits, data, data.val_mask)
        if val_acc > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val_acc, "test_acc": accuracy(logits, data, data.test_mask),
                    "state": copy.deepcopy(model.state_dict())}
    window = max(1, min(10, epochs // 4))  # dropout makes single epochs noisy: compare averages
    best["train_loss_first"], best["train_loss_last"] = sum(losses[:window]) / window, sum(losses[-window:]) / window
    return best


def train_link_predictor(data, epochs: int, lr: float, test_share: float, seed: int) -> dict:
    import torch_geometric.transforms as T
    from sklearn.metrics import roc_auc_score
    from torch_geometric.utils import negative_sampling

    torch.manual_seed(seed)
    train, val, test = T.RandomLinkSplit(num_val=0.05, num_test=test_share, is_undirected=True,
                                         add_negative_train_samples=False)(data)
    model = LinkPredictor(data.num_features).to(data.x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def auc(split) -> float:
        model.eval()
        with torch.no_grad():
            scores = model.decode(model.encode(split.x, split.edge_index), split.edge_label_index)
        return float(roc_auc_score(split.edge_label.cpu().numpy(), scores.cpu().numpy()))

    best, losses = {"val_auc": -1.0}, []
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad()
        z = model.encode(train.x, train.edge_index)
        positives = train.edge_label_index
        negatives = negative_sampling(train.edge_index, num_nodes=data.num_nodes, num_neg_samples=positives.size(1))
        labels = torch.cat([torch.ones(positives.size(1)), torch.zeros(negatives.size(1))]).to(z.device)
        loss = F.binary_cross_entropy_with_logits(model.decode(z, torch.cat([positives, negatives], 1)), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        val_auc = auc(val)
        if val_auc > best["val_auc"]:
            best = {"epoch": epoch, "val_auc": val_auc, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best.pop("state"))
    return {**best, "test_auc": auc(test), "train_loss_first": losses[0], "train_loss_last": losses[-1],
            "test_pairs": int(test.edge_label_index.size(1))}


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temporary file in the same folder, renamed into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch_geometric.transforms as T
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
    hidden = {"mlp": args.hidden, "gcn": args.hidden, "gat": args.gat_hidden}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for kind in args.models:
        runs, start = [], time.perf_counter()
        for run in range(args.runs):
            torch.manual_seed(args.seed + run)
            model = build_model(kind, dataset.num_features, hidden[kind], dataset.num_classes, args.gat_heads).to(device)
            best = train_node_classifier(model, data, args.gat_lr if kind == "gat" else args.lr, args.weight_decay,
                                         args.epochs)
            runs.append({k: v for k, v in best.items() if k != "state"} | {"seed": args.seed + run})
            if kind == "gcn" and run == 0:
                payload = {"state_dict": best["state"], "in_dim": dataset.num_features, "hidden": args.hidden,
                           "classes": dataset.num_classes}
                atomic_write_bytes(args.output_dir / "gcn.pt", lambda handle: torch.save(payload, handle))
        tests = torch.tensor([r["test_acc"] for r in runs])
        metrics["models"][kind] = {"test_accuracy_mean": tests.mean().item(),
                                   "test_accuracy_std": tests.std().item() if len(runs) > 1 else 0.0,
                                   "seconds_per_run": (time.perf_counter() - start) / args.runs, "runs": runs}
        print(f"{kind}: test accuracy {tests.mean():.4f} over {args.runs} seeds (majority class {majority:.4f})")
    if args.link_epochs:
        metrics["link_prediction"] = train_link_predictor(data, args.link_epochs, args.lr, args.link_test_share, args.seed)
        print(f"link prediction: test AUC {metrics['link_prediction']['test_auc']:.4f}")
    text = json.dumps(metrics, indent=1) + "\n"
    atomic_write_bytes(args.output_dir / "metrics.json", lambda handle: handle.write(text.encode()))
    return metrics


if __name__ == "__main__":
    main()
