"""Generate the small sentiment set of lesson 14's smoke mode (deterministic: the same files every time).

Short film-review sentences labelled 0 (negative) or 1 (positive), SST-2's labels and format:
``{"text": "the plot was really gripping .", "label": 1}``, one a line.

The test split is built to mean something: its sentences use **sentence frames that never occur in train** (e.g.
"for me , the plot was so dull ." while train only has frames like "the plot was really dull ."), one in five of them
negated in a frame of its own ("i would not say the plot was dull ."). A model that memorised training sentences
scores poorly on it; one that learned which words carry sentiment, and that "not" flips it, scores well — and a
bag of words, which cannot see where "not" is, cannot. The frames are new but their words are not: a model trained
from scratch cannot know a word it has never seen (a pretrained one can — that is full mode's point), and lesson
14 shows the test split holds no word that train lacks.

    python datasets/course/sentiment/make_sentiment.py    # writes train.jsonl (800) and test.jsonl (200)

Written for this course and released with it, under the course's licence; no third-party text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = ("negative", "positive")

POSITIVE = ["great", "wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping", "beautiful",
            "funny", "clever", "excellent", "touching", "memorable", "fresh", "stunning"]
NEGATIVE = ["boring", "dull", "awful", "terrible", "clumsy", "tedious", "predictable", "weak", "bland", "painful",
            "lifeless", "confusing", "forgettable", "messy", "shallow", "annoying"]

SPLITS = {
    "train": {
        "subjects": ["the film", "this movie", "the acting", "the plot", "the soundtrack", "the script", "the ending",
                     "the cast", "the dialogue", "the pacing", "the camera work", "the story", "the music",
                     "the costumes", "the humour", "the sequel", "the premise", "the villain", "the twist"],
        "adverbs": ["really", "very", "truly", "quite", "so"],
        "templates": [
            ("{subj} was {adv} {word} .", False),
            ("i thought {subj} was {word} .", False),
            ("{subj} is {word} from start to finish .", False),
            ("honestly , {subj} felt {adv} {word} .", False),
            ("everyone said {subj} was {word} , and they were right .", False),
            ("{subj} ? {adv} {word} .", False),
            ("{word} . that is all i can say about {subj} .", False),
            ("for me {subj} seemed {word} .", False),
            ("we all agreed that {subj} was {adv} {word} .", False),
            ("my friends found {subj} {word} .", False),
            ("a {adv} {word} night out , thanks to {subj} .", False),
            ("{subj} was not {word} .", True),
            ("i did not think {subj} was {word} .", True),
            ("i would say {subj} was {adv} {word} .", False),
            ("i did not find {subj} {word} .", True),
            ("{subj} was not {adv} {word} .", True),
            ("we did not think {subj} was {adv} {word} .", True),
        ],
        "size": 800,
    },
}
SPLITS["test"] = {  # held-out frames (a negated one among them), made of words train has
    "subjects": SPLITS["train"]["subjects"],
    "adverbs": SPLITS["train"]["adverbs"],
    "templates": [
        ("for me , {subj} was {adv} {word} .", False),
        ("i found {subj} {adv} {word} .", False),
        ("{subj} felt {word} to me .", False),
        ("honestly , i thought {subj} was {word} .", False),
        ("i would not say {subj} was {word} .", True),
    ],
    "size": 200,
}


def make_split(name: str, seed: int = 0) -> list[dict]:
    """``size`` distinct labelled sentences of split ``name``, half positive, in a shuffled order."""
    spec = SPLITS[name]
    rng = random.Random(f"{name}-{seed}")
    rows, seen = [], set()
    while len(rows) < spec["size"]:
        label = len(rows) % 2  # balanced
        template, negated = rng.choice(spec["templates"])
        # a negated frame ("was not X") carries the opposite of X's polarity
        pool = POSITIVE if (label == 1) != negated else NEGATIVE
        text = template.format(subj=rng.choice(spec["subjects"]), adv=rng.choice(spec["adverbs"]), word=rng.choice(pool))
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def main() -> None:
    for name in SPLITS:
        lines = "".join(json.dumps(row) + "\n" for row in make_split(name))
        (HERE / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        print(f"{name}.jsonl: {len(lines.splitlines())} sentences")


if __name__ == "__main__":
    main()
