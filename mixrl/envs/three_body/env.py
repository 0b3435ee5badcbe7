"""The adaptive time-stepping environments: pick the time-step parameter of a three-body integrator every 0.1 yr
(Saz Ulibarrena & Portegies Zwart 2025, `reference/three_body.md`), and the paper's reward."""

from __future__ import annotations

import math
import time

import gymnasium as gym
import numpy as np

from mixrl.envs.three_body.integrators import (
    MASS,
    N_BODIES,
    YEAR,
    dopri5_evolve,
    draw_ic_parameters,
    hermite_aarseth_evolve,
    hermite_evolve,
    initial_conditions,
    leapfrog_evolve,
    legacy_ic_parameters,
    total_energy,
)
from mixrl.envs.three_body.render import render_trails

# ------------------------------------------------------------------------------------- task constants
MU_VALUES = np.logspace(-4, -1, 10)
"""The ten actions of the discrete env: mu = 1e-4 ... 1e-1."""
LOG10_MU_RANGE = (-4.0, -1.0)
RL_STEP_YR = 0.1

# Action values of the integrators the env can drive: index i of the discrete action -> i-th value.
INTEGRATOR_ACTIONS = {
    "hermite": MU_VALUES,  # mu in dt = mu * t_coll
    "hermite_aarseth": np.logspace(-8, -2, 10),  # eta of Aarseth's criterion (dt ~ sqrt(eta))
    "leapfrog": np.logspace(-6, -3, 10),  # fixed dt in yr
    "dopri5": np.logspace(-14, -5, 10),  # relative and absolute tolerance
}
INTEGRATOR_PARAM_NAMES = {"hermite": "mu", "hermite_aarseth": "eta", "leapfrog": "dt_yr", "dopri5": "tol"}
MONOTONE_TERMINAL_REWARD = -15_000.0
"""A fixed reward of every terminating step, below the paper's reward of any non-terminating one (w1 = 3000)."""


# ------------------------------------------------------------------------------------------ reward
def reward_fn(energy_error: float, mu: float, step: int, w1: float = 3000.0, w3: float = 4.0) -> float:
    """The paper's reward for RL step `step` (1-based): 0 at step 1, then

        R = -w1 log10(|dE| / 1e-10) / (max(|log10 |dE||, 1)^3 step) + w3 / |log10 mu|.

    The max(., 1) guard changes only |dE| > 0.1 (terminating steps), where the raw formula divides by 0
    at |dE| = 1.
    """
    if step <= 1:
        return 0.0
    log_err = math.log10(abs(energy_error))
    return -w1 * (log_err + 10.0) / (max(abs(log_err), 1.0) ** 3 * step) + w3 / abs(math.log10(mu))


class ThreeBodyTimestepEnv(gym.Env):
    """Pick the time-step parameter of a three-body integrator every 0.1 yr.

    Observation (13 floats): positions (x, y) of the three bodies in units of 10 au, their velocities in
    N-body units (centre-of-mass frame, body by body), and -log10 |dE| of the cumulative relative energy
    error (0 at reset). Action: index into `action_values` (for the default Hermite integrator,
    mu = logspace(-4, -1, 10)). Reward: `reward_fn`. Terminated when |dE| > max_energy_error (or the
    integration fails); truncated after max_steps RL steps.

    `terminal_reward` (None: the paper's reward) replaces the reward of every terminating step (blow-up or
    failed integration) by one fixed value. The paper's formula is not monotone there: its denominator
    max(|log10 |dE||, 1)^3 grows with the error, so |dE| = 1e6 costs less (-110 at step 2) than |dE| = 0.11
    (-13,561). `MONOTONE_TERMINAL_REWARD` (-5 w1 = -15,000) lies below every non-terminating step's reward (the
    worst, -13,500 + w3 / |log10 mu|, is at step 2 with |dE| = 0.1); mixrl/ThreeBodyTimestepMonotone-v0 uses it.

    reset(options={"ic_seed": s}) uses the paper's system for seed s (legacy RandomState draw);
    reset(options={"ic": (x1, y1, x2, y2)}) a given one; otherwise the system is drawn from `np_random`.

    info per step: energy_error (|dE|), hermite_steps (integrator steps of this RL step), force_evals,
    mu (the action's parameter value), time_yr, and wall_time (seconds in the integrator during this step)
    when report_wall_time is true; wall time is not deterministic, so it is off by default. Episode totals
    are kept in `episode_steps`, `episode_force_evals` and `episode_wall_time`.

    `integrator` selects the scheme the action drives: "hermite" (mu, the task of the paper),
    "hermite_aarseth" (eta of Aarseth's criterion), "leapfrog" (fixed dt in yr) or "dopri5" (tolerance);
    action index i maps to the i-th value of `action_values` (default `INTEGRATOR_ACTIONS[integrator]`,
    ten values, the most accurate first). The reward's cost term always uses the Hermite mu of the same
    index, so the reward scale does not depend on the integrator.

    An integration that fails (non-finite state, or a call exceeding MAX_STEPS_PER_CALL steps) terminates
    the episode with reward -w1, energy_error inf, obs[12] = -20 and info["integration_failed"].
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        max_steps: int = 100,
        max_energy_error: float = 0.1,
        integrator: str = "hermite",
        action_values: np.ndarray | None = None,
        w1: float = 3000.0,
        w3: float = 4.0,
        terminal_reward: float | None = None,
        report_wall_time: bool = False,
        render_mode: str | None = None,
        render_size: int = 400,
    ):
        if integrator not in INTEGRATOR_ACTIONS:
            raise ValueError(f"Unknown integrator {integrator!r}; choose one of {sorted(INTEGRATOR_ACTIONS)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.max_energy_error = float(max_energy_error)
        self.integrator = integrator
        values = INTEGRATOR_ACTIONS[integrator] if action_values is None else action_values
        self.action_values = np.asarray(values, np.float64).reshape(-1).copy()
        if len(self.action_values) != len(MU_VALUES) or not (self.action_values > 0).all():
            raise ValueError(f"action_values must be {len(MU_VALUES)} positive numbers, got {action_values!r}")
        self.w1, self.w3 = float(w1), float(w3)
        self.terminal_reward = None if terminal_reward is None else float(terminal_reward)
        self.report_wall_time = report_wall_time
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (13,), np.float64)
        self.action_space = self._make_action_space()
        self._x = np.zeros((N_BODIES, 2))
        self._v = np.zeros((N_BODIES, 2))
        self._m = np.full(N_BODIES, MASS)
        self._t = 0.0
        self._carry = 0.0  # step carried between calls by the Aarseth and Dormand-Prince integrators
        self._e0 = -1.0
        self._step = 0
        self._trail: list[np.ndarray] = []
        self.episode_steps = 0
        self.episode_force_evals = 0
        self.episode_wall_time = 0.0

    # -- action semantics (overridden by the continuous variant)
    def _make_action_space(self) -> gym.spaces.Space:
        return gym.spaces.Discrete(len(self.action_values))

    def _action_to_param(self, action) -> tuple[float, float]:
        """(integrator parameter, Hermite-equivalent mu for the reward)."""
        index = int(np.asarray(action).reshape(()))
        if not 0 <= index < len(self.action_values):
            raise ValueError(f"action must be an integer in [0, {len(self.action_values) - 1}], got {action!r}")
        return float(self.action_values[index]), float(MU_VALUES[index])

    # -- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "ic" in options:
            k = np.asarray(options["ic"], np.float64).reshape(4)
        elif options.get("ic_seed") is not None:
            k = legacy_ic_parameters(int(options["ic_seed"]))
        else:
            k = draw_ic_parameters(self.np_random)
        self._x, self._v, self._m = initial_conditions(k)
        self._t = 0.0
        self._carry = 0.0
        self._e0 = float(total_energy(self._x, self._v, self._m))
        self._step = 0
        self._trail = [self._x.copy()]
        self.episode_steps = 0
        self.episode_force_evals = 0
        self.episode_wall_time = 0.0
        obs = self._observation(log_error=0.0)
        return obs, {"ic": k.copy(), "energy": self._e0}

    def step(self, action):
        param, mu = self._action_to_param(action)
        self._step += 1
        t_end = self._step * RL_STEP_YR * YEAR
        start = time.perf_counter()
        steps, evals, ok = self._evolve(t_end, param)
        wall = time.perf_counter() - start
        self.episode_steps += steps
        self.episode_force_evals += evals
        self.episode_wall_time += wall

        energy = float(total_energy(self._x, self._v, self._m))
        rel = (energy - self._e0) / self._e0 + 1e-20
        failed = not (ok and math.isfinite(rel) and np.isfinite(self._x).all())
        error = abs(rel) if not failed else np.inf
        log_error = math.log10(error) if not failed else 20.0
        reward = reward_fn(error, mu, self._step, self.w1, self.w3) if not failed else -self.w1
        terminated = failed or error > self.max_energy_error
        if terminated and self.terminal_reward is not None:
            reward = self.terminal_reward
        truncated = not terminated and self._step >= self.max_steps
        if failed:
            self._x = np.nan_to_num(self._x, nan=0.0, posinf=1e6, neginf=-1e6)
            self._v = np.nan_to_num(self._v, nan=0.0, posinf=1e6, neginf=-1e6)
        self._trail.append(self._x.copy())
        info = {
            "energy_error": float(error),
            "hermite_steps": int(steps),
            "force_evals": int(evals),
            "mu": param,
            "time_yr": self._t / YEAR,
        }
        if failed:
            info["integration_failed"] = True
        if self.report_wall_time:
            info["wall_time"] = wall
        return self._observation(log_error), float(reward), terminated, truncated, info

    def _evolve(self, t_end: float, param: float) -> tuple[int, int, bool]:
        x, v, m, t = self._x, self._v, self._m, self._t
        if self.integrator == "hermite":
            t, steps, evals, ok = hermite_evolve(x, v, m, t, t_end, param)
        elif self.integrator == "hermite_aarseth":
            t, steps, evals, ok, self._carry = hermite_aarseth_evolve(x, v, m, t, t_end, param, self._carry)
        elif self.integrator == "leapfrog":
            t, steps, evals, ok = leapfrog_evolve(x, v, m, t, t_end, param * YEAR)
        else:
            t, steps, evals, ok, self._carry = dopri5_evolve(x, v, m, t, t_end, param, self._carry)
        self._t = float(t)
        return int(steps), int(evals), bool(ok)

    def _observation(self, log_error: float) -> np.ndarray:
        obs = np.empty(13, np.float64)
        obs[0:6] = self._x.reshape(-1) / 10.0
        obs[6:12] = self._v.reshape(-1)
        obs[12] = -log_error
        return obs

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return render_trails(np.stack(self._trail), self.render_size)


class ThreeBodyTimestepContinuousEnv(ThreeBodyTimestepEnv):
    """`ThreeBodyTimestepEnv` with a continuous action log10(mu) in [-4, -1] (shape (1,)).

    For the other integrators the position of the action in [-4, -1] is mapped log-linearly onto the
    range of `action_values`.
    """

    def _make_action_space(self) -> gym.spaces.Space:
        return gym.spaces.Box(LOG10_MU_RANGE[0], LOG10_MU_RANGE[1], (1,), np.float32)

    def _action_to_param(self, action) -> tuple[float, float]:
        value = np.asarray(action, np.float64).reshape(-1)
        if value.size != 1 or not np.isfinite(value[0]):
            raise ValueError(f"action must be one finite number log10(mu) in [-4, -1], got {action!r}")
        lo, hi = LOG10_MU_RANGE
        log_mu = float(np.clip(value[0], lo, hi))
        frac = (log_mu - lo) / (hi - lo)
        first, last = np.log10(self.action_values[0]), np.log10(self.action_values[-1])
        return float(10.0 ** (first + frac * (last - first))), float(10.0**log_mu)
