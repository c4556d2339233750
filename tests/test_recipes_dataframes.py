"""recipes/etl_and_model.py runs as a learner would run it (plain pandas + scikit-learn, no course_utils): it
generates the table, cleans it, reports aggregates that add up, splits by time, encodes zones on training rows only,
and its model beats the zone-rate baseline on the held-out days."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "etl_and_model.py"


def test_recipe_generates_cleans_splits_by_time_and_beats_the_baseline(run_recipe, tmp_path):
    out = tmp_path / "cpu"
    proc = run_recipe("etl_and_model.py", "--generate", "30000", "--data", tmp_path / "trips.parquet",
                      "--output-dir", out, timeout=120)
    assert "accelerators: none (CPU)" in proc.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["rows_in"] == 30_000 and 0.99 * 30_000 < r["rows_clean"] < 30_000
    assert sum(r["aggregates"]["trips_per_hour"]) == r["rows_clean"] and r["aggregates"]["hours"] == list(range(24))
    assert pd.Timestamp(r["test_from"]) == pd.Timestamp("2026-03-23"), "the last 7 of 28 days are the test set"
    assert r["model"]["test_auc"] > r["model"]["baseline_auc"] + 0.05 > 0.55
    assert r["accelerators"] == {"cudf.pandas": False, "cuml.accel": False}
    assert set(r["timings"]) == {"read_s", "etl_s", "fit_s", "predict_s", "total_s"}
    pred = np.load(out / "predictions.npz")
    assert len(pred["trip_id"]) == r["test_rows"] and np.all(np.diff(pred["trip_id"]) > 0)
    assert ((pred["proba"] >= 0) & (pred["proba"] <= 1)).all()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "results are written atomically"


def test_zone_encoding_uses_training_days_only():
    recipe = runpy.run_path(str(RECIPE))
    df = recipe["clean_and_derive"](recipe["make_trips"](8_000, seed=0))
    train, test, cutoff = recipe["split_and_encode"](df, 7)
    assert train["pickup_datetime"].max() < pd.Timestamp(cutoff) <= test["pickup_datetime"].min()
    zone = int(test["pickup_zone"].mode()[0])
    expected = train.loc[train["pickup_zone"] == zone, "generous"].mean()
    assert np.allclose(test.loc[test["pickup_zone"] == zone, "zone_generous_rate"], expected), \
        "a test trip's zone feature is its zone's rate on the training days"
    leaky = df[df["payment_type"] == "card"].groupby("pickup_zone")["generous"].mean()[zone]
    assert not np.isclose(expected, leaky), "computed on all days the rate would differ: the test labels would leak"
