"""Train a Stable-Baselines3 agent (PPO or DQN) on a Gymnasium task and score it on held-out seeds.

The take-home recipe of the elective lesson 15 (notebooks/15_rl_stable_baselines3.ipynb). One file, pip packages
only (stable-baselines3, gymnasium, tqdm, ale-py for Atari, imageio for the GIF):

    # CartPole, solved in ~2-4 min on a laptop CPU (rl-zoo3's tuned hyper-parameters)
    python recipes/train_rl.py --env CartPole-v1 --algo ppo --timesteps 100000 --output-dir runs/rl/cartpole-ppo
    python recipes/train_rl.py --env CartPole-v1 --algo dqn --timesteps 50000 --output-dir runs/rl/cartpole-dqn
    # Atari (the ROMs ship in the ale-py wheel): a CNN policy on 84x84 grey frames, 4 stacked, on the GPU
    python recipes/train_rl.py --env PongNoFrameskip-v4 --algo ppo --timesteps 4000000 --device cuda --gif \\
        --output-dir runs/rl/pong-ppo

Seeds: the training environments are seeded SEED .. SEED+N_ENVS-1, and the evaluation episodes start from the seeds
EVAL_SEED .. EVAL_SEED+EVAL_EPISODES-1 (one fresh environment per seed), which must not overlap: the score is on
starting states the agent never trained from. A random policy is scored on the same seeds, so the gain is measured.
While it trains, a progress bar shows the mean return of the last 100 training episodes, and every --val-every steps a
line adds the greedy policy's return on the validation seeds VAL_SEED.. (disjoint from both; none by default on Atari,
where a game takes minutes). The evaluation loop and that callback are lesson 15's cells, copied here.

Writes to --output-dir: model.zip (reloads with PPO.load / DQN.load), curve.csv (timesteps, mean return of the last
100 training episodes), agent.gif with --gif (the first evaluation episode), and metrics.json. Every file is written
to a temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: rl-baselines3-zoo's tuned hyper-parameters (hyperparams/ppo.yml, dqn.yml). "lin_x": linear decay from x to 0.
# Copied from course_utils/topics/rl.py:PRESETS
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


# Copied from course_utils/topics/rl.py:is_atari
def is_atari(env_id: str) -> bool:
    """Atari ids: ``PongNoFrameskip-v4`` style (the wrappers skip frames themselves) or ``ALE/...``."""
    return "NoFrameskip" in env_id or env_id.startswith("ALE/")


# Copied from course_utils/topics/rl.py:linear
def linear(start: float):
    """A schedule SB3 calls with the remaining progress (1 at the start, 0 at the end)."""
    return lambda progress_remaining: progress_remaining * start


# Copied from course_utils/topics/rl.py:resolve
def resolve(hyper: dict) -> dict:
    """Turn the zoo's "lin_x" strings into schedules."""
    return {k: linear(float(v[4:])) if isinstance(v, str) and v.startswith("lin_") else v for k, v in hyper.items()}


# Copied from course_utils/topics/rl.py:build_env with build_env->make_env
def make_env(env_id: str, n_envs: int, seed: int, monitor_dir: str | None = None,
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


# Copied from course_utils/topics/rl.py:cartpole_frame
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


# Copied from course_utils/topics/rl.py:save_gif
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


# Copied from course_utils/topics/rl.py:run_episode
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


# The evaluation of lesson 15: one episode per held-out seed, greedy actions, a random policy on the same seeds.
# Copied from notebooks/15_rl_stable_baselines3.ipynb#3345506c:evaluate
def evaluate(act, env_id, seeds, max_frames=None):
    """One episode per seed, each in a fresh environment seeded with it; the episodes' true returns."""
    returns = []
    for seed in seeds:
        env = make_env(env_id, n_envs=1, seed=seed, max_episode_frames=max_frames)
        env.action_space.seed(seed)                  # the random policy's coin is seeded too
        obs = env.reset()
        while True:
            obs, reward, done, info = env.step(act(obs, env))
            if done[0] and "episode" in info[0]:     # Monitor's return of the finished episode (Atari: the game)
                returns.append(float(info[0]["episode"]["r"]))
                break
        env.close()
    return np.array(returns)


# Copied from notebooks/15_rl_stable_baselines3.ipynb#3345506c:greedy
def greedy(model):
    return lambda obs, env: model.predict(obs, deterministic=True)[0]


# Copied from notebooks/15_rl_stable_baselines3.ipynb#3345506c:random_policy
def random_policy(obs, env):
    return np.array([env.action_space.sample()])


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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help="Gymnasium id, e.g. CartPole-v1, PongNoFrameskip-v4, ALE/Breakout-v5")
    p.add_argument("--algo", choices=["ppo", "dqn"], default="ppo", help="PPO (on-policy) or DQN (replay buffer)")
    p.add_argument("--timesteps", type=int, default=100_000, help="environment steps to train for")
    p.add_argument("--n-envs", type=int, default=None, help="parallel environments (default: the zoo preset's)")
    p.add_argument("--seed", type=int, default=0, help="training seed: envs SEED .. SEED+N_ENVS-1, network init")
    p.add_argument("--eval-episodes", type=int, default=20, help="held-out evaluation episodes, one per seed")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first held-out seed (must not overlap training's)")
    p.add_argument("--val-episodes", type=int, default=None,
                   help="validation episodes scored while training, one per seed (default 5; 0 on Atari, where a game "
                        "takes minutes)")
    p.add_argument("--val-seed", type=int, default=5_000, help="first validation seed (disjoint from the others)")
    p.add_argument("--val-every", type=int, default=None,
                   help="environment steps between two validation scores (default: a twentieth of --timesteps)")
    p.add_argument("--max-episode-frames", type=int, default=None,
                   help="cap an evaluation episode (Atari: emulator frames, 4 per agent step; default: the env's)")
    p.add_argument("--device", default="auto", help="auto (CNN on cuda if present, MLP on cpu), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset hyper-parameter, e.g. --set n_epochs=10 (value parsed as JSON if it can be)")
    p.add_argument("--gif", action="store_true", help="record the first evaluation episode to agent.gif")
    p.add_argument("--tensorboard", default=None, help="folder for TensorBoard logs (SB3's tensorboard_log)")
    p.add_argument("--output-dir", default="runs/rl", help="where model.zip, curve.csv, agent.gif, metrics.json go")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    kind = "atari" if is_atari(args.env) else "classic"
    hyper = dict(PRESETS[(args.algo, kind)])
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            hyper[key] = json.loads(value)
        except json.JSONDecodeError:
            hyper[key] = value
    n_envs = args.n_envs or hyper.pop("n_envs")
    hyper.pop("n_envs", None)
    policy = hyper.pop("policy")
    train_seeds = set(range(args.seed, args.seed + n_envs))
    eval_seeds = list(range(args.eval_seed, args.eval_seed + args.eval_episodes))
    val_episodes = args.val_episodes if args.val_episodes is not None else (0 if kind == "atari" else 5)
    val_seeds = list(range(args.val_seed, args.val_seed + val_episodes))
    if train_seeds & set(eval_seeds):
        sys.exit(f"error: evaluation seeds {eval_seeds[0]}..{eval_seeds[-1]} overlap the training seeds "
                 f"{min(train_seeds)}..{max(train_seeds)}; pick another --eval-seed")
    if set(val_seeds) & (train_seeds | set(eval_seeds)):
        sys.exit(f"error: validation seeds {val_seeds[0]}..{val_seeds[-1]} overlap the training or evaluation seeds; "
                 "pick another --val-seed")
    import torch  # after the checks above: a wrong flag fails in a second, not after torch's import
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    # Copied from notebooks/15_rl_stable_baselines3.ipynb#6ad733c5:WatchTraining
    class WatchTraining(BaseCallback):
        """Live feedback while SB3 trains `env_id`: a progress bar over the environment steps showing the mean return of the
        last 100 training episodes (after every rollout), and every `val_every` steps a printed line with that return and,
        if `val_seeds` is not empty, the greedy policy's mean return on them. Kept for the plots, logged to TensorBoard."""

        def __init__(self, env_id, val_every, val_seeds):
            super().__init__()
            self.env_id, self.val_every, self.val_seeds, self.next_val = env_id, val_every, val_seeds, val_every
            self.curves = {"training episodes (last 100)": [], "validation seeds": []}
            self.steps = {"training episodes (last 100)": [], "validation seeds": []}

        def _on_training_start(self):
            self.bar = tqdm(total=self.locals["total_timesteps"] - self.model.num_timesteps, unit="step", desc=self.env_id)

        def _on_step(self):
            return True

        def _on_rollout_end(self):
            self.bar.update(self.num_timesteps - self.bar.n)
            train = np.mean([e["r"] for e in self.model.ep_info_buffer]) if self.model.ep_info_buffer else float("nan")
            if self.model.ep_info_buffer:
                self.steps["training episodes (last 100)"].append(self.num_timesteps)
                self.curves["training episodes (last 100)"].append(train)
                self.bar.set_postfix(return_last_100=f"{train:.1f}")
            if self.num_timesteps >= self.next_val:
                self.next_val = (self.num_timesteps // self.val_every + 1) * self.val_every
                line = f"step {self.num_timesteps:>9,}: training episodes " + (f"{train:6.1f}" if self.model.ep_info_buffer
                                                                             else "(none finished yet)")
                if self.val_seeds:
                    val = evaluate(greedy(self.model), self.env_id, self.val_seeds).mean()
                    self.steps["validation seeds"].append(self.num_timesteps)
                    self.curves["validation seeds"].append(val)
                    self.logger.record("eval/validation_return", val)
                    line += f", validation {val:6.1f}"
                print(line)

        def _on_training_end(self):
            self.bar.close()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if policy == "CnnPolicy" and torch.cuda.is_available() else "cpu"
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    env = make_env(args.env, n_envs, args.seed)
    algo = {"ppo": PPO, "dqn": DQN}[args.algo]
    model = algo(policy, env, seed=args.seed, device=device, verbose=0, tensorboard_log=args.tensorboard,
                 **resolve(hyper))
    # live feedback: a progress bar with the mean return of the last 100 training episodes, a line every --val-every
    # steps with the greedy policy's return on the validation seeds
    watch = WatchTraining(args.env, args.val_every or max(args.timesteps // 20, 1), val_seeds)
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps, callback=watch)
    train_seconds = time.perf_counter() - start
    env.close()

    zip_tmp = out / ".model.tmp.zip"
    model.save(zip_tmp)
    os.replace(zip_tmp, out / "model.zip")
    reloaded = algo.load(out / "model.zip", device=device)

    trained = greedy(reloaded)
    start = time.perf_counter()
    returns = evaluate(trained, args.env, eval_seeds, args.max_episode_frames)
    eval_seconds = time.perf_counter() - start
    random_returns = evaluate(random_policy, args.env, eval_seeds, args.max_episode_frames)
    gif = None
    if args.gif:
        frames = []
        run_episode(args.env, eval_seeds[0], trained, args.max_episode_frames, frames=frames,
                    every=2 if is_atari(args.env) else 1)
        gif = str(save_gif(frames[:300], out / "agent.gif"))

    with atomic_write(out / "curve.csv", "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timesteps", "mean_return_last_100"])
        key = "training episodes (last 100)"
        writer.writerows(zip(watch.steps[key], watch.curves[key]))
    metrics = {
        "env": args.env, "algo": args.algo, "policy": policy, "timesteps": int(model.num_timesteps),
        "n_envs": n_envs, "device": device, "seed": args.seed, "train_seeds": sorted(train_seeds),
        "eval_seeds": eval_seeds, "eval_mean_return": float(returns.mean()), "eval_std_return": float(returns.std()),
        "eval_returns": returns.tolist(), "random_mean_return": float(random_returns.mean()),
        "random_returns": random_returns.tolist(), "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1), "val_seeds": val_seeds,
        "curve": [list(row) for row in zip(watch.steps["training episodes (last 100)"],
                                           watch.curves["training episodes (last 100)"])],
        "validation": [list(row) for row in zip(watch.steps["validation seeds"], watch.curves["validation seeds"])],
        "gif": gif,
        "hyperparameters": {k: (v if isinstance(v, (int, float, str, dict, list)) else str(v))
                            for k, v in hyper.items()},
        "versions": {"torch": torch.__version__, "stable_baselines3": __import__("stable_baselines3").__version__,
                     "gymnasium": __import__("gymnasium").__version__},
    }
    with atomic_write(out / "metrics.json", "w") as handle:
        json.dump(metrics, handle, indent=1)
    print(f"{args.algo.upper()} on {args.env}: {model.num_timesteps} steps in {train_seconds:.0f} s; held-out return "
          f"{returns.mean():.1f} ± {returns.std():.1f} over {len(eval_seeds)} seeds (random policy "
          f"{random_returns.mean():.1f}); {out / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
