"""MultiGoal: a 2-D point mass with four equally good goals, after the multi-goal task of soft Q-learning
(Haarnoja et al. 2017). A unimodal policy commits to one goal; a multimodal one can keep several.

State and observation: the position x in [-7, 7]^2. Action: a velocity in [-1, 1]^2 (clipped), so that
x' = clip(x + speed * a, -7, 7). Reward, with d(x') the distance to the nearest goal:

    r = -action_cost * |a|^2 - distance_cost * d(x')^2 + goal_reward * [d(x') <= GOAL_RADIUS]

The episode terminates on reaching a goal. Time limits come from the TimeLimit wrapper of the registration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import gymnasium as gym
import numpy as np

GOALS = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
GOAL_RADIUS = 1.0
BOUND = 7.0
MAX_EPISODE_STEPS = 30
# PMOE-SAC settings (sac.Args fields) under which the experts find several goals; with K = 4 and a tuned alpha
# they collapse onto one or two (the shared trunk follows the critic's early, flat landscape).
PMOE_SAC_SETTINGS: dict[str, Any] = dict(
    policy="gmm",
    num_experts=8,
    learning_starts=3000,
    batch_size=64,
    hidden_sizes=(256, 256),
    q_lr=1e-3,
    autotune=False,
    alpha=0.2,
)


def goal_distances(position: np.ndarray) -> np.ndarray:
    """Euclidean distance from a position (2,) to each goal, shape (4,)."""
    return np.linalg.norm(GOALS - np.asarray(position, dtype=np.float64), axis=-1)


def goal_reached(position: np.ndarray) -> int | None:
    """Index into GOALS of the goal within GOAL_RADIUS of the position, or None (goals are 7 apart)."""
    distances = goal_distances(position)
    nearest = int(np.argmin(distances))
    return nearest if distances[nearest] <= GOAL_RADIUS else None


def follow_policy(
    policy: Callable[[np.ndarray], np.ndarray],
    start: Sequence[float] = (0.0, 0.0),
    max_steps: int = MAX_EPISODE_STEPS,
) -> tuple[np.ndarray, int | None]:
    """Run `policy` (observation -> action) from `start` until it reaches a goal or `max_steps` pass.

    Returns the visited positions (T + 1, 2) and the index of the goal reached (None: no goal).
    """
    env = MultiGoalEnv()
    obs, _ = env.reset(options={"position": start})
    for _ in range(max_steps):
        obs, _, terminated, _, _ = env.step(policy(obs))
        if terminated:
            break
    return np.array(env.trajectory), goal_reached(obs)


class MultiGoalEnv(gym.Env):
    """Point mass that must reach any one of the goals (+-5, 0), (0, +-5); all pay the same.

    `reset(options={"position": (x, y)})` starts at a given position instead of N(0, init_std^2 I).
    `info["goal"]` is the index of the goal reached on this step, or -1.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        render_mode: str | None = None,
        action_cost: float = 30.0,
        distance_cost: float = 1.0,
        goal_reward: float = 10.0,
        speed: float = 1.0,
        init_std: float = 0.1,
        image_size: int = 256,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not one of {self.metadata['render_modes']}.")
        self.render_mode = render_mode
        self.action_cost, self.distance_cost, self.goal_reward = action_cost, distance_cost, goal_reward
        self.speed, self.init_std, self.image_size = speed, init_std, image_size
        self.observation_space = gym.spaces.Box(-BOUND, BOUND, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2, dtype=np.float32)
        self.trajectory: list[np.ndarray] = [self.position.copy()]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and "position" in options:
            start = np.asarray(options["position"], dtype=np.float64)
        else:
            start = self.np_random.normal(0.0, self.init_std, size=2)
        self.position = np.clip(start, -BOUND, BOUND).astype(np.float32)
        self.trajectory = [self.position.copy()]
        return self.position.copy(), {}

    def reward(self, action: np.ndarray, next_position: np.ndarray) -> float:
        """r(a, x') before the goal bonus: -action_cost |a|^2 - distance_cost min_g |x' - g|^2."""
        nearest = goal_distances(next_position).min()
        return float(-self.action_cost * np.sum(np.square(action)) - self.distance_cost * nearest**2)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        velocity = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        next_position = np.clip(self.position + self.speed * velocity, -BOUND, BOUND)
        self.position = next_position.astype(np.float32)
        self.trajectory.append(self.position.copy())
        goal = goal_reached(self.position)
        reward = self.reward(velocity, self.position) + (self.goal_reward if goal is not None else 0.0)
        info = {"goal": -1 if goal is None else goal}
        return self.position.copy(), reward, goal is not None, False, info

    def render(self) -> np.ndarray | None:
        """RGB image (image_size, image_size, 3) of the box, goals, trajectory so far and current position."""
        if self.render_mode != "rgb_array":
            return None
        image = np.full((self.image_size, self.image_size, 3), 255, dtype=np.uint8)
        for goal in GOALS:
            _disc(image, self._to_pixels(goal), GOAL_RADIUS * self._pixels_per_unit(), (80, 180, 80))
        for start, end in pairwise(self.trajectory):
            _segment(image, self._to_pixels(start), self._to_pixels(end), (60, 60, 200))
        _disc(image, self._to_pixels(self.position), 4.0, (220, 40, 40))
        return image

    def _pixels_per_unit(self) -> float:
        return (self.image_size - 1) / (2.0 * BOUND)

    def _to_pixels(self, position: np.ndarray) -> np.ndarray:
        """World (x, y) -> image (row, column), with y pointing up."""
        scale = self._pixels_per_unit()
        return np.array([(BOUND - position[1]) * scale, (position[0] + BOUND) * scale])


def _disc(image: np.ndarray, centre: np.ndarray, radius: float, colour: tuple[int, int, int]) -> None:
    """Fill the pixels within `radius` of `centre` (row, column)."""
    rows, cols = np.ogrid[: image.shape[0], : image.shape[1]]
    image[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = colour


def _segment(
    image: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple[int, int, int], width: int = 2
) -> None:
    """Draw a segment `width` pixels thick by stamping points at sub-pixel spacing along it."""
    steps = int(np.ceil(2.0 * np.linalg.norm(end - start))) + 1
    points = np.rint(np.linspace(start, end, steps)).astype(int)
    for dr in range(width):
        for dc in range(width):
            rows = np.clip(points[:, 0] + dr, 0, image.shape[0] - 1)
            cols = np.clip(points[:, 1] + dc, 0, image.shape[1] - 1)
            image[rows, cols] = colour
