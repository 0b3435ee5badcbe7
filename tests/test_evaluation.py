"""Evaluation protocol: episode i of evaluate(policy, env, seed=s) is the episode of seed s + i."""

import gymnasium as gym
import numpy as np

from mixrl.evaluation import evaluate


def zero_policy(obs):
    return np.zeros(1, np.float32)


def test_each_episode_has_its_own_seed():
    """Pendulum starts from a seeded random angle: each evaluation episode must equal a rollout reset with
    seed + i (not one seed for all, and not only the first episode seeded)."""
    result = evaluate(zero_policy, "Pendulum-v1", episodes=3, seed=5)
    expected = []
    for i in range(3):
        env = gym.make("Pendulum-v1")
        env.reset(seed=5 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(zero_policy(None))
            total += float(reward)
            done = terminated or truncated
        expected.append(total)
    assert len(set(expected)) == 3  # the seeds do give different episodes
    np.testing.assert_allclose(result["returns"], expected, rtol=1e-6)
    assert result["lengths"] == [200, 200, 200]
