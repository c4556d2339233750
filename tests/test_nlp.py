"""course_utils.topics.nlp and course_utils.smoke.nlp: the shipped sentiment set is what its generator writes and its
test split is really held out; the tiny DistilBERT loads through the full-mode calls; unpinned or missing things stop
with one course sentence."""

from __future__ import annotations

import importlib.util

import pytest

from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.core.paths import REPO_ROOT
from course_utils.smoke.nlp import read_sentiment_split, train_wordpiece_tokenizer

MAKER = REPO_ROOT / "datasets" / "course" / "sentiment" / "make_sentiment.py"


@pytest.fixture(scope="module")
def maker():
    spec = importlib.util.spec_from_file_location("make_sentiment", MAKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_set_is_the_generators_output_and_test_is_held_out(maker):
    train, test = read_sentiment_split("train"), read_sentiment_split("test")
    assert train == maker.make_split("train") and test == maker.make_split("test"), \
        "datasets/course/sentiment is stale: run make_sentiment.py"
    assert (len(train), len(test)) == (800, 200) and sum(r["label"] for r in test) == 100
    # held-out frames (one negated) made of words train has: a model trained from scratch cannot know an unseen word
    frames = {split: {template for template, _ in maker.SPLITS[split]["templates"]} for split in ("train", "test")}
    assert not frames["train"] & frames["test"], "a test sentence frame occurs in train"
    assert any(negated for _, negated in maker.SPLITS["test"]["templates"]), "the test split needs a negated frame"
    train_words = {word for r in train for word in r["text"].split()}
    unseen = {word for r in test for word in r["text"].split()} - train_words
    assert not unseen, f"test words {sorted(unseen)} never occur in train"
    assert not {r["text"] for r in test} & {r["text"] for r in train}


def test_wordpiece_splits_unseen_words_into_known_pieces():
    tokenizer = train_wordpiece_tokenizer([r["text"] for r in read_sentiment_split("train")])
    ids = tokenizer("the screenplay was utterly gripping .")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert any(t.startswith("##") for t in tokens), "an unseen word should become ## pieces"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the screenplay was utterly gripping."


def test_wordpiece_vocabulary_is_the_same_in_every_process():
    """The tiny model's tokenizer must not depend on the process that built it, or each smoke run scores another model."""
    import subprocess
    import sys

    code = ("import hashlib, json; from course_utils.smoke.nlp import train_wordpiece_tokenizer, read_sentiment_split; "
            "v = train_wordpiece_tokenizer([r['text'] for r in read_sentiment_split('train')]).get_vocab(); "
            "print(hashlib.sha256(json.dumps(sorted(v.items())).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(2)}
    assert len(digests) == 1, "two processes built different WordPiece vocabularies from the same text"


def test_smoke_loaders_use_the_full_mode_calls(tiny_cache):
    from course_utils.topics.nlp import LABELS, load_encoder_classifier, load_sentiment_data

    data = load_sentiment_data(smoke=True, val_size=80)
    assert {k: len(v) for k, v in data.items()} == {"train": 720, "validation": 80, "test": 200}
    assert not set(data["validation"]["text"]) & set(data["train"]["text"])
    model, tokenizer = load_encoder_classifier(smoke=True)
    assert type(model).__name__ == "DistilBertForSequenceClassification" and model.config.num_labels == 2
    assert model.config.id2label == dict(enumerate(LABELS))
    logits = model(**tokenizer(["a charming film ."], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_unpinned_models_and_missing_data_are_one_sentence(tmp_path):
    from course_utils.topics.nlp import load_encoder_classifier, load_sentiment_data

    with pytest.raises(BadParameter, match="not pinned"):
        load_encoder_classifier("distilbert/distilbert-base-uncased", revision="main")
    with pytest.raises(MissingData) as err:  # the hub is offline in tests and nothing is cached
        load_sentiment_data(smoke=False, data_dir=tmp_path)
    assert "SST-2" in str(err.value) and str(err.value).endswith(f"{SMOKE_HINT}.")
    with pytest.raises(MissingData, match="make_sentiment.py"):
        read_sentiment_split("train", tmp_path)
