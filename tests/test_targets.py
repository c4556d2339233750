"""Every lesson's targets can fail in their mode, full-mode ones say where their value comes from, no lesson
records a constant (issue 10: "every target a real measurement"), and a margin over a baseline
(``<quality>_gain_over_<baseline>``) is a positive margin over a baseline the lesson records (issue 20).

Reads notebooks/*.ipynb (metadata.course.targets and the code cells); runs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils.runner.targets import (literal_records, recorded_names, repeated_asserts, unrecorded_baselines,
                                        weak_targets)

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _problems(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    targets = notebook.get("metadata", {}).get("course", {}).get("targets", {})
    problems = []
    for mode in ("smoke", "full"):
        if mode not in targets:
            problems.append(f"no {mode} targets (metadata.course.targets.{mode})")
            continue
        problems += weak_targets(targets[mode], mode)
    unknown = set(targets) - {"smoke", "full"}
    if unknown:
        problems.append(f"targets for unknown modes {sorted(unknown)} (only 'smoke' and 'full')")
    recorded = set()
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            for call in literal_records("".join(cell["source"])):
                problems.append(f"cell {i} records a constant, {call}: record the measurement instead")
            recorded |= recorded_names("".join(cell["source"]))
    both = {**targets.get("smoke", {}), **targets.get("full", {})}
    problems += unrecorded_baselines(both, recorded)
    problems += repeated_asserts(both, ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"])
    return problems


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_target_can_fail(path):
    problems = _problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


# --- the checker itself, on targets written here ----------------------------------------------------------------
@pytest.mark.parametrize("mode, targets", [
    ("smoke", {"latency_onnx_cpu_ms": [">", 0]}),
    ("smoke", {"lora_file_mb": [">", 0]}),
    ("smoke", {"onnx_boxes_compared": [">", 0]}),
    ("smoke", {"n_tokens": [">=", 0]}),
    ("smoke", {"train_seconds": [">=", -1]}),
    ("smoke", {"test_accuracy": [">=", 0]}),
    ("smoke", {"recall_at_5": ["<=", 1.0]}),
    ("full", {"peak_vram_train_gb": ["<=", 12, "estimate"]}),
    ("full", {"train_peak_vram_gb": ["<", 16, "measured"]}),
    ("smoke", {"kv_cache_match": ["==", 1]}),
    ("smoke", {"loss_fell": ["==", True]}),
    ("full", {"val_loss": ["<=", 1.5]}),  # no source
    ("full", {"val_loss": ["<=", 1.5, "guessed"]}),
    ("smoke", {"val_loss": ["=<", 1.5]}),  # unknown op
    ("smoke", {"val_loss": ["<=", 1.5, "measured"]}),  # smoke targets have no source
    # a >= 1.0 on a rate is a 0/1 flag in disguise (issue 20)
    ("smoke", {"kv_cache_token_match_rate": [">=", 1.0]}),
    ("full", {"reload_action_agreement": [">=", 1.0, "estimate"]}),
    ("smoke", {"prediction_agreement": [">", 0.999]}),
    ("smoke", {"pins_match_rate": [">", 0.99]}),
    ("smoke", {"kv_cache_token_match": [">=", 1]}),
    # a margin over a baseline must be a positive margin (issue 20)
    ("smoke", {"val_loss_gain_over_bigram": [">=", 0.0]}),
    ("smoke", {"test_accuracy_gain_over_bow": [">", -0.05]}),
    ("full", {"dev_loss_gain_over_base": ["<=", 0.5, "estimate"]}),
])
def test_targets_that_cannot_fail_are_caught(mode, targets):
    assert weak_targets(targets, mode), f"{targets} should be refused"


@pytest.mark.parametrize("mode, targets", [
    ("smoke", {"wer_improvement": [">", 0.0]}),  # an improvement can be negative
    ("smoke", {"diabetes_r2": [">=", 0.3]}),
    ("smoke", {"test_accuracy": [">=", 0.85]}),
    ("smoke", {"kv_cache_speedup": [">=", 1.5], "token_match_rate": [">=", 0.99]}),
    ("smoke", {"lora_size_ratio": ["<=", 1.05]}),
    ("smoke", {"adapter_reload_max_diff": ["<=", 0.01]}),
    ("full", {"train_peak_vram_gb": ["<=", 10.0, "estimate"], "image_tokens": ["==", 576, "measured"]}),
    ("full", {"exact_match_gain": [">=", 0.2, "estimate"]}),
    ("smoke", {"language": ["==", "en"]}),
    ("smoke", {"stream_token_match_rate": [">=", 0.99], "vad_pause_recall": [">", 0.95]}),
    ("full", {"test_accuracy": [">=", 0.992, "estimate"]}),  # MNIST: a real accuracy, not a flag
    ("smoke", {"val_loss_gain_over_bigram": [">=", 0.1], "test_accuracy_gain_over_bow": [">", 0.02]}),
    ("smoke", {"shard_ratio_ddp": [">=", 0.99], "kv_cache_speedup": [">=", 1.0]}),  # ratios, not fractions
])
def test_targets_that_can_fail_pass(mode, targets):
    assert weak_targets(targets, mode) == []


def test_recorded_constants_are_caught():
    cell = "%matplotlib inline\nimport course_utils as cu\nok = rate > 0.9\ncu.record(kv_cache_match=1, speedup=s, flag=True)\nrecord(x=-2.5)"
    assert literal_records(cell) == ["record(kv_cache_match=1)", "record(flag=True)", "record(x=-2.5)"]
    assert literal_records("cu.record(rate=float(matches) / n, ok=int(all_equal))") == []


def test_a_margin_needs_its_baseline_recorded():
    targets = {"val_loss_gain_over_bigram": [">=", 0.1], "test_auc_gain_over_zone_rate": [">=", 0.05], "val_loss": ["<=", 2]}
    cell = "cu.record(val_loss=v, val_loss_gain_over_bigram=b - v, test_auc_gain_over_zone_rate=g)"
    problems = unrecorded_baselines(targets, recorded_names(cell))
    assert len(problems) == 2 and "bigram" in problems[0] and "zone_rate" in problems[1], problems
    assert unrecorded_baselines(targets, recorded_names(cell + "\ncu.record(bigram_val_loss=b, zone_rate_auc=z)")) == []
    # a name that merely contains the word inside another word does not count
    assert unrecorded_baselines({"acc_gain_over_bow": [">", 0.1]}, {"acc_gain_over_bow", "elbow_angle"})
    # another margin over the same baseline is not the baseline's own score
    assert unrecorded_baselines({"acc_gain_over_bow": [">", 0.1]}, {"acc_gain_over_bow", "f1_gain_over_bow"})


def test_recorded_names_follow_a_splatted_dict():
    cell = "results = dict(a=1, b=x)\nif gpu:\n    results.update(c=y)\ncu.record(**results, d=z)"
    assert recorded_names(cell) == {"a", "b", "c", "d"}
    assert recorded_names("cu.record(a=x)\nother = dict(b=1)") == {"a"}


def test_a_target_that_repeats_an_assert_is_caught():
    cells = ["rate = match(a, b)\nassert rate == 1.0 and a == b, 'the stream should equal the reply'",
             "freed = released()\nassert freed is True",
             "cu.record(stream_match_rate=rate, weights_released=float(freed), loss=round(loss, 3))"]
    found = repeated_asserts({"stream_match_rate": [">=", 0.99], "weights_released": [">=", 0.5], "loss": ["<=", 2]},
                             cells)
    assert [p.split("'")[1] for p in found] == ["stream_match_rate", "weights_released"], found
    assert not repeated_asserts({"stream_match_rate": [">=", 0.99]}, ["assert rate >= 0.5", cells[2]])
