"""A pandas ETL and a scikit-learn model on taxi trips, written once and run unchanged on the CPU or the GPU.

The take-home recipe of the elective lesson 17 (notebooks/17_gpu_dataframes_rapids.ipynb). Plain pandas and
scikit-learn, nothing GPU-specific in the code; the GPU comes from how the script is launched:

    # make the data once (a seeded generator of taxi-trip-like rows), then the CPU run
    python recipes/etl_and_model.py --generate 20000000 --data trips.parquet --output-dir runs/etl/cpu
    # the same file on the GPU: cudf.pandas takes over pandas, cuml.accel takes over scikit-learn
    CUML_ACCEL_ENABLED=1 python -m cudf.pandas recipes/etl_and_model.py --data trips.parquet --output-dir runs/etl/gpu

(`python -m cuml.accel script.py` enables cuml.accel alone; `CUML_ACCEL_ENABLED=1` enables it for any Python
process, so both accelerators can be combined with `python -m cudf.pandas`.) Operations the accelerators do not
support fall back to the CPU libraries: the results stay right, only slower.

What it does: read the Parquet file; drop broken rows; derive hour, weekday, duration, speed and tip share; report
aggregates (per hour and per pickup zone); split by time (the last --test-days days are the held-out test set);
encode each pickup zone by its share of generous tips *on the training days only*; fit a StandardScaler +
LogisticRegression that predicts a generous tip (>= 20 % of the fare, card payments); score ROC-AUC on the test days
against the zone-rate baseline alone.

Writes to --output-dir (atomically: a temporary name, then a rename): results.json (row counts, aggregates, test
metrics, timings per stage, which accelerators were active, library versions) and predictions.npz (test trip ids
and predicted probabilities), so two runs can be compared number for number.

The generator, the ETL and the model are copies of lesson 17's cells (each under a ``# Copied from`` line): the
lesson is where they are taught and changed, and ``make fix-copies`` brings this file back in step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#fe3cb38d:FEATURES
FEATURES = ["trip_distance", "duration_min", "speed_mph", "fare_amount", "passenger_count", "hour_sin", "hour_cos",
            "is_weekend", "is_night", "zone_generous_rate"]


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#5754fb27:GENEROUS
GENEROUS = 0.20          # a tip of at least 20 % of the fare


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#a0ea5d95:START
START = "2026-03-02"     # a Monday: day 0 of the generated month


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#a0ea5d95:make_trips
def make_trips(rows: int, seed: int = 0, days: int = 28, start: str = START):
    """``rows`` taxi-trip-like rows over ``days`` days from ``start``, from a seeded generator (same seed, same table).

    Columns as in public taxi data: pickup/dropoff times, zones (60, Zipf-like popularity), passengers, distance,
    payment type (card/cash), fare and tip. Rush hours are slower, some zones and the night tip more, and ~0.5 % of
    the rows are broken (zero distance, non-positive fare, or a dropoff before the pickup), as in real exports.
    """
    rng = np.random.default_rng(seed)
    profile = np.array([3, 2, 1.5, 1, 1, 1.5, 3, 6, 8, 7, 6, 6, 6.5, 6.5, 6.5, 7, 8, 9, 9, 8, 7, 6, 5, 4], float)
    hour = rng.choice(24, rows, p=profile / profile.sum())
    day = rng.integers(0, days, rows)
    seconds = day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, rows)
    pickup = np.datetime64(start, "s") + seconds.astype("timedelta64[s]")
    n_zones = 60
    popularity = 1.0 / np.arange(1, n_zones + 1) ** 0.8
    pickup_zone = rng.choice(n_zones, rows, p=popularity / popularity.sum()) + 1
    dropoff_zone = rng.choice(n_zones, rows, p=popularity / popularity.sum()) + 1
    distance = np.clip(rng.lognormal(0.6, 0.7, rows), 0.1, 40.0)
    rush = np.isin(hour, [7, 8, 9, 16, 17, 18, 19])
    night = (hour >= 22) | (hour <= 4)
    speed = np.where(rush, 9.0, np.where(night, 22.0, 14.0)) * rng.lognormal(0.0, 0.25, rows)
    duration_s = (distance / speed * 3_600 + 60).astype(np.int64)
    passengers = rng.choice([1, 2, 3, 4, 5, 6], rows, p=[0.70, 0.15, 0.05, 0.03, 0.04, 0.03])
    card = rng.random(rows) < 0.7
    fare = np.round(3.0 + 2.5 * distance + 0.5 * duration_s / 60 + rng.normal(0, 1.0, rows), 2)
    generous_zone = (pickup_zone % 7 == 0).astype(float)
    weekend = day % 7 >= 5
    share = (0.14 + 0.06 * generous_zone + 0.04 * night + 0.03 * weekend - 0.02 * (passengers > 2)
             - 0.003 * np.minimum(distance, 20) + rng.normal(0, 0.06, rows))
    tip = np.where(card, np.round(np.maximum(share, 0) * np.maximum(fare, 0), 2), 0.0)
    broken = rng.random(rows) < 0.005
    kind = rng.integers(0, 3, rows)
    distance = np.where(broken & (kind == 0), 0.0, distance)
    fare = np.where(broken & (kind == 1), -fare, fare)
    duration_s = np.where(broken & (kind == 2), -duration_s, duration_s)
    return pd.DataFrame({
        "trip_id": np.arange(rows, dtype=np.int64),
        "pickup_datetime": pickup,
        "dropoff_datetime": pickup + duration_s.astype("timedelta64[s]"),
        "pickup_zone": pickup_zone.astype(np.int32),
        "dropoff_zone": dropoff_zone.astype(np.int32),
        "passenger_count": passengers.astype(np.int8),
        "trip_distance": distance.round(2),
        "payment_type": pd.Categorical(np.where(card, "card", "cash")),
        "fare_amount": fare,
        "tip_amount": tip,
    })


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


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#5754fb27:clean_and_derive
def clean_and_derive(df, generous_share: float = GENEROUS):
    """Drop broken rows; add hour, weekday, duration (min), speed (mph), tip share, the features' helpers and the
    label: ``generous`` (a tip of at least ``generous_share`` of the fare)."""
    df = df[(df["trip_distance"] > 0) & (df["fare_amount"] > 0) & (df["dropoff_datetime"] > df["pickup_datetime"])]
    df = df.assign(
        hour=df["pickup_datetime"].dt.hour,
        weekday=df["pickup_datetime"].dt.day_of_week,
        duration_min=(df["dropoff_datetime"] - df["pickup_datetime"]).dt.total_seconds() / 60,
        tip_pct=df["tip_amount"] / df["fare_amount"],
    )
    df = df.assign(
        speed_mph=df["trip_distance"] / (df["duration_min"] / 60),
        hour_sin=np.sin(2 * np.pi * df["hour"] / 24),
        hour_cos=np.cos(2 * np.pi * df["hour"] / 24),
        is_weekend=(df["weekday"] >= 5).astype("float64"),
        is_night=((df["hour"] >= 22) | (df["hour"] <= 4)).astype("float64"),
        generous=(df["tip_amount"] >= generous_share * df["fare_amount"]).astype("int64"),
    )
    return df


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#5754fb27:aggregates
def aggregates(df) -> dict:
    """The report: trips, mean fare and speed per hour; card tip share per hour; revenue of the top 10 zones."""
    by_hour = df.groupby("hour").agg(trips=("fare_amount", "size"), mean_fare=("fare_amount", "mean"),
                                     mean_speed=("speed_mph", "mean")).sort_index()
    card = df[df["payment_type"] == "card"]
    tip_by_hour = card.groupby("hour")["tip_pct"].mean().sort_index()
    revenue = (df["fare_amount"] + df["tip_amount"]).groupby(df["pickup_zone"]).sum()
    top = revenue.sort_values(ascending=False).head(10)
    return {
        "hours": [int(h) for h in by_hour.index.to_numpy()],
        "trips_per_hour": [int(v) for v in by_hour["trips"].to_numpy()],
        "mean_fare_per_hour": [float(v) for v in by_hour["mean_fare"].to_numpy()],
        "mean_speed_per_hour": [float(v) for v in by_hour["mean_speed"].to_numpy()],
        "card_tip_pct_per_hour": [float(v) for v in tip_by_hour.to_numpy()],
        "top_zones": [int(z) for z in top.index.to_numpy()],
        "top_zone_revenue": [float(v) for v in top.to_numpy()],
        "card_share": float((df["payment_type"] == "card").mean()),
    }


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#fe3cb38d:split_and_encode
def split_and_encode(df, test_days: int):
    """Card trips only; the last ``test_days`` days are the test set. Each pickup zone gets its training share of
    generous tips (zones unseen in training get the overall training share): no test label leaks into a feature."""
    card = df[df["payment_type"] == "card"]
    cutoff = card["pickup_datetime"].max().normalize() - np.timedelta64(test_days - 1, "D")
    train, test = card[card["pickup_datetime"] < cutoff], card[card["pickup_datetime"] >= cutoff]
    zone_rate = train.groupby("pickup_zone")["generous"].mean().rename("zone_generous_rate").reset_index()
    overall = float(train["generous"].mean())
    train = train.merge(zone_rate, on="pickup_zone", how="left").sort_values("trip_id")  # merge order is not
    test = test.merge(zone_rate, on="pickup_zone", how="left").sort_values("trip_id")    # guaranteed on a GPU
    test = test.assign(zone_generous_rate=test["zone_generous_rate"].fillna(overall))
    return train, test, str(cutoff)


# Copied from notebooks/17_gpu_dataframes_rapids.ipynb#fe3cb38d:fit_and_score
def fit_and_score(train, test, features):
    """Fit StandardScaler + LogisticRegression on the training days' ``features`` to predict a generous tip; return
    the test days' probabilities, the test metrics (with the zone-rate baseline's ROC-AUC) and the fit and predict
    seconds."""
    X_train = train[features].to_numpy(dtype=np.float64)
    y_train = train["generous"].to_numpy(dtype=np.int64)
    X_test = test[features].to_numpy(dtype=np.float64)
    y_test = test["generous"].to_numpy(dtype=np.int64)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500, tol=1e-6))
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    proba = np.asarray(model.predict_proba(X_test))[:, 1]
    predict_s = time.perf_counter() - start
    metrics = {
        "test_auc": float(roc_auc_score(y_test, proba)),
        "baseline_auc": float(roc_auc_score(y_test, test["zone_generous_rate"].to_numpy(dtype=np.float64))),
        "test_accuracy": float(accuracy_score(y_test, proba >= 0.5)),
        "majority_accuracy": float(max(y_test.mean(), 1 - y_test.mean())),
        "positive_rate_train": float(y_train.mean()),
    }
    return proba, metrics, fit_s, predict_s


def accelerators() -> dict:
    """Which accelerators this process runs under (they are switched on from outside: see the docstring)."""
    active = {"cudf.pandas": "cudf.pandas" in sys.modules, "cuml.accel": False}
    if "cuml.accel" in sys.modules:
        try:
            active["cuml.accel"] = bool(sys.modules["cuml.accel"].enabled())
        except Exception:  # an older cuml without enabled()
            active["cuml.accel"] = True
    return active


def run(data, output_dir, test_days: int = 7) -> dict:
    """Read, ETL, fit and score, timing each stage (a line per stage as it ends); write the results atomically."""
    import sklearn

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    raw = pd.read_parquet(data)
    timings["read_s"] = time.perf_counter() - start
    print(f"read {len(raw):,} rows in {timings['read_s']:.1f} s", flush=True)
    start = time.perf_counter()
    df = clean_and_derive(raw)
    report = aggregates(df)
    train, test, cutoff = split_and_encode(df, test_days)
    timings["etl_s"] = time.perf_counter() - start
    print(f"ETL: {len(df):,} clean rows, {len(train):,} training and {len(test):,} test card trips in "
          f"{timings['etl_s']:.1f} s; fitting the model", flush=True)
    proba, metrics, timings["fit_s"], timings["predict_s"] = fit_and_score(train, test, FEATURES)
    timings["total_s"] = sum(timings.values())
    results = {
        "rows_in": int(len(raw)), "rows_clean": int(len(df)), "train_rows": int(len(train)),
        "test_rows": int(len(test)), "test_from": cutoff, "aggregates": report, "model": metrics,
        "timings": {k: round(v, 4) for k, v in timings.items()}, "accelerators": accelerators(),
        "versions": {"python": sys.version.split()[0], "pandas": pd.__version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
    }
    with atomic_write(out / "predictions.npz") as handle:  # a temporary file, then os.replace
        np.savez(handle, trip_id=test["trip_id"].to_numpy(dtype=np.int64), proba=proba.astype(np.float64))
    with atomic_write(out / "results.json", "w") as handle:
        json.dump(results, handle, indent=1)
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Parquet file of trips (written first with --generate)")
    p.add_argument("--generate", type=int, default=0, metavar="ROWS",
                   help="generate ROWS trips into --data first, unless the file exists (~50 bytes a row on disk)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--test-days", type=int, default=7, help="the last N days are the held-out test set")
    p.add_argument("--output-dir", default="runs/etl", help="where results.json and predictions.npz go")
    args = p.parse_args(argv)
    if args.generate and not Path(args.data).exists():
        with atomic_write(args.data) as handle:
            make_trips(args.generate, args.seed).to_parquet(handle, index=False)
    if not Path(args.data).exists():
        sys.exit(f"error: {args.data} does not exist; make it with --generate ROWS")
    results = run(args.data, args.output_dir, args.test_days)
    on = [k for k, v in results["accelerators"].items() if v] or ["none (CPU)"]
    print(f"{results['rows_clean']:,} clean rows; test ROC-AUC {results['model']['test_auc']:.4f} (zone-rate baseline "
          f"{results['model']['baseline_auc']:.4f}); {results['timings']['total_s']:.2f} s; accelerators: {', '.join(on)}")
    return results


if __name__ == "__main__":
    main()
