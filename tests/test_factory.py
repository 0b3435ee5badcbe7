"""Env factory against NumPy written out by hand: the host and device observation normalisers and the reward
scaler (clipping on both sides, the epsilon under the square root), --env-kwargs forms, and env state round trips
(the action-space RNG, the counters of the env and its TimeLimit, the reset noise of the next episode)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mixrl.envs.factory import check_env_id, make_vec_env, parse_env_kwargs
from mixrl.envs.normalizers import DeviceObsNormalizer, ObsNormalizer, RewardScaler, RunningMeanStd
from mixrl.errors import UsageError

BATCH_SIZES = (1, 5, 17, 4)


def batches(seed: int = 0) -> list[np.ndarray]:
    """Observations of shape (n, 3) from N(2, 3^2), with an outlier per batch on both sides."""
    rng = np.random.default_rng(seed)
    out = []
    for n in BATCH_SIZES:
        batch = rng.normal(2.0, 3.0, (n, 3))
        batch[0, 0], batch[-1, 2] = 40.0, -40.0
        out.append(batch)
    return out


def pooled_moments(data: np.ndarray, prior: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of `data` (rows) pooled with the prior N(0, 1) of weight `prior`, in closed form."""
    total = prior + len(data)
    mean = data.sum(0) / total
    return mean, (prior * (1.0 + mean**2) + ((data - mean) ** 2).sum(0)) / total


def expected_z(seen: list[np.ndarray], obs: np.ndarray, epsilon: float, clip: float) -> np.ndarray:
    mean, var = pooled_moments(np.concatenate(seen))
    return np.clip((obs - mean) / np.sqrt(var + epsilon), -clip, clip)


def test_observation_normalisers_z_score_with_epsilon_and_clip_on_both_sides():
    """Host and device normalisers: z = clip((obs - mean) / sqrt(var + eps), -c, c) with the mean and variance of
    every batch seen (pooled with the prior N(0, 1) of weight 1e-4), on (n, 3) batches of several sizes."""
    host = ObsNormalizer((3,), clip=1.5, epsilon=0.5)
    device = DeviceObsNormalizer((3,), torch.device("cpu"), clip=1.5, epsilon=0.5)
    seen = []
    for batch in batches():
        seen.append(batch)
        expected = expected_z(seen, batch, 0.5, 1.5)
        np.testing.assert_allclose(host(batch), expected, rtol=1e-10)
        z = device(torch.as_tensor(batch, dtype=torch.float32))
        assert z.dtype == torch.float32
        np.testing.assert_allclose(z.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert expected.min() == -1.5 and expected.max() == 1.5  # both clips were exercised


def test_device_statistics_are_float64_and_equal_the_host_ones():
    """The device statistics follow the NumPy float64 ones to 1e-12, far below float32 rounding; frozen
    normalisers (update false) leave them as they are; the defaults clip at 10 with epsilon 1e-8."""
    host, device = RunningMeanStd((3,)), DeviceObsNormalizer((3,), torch.device("cpu"))
    for batch in batches(1):
        host.update(batch)
        device(torch.as_tensor(batch))
    np.testing.assert_allclose(device.rms.mean.numpy(), host.mean, rtol=1e-12)
    np.testing.assert_allclose(device.rms.var.numpy(), host.var, rtol=1e-12)
    assert device.rms.count == host.count
    far = device(torch.full((2, 3), 1e3), update=False)  # the default clip is 10, the default epsilon 1e-8
    one_std = device(torch.as_tensor(host.mean + np.sqrt(host.var))[None], update=False)
    np.testing.assert_allclose(device.rms.mean.numpy(), host.mean, rtol=1e-12)
    assert (far == 10.0).all() and torch.allclose(one_std, torch.ones(1, 3), atol=1e-6)


def test_reward_scaler_divides_by_the_return_std_with_epsilon_and_clips_both_ways():
    """Two envs, rewards of both signs and sizes: r / sqrt(Var[G] + eps) clipped to +-c, where G = gamma G + r is
    reset after done and Var is over every G seen, pooled with the prior (hand-written NumPy reference)."""
    gamma, epsilon, clip = 0.9, 0.5, 1.0
    scaler = RewardScaler(2, gamma, clip=clip, epsilon=epsilon)
    rng = np.random.default_rng(0)
    returns, seen, outputs, expected = np.zeros(2), [], [], []
    for t in range(12):
        reward = rng.normal(0.0, 3.0, 2) if t % 4 else np.array([30.0, -30.0])
        done = np.array([t % 5 == 4, t % 3 == 2])
        returns = returns * gamma + reward
        seen.append(returns.copy())
        returns[done] = 0.0
        var = pooled_moments(np.concatenate(seen))[1]
        expected.append(np.clip(reward / np.sqrt(var + epsilon), -clip, clip))
        outputs.append(scaler(reward, done))
    np.testing.assert_allclose(np.array(outputs), np.array(expected), rtol=1e-10)
    assert np.min(expected) == -clip and np.max(expected) == clip


def test_env_state_round_trip_restores_the_action_space_rng_and_can_be_loaded_twice():
    """Random actions (SAC's before learning starts) repeat after load_state_dict, and a state loaded twice
    gives the same continuation both times (the saved state is not shared with the running env)."""
    envs = make_vec_env("HalfCheetah-v5", num_envs=2, seed=3, normalize_obs=True)
    envs.reset()
    for _ in range(3):
        envs.step(torch.rand(2, 6) * 2 - 1)
    state = envs.state_dict()
    runs = []
    for _ in range(3):
        envs.load_state_dict(state)
        actions = [torch.as_tensor(np.stack([envs.single_action_space.sample() for _ in range(2)])) for _ in range(4)]
        runs.append([(a, envs.step(a)[0]) for a in actions])
    for other in runs[1:]:
        for (a, obs), (b, other_obs) in zip(runs[0], other):
            assert torch.equal(a, b) and torch.equal(obs, other_obs)


def test_env_state_round_trip_restores_counters_across_a_truncation():
    """Counter env (obs = (t, episode), truncated by its TimeLimit at t = 5): a state saved at t = 3 continues
    through the truncation identically, which needs the env's and the TimeLimit's counters, not only physics."""
    envs = make_vec_env("mixrl_test/Counter-v0", num_envs=2, seed=0)
    envs.reset()
    zeros = torch.zeros(2, 1)
    for _ in range(3):
        envs.step(zeros)
    state = envs.state_dict()
    runs = []
    for _ in range(2):
        envs.load_state_dict(state)
        runs.append([envs.step(zeros) for _ in range(4)])
    first, second = runs
    assert [obs[0].tolist() for obs, *_ in first] == [[4.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    assert [bool(out[3][0]) for out in first] == [False, True, False, False]  # truncated at t = 5
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_env_state_saved_after_the_first_step_loads_after_later_steps():
    """Gymnasium's env checker keeps the first step's (obs, info) to compare with the second step's and drops
    them after: a state saved between the two, loaded after the second, must bring them back."""
    envs = make_vec_env("mixrl_test/Counter-v0", num_envs=1, seed=0)
    envs.reset()
    zeros = torch.zeros(1, 1)
    envs.step(zeros)
    state = envs.state_dict()
    expected = [envs.step(zeros)[0] for _ in range(3)]
    envs.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, [envs.step(zeros)[0] for _ in range(3)]))


def test_env_kwargs_json_with_leading_space_and_values_holding_equals():
    assert parse_env_kwargs([' {"a": 1}']) == {"a": 1}
    assert parse_env_kwargs(["name=x=y", "n=2"]) == {"name": "x=y", "n": 2}


def test_env_state_round_trip_restores_the_reset_noise_of_the_next_episode():
    """Pendulum-v1 saved two steps before its time limit: the continuation, whose autoreset draws the next
    initial state from the env's RNG, is the same after every load of that state (the RNGs are copied, not
    shared with the saved state)."""
    envs = make_vec_env("Pendulum-v1", num_envs=1, seed=0)
    envs.reset()
    zeros = torch.zeros(1, 1)
    for _ in range(198):
        envs.step(zeros)
    state = envs.state_dict()
    runs = [[envs.step(zeros)[0] for _ in range(4)]]
    for _ in range(2):
        envs.load_state_dict(state)
        runs.append([envs.step(zeros)[0] for _ in range(4)])
    assert all(torch.equal(x, y) for other in runs[1:] for x, y in zip(runs[0], other))


def test_make_vec_env_seeds_wrappers_and_backends():
    """Equal seeds give equal first observations, other seeds others; a Gymnasium wrapper is applied; the warp
    backend refuses a wrapper and an unknown backend is named (both before any env is built)."""
    first = [make_vec_env("Pendulum-v1", 2, seed=s).reset() for s in (5, 5, 6)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    wrapped = make_vec_env("Pendulum-v1", 1, wrapper=gym.wrappers.TimeAwareObservation)
    assert wrapped.reset().shape == (1, 4)
    with pytest.raises(UsageError, match="backend 'warp' takes no Gymnasium wrapper"):
        make_vec_env("Pendulum-v1", backend="warp", wrapper=gym.wrappers.TimeAwareObservation)
    with pytest.raises(UsageError, match="Unknown backend 'jax'"):
        make_vec_env("Pendulum-v1", backend="jax")


def test_unknown_env_ids_name_close_matches_or_the_registry_and_missing_modules():
    with pytest.raises(UsageError, match=r"Did you mean: HalfCheetah-v\d, [^?]+\?"):
        check_env_id("HalfCheeta-v5")
    with pytest.raises(UsageError, match=r"Unknown environment id 'qqqq'\. List all ids with"):
        check_env_id("qqqq")
    with pytest.raises(UsageError, match="registers the task, or put its folder on PYTHONPATH"):
        check_env_id("no_such_module_for_mixrl:Task-v0")
