"""A point in the plane moves by `speed * action` towards `goal`; reward -|position - goal|."""

import gymnasium as gym
import numpy as np


class ReachEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, goal=(0.5, -0.5), speed: float = 0.1, render_mode: str | None = None, size: int = 48):
        self.goal, self.speed = np.asarray(goal, np.float32), float(speed)
        self.render_mode, self.size = render_mode, size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.position = np.zeros(2, np.float32)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.position, self.goal]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.position = (self.position + self.speed * np.clip(action, -2.0, 2.0)).astype(np.float32)
        return self._obs(), -float(np.linalg.norm(self.position - self.goal)), False, False, {}

    def render(self) -> np.ndarray:
        frame = np.full((self.size, self.size, 3), 255, np.uint8)
        for point, colour in ((self.goal, (0, 160, 0)), (self.position, (200, 0, 0))):
            x, y = np.clip(((point + 2.0) / 4.0 * self.size).astype(int), 0, self.size - 2)
            frame[y : y + 2, x : x + 2] = colour
        return frame
