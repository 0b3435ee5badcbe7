"""PegInsertion: Gymnasium API, randomness levels, sparse success, a random policy never succeeds, the scripted
expert nearly always does, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import mixrl  # noqa: F401  (registers mixrl/PegInsertion-v0)
from mixrl.envs.insertion import (
    CLEARANCE,
    FINE_SCALE,
    HOLE_DEPTH,
    HORIZON,
    MAX_STEP,
    PEG_HALF_LENGTH,
    RANDOMNESS,
    PegInsertionEnv,
    scripted_expert,
)

LEVELS = list(RANDOMNESS)


def run_episode(env: gym.Env, policy, seed: int) -> tuple[bool, int, float]:
    obs, _ = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total, length, done = total + reward, length + 1, terminated or truncated
    return info["is_success"], length, total


def test_registered_env_passes_check_env_with_rendering():
    env = gym.make("mixrl/PegInsertion-v0", render_mode="rgb_array", randomness="medium")
    assert env.spec.max_episode_steps == HORIZON
    check_env(env.unwrapped)
    env.reset(seed=0)
    image = env.render()
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8 and image.std() > 10


def test_unknown_randomness_is_refused():
    with pytest.raises(ValueError, match="randomness='extreme' is not one of: low, medium, high"):
        PegInsertionEnv(randomness="extreme")


def test_hole_clearance_is_one_millimetre_and_levels_widen_the_hole_range():
    env = PegInsertionEnv()
    walls = env.model.geom_size[env.model.body_geomadr[env._hole] :][:4]
    centres = env.model.geom_pos[env.model.body_geomadr[env._hole] :][:4]
    gap = 2 * (np.abs(centres[0, 0]) - walls[0, 0])  # between the inner faces of the +-x walls
    peg = 2 * env.model.geom_size[env.model.body_geomadr[env._peg], 0]
    assert gap - peg == pytest.approx(CLEARANCE)
    spread = {}
    for level in LEVELS:
        env = PegInsertionEnv(randomness=level)
        holes = []
        for seed in range(50):
            env.reset(seed=seed)
            holes.append(env.model.body_pos[env._hole][:2].copy())
        spread[level] = np.abs(holes).max()
    assert spread["low"] < spread["medium"] < spread["high"]


@pytest.mark.parametrize("level", LEVELS)
def test_random_policy_never_succeeds(level):
    env = gym.make("mixrl/PegInsertion-v0", randomness=level)
    env.action_space.seed(0)
    results = [run_episode(env, lambda obs: env.action_space.sample(), seed) for seed in range(30)]
    assert not any(success for success, _, _ in results)
    assert all(length == HORIZON for _, length, _ in results)  # truncated at the horizon


@pytest.mark.parametrize("level", LEVELS)
def test_noisy_scripted_expert_succeeds_and_success_terminates_with_reward_one(level):
    env = gym.make("mixrl/PegInsertion-v0", randomness=level)
    results = [run_episode(env, scripted_expert(noise=0.03, seed=seed), seed) for seed in range(20)]
    assert sum(success for success, _, _ in results) >= 19
    for success, length, total in results:
        assert total == float(success)
        assert success == (length < HORIZON)


def test_peg_outside_the_hole_is_not_inserted():
    env = PegInsertionEnv()
    obs, _ = env.reset(seed=0)
    push_down_beside = lambda obs: np.array([0.0, 0.0, -1.0], np.float32)  # noqa: E731
    env.data.qpos[:2] = env.model.body_pos[env._hole][:2] + 0.05  # beside the hole, above the table
    success, length, _ = run_episode(gym.wrappers.TimeLimit(env, HORIZON), push_down_beside, seed=None)
    assert not success and env.peg_tip()[2] < 0.01


def test_step_applies_the_documented_servo_update_and_observation():
    """The step's float arithmetic against the module docstring's formulas, written with numpy arrays: the servo
    target clip(q + MAX_STEP clip(a, -1, 1) + e, joint range) and the 14 observation features."""
    env = PegInsertionEnv(randomness="medium")
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        action = rng.uniform(-1.5, 1.5, 3).astype(np.float32)  # beyond the bounds too
        qpos = env.data.qpos.copy()
        noise_rng_state = env.np_random.bit_generator.state
        noise = env.np_random.standard_normal(3)
        env.np_random.bit_generator.state = noise_rng_state
        obs, *_ = env.step(action)
        target = qpos + MAX_STEP * np.clip(action.astype(np.float64), -1, 1) + env.tracking_noise * noise
        np.testing.assert_array_equal(env.data.ctrl, np.clip(target, *env.model.jnt_range.T))
        tip = env.data.xpos[env._peg] - [0.0, 0.0, PEG_HALF_LENGTH]
        to_hole = env.model.body_pos[env._hole] + [0.0, 0.0, HOLE_DEPTH] - tip
        ee = env.data.qpos
        features = (ee, tip - ee, to_hole, np.tanh(to_hole[:2] / FINE_SCALE), env.data.qvel / 10.0)
        np.testing.assert_array_equal(obs, np.clip(np.concatenate(features), -1, 1).astype(np.float32))
