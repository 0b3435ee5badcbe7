"""Loading a local Minari dataset as transitions on a device, for the offline agents (td3_bc, a2pr)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mixrl.buffers import ReplayBuffer
from mixrl.datasets.storage import corrupt_message, datasets_root, env_of, normalized_score, open_dataset, read_episodes
from mixrl.envs.factory import make_env, parse_env_kwargs
from mixrl.errors import UsageError


@dataclass
class OfflineDataset:
    """A dataset's transitions in a ReplayBuffer on one device, with what an offline agent needs around them.

    Observations are z-scored with the dataset's statistics when loaded with normalize_obs (the same transform,
    stored as `obs_normalizer`, is applied by `mixrl.evaluation.Policy` at evaluation); actions are in [-1, 1].
    """

    dataset_id: str
    env_id: str | None
    env_kwargs: dict[str, Any]
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box
    buffer: ReplayBuffer
    obs_normalizer: dict[str, Any] | None
    ref_min_score: float | None
    ref_max_score: float | None
    episode_lengths: list[int]

    @property
    def num_episodes(self) -> int:
        return len(self.episode_lengths)

    def normalized_score(self, returns: float) -> float | None:
        """D4RL score of a mean return, or None when the dataset records no reference scores."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return float(normalized_score(returns, self.ref_min_score, self.ref_max_score))

    def check_env(self, env_id: str, env_kwargs: dict[str, Any]) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """The env's (observation, action) spaces, after checking that they match the dataset's."""
        env = make_env(env_id, **env_kwargs)
        obs_space, action_space = env.observation_space, env.action_space
        env.close()
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape != self.action_space.shape:
            raise UsageError(
                f"Dataset {self.dataset_id} has actions {self.action_space}, but {env_id} has {action_space}: "
                "evaluate on the dataset's environment (leave --env-id unset)."
            )
        if obs_space.shape != self.observation_space.shape or not (
            np.allclose(action_space.low, self.action_space.low)
            and np.allclose(action_space.high, self.action_space.high)
        ):
            raise UsageError(
                f"Dataset {self.dataset_id} (observations {self.observation_space.shape}, actions in "
                f"[{self.action_space.low}, {self.action_space.high}]) does not match {env_id} (observations "
                f"{obs_space.shape}, actions in [{action_space.low}, {action_space.high}]): evaluate on the "
                "dataset's environment (leave --env-id unset)."
            )
        return obs_space, action_space

    def resolve_env(
        self, env_id: str | None, env_kwargs: Sequence[str]
    ) -> tuple[str, dict[str, Any], gym.spaces.Box, gym.spaces.Box]:
        """(env id, kwargs, observation space, action space) of the evaluation env: the dataset's own env with its
        kwargs unless `env_id` names another, the --env-kwargs items merged over them, spaces checked to match."""
        env_id = env_id or self.env_id
        if env_id is None:
            raise UsageError(f"Dataset {self.dataset_id} records no environment: pass --env-id.")
        dataset_kwargs = self.env_kwargs if env_id == self.env_id else {}
        kwargs = {**dataset_kwargs, **parse_env_kwargs(env_kwargs)}
        return env_id, kwargs, *self.check_env(env_id, kwargs)


def load_dataset(
    dataset_id: str,
    device: str | torch.device = "cpu",
    normalize_obs: bool = True,
    std_epsilon: float = 1e-3,
    num_episodes: int = 0,
) -> OfflineDataset:
    """Load any local Minari dataset with flat Box spaces as transitions on `device`.

    normalize_obs: s <- (s - mean) / (std + std_epsilon) with the mean and std of the dataset's observations
    (CORL's state normalisation); the statistics travel as `obs_normalizer` {mean, var = (std + eps)^2,
    epsilon 0, clip inf}, the format that `mixrl.evaluation.Policy` applies. num_episodes > 0 keeps the first N
    episodes (statistics included).
    """
    dataset = open_dataset(dataset_id)
    obs_space, action_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
        raise UsageError(
            f"Dataset {dataset_id} has spaces {obs_space} / {action_space}; mixrl's offline agents need Box "
            "observations and Box actions."
        )
    if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise UsageError(f"Dataset {dataset_id} has unbounded actions {action_space}; mixrl actors need bounds.")
    episodes = read_episodes(dataset)
    if not episodes:
        raise UsageError(f"Dataset {dataset_id} holds no episodes.")
    if num_episodes > len(episodes):
        raise UsageError(f"--num-episodes {num_episodes}: {dataset_id} holds only {len(episodes)}.")
    episodes = episodes[: num_episodes or None]

    def stack(key: str, part: slice = slice(None)) -> np.ndarray:
        return np.concatenate([np.asarray(e[key][part], np.float64).reshape(len(e["rewards"]), -1) for e in episodes])

    obs, next_obs = stack("observations", slice(None, -1)), stack("observations", slice(1, None))
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
    actions = 2.0 * (stack("actions") - low) / (high - low) - 1.0
    rewards, terminated = stack("rewards")[:, 0], stack("terminations")[:, 0]
    if obs.shape[1] != int(np.prod(obs_space.shape)) or actions.shape[1] != int(np.prod(action_space.shape)):
        raise UsageError(
            corrupt_message(dataset_id, datasets_root() / dataset_id, ValueError("shapes differ from spaces"))
        )
    if not all(np.isfinite(x).all() for x in (obs, next_obs, actions, rewards)):
        raise UsageError(corrupt_message(dataset_id, datasets_root() / dataset_id, ValueError("non-finite values")))

    obs_normalizer = None
    if normalize_obs:
        mean, std = obs.mean(0), obs.std(0) + std_epsilon
        obs, next_obs = (obs - mean) / std, (next_obs - mean) / std
        obs_normalizer = {"mean": mean, "var": std**2, "epsilon": 0.0, "clip": np.inf, "count": len(obs)}
    buffer = ReplayBuffer(len(obs), obs.shape[1], actions.shape[1], device)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=buffer.device)

    buffer.add(tensor(obs), tensor(actions), tensor(rewards), tensor(next_obs), tensor(terminated))
    env_id, env_kwargs = env_of(dataset)
    metadata = dataset.storage.metadata
    return OfflineDataset(
        dataset_id,
        env_id,
        env_kwargs,
        obs_space,
        action_space,
        buffer,
        obs_normalizer,
        metadata.get("ref_min_score"),
        metadata.get("ref_max_score"),
        [len(e["rewards"]) for e in episodes],
    )
