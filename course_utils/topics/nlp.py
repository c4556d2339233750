"""Lesson 14's loaders: DistilBERT and SST-2 in full mode, a tiny DistilBERT and the shipped sentiment set in smoke.

::

    from course_utils.topics.nlp import load_sentiment_data, load_encoder_classifier
    data = load_sentiment_data(smoke=False)      # SST-2 (GLUE, pinned): train / validation (from train) / test (= dev)
    model, tokenizer = load_encoder_classifier(smoke=False)   # distilbert/distilbert-base-uncased, pinned, + a new head

``load_sentiment_data(smoke, data_dir=None, val_size=1000, seed=0) -> DatasetDict`` with ``text`` and ``label``
(0 negative, 1 positive) in every split. Full mode: GLUE's SST-2 at a pinned commit; its ``validation`` split (872
sentences, the "dev" set every paper reports, since GLUE hides the test labels) becomes ``test`` and is never trained
on; ``val_size`` sentences of train become ``validation`` (for watching the loss). Smoke mode: the shipped
``datasets/course/sentiment`` set, whose test split uses held-out sentence frames.

``load_encoder_classifier(model_id=None, smoke=False, revision=None, num_labels=2)`` -> ``(model, tokenizer)``: the
same ``AutoTokenizer`` / ``AutoModelForSequenceClassification.from_pretrained`` calls on the hub id (pinned) or on the
tiny model's folder. Both checkpoints hold a masked-LM, so the classification head is new (transformers says so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from course_utils.core.errors import SMOKE_HINT, MissingData
from course_utils.core.hub import check_revision, hub_errors_explained

#: DistilBERT (Sanh et al., 2019), uncased, at a fixed commit of its hub repository.
DEFAULT_MODEL_ID = "distilbert/distilbert-base-uncased"
DEFAULT_REVISION = "12040accade4e8a0f71eabdb258fecc2e7e948be"
PINNED_REVISIONS = {DEFAULT_MODEL_ID: DEFAULT_REVISION, "distilbert-base-uncased": DEFAULT_REVISION}
#: SST-2 as GLUE publishes it, at a fixed commit.
SST2_DATASET = ("nyu-mll/glue", "sst2")
SST2_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"
LABELS = ("negative", "positive")
#: The published figure the lesson compares with: DistilBERT's SST-2 dev accuracy (Sanh et al., 2019, table 1).
PUBLISHED_SST2_DEV_ACCURACY = 0.913


def load_sentiment_data(smoke: bool, data_dir: str | os.PathLike[str] | None = None, val_size: int = 1000,
                        seed: int = 0) -> Any:
    """A ``DatasetDict`` with ``train``, ``validation`` (held out from train) and ``test`` (never trained on)."""
    from datasets import Dataset, DatasetDict

    if smoke:
        from course_utils.smoke.nlp import read_sentiment_split

        folder = Path(data_dir) / "course" / "sentiment" if data_dir else None
        train = Dataset.from_list(read_sentiment_split("train", folder))
        test = Dataset.from_list(read_sentiment_split("test", folder))
    else:
        from datasets import load_dataset

        name, config = SST2_DATASET
        check_revision(name, SST2_REVISION)
        try:
            sst2 = load_dataset(name, config, revision=SST2_REVISION, cache_dir=str(data_dir) if data_dir else None)
        except Exception as err:  # offline, hub down, a renamed set: all mean "no data here"
            raise MissingData(
                f"Could not load SST-2 ({name}, config {config!r}; {type(err).__name__}): go online once to download "
                f"it (~5 MB, cached afterwards by the datasets library), or {SMOKE_HINT}.") from None
        train = sst2["train"].rename_column("sentence", "text").remove_columns("idx")
        test = sst2["validation"].rename_column("sentence", "text").remove_columns("idx")
    split = train.train_test_split(test_size=min(val_size, len(train) // 10), seed=seed, stratify_by_column=None)
    return DatasetDict(train=split["train"], validation=split["test"], test=test)


def load_encoder_classifier(model_id: str | None = None, smoke: bool = False, revision: str | None = None,
                            num_labels: int = 2) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a BERT-family encoder with a fresh ``num_labels``-way classification head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from course_utils.smoke.nlp import tiny_bert_dir

    source = str(tiny_bert_dir()) if smoke else (model_id or DEFAULT_MODEL_ID)
    if revision is None and not smoke:
        revision = PINNED_REVISIONS.get(source)
    check_revision(source, revision)  # a local folder, or a hub id pinned to a commit: else one sentence, now
    labels = LABELS if num_labels == 2 else tuple(f"label_{i}" for i in range(num_labels))
    with hub_errors_explained(source):
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, revision=revision, num_labels=num_labels, id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)})
    return model, tokenizer
