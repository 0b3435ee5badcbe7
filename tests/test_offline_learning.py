"""Learning tests of the offline agents: TD3+BC and A2PR learn to balance InvertedPendulum-v5 from a small dataset
of a noisy PD controller's episodes (a uniform-random policy scores about 5, the controller 1000)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from mixrl.agents import a2pr, td3_bc
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


@pytest.fixture
def common(pd_dataset, tmp_path, monkeypatch) -> dict:
    """The PD dataset in place, and the Args both learning tests share: 2,000 steps of 128, 3 final episodes."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pd_dataset))
    return dict(
        dataset_id=DATASET_ID,
        total_steps=2000,
        batch_size=128,
        eval_every=0,
        eval_episodes=3,
        checkpoint_every=0,
        run_root=str(tmp_path / "runs"),
    )


def final_return(run_dir) -> float:
    return json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])["mean_return"]


def test_td3_bc_learns_to_balance_from_pd_data(common):
    args = td3_bc.Args(hidden_sizes=(64, 64), **common)
    assert final_return(td3_bc.main(args)) > 500.0


def test_a2pr_advantage_guided_bc_learns_to_balance_from_pd_data(common):
    """A2PR's regulariser alone (alpha 0: V, the VAE, the advantage mask and the BC target choice, no Q term)
    learns the controller; the per-dataset alpha of the paper's table is out of reach on these data.

    The PD data hold no reward information: every reward is 1 and no episode terminates, so the true Q is the same
    for every action and A = Q_1(s, a) - V(s) is the critics' fitting error. On these data (networks 64 x 64,
    2,000 steps of 128, seed 1024, measured on an AMD EPYC): with alpha 2.5 the Q term drives the actor to the
    action bounds (mean |pi - a| = 1.0, return 2); TD3+BC with its BC weight halved (--no-vae-branch
    --bc-weight 0.5) also falls (return 8), with weight 1 it balances (1000). A2PR anchors to the data on fewer
    samples still: the VAE reconstruction of the policy's action stays near that action (mean |a_gen - pi| = 0.03-0.05,
    |a_gen - a| = 0.18) and is chosen as the target on 52-61 % of samples by a coin-flip advantage, so the
    dataset action is the target on only 26-32 %. No Q term can be tested on these data (the TD3+BC test above
    passes with alpha 0 too). With alpha 0 seeds 1024, 2 and 3 all end at 1000.
    """
    small = (64, 64)
    args = a2pr.Args(alpha=0.0, actor_hidden=small, critic_hidden=small, value_hidden=small, vae_hidden=small, **common)
    assert final_return(a2pr.main(args)) > 500.0
