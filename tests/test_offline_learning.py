"""Learning test of the offline agents: TD3+BC learns to balance InvertedPendulum-v5 from a small dataset of a
noisy PD controller's episodes (a uniform-random policy scores about 5, the controller 1000)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from mixrl.agents import td3_bc
from mixrl.datasets import noisy_policy, rollout_episodes, write_dataset

DATASET_ID = "mixrl/invertedpendulum-v5/pd-v0"
PD_GAINS = np.array([1.0, 10.0, 1.0, 2.0])  # force = K s balances InvertedPendulum-v5


def pd_controller(obs: np.ndarray) -> np.ndarray:
    return np.clip([obs @ PD_GAINS], -3.0, 3.0).astype(np.float32)


@pytest.fixture(scope="module")
def pd_dataset(tmp_path_factory):
    """3,000 steps of the PD controller with action noise of 0.2 (in units of half the action range)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        env = gym.make("InvertedPendulum-v5")
        episodes = rollout_episodes(noisy_policy(pd_controller, env.action_space, 0.2, 0), env, 3000, 0, "pd")
        write_dataset(DATASET_ID, episodes, env, 0.0, 1000.0, "noisy PD controller", "test data")
    return root


def final_return(run_dir) -> float:
    return json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])["eval/return"]


def test_td3_bc_learns_to_balance_from_pd_data(pd_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pd_dataset))
    args = td3_bc.Args(
        dataset_id=DATASET_ID,
        total_steps=2000,
        batch_size=128,
        hidden_sizes=(64, 64),
        eval_every=0,
        eval_episodes=3,
        checkpoint_every=0,
        run_root=str(tmp_path / "runs"),
    )
    assert final_return(td3_bc.main(args)) > 500.0
