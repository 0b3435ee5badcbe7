"""Replay buffer and env factory: autoreset, truncation vs termination, ring wrap-around, state round trip."""

import numpy as np
import pytest
import torch

from mixrl.buffers import ReplayBuffer
from mixrl.envs.factory import make_vec_env


def collect(terminate_at, steps=12, num_envs=2):
    envs = make_vec_env("mixrl_test/Counter-v0", num_envs=num_envs, seed=0, env_kwargs={"terminate_at": terminate_at})
    rb = ReplayBuffer(100, obs_dim=2, action_dim=1)
    obs = envs.reset()
    for _ in range(steps):
        next_obs, reward, terminated, truncated, final_obs = envs.step(torch.zeros(num_envs, 1))
        rb.add(obs, torch.zeros(num_envs, 1), reward, final_obs, terminated)
        obs = next_obs
    return rb, envs


@pytest.mark.parametrize("terminate_at", [3, None])
def test_no_transition_crosses_a_reset(terminate_at):
    rb, _ = collect(terminate_at)
    obs, _, rewards, next_obs, terminated = rb.data[: rb.size].split([2, 1, 1, 2, 1], dim=1)
    # Every stored transition stays inside one episode and advances its clock by one.
    assert torch.equal(next_obs[:, 1], obs[:, 1])
    assert torch.equal(next_obs[:, 0], obs[:, 0] + 1)
    assert torch.equal(rewards[:, 0], next_obs[:, 0])
    # Every env step is stored (same-step autoreset wastes none): 12 steps x 2 envs.
    assert rb.size == 24


def test_termination_flags_only_real_terminations():
    rb, envs = collect(terminate_at=3)
    _, _, _, next_obs, terminated = rb.data[: rb.size].split([2, 1, 1, 2, 1], dim=1)
    assert torch.equal(terminated[:, 0] == 1, next_obs[:, 0] == 3)
    assert envs.pop_episodes() == ([6.0] * 8, [3] * 8)


def test_truncation_is_not_termination():
    rb, envs = collect(terminate_at=None)  # TimeLimit truncates at 5 steps
    _, _, _, next_obs, terminated = rb.data[: rb.size].split([2, 1, 1, 2, 1], dim=1)
    assert terminated.sum() == 0
    # The true final observation (t = 5) is stored for truncated episodes, not the reset observation.
    assert (next_obs[:, 0] == 5).sum() == 4
    returns, lengths = envs.pop_episodes()
    assert lengths == [5, 5, 5, 5] and returns == [15.0] * 4


def test_ring_buffer_wraps_and_samples_only_stored_rows():
    rb = ReplayBuffer(5, obs_dim=1, action_dim=1)
    for i in range(7):
        value = torch.tensor([[float(i)]])
        rb.add(value, value, torch.tensor([float(i)]), value + 1, torch.tensor([False]))
    assert rb.size == 5 and rb.pos == 2
    assert sorted(rb.data[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    batch = rb.sample(1000, generator=torch.Generator().manual_seed(0))
    assert set(batch.obs[:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    assert torch.equal(batch.next_obs, batch.obs + 1) and torch.equal(batch.rewards, batch.obs[:, 0])


def test_buffer_state_round_trip_and_mismatch_error():
    rb, _ = collect(terminate_at=3)
    other = ReplayBuffer(100, obs_dim=2, action_dim=1)
    other.load_state_dict(rb.state_dict())
    assert torch.equal(other.data, rb.data) and (other.pos, other.size) == (rb.pos, rb.size)
    with pytest.raises(ValueError, match="does not fit"):
        ReplayBuffer(100, obs_dim=3, action_dim=1).load_state_dict(rb.state_dict())


def test_actions_are_rescaled_to_env_bounds():
    envs = make_vec_env("Pendulum-v1", num_envs=2, seed=0)  # bounds [-2, 2]
    assert np.allclose(envs.to_env_action(torch.tensor([[-1.0], [0.5]])), [[-2.0], [1.0]])
    assert np.allclose(envs.to_env_action(torch.tensor([[3.0], [-7.0]])), [[2.0], [-2.0]])


def test_unknown_env_id_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean: HalfCheetah-v5"):
        make_vec_env("HalfCheeta-v5")


def test_env_state_round_trip_continues_identically():
    envs = make_vec_env("HalfCheetah-v5", num_envs=2, seed=3, normalize_obs=True)
    envs.reset()
    actions = torch.rand(20, 2, 6) * 2 - 1
    for a in actions[:7]:
        envs.step(a)
    state = envs.state_dict()
    first = [envs.step(a)[0] for a in actions[7:]]
    envs.load_state_dict(state)
    second = [envs.step(a)[0] for a in actions[7:]]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
