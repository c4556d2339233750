"""Plumbing for the reinforcement-learning elective (lesson 15): environments, the Atari ROM check, GIFs.

What the lesson teaches (REINFORCE, the evaluation loop, the seeds, the training callback) is written in its cells.
This module is the one source of the plumbing around it; the take-home recipe ``recipes/train_rl.py`` holds marked
copies of it (``# Copied from course_utils/topics/rl.py:<name>``, held to this file by ``make check-copies``).
The one thing only the course adds: an Atari game whose ROM is missing stops with one :class:`MissingData` sentence.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from course_utils.core.errors import SMOKE_HINT, BadParameter, MissingData

#: rl-baselines3-zoo's tuned hyper-parameters (hyperparams/ppo.yml, dqn.yml). "lin_x": linear decay from x to 0.
PRESETS = {
    ("ppo", "classic"): dict(n_envs=8, policy="MlpPolicy", n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                             n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ("dqn", "classic"): dict(n_envs=1, policy="MlpPolicy", learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
                             learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256,
                             gradient_steps=128, exploration_fraction=0.16, exploration_final_eps=0.04,
                             policy_kwargs=dict(net_arch=[256, 256])),
    ("ppo", "atari"): dict(n_envs=8, policy="CnnPolicy", n_steps=128, n_epochs=4, batch_size=256,
                           learning_rate="lin_2.5e-4", clip_range="lin_0.1", vf_coef=0.5, ent_coef=0.01),
    ("dqn", "atari"): dict(n_envs=1, policy="CnnPolicy", buffer_size=100_000, learning_rate=1e-4, batch_size=32,
                           learning_starts=100_000, target_update_interval=1000, train_freq=4, gradient_steps=1,
                           exploration_fraction=0.1, exploration_final_eps=0.01, optimize_memory_usage=False),
}


def is_atari(env_id: str) -> bool:
    """Atari ids: ``PongNoFrameskip-v4`` style (the wrappers skip frames themselves) or ``ALE/...``."""
    return "NoFrameskip" in env_id or env_id.startswith("ALE/")


def linear(start: float):
    """A schedule SB3 calls with the remaining progress (1 at the start, 0 at the end)."""
    return lambda progress_remaining: progress_remaining * start


def resolve(hyper: dict) -> dict:
    """Turn the zoo's "lin_x" strings into schedules."""
    return {k: linear(float(v[4:])) if isinstance(v, str) and v.startswith("lin_") else v for k, v in hyper.items()}


def build_env(env_id: str, n_envs: int, seed: int, monitor_dir: str | None = None,
              max_episode_frames: int | None = None, render: bool = False):
    """A VecEnv of ``n_envs`` copies seeded ``seed .. seed+n_envs-1``, each wrapped in a ``Monitor`` (true episode
    returns in ``info["episode"]``). Atari: SB3's AtariWrapper (no-op starts, frame skip 4, 84x84 grey, clipped
    rewards, end of life = end of episode for training) and the last 4 frames stacked."""
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env

    env_kwargs = {}
    if max_episode_frames:
        env_kwargs["max_episode_steps"] = max_episode_frames
    if render:
        env_kwargs["render_mode"] = "rgb_array"
    if is_atari(env_id):
        import ale_py
        import gymnasium as gym
        from stable_baselines3.common.vec_env import VecFrameStack

        gym.register_envs(ale_py)  # ale-py >= 0.9 ships the ROMs in its wheel; this registers ALE/* and *-v4 ids
        if env_id.startswith("ALE/"):
            env_kwargs["frameskip"] = 1  # v5 ids skip 4 frames themselves; the AtariWrapper does it here
        env = make_atari_env(env_id, n_envs=n_envs, seed=seed, monitor_dir=monitor_dir, env_kwargs=env_kwargs)
        return VecFrameStack(env, n_stack=4)
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, monitor_dir=monitor_dir, env_kwargs=env_kwargs)


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
    """:func:`build_env` (a seeded ``VecEnv`` with ``Monitor``; Atari wrappers and 4 stacked frames for Atari ids), after
    checking an Atari game's ROM is installed."""
    if is_atari(env_id):
        check_atari_rom(env_id)
    return build_env(env_id, n_envs, seed, monitor_dir=monitor_dir, max_episode_frames=max_episode_frames, render=render)


def cartpole_frame(state, width: int = 240, height: int = 120) -> np.ndarray:
    """Draw CartPole from its observation (cart position, velocity, pole angle, angular velocity) as an RGB array:
    Gymnasium's own renderer needs pygame, this needs nothing."""
    x, _, theta, _ = (float(v) for v in state)
    img = np.full((height, width, 3), 255, np.uint8)
    scale = width / 4.8                              # the track is x in [-2.4, 2.4]
    ground = int(height * 0.8)
    img[ground:ground + 2] = 60
    cx = int(width / 2 + x * scale)
    cart_w, cart_h = 24, 12
    img[max(ground - cart_h, 0):ground, max(cx - cart_w // 2, 0):max(min(cx + cart_w // 2, width), 0)] = (40, 40, 40)
    length = 0.5 * 2 * scale                         # the pole is 1.0 long (half-length 0.5)
    for t in np.linspace(0, 1, 80):
        px = int(round(cx + t * length * np.sin(theta)))
        py = int(round(ground - cart_h - t * length * np.cos(theta)))
        if 0 <= py < height:
            img[max(py - 1, 0):py + 2, max(px - 2, 0):max(min(px + 3, width), 0)] = (200, 120, 60)
    return img


def save_gif(frames, path, fps: int = 25) -> Path:
    """Write frames (HxWx3 uint8) to an animated GIF, atomically (a temporary name, then a rename).

    A 2-pixel red bar along the bottom grows with the episode: it shows how far in a frame is. GIF writers merge
    identical consecutive frames, so a still moment would lose frames; the bar alone cannot keep them apart when there
    are more frames than pixels of width, so the bottom-left pixel also alternates black and white from frame to frame."""
    import imageio.v3 as iio

    frames = [np.array(f, dtype=np.uint8, copy=True) for f in frames]
    for i, frame in enumerate(frames):
        frame[-2:, : max(1, round(frame.shape[1] * (i + 1) / len(frames)))] = (220, 30, 30)
        frame[-1, 0] = 255 * (i % 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
    return path


def run_episode(env_id: str, seed: int, act, max_episode_frames: int | None = None, frames: list | None = None,
                every: int = 1) -> float:
    """Play one episode from ``seed`` with ``act(obs, env) -> actions``; returns its true return (the Monitor's,
    before reward clipping and across Atari lives). Appends every ``every``-th frame to ``frames`` if given."""
    env = make_env(env_id, 1, seed, max_episode_frames=max_episode_frames, render=frames is not None and is_atari(env_id))
    env.action_space.seed(seed)
    obs, step = env.reset(), 0
    try:
        while True:
            if frames is not None and step % every == 0:
                frames.append(env.get_images()[0] if is_atari(env_id) else cartpole_frame(obs[0]))
            obs, _, done, info = env.step(act(obs, env))
            step += 1
            if done[0] and "episode" in info[0]:  # Atari: a lost life ends a training episode, not the game
                return float(info[0]["episode"]["r"])
    finally:
        env.close()


__all__ = ["PRESETS", "is_atari", "linear", "resolve", "build_env", "check_atari_rom", "make_env", "cartpole_frame",
           "save_gif", "run_episode"]
