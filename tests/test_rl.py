"""course_utils.topics.rl (lesson 15's plumbing; recipes/train_rl.py holds marked copies of it): seeded environments,
the Atari ROM check, the CartPole drawing and the GIF writer — and the lesson's evaluation loop agrees with the
package's episode runner (the GIF's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from course_utils.core.errors import BadParameter, MissingData
from course_utils.topics import rl

ROOT = Path(__file__).resolve().parent.parent


def test_make_env_seeds_each_copy_from_the_first_seed():
    vec = rl.make_env("CartPole-v1", n_envs=3, seed=100).reset()
    singles = [rl.make_env("CartPole-v1", n_envs=1, seed=s).reset()[0] for s in (100, 101, 102)]
    assert np.array_equal(vec, np.stack(singles)), "copy i of a VecEnv seeded s must start like a lone env seeded s+i"
    assert not np.array_equal(singles[0], singles[1])


def test_cartpole_frame_draws_the_pole_where_the_state_says():
    upright = rl.cartpole_frame([0.0, 0.0, 0.0, 0.0])
    tilted = rl.cartpole_frame([0.0, 0.0, 0.2, 0.0])
    moved = rl.cartpole_frame([1.0, 0.0, 0.0, 0.0])
    assert upright.shape == (120, 240, 3) and upright.dtype == np.uint8
    pole = (upright == (200, 120, 60)).all(-1)
    cols = np.nonzero(pole.any(0))[0]
    assert abs(cols.mean() - 120) < 2, "an upright pole on a centred cart stands in the middle"
    tilted_cols = np.nonzero((tilted == (200, 120, 60)).all(-1).any(0))[0]
    assert tilted_cols.max() > cols.max() + 5, "a positive angle leans the pole to the right"
    cart_cols = np.nonzero((moved == (40, 40, 40)).all(-1).any(0))[0]
    assert cart_cols.mean() > 120 + 40, "x = 1 moves the cart right by a fifth of the track"


def test_save_gif_keeps_every_frame_even_identical_ones(tmp_path):
    import imageio.v3 as iio

    still = np.zeros((20, 30, 3), np.uint8)
    frames = [still] * 5 + [still + 100] * 3        # GIF writers merge identical consecutive frames
    path = rl.save_gif(frames, tmp_path / "a.gif", fps=10)
    back = iio.imread(path, index=None)
    assert back.shape == (8, 20, 30, 3), "every frame should come back (the progress bar keeps them distinct)"
    assert np.abs(back[:, :-2].astype(int) - np.stack(frames)[:, :-2]).max() <= 8, "the picture above the bar is kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"], "written atomically: no temporary file left"
    many = rl.save_gif([still] * 70, tmp_path / "b.gif", fps=10)  # more frames than pixels of width
    assert len(iio.imread(many, index=None)) == 70, "still frames beyond the bar's resolution are kept too"


def test_atari_rom_check_finds_pong_and_explains_what_is_missing(monkeypatch):
    assert Path(rl.check_atari_rom("PongNoFrameskip-v4")).name == "pong.bin"
    with pytest.raises(BadParameter, match="not a registered Gymnasium id"):
        rl.check_atari_rom("Pongg-v9")
    from ale_py import roms

    def missing(game):
        raise FileNotFoundError(game)

    monkeypatch.setattr(roms, "get_rom_path", missing)
    with pytest.raises(MissingData, match="pip install ale-py==0.12.1"):
        rl.check_atari_rom("ALE/Breakout-v5")


def test_the_lessons_evaluation_loop_agrees_with_the_packages_episode_runner():
    """The lesson writes its own evaluate() (the recipe copies it); on the same seeds it must score what the package's
    run_episode() (which records the GIFs) scores."""
    nb = json.loads((ROOT / "notebooks" / "15_rl_stable_baselines3.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if c.get("id") == "3345506c")
    scope = {"np": np, "make_env": rl.make_env, "ENV_ID": "CartPole-v1", "test_seeds": [10_000, 10_001, 10_002]}
    exec(cell, scope)
    lesson = scope["evaluate"](scope["random_policy"], "CartPole-v1", [7, 8, 9])
    runner = np.array([rl.run_episode("CartPole-v1", s, scope["random_policy"]) for s in (7, 8, 9)])
    assert np.array_equal(lesson, runner) and len(lesson) == 3
    pushes_right = lambda obs, env: np.array([1])  # noqa: E731
    assert np.array_equal(scope["evaluate"](pushes_right, "CartPole-v1", [7]), [rl.run_episode("CartPole-v1", 7, pushes_right)])

