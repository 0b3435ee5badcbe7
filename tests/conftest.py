"""Shared fixtures: a temporary working directory (MuJoCo writes MUJOCO_LOG.TXT there) and small test envs."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)


class CounterEnv(gym.Env):
    """obs = (time step, episode count); terminates at `terminate_at` (if set), reward = time step.

    `nan_reward_after` makes the reward NaN from that global step on (to test non-finite loss handling).
    """

    def __init__(self, terminate_at: int | None = None, nan_reward_after: int | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.terminate_at, self.nan_reward_after = terminate_at, nan_reward_after
        self.t, self.episode, self.global_t = 0, -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.global_t += 1
        reward = float(self.t)
        if self.nan_reward_after is not None and self.global_t > self.nan_reward_after:
            reward = float("nan")
        return self._obs(), reward, self.terminate_at is not None and self.t >= self.terminate_at, False, {}


if "mixrl_test/Counter-v0" not in gym.registry:
    gym.register(id="mixrl_test/Counter-v0", entry_point=CounterEnv, max_episode_steps=5)


@pytest.fixture(autouse=True)
def _tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
