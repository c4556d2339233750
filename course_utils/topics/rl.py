"""Plumbing for the reinforcement-learning elective (lesson 15): environments, the Atari ROM check, GIFs.

The code lives once, in the take-home recipe ``recipes/train_rl.py`` (one file a learner copies); this module loads
it from there, so the lesson and the recipe cannot drift apart — the pattern of :mod:`course_utils.topics.gpt`.
What the lesson teaches (the evaluation loop, the seeds, the training callbacks) is written in its cells.
The one addition: an Atari game whose ROM is missing stops with the course's one-sentence :class:`MissingData`.
"""

from __future__ import annotations


from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData
from course_utils.core.paths import REPO_ROOT, load_recipe

RECIPE = REPO_ROOT / "recipes" / "train_rl.py"


_r = load_recipe("train_rl")
PRESETS = _r.PRESETS
is_atari = _r.is_atari
linear = _r.linear
resolve = _r.resolve
cartpole_frame = _r.cartpole_frame
save_gif = _r.save_gif
run_episode = _r.run_episode


def check_atari_rom(env_id: str) -> str:
    """The path of the ROM ``env_id`` needs (ale-py ships them in its wheel); one sentence if it is not there."""
    import ale_py
    import gymnasium as gym
    from ale_py import roms

    gym.register_envs(ale_py)
    if env_id not in gym.registry:
        raise BadParameter(f"{env_id!r} is not a registered Gymnasium id; Atari ids look like 'PongNoFrameskip-v4' "
                           "or 'ALE/Pong-v5'.")
    game = gym.registry[env_id].kwargs.get("game")
    try:
        return str(roms.get_rom_path(game))
    except Exception as err:  # ale-py raises its own error types across versions
        raise MissingData(f"The ROM for {game!r} is not in this ale-py install ({err}); ale-py >= 0.9 ships the ROMs "
                          f"in its wheel: `pip install ale-py==0.12.1`, or {SMOKE_HINT}.") from None


def make_env(env_id: str, n_envs: int, seed: int, monitor_dir: str | None = None,
             max_episode_frames: int | None = None, render: bool = False):
    """The recipe's environments (a seeded ``VecEnv`` with ``Monitor``; Atari wrappers and 4 stacked frames for
    Atari ids), after checking an Atari game's ROM is installed."""
    if is_atari(env_id):
        check_atari_rom(env_id)
    return _r.make_env(env_id, n_envs, seed, monitor_dir=monitor_dir, max_episode_frames=max_episode_frames,
                       render=render)


__all__ = ["PRESETS", "is_atari", "linear", "resolve", "cartpole_frame", "save_gif", "run_episode", "make_env",
           "check_atari_rom"]
