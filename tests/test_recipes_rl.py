"""recipes/train_rl.py runs as a learner would run it (no course_utils), offline: a short PPO run on CartPole is
scored on held-out seeds against a random policy on the same seeds, and its model, curve and GIF reload."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


def test_recipe_help_explains_the_flags(run_recipe):
    out = run_recipe("train_rl.py", "--help").stdout
    for flag in ("--env", "--algo", "--timesteps", "--n-envs", "--seed", "--eval-episodes", "--eval-seed",
                 "--max-episode-frames", "--val-episodes", "--val-seed", "--val-every", "--device", "--set", "--gif", "--tensorboard", "--output-dir"):
        assert flag in out, f"--help does not mention {flag}"
    assert "PongNoFrameskip-v4" in out and "held-out" in out


def test_recipe_trains_ppo_and_beats_random_on_held_out_seeds(run_recipe, tmp_path):
    import imageio.v3 as iio
    from stable_baselines3 import PPO

    out = tmp_path / "cartpole"
    run_recipe("train_rl.py", "--env", "CartPole-v1", "--algo", "ppo", "--timesteps", "4096", "--eval-episodes", "5",
               "--threads", "1", "--gif", "--output-dir", out, timeout=120)
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_seeds"] == list(range(8)) and m["eval_seeds"] == list(range(10_000, 10_005))
    assert m["val_seeds"] == list(range(5_000, 5_005)) and len(m["validation"]) >= 2, "validation while it trains"
    assert m["timesteps"] >= 4096 and len(m["eval_returns"]) == len(m["random_returns"]) == 5
    assert m["eval_mean_return"] > 2 * m["random_mean_return"], (m["eval_mean_return"], m["random_mean_return"])
    with open(out / "curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 10 and float(rows[-1]["mean_return_last_100"]) > float(rows[0]["mean_return_last_100"])
    model = PPO.load(out / "model.zip", device="cpu")   # the file reloads as an agent that acts on CartPole states
    actions, _ = model.predict(np.zeros((3, 4), np.float32), deterministic=True)
    assert actions.shape == (3,) and set(actions.tolist()) <= {0, 1}
    gif = iio.imread(out / "agent.gif", index=None)
    assert len(gif) == min(300, int(m["eval_returns"][0])), "the GIF holds the first test episode, one frame a step"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "every artefact is written atomically"


def test_recipe_refuses_test_seeds_that_overlap_training(run_recipe):
    with pytest.raises(pytest.fail.Exception, match="overlap the training seeds"):
        run_recipe("train_rl.py", "--timesteps", "64", "--eval-seed", "5", "--output-dir", "x")
