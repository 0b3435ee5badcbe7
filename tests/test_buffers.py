"""Replay buffer and env factory: autoreset, truncation vs termination, ring wrap-around, state round trip."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import NormalizeReward

from mixrl.buffers import ReplayBuffer
from mixrl.envs.factory import make_vec_env
from mixrl.envs.normalizers import RunningMeanStd
from mixrl.evaluation import Policy


class AsymmetricBoundsEnv(gym.Env):
    """obs = the last env action; action bounds low = (0, -3), high = (2, 1)."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    action_space = gym.spaces.Box(np.array([0.0, -3.0], np.float32), np.array([2.0, 1.0], np.float32))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.asarray(action, np.float32), 0.0, False, False, {}


if "mixrl_test/AsymmetricBounds-v0" not in gym.registry:
    gym.register(id="mixrl_test/AsymmetricBounds-v0", entry_point=AsymmetricBoundsEnv, max_episode_steps=10)


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


def test_asymmetric_action_bounds_map_minus_one_to_low_and_one_to_high():
    """[-1, 1] -> [low, high] per dimension, in the env factory (training) and in Policy (evaluation)."""
    agent_actions = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.5, -0.5]])
    expected = np.array([[0.0, -3.0], [2.0, 1.0], [1.0, -1.0], [1.5, -2.0]], np.float32)
    envs = make_vec_env("mixrl_test/AsymmetricBounds-v0", num_envs=4, seed=0)
    envs.reset()
    next_obs, *_ = envs.step(agent_actions)
    np.testing.assert_allclose(next_obs.numpy(), expected)  # what the env received

    class Fixed(torch.nn.Module):
        def deterministic(self, obs):
            return agent_actions

    env = AsymmetricBoundsEnv()
    policy = Policy(Fixed(), env.observation_space, env.action_space)
    np.testing.assert_allclose(policy(np.zeros((4, 2))), expected)


def test_running_statistics_match_numpy():
    rng = np.random.default_rng(0)
    rms = RunningMeanStd((3,))
    batches = [rng.normal(2.0, 3.0, (n, 3)) for n in (1, 5, 17, 4)]
    for batch in batches:
        rms.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-4)  # up to the prior of weight 1e-4
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)


def test_observation_normalisation_uses_the_statistics_of_every_observation_seen():
    """Counter env observations (t, episode) are known: the normalised output of the last step is the z-score with
    numpy's mean and variance of all observations so far (reset and steps, not the final observations)."""
    envs = make_vec_env("mixrl_test/Counter-v0", num_envs=2, seed=0, normalize_obs=True)
    raw = make_vec_env("mixrl_test/Counter-v0", num_envs=2, seed=0)
    seen = [raw.reset().numpy()]
    envs.reset()
    for _ in range(8):
        obs, *_ = envs.step(torch.zeros(2, 1))
        seen.append(raw.step(torch.zeros(2, 1))[0].numpy())
    data = np.concatenate(seen).astype(np.float64)
    expected = (seen[-1] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8)
    np.testing.assert_allclose(obs.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_reward_scaling_matches_gymnasium_normalize_reward():
    """Rewards t = 1..5 per episode (truncated at 5, no terminations), two envs: the same scaled rewards as
    Gymnasium's vector NormalizeReward on the same autoreset mode, clipped to +-10 as CleanRL does."""
    envs = make_vec_env("mixrl_test/Counter-v0", num_envs=2, seed=0, normalize_reward_gamma=0.9)
    thunks = [lambda: gym.make("mixrl_test/Counter-v0")] * 2
    reference = NormalizeReward(gym.vector.SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP), gamma=0.9)
    envs.reset()
    reference.reset(seed=0)
    scaled, expected = [], []
    for _ in range(12):
        scaled.append(envs.step(torch.zeros(2, 1))[1].numpy())
        expected.append(reference.step(np.zeros((2, 1), np.float32))[1])
    raw_rewards = np.tile(np.arange(1.0, 6.0), 3)[:12, None]
    assert np.abs(np.array(scaled) - raw_rewards).min() > 0.1  # the scaling does change every reward
    np.testing.assert_allclose(np.array(scaled), np.clip(expected, -10, 10), rtol=1e-5)  # then clipped to +-10


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
