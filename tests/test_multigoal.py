"""MultiGoalEnv: Gymnasium API, rewards worked out by hand, every goal reachable, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

from mixrl.envs.multigoal import GOALS, MAX_EPISODE_STEPS, MultiGoalEnv, goal_reached

SPEC = EnvSpec(
    id="MultiGoalUnderTest-v0",
    entry_point="mixrl.envs.multigoal:MultiGoalEnv",
    max_episode_steps=MAX_EPISODE_STEPS,
)


def test_check_env_with_and_without_rendering():
    check_env(MultiGoalEnv(), skip_render_check=True)
    env = gym.make(SPEC, render_mode="rgb_array")  # a spec lets check_env try every render mode
    check_env(env.unwrapped)


def test_registered_id_passes_check_env_and_is_time_limited():
    env = gym.make("mixrl/MultiGoal-v0")
    assert env.spec.max_episode_steps == MAX_EPISODE_STEPS
    check_env(env.unwrapped)


def test_reward_by_hand():
    env = MultiGoalEnv()
    obs, _ = env.reset(options={"position": (1.0, 2.0)})
    np.testing.assert_array_equal(obs, [1.0, 2.0])
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -1.0], dtype=np.float32))
    # x' = (1.5, 1.0); nearest goal (5, 0) at squared distance 3.5^2 + 1 = 13.25; |a|^2 = 1.25
    np.testing.assert_allclose(obs, [1.5, 1.0])
    assert reward == pytest.approx(-30.0 * 1.25 - 13.25)
    assert (terminated, truncated, info["goal"]) == (False, False, -1)


def test_reward_clips_action_and_position():
    env = MultiGoalEnv()
    env.reset(options={"position": (-6.5, 6.5)})
    obs, reward, *_ = env.step(np.array([-3.0, 2.0], dtype=np.float32))  # acts as (-1, 1): |a|^2 = 2
    np.testing.assert_array_equal(obs, [-7.0, 7.0])
    # nearest goals (-5, 0) and (0, 5): squared distance 4 + 49 = 53
    assert reward == pytest.approx(-30.0 * 2.0 - 53.0)


def test_goal_step_pays_bonus_and_terminates():
    env = MultiGoalEnv(action_cost=2.0, distance_cost=3.0, goal_reward=7.0)
    env.reset(options={"position": (0.0, -3.5)})
    obs, reward, terminated, _, info = env.step(np.array([0.5, -1.0], dtype=np.float32))
    # x' = (0.5, -4.5), 0.5^2 + 0.5^2 = 0.5 from goal 3 (0, -5)
    assert terminated and info["goal"] == 3
    assert reward == pytest.approx(-2.0 * 1.25 - 3.0 * 0.5 + 7.0)


def test_goal_reached_helper():
    assert [goal_reached(g) for g in GOALS] == [0, 1, 2, 3]
    assert goal_reached(np.array([4.3, 0.7])) == 0  # distance 0.99
    assert goal_reached(np.array([0.0, 0.0])) is None
    assert goal_reached(np.array([3.9, 0.0])) is None  # distance 1.1


def rollout(env: gym.Env, policy, seed: int) -> tuple[float, list[tuple]]:
    """Return and (obs, reward, terminated, truncated, info) of every step of one episode."""
    obs, _ = env.reset(seed=seed)
    steps, done = [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs).astype(np.float32))
        steps.append((obs, reward, terminated, truncated, info))
        done = terminated or truncated
    return sum(step[1] for step in steps), steps


@pytest.mark.parametrize("goal", range(4))
def test_scripted_policy_reaches_each_goal(goal):
    env = gym.make(SPEC)
    ret, steps = rollout(env, lambda obs: np.clip(GOALS[goal] - obs, -1, 1), seed=goal)
    obs, _, terminated, truncated, info = steps[-1]
    assert terminated and not truncated and len(steps) <= 5
    assert info["goal"] == goal == goal_reached(obs)
    idle_return, _ = rollout(env, lambda obs: np.zeros(2), seed=goal)
    assert ret > idle_return / 3  # reaching a goal beats standing still at squared distance ~25


def test_time_limit_truncates_from_registration():
    env = gym.make(SPEC)
    env.reset(seed=0)
    zero = np.zeros(2, dtype=np.float32)
    outcomes = [env.step(zero)[2:4] for _ in range(MAX_EPISODE_STEPS)]
    assert outcomes[:-1] == [(False, False)] * (MAX_EPISODE_STEPS - 1)
    assert outcomes[-1] == (False, True)


def test_render_draws_goals_and_trajectory():
    env = MultiGoalEnv(render_mode="rgb_array", image_size=128)
    env.reset(options={"position": (0.0, 0.0)})
    blank = env.render()
    for _ in range(3):
        env.step(np.array([1.0, 1.0], dtype=np.float32))
    image = env.render()
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    scale = 127 / 14.0
    for x, y in GOALS:  # goal discs are drawn green at their (row, column)
        row, col = round((7.0 - y) * scale), round((x + 7.0) * scale)
        np.testing.assert_array_equal(image[row, col], [80, 180, 80])
    mid = round((7.0 - 1.5) * scale), round((1.5 + 7.0) * scale)  # on the path from (0, 0) to (3, 3)
    assert tuple(blank[mid]) == (255, 255, 255) and tuple(image[mid]) != (255, 255, 255)
    assert MultiGoalEnv().render() is None
