"""Tiny runs of every agent (seconds each), and a small Minari dataset, for the run, fault and input tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from mixrl.agents import a2pr, dqn, ppo, rlif, sac, td3_bc
from mixrl.datasets import CollectArgs, collect

DATASET_ID = "mixrl/pendulum-v1/random-v0"
REFS = {"ref_min_score": -1200.0, "ref_max_score": -100.0}


# Settings of one-minute tables of runs (export, policy files): every agent at its smallest, no evaluations.
COMMON = dict(eval_every=0, eval_episodes=1, checkpoint_every=0)
OFFLINE = dict(dataset_id=DATASET_ID, total_steps=4, batch_size=16, **COMMON)
SAC = dict(env_id="Pendulum-v1", total_timesteps=64, learning_starts=32, batch_size=16, hidden_sizes=(16, 16), **COMMON)
PPO = dict(env_id="Pendulum-v1", num_steps=64, num_minibatches=2, update_epochs=1, total_timesteps=64, **COMMON)


def sac_args(tmp_path, **kw) -> sac.Args:
    base = dict(env_id="Pendulum-v1", total_timesteps=200, learning_starts=100, batch_size=16, hidden_sizes=(16, 16))
    return sac.Args(**{**base, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 100, **_root(tmp_path), **kw})


def ppo_args(tmp_path, **kw) -> ppo.Args:
    base = dict(env_id="Pendulum-v1", total_timesteps=128, num_steps=32, num_minibatches=2, update_epochs=2)
    return ppo.Args(**{**base, "hidden_sizes": (16, 16), "eval_every": 0, "eval_episodes": 1, **_root(tmp_path), **kw})


def rlpd_args(tmp_path, **kw) -> rlif.Args:
    base = dict(env_id="Pendulum-v1", intervention="none", total_timesteps=120, learning_starts=60, utd_ratio=2)
    base.update(batch_size=16, hidden_sizes=(16, 16), num_critics=4, log_every=50)
    return rlif.Args(**{**base, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 60, **_root(tmp_path), **kw})


def dqn_args(tmp_path, **kw) -> dqn.Args:
    base = dict(env_id="CartPole-v1", total_timesteps=200, learning_starts=50, batch_size=16, hidden_sizes=(16,))
    return dqn.Args(**{**base, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 100, **_root(tmp_path), **kw})


def td3_bc_args(tmp_path, **kw) -> td3_bc.Args:
    base = dict(dataset_id=DATASET_ID, seed=3, total_steps=6, batch_size=16, hidden_sizes=(16, 16), log_every=2)
    return td3_bc.Args(**{**base, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 3, **_root(tmp_path), **kw})


def a2pr_args(tmp_path, **kw) -> a2pr.Args:
    base = dict(dataset_id=DATASET_ID, seed=3, total_steps=6, batch_size=16, actor_hidden=(16,), critic_hidden=(16,))
    base.update(value_hidden=(16,), vae_hidden=(16,), log_every=2)
    return a2pr.Args(**{**base, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 3, **_root(tmp_path), **kw})


def _root(tmp_path) -> dict:
    return {"run_root": str(tmp_path / "runs")}


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A datasets root holding a 300-step uniform-random Pendulum dataset."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        collect(CollectArgs("random", env_id="Pendulum-v1", steps=300, **REFS))
    return root


@pytest.fixture
def datasets(dataset_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset_root))
    return dataset_root


class ShiftedDiscreteEnv(gym.Env):
    """Actions Discrete(3, start=-1); the env refuses actions outside its space. Reward = action."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(3, start=-1)

    def __init__(self, render_mode=None):
        self.t, self.episode = 0, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), f"action {action} outside {self.action_space}"
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(action), False, False, {}


class UnboundedActionEnv(ShiftedDiscreteEnv):
    """Continuous actions without bounds."""

    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


class CountingEnv(ShiftedDiscreteEnv):
    """obs = (time step, episode count), integers that normalisation would turn into fractions; actions in [-1, 1]."""

    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return np.array([self.t, self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, self.episode], np.float32), float(action[0]), False, False, {}


for _name, _cls in (
    ("ShiftedDiscrete", ShiftedDiscreteEnv),
    ("UnboundedAction", UnboundedActionEnv),
    ("Counting", CountingEnv),
):
    if f"mixrl_test/{_name}-v0" not in gym.registry:
        gym.register(id=f"mixrl_test/{_name}-v0", entry_point=_cls, max_episode_steps=5 if _name == "Counting" else 20)
