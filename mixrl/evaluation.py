"""Deterministic rollouts, returns and MP4 videos; `Policy`, the callable that load_policy() returns.

Rebuilding a network from a checkpoint's policy spec is `mixrl.policies.loading`; loading frozen bases and experts
for a learner is `mixrl.pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.checkpoints import atomic_write_text
from mixrl.envs.factory import make_env
from mixrl.errors import UsageError
from mixrl.policies.files import read_policy, run_dir_of
from mixrl.policies.loading import build_actor
from mixrl.policies.mixture import ACTOR_EVAL_RULES


class Policy:
    """Maps numpy observations (single or batched) to actions in the env's own action space.

    Wraps a head with a `deterministic(obs)` method; applies the frozen observation normalisation and
    rescales [-1, 1] actions to the env's bounds.
    """

    def __init__(
        self,
        actor: nn.Module,
        observation_space: gym.spaces.Box,
        action_space: gym.Space,
        obs_normalizer: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        self.actor, self.observation_space, self.action_space = actor, observation_space, action_space
        self.obs_normalizer, self.device = obs_normalizer, torch.device(device)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        obs_shape = self.observation_space.shape
        single = obs.shape == obs_shape
        if not single and obs.shape[1:] != obs_shape:
            raise ValueError(
                f"Observation of shape {obs.shape} does not match the policy's {obs_shape} (or (N, *{obs_shape}))."
            )
        batch = obs.reshape(-1, *obs_shape)
        if self.obs_normalizer is not None:
            norm = self.obs_normalizer
            batch = np.clip(
                (batch - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"]), -norm["clip"], norm["clip"]
            )
        with torch.no_grad():
            x = torch.as_tensor(batch.reshape(len(batch), -1), dtype=torch.float32, device=self.device)
            action = self.actor.deterministic(x).cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            low, high = self.action_space.low, self.action_space.high
            action = (low + 0.5 * (np.clip(action, -1.0, 1.0) + 1.0) * (high - low)).astype(self.action_space.dtype)
        else:
            start = getattr(self.action_space, "start", 0)  # Discrete(n, start): index i is action start + i
            action = (action.astype(np.int64) + start).reshape(len(batch), *self.action_space.shape)
        return action[0] if single else action

    def reset(self) -> None:
        """Start a new episode: empties the action queues of chunked policies (a no-op for the others)."""
        if hasattr(self.actor, "reset"):
            self.actor.reset()


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", eval_rule: str | None = None, trusted: bool = False
) -> Policy:
    """Rebuild the evaluation policy of a policy folder, run directory or checkpoint file: `load_policy(path)(obs)
    -> action`. A run directory's policy/ folder is preferred, else its checkpoints/final.pt (then latest.pt).
    Nothing is unpickled: a checkpoint that needs pickle (from before mixrl stored plain data), or a policy class
    outside mixrl's policy modules, is refused with one line unless `trusted` (only for files whose author you
    trust). `eval_rule` replaces a mixture policy's saved rule (one of mixrl.policies.mixture.ACTOR_EVAL_RULES).
    Checkpoints are read onto the CPU (their replay buffers stay there); the actor alone moves to `device`."""
    return policy_from_checkpoint(read_policy(path, trusted), device, eval_rule, trusted)


def policy_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu", eval_rule: str | None = None, trusted: bool = False
) -> Policy:
    """The Policy of a checkpoint-like dict (load_checkpoint's, or mixrl.policies.files.read_policy's)."""
    actor = build_actor(ckpt["policy"], device, trusted)
    if eval_rule is not None:
        if not hasattr(actor, "eval_rule"):
            raise UsageError(f"--eval-rule applies to mixture policies only; this one is {ckpt['policy']['class']}.")
        if eval_rule not in ACTOR_EVAL_RULES:
            raise UsageError(f"--eval-rule {eval_rule!r} is not one of: {', '.join(ACTOR_EVAL_RULES)}.")
        actor.eval_rule = eval_rule
    check_fits(actor, ckpt["observation_space"], ckpt["action_space"], ckpt["policy"]["class"])
    return Policy(actor, ckpt["observation_space"], ckpt["action_space"], ckpt.get("obs_normalizer"), device)


def check_fits(actor: nn.Module, observation_space: gym.Space, action_space: gym.Space, name: str) -> None:
    """One UsageError unless `actor` maps one observation of `observation_space` to one action of `action_space`
    (a dry run on a zero observation, with the RNG forked and the action queues emptied after)."""
    device = next(iter(actor.state_dict().values()), torch.zeros(0)).device
    obs = torch.zeros(1, int(np.prod(observation_space.shape)), device=device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            action = actor.deterministic(obs)
    except (RuntimeError, ValueError, IndexError) as err:
        reason = " ".join(str(err).split())[:120]
        raise UsageError(f"{name} does not act on observations of {observation_space} ({reason}).") from None
    finally:
        if hasattr(actor, "reset"):
            actor.reset()
    size = int(np.prod(action_space.shape)) if isinstance(action_space, gym.spaces.Box) else None
    if tuple(action.shape) != ((1, size) if size is not None else (1,)):
        raise UsageError(f"{name} gives actions of shape {list(action.shape[1:])}, which do not fit {action_space}.")


def _make_render_env(
    env_id: str, env_kwargs: dict[str, Any], size: tuple[int, int] | None
) -> tuple[gym.Env, tuple[int, int] | None]:
    """An rgb_array env that renders at `size` (width, height), or at its own default size when `size` is None.
    Also returns the size its frames still need resizing to (envs without width/height arguments), else None."""
    if size is None:
        return make_env(env_id, render_mode="rgb_array", **env_kwargs), None
    try:
        return make_env(env_id, render_mode="rgb_array", width=size[0], height=size[1], **env_kwargs), None
    except UsageError:  # envs without width/height arguments (non-MuJoCo): frames are resized instead
        return make_env(env_id, render_mode="rgb_array", **env_kwargs), tuple(size)


def _frame(env: gym.Env, resize: tuple[int, int] | None, overlay: bool, step: int, total: float) -> np.ndarray:
    """The env's RGB frame, resized to `resize` (width, height) if given, with the step counter and the return so
    far drawn in its top-left corner when `overlay`."""
    frame = env.render()
    if resize is None and not overlay:
        return frame
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(frame)
    if resize is not None:
        image = image.resize(resize, Image.Resampling.BILINEAR)
    if overlay:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(10, image.height // 24))
        text = f"step {step}  return {total:.1f}"
        left, top, right, bottom = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def evaluate(
    policy: Policy,
    env_id: str,
    episodes: int = 10,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    video_dir: str | Path | None = None,
    video_episodes: int = 1,
    max_video_frames: int = 1000,
    video_size: tuple[int, int] | None = None,
    video_overlay: bool = False,
) -> dict[str, Any]:
    """Run `episodes` deterministic episodes (seeds seed, seed + 1, ...); optionally write MP4s of the first ones.

    Returns {"mean_return", "std_return", "returns", "lengths", "videos"}, and "success_rate" where the env
    reports info["is_success"]. A policy with a `reset()` method has it called at the start of each episode.
    """
    env_kwargs = dict(env_kwargs or {})
    env = make_env(env_id, **env_kwargs)
    render_env, resize = _make_render_env(env_id, env_kwargs, video_size) if video_dir is not None else (None, None)
    returns, lengths, videos, successes = [], [], [], []
    for episode in range(episodes):
        recording = render_env is not None and episode < video_episodes
        current = render_env if recording else env
        obs, _ = current.reset(seed=seed + episode)
        if hasattr(policy, "reset"):  # stateful policies (action-chunk queues) start each episode afresh
            policy.reset()
        frames = [_frame(current, resize, video_overlay, 0, 0.0)] if recording else []
        total, length, done, info = 0.0, 0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = current.step(policy(obs))
            total += float(reward)
            length += 1
            done = terminated or truncated
            if recording and len(frames) < max_video_frames:
                frames.append(_frame(current, resize, video_overlay, length, total))
        returns.append(total)
        lengths.append(length)
        if "is_success" in info:
            successes.append(bool(info["is_success"]))
        if recording:
            videos.append(str(write_video(frames, Path(video_dir) / f"episode_{episode}.mp4", current)))
    env.close()
    if render_env is not None:
        render_env.close()
    return {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "returns": returns,
        "lengths": lengths,
        "videos": videos,
        **({"success_rate": float(np.mean(successes))} if len(successes) == episodes else {}),
    }


def write_video(frames: list[np.ndarray], path: Path, env: gym.Env | None = None) -> Path:
    """Encode RGB frames to an H.264 MP4 at the env's render fps."""
    import imageio.v2 as imageio

    fps = (env.metadata.get("render_fps") if env is not None else None) or 30
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path


def evaluate_checkpoint(
    path: str | Path,
    episodes: int = 10,
    seed: int = 0,
    video: bool = False,
    device: str = "cpu",
    max_video_frames: int = 1000,
    eval_rule: str | None = None,
    video_size: tuple[int, int] | None = None,
    video_overlay: bool = False,
    trusted: bool = False,
) -> dict[str, Any]:
    """`mixrl eval`: evaluate a policy folder, run directory or checkpoint (as load_policy reads them, `trusted`
    included) and write eval.json (and videos/) into the run directory (a policy folder's own, else the folder).
    Stochastic mixture rules draw from torch's stream seeded with `seed`, so a call repeats exactly."""
    ckpt = read_policy(path, trusted)  # onto the CPU: the actor alone moves to `device`
    file = Path(ckpt["source"])
    run_dir = run_dir_of(file)
    policy = policy_from_checkpoint(ckpt, device, eval_rule, trusted)
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
        torch.manual_seed(seed)
        result = evaluate(
            policy,
            ckpt["env_id"],
            episodes,
            seed,
            ckpt.get("env_kwargs"),
            video_dir=run_dir / "videos" if video else None,
            max_video_frames=max_video_frames,
            video_size=video_size,
            video_overlay=video_overlay,
        )
    result.update(checkpoint=str(file), env_id=ckpt["env_id"], algo=ckpt["algo"], seed=seed, episodes=episodes)
    if hasattr(policy.actor, "eval_rule"):
        result["eval_rule"] = policy.actor.eval_rule
    if hasattr(policy.actor, "base"):  # a residual policy: its frozen base alone, on the same episodes
        base = Policy(policy.actor.base, policy.observation_space, policy.action_space, None, device)
        base_result = evaluate(base, ckpt["env_id"], episodes, seed, ckpt.get("env_kwargs"))
        result["base"] = {k: v for k, v in base_result.items() if k in ("mean_return", "std_return", "success_rate")}
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2))
    return result
