"""Fine-tune a BERT-family encoder for sentence classification with the Hugging Face Trainer: lesson 14 of "Deep
learning on one 12 GB GPU" in one file.

Needs only transformers, datasets, torch, numpy and scikit-learn. The recipe is the lesson's (its tokenisation,
metric, Trainer setup and baseline are the lesson's cells, copied here): a pretrained encoder
with a new classification head trained end to end, dynamic padding, AdamW with linear warm-up and decay, mixed
precision on a GPU, the validation loss evaluated while training, one final score on a test split never trained on,
next to the baseline it must beat (a bag-of-words logistic regression trained on the same examples), and the model
saved atomically. Copy this file into your project and change what you need.

    python finetune_bert.py --model_name distilbert/distilbert-base-uncased \
        --model_revision 12040accade4e8a0f71eabdb258fecc2e7e948be --dataset glue_sst2 --output_dir out/sst2
    python finetune_bert.py --model_name distilbert/distilbert-base-uncased --dataset my_folder --output_dir out/mine

``--dataset glue_sst2``: SST-2 from GLUE (its dev split, 872 sentences, is the test split, as in every paper);
``imdb``: stanfordnlp/imdb (raise --max_length to 512); or a folder with ``train.jsonl`` and ``test.jsonl``, one
``{"text": ..., "label": 0 | 1 | ...}`` a line. ``--val_size`` training examples are held back for the validation
loss. Writes ``<output_dir>/model`` (weights, config with label names, tokenizer: reload with
``AutoModelForSequenceClassification.from_pretrained``) and ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

HUB_SETS = {"glue_sst2": ("nyu-mll/glue", "sst2", "sentence", "validation"),
            "imdb": ("stanfordnlp/imdb", None, "text", "test")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", required=True, help="hub id or local folder of a BERT-family encoder")
    p.add_argument("--model_revision", default=None, help="hub commit to pin the model to (recommended)")
    p.add_argument("--dataset", required=True, help="glue_sst2, imdb, or a folder with train.jsonl and test.jsonl")
    p.add_argument("--dataset_revision", default=None, help="hub commit to pin the data set to")
    p.add_argument("--labels", default="negative,positive", help="label names in id order (default negative,positive)")
    p.add_argument("--val_size", type=int, default=1000, help="training examples held back for validation (1000)")
    p.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max_length", type=int, default=128, help="longest input in tokens (default 128)")
    p.add_argument("--num_train_epochs", type=float, default=3, help="passes over the training set (default 3)")
    p.add_argument("--per_device_train_batch_size", type=int, default=32, help="examples a step (default 32)")
    p.add_argument("--learning_rate", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    p.add_argument("--warmup", type=float, default=0.06, help="share of steps for linear warm-up (default 0.06)")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--eval_steps", type=int, default=500, help="steps between validation evaluations (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output_dir", type=Path, required=True, help="where model/ and metrics.json go")
    args = p.parse_args(argv)
    args.labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    if len(args.labels) < 2:
        p.error("--labels needs at least two names")
    if args.dataset not in HUB_SETS and not (Path(args.dataset) / "train.jsonl").is_file():
        p.error(f"--dataset must be one of {sorted(HUB_SETS)} or a folder with train.jsonl and test.jsonl")
    for name in ("max_length", "per_device_train_batch_size", "eval_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def load_splits(args):
    """``DatasetDict`` with train / validation (held out of train) / test, columns ``text`` and ``label``."""
    from datasets import Dataset, DatasetDict, load_dataset

    if args.dataset in HUB_SETS:
        name, config, column, test_split = HUB_SETS[args.dataset]
        raw = load_dataset(name, config, revision=args.dataset_revision)
        train, test = raw["train"], raw[test_split]
        if column != "text":
            train, test = train.rename_column(column, "text"), test.rename_column(column, "text")
        keep = ["text", "label"]
        train = train.remove_columns([c for c in train.column_names if c not in keep])
        test = test.remove_columns([c for c in test.column_names if c not in keep])
    else:
        def read(split):
            path = Path(args.dataset) / f"{split}.jsonl"
            return Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                      if line.strip()])
        train, test = read("train"), read("test")
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    split = train.train_test_split(test_size=min(args.val_size, len(train) // 10), seed=args.seed)
    return DatasetDict(train=split["train"], validation=split["test"], test=test)


# Lesson 14's cells, copied: the baseline, the tokenisation, the metric and the Trainer's setup.
# Copied from notebooks/14_nlp_finetune_bert.ipynb#nlp14-07b:bag_of_words_accuracy
def bag_of_words_accuracy(train_texts, train_labels, test_texts, test_labels):
    """The baseline: word counts (no order) and a logistic regression fit on the training sentences; test accuracy."""
    bow = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=1000))
    bow.fit(train_texts, train_labels)
    return float((bow.predict(test_texts) == np.asarray(test_labels)).mean())


# Copied from notebooks/14_nlp_finetune_bert.ipynb#nlp14-09:tokenize
def tokenize(data, tokenizer, max_len):
    """WordPiece ids for every split, [CLS] ... [SEP], cut at `max_len` tokens and not padded (the collator pads each
    batch to its longest sentence)."""
    return data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_len), batched=True,
                    remove_columns=["text"])


# Copied from notebooks/14_nlp_finetune_bert.ipynb#nlp14-12:accuracy_metric
def accuracy_metric(prediction):
    """The metric: the share of sentences whose highest logit is their label (the Trainer passes both)."""
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


# Copied from notebooks/14_nlp_finetune_bert.ipynb#nlp14-12:make_trainer
def make_trainer(model, tokenizer, encoded, output_dir, epochs, batch_size, learning_rate, warmup, eval_every, seed,
                 device, weight_decay=0.01, callbacks=None):
    """Full fine-tuning: AdamW, linear warm-up then decay, mixed precision on a GPU, dynamic padding, and the validation
    loss and accuracy every `eval_every` steps (the table the Trainer shows while it trains)."""
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=2 * batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
        warmup_steps=warmup, lr_scheduler_type="linear", eval_strategy="steps", eval_steps=eval_every,
        logging_steps=eval_every, save_strategy="no", fp16=device == "cuda", use_cpu=device == "cpu", seed=seed,
        report_to="none", dataloader_num_workers=0,
    )
    return Trainer(model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
                   data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy_metric,
                   callbacks=callbacks)


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


# Copied from course_utils/core/paths.py:atomic_dir
@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` only when the block succeeds (for adapters, model folders)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_splits(args)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name, revision=args.model_revision)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name, revision=args.model_revision, num_labels=len(args.labels),
        id2label=dict(enumerate(args.labels)), label2id={name: i for i, name in enumerate(args.labels)})
    encoded = tokenize(data, tokenizer, args.max_length)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.output_dir, prefix=".trainer-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = make_trainer(model, tokenizer, encoded, work, args.num_train_epochs, args.per_device_train_batch_size,
                           args.learning_rate, args.warmup, args.eval_steps, args.seed, device,
                           weight_decay=args.weight_decay)
    val_loss_before = trainer.evaluate()["eval_loss"]
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    val_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    test = trainer.predict(encoded["test"])
    test_accuracy = accuracy_metric(test)["accuracy"]
    labels = np.asarray(encoded["test"]["label"])
    majority = float(np.bincount(labels).max() / len(labels))
    bow = bag_of_words_accuracy(data["train"]["text"], data["train"]["label"], data["test"]["text"],
                                data["test"]["label"])
    print(f"test accuracy {test_accuracy:.4f} on {len(labels)} held-out examples (bag of words {bow:.4f}, "
          f"majority class {majority:.4f})")

    with atomic_dir(args.output_dir / "model") as staging:
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(staging)
    shutil.rmtree(work, ignore_errors=True)

    metrics = {"model": args.model_name, "model_revision": args.model_revision, "dataset": args.dataset,
               "train_examples": len(encoded["train"]), "test_examples": len(labels),
               "steps": trainer.state.global_step, "train_seconds": seconds,
               "train_loss_first": train_losses[0] if train_losses else None,
               "train_loss_last": train_losses[-1] if train_losses else None,
               "val_loss_before": val_loss_before, "val_loss_after": val_losses[-1] if val_losses else None,
               "test_accuracy": test_accuracy, "majority_accuracy": majority, "bow_accuracy": bow,
               "test_accuracy_gain_over_bow": test_accuracy - bow,
               "test_predictions": np.argmax(test.predictions, -1).tolist()}
    with atomic_write(args.output_dir / "metrics.json", "w") as handle:
        json.dump(metrics, handle, indent=1)
    return metrics


if __name__ == "__main__":
    main()
