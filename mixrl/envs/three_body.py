"""Adaptive time-stepping for the chaotic gravitational three-body problem.

An agent picks the time-step parameter mu of a 4th-order Hermite integrator every 0.1 yr and is rewarded for
a small cumulative energy error at a low cost (Saz Ulibarrena & Portegies Zwart 2025,
`reference/three_body.md`).

Units are N-body units: G = 1, total mass 1 (three bodies of 1/3), length 1 au. Time is converted from years
and velocities from km/s with the IAU solar mass parameter, so 1 yr = 10.883 time units and the velocity unit
is 51.59 km/s.

Contents:

* numba kernels that advance the state in place to a target time: Hermite with the shared step
  dt = mu * t_coll (AMUSE `hermite0` semantics), Hermite with Aarseth's criterion, fixed-step leapfrog and
  Dormand-Prince 5(4) with error control; each returns its number of steps and force evaluations;
* `initial_conditions` (the paper's systems, drawn from a legacy `RandomState(seed)` or any generator);
* `ThreeBodyTimestepEnv` (Discrete(10) over mu) and `ThreeBodyTimestepContinuousEnv` (Box over log10 mu);
* baselines and an episode runner for evaluation: `fixed_mu_policy`, `run_episode`, `run_fixed_mu`,
  `run_aarseth`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from numba import njit

# --------------------------------------------------------------------------------------------- units
GM_SUN_M3_S2 = 1.32712440018e20
AU_M = 1.495978707e11
YEAR_S = 365.25 * 86400.0
N_BODIES = 3
MASS = 1.0 / N_BODIES  # each body, in units of the total mass
VELOCITY_UNIT_KMS = math.sqrt(N_BODIES * GM_SUN_M3_S2 / AU_M) / 1e3  # 51.59 km/s
TIME_UNIT_S = AU_M / (VELOCITY_UNIT_KMS * 1e3)
YEAR = YEAR_S / TIME_UNIT_S  # 1 yr in N-body time units (10.883)

# ------------------------------------------------------------------------------------- task constants
MU_VALUES = np.logspace(-4, -1, 10)
"""The ten actions of the discrete env: mu = 1e-4 ... 1e-1."""
LOG10_MU_RANGE = (-4.0, -1.0)
RL_STEP_YR = 0.1
IC_LOW = np.array([5.0, 0.0, 0.0, 5.0])
IC_HIGH = np.array([20.0, 10.0, -10.0, 20.0])

# Action values of the integrators the env can drive: index i of the discrete action -> i-th value.
INTEGRATOR_ACTIONS = {
    "hermite": MU_VALUES,  # mu in dt = mu * t_coll
    "hermite_aarseth": np.logspace(-8, -2, 10),  # eta of Aarseth's criterion (dt ~ sqrt(eta))
    "leapfrog": np.logspace(-6, -3, 10),  # fixed dt in yr
    "dopri5": np.logspace(-14, -5, 10),  # relative and absolute tolerance
}
INTEGRATOR_PARAM_NAMES = {"hermite": "mu", "hermite_aarseth": "eta", "leapfrog": "dt_yr", "dopri5": "tol"}
AARSETH_FIRST_STEP_ETA = 0.01
MAX_STEPS_PER_CALL = 100_000_000


# ------------------------------------------------------------------------------------------- kernels
@njit(cache=True, error_model="numpy")
def _acc_jerk(x, v, m, a, j):
    """Accelerations and jerks (in place) and the squared collision time min_ij min(r/v, sqrt(r^3/m_ij))."""
    n, d = x.shape
    for i in range(n):
        for q in range(d):
            a[i, q] = 0.0
            j[i, q] = 0.0
    tc2 = np.inf
    for i in range(n):
        for k in range(i + 1, n):
            r2 = 0.0
            rv = 0.0
            v2 = 0.0
            for q in range(d):
                dx = x[k, q] - x[i, q]
                dv = v[k, q] - v[i, q]
                r2 += dx * dx
                rv += dx * dv
                v2 += dv * dv
            r = math.sqrt(r2)
            r3inv = 1.0 / (r2 * r)
            alpha = 3.0 * rv / r2
            for q in range(d):
                dx = (x[k, q] - x[i, q]) * r3inv
                dj = (v[k, q] - v[i, q]) * r3inv - alpha * dx
                a[i, q] += m[k] * dx
                a[k, q] -= m[i] * dx
                j[i, q] += m[k] * dj
                j[k, q] -= m[i] * dj
            t_free_fall2 = r2 * r / (m[i] + m[k])
            t_fly2 = r2 / v2
            if t_free_fall2 < tc2:
                tc2 = t_free_fall2
            if t_fly2 < tc2:
                tc2 = t_fly2
    return tc2


@njit(cache=True, error_model="numpy")
def _acc(x, m, a):
    """Accelerations (in place)."""
    n, d = x.shape
    for i in range(n):
        for q in range(d):
            a[i, q] = 0.0
    for i in range(n):
        for k in range(i + 1, n):
            r2 = 0.0
            for q in range(d):
                dx = x[k, q] - x[i, q]
                r2 += dx * dx
            r3inv = 1.0 / (r2 * math.sqrt(r2))
            for q in range(d):
                dx = (x[k, q] - x[i, q]) * r3inv
                a[i, q] += m[k] * dx
                a[k, q] -= m[i] * dx


@njit(cache=True, error_model="numpy")
def _hermite_step(x, v, m, a, j, xp, vp, ap, jp, dt):
    """One predict-evaluate-correct Hermite step of size dt; returns the squared collision time at the
    predicted state. On return a, j hold the values at the predicted state (no re-evaluation)."""
    n, d = x.shape
    dt2 = dt * dt / 2.0
    dt3 = dt * dt * dt / 6.0
    for i in range(n):
        for q in range(d):
            xp[i, q] = x[i, q] + v[i, q] * dt + a[i, q] * dt2 + j[i, q] * dt3
            vp[i, q] = v[i, q] + a[i, q] * dt + j[i, q] * dt2
    tc2 = _acc_jerk(xp, vp, m, ap, jp)
    h = dt / 2.0
    h12 = dt * dt / 12.0
    for i in range(n):
        for q in range(d):
            v1 = v[i, q] + (a[i, q] + ap[i, q]) * h + (j[i, q] - jp[i, q]) * h12
            x[i, q] = x[i, q] + (v[i, q] + v1) * h + (a[i, q] - ap[i, q]) * h12
            v[i, q] = v1
            a[i, q] = ap[i, q]
            j[i, q] = jp[i, q]
    return tc2


@njit(cache=True, error_model="numpy")
def hermite_evolve(x, v, m, t, t_end, mu, max_steps=MAX_STEPS_PER_CALL):
    """Advance (x, v) in place from time t towards t_end with the shared step dt = mu * t_coll.

    AMUSE `hermite0` semantics: a, j and t_coll are evaluated at the start; then steps are taken while
    t + dt <= t_end + dt/2, each new dt coming from t_coll at the predicted state of the previous step.
    Returns (t, steps, force_evals, ok); ok is false when dt stopped being finite and positive or
    max_steps was reached.
    """
    a = np.empty_like(x)
    j = np.empty_like(x)
    xp = np.empty_like(x)
    vp = np.empty_like(x)
    ap = np.empty_like(x)
    jp = np.empty_like(x)
    tc2 = _acc_jerk(x, v, m, a, j)
    evals = 1
    steps = 0
    dt = mu * math.sqrt(tc2)
    while t + 0.5 * dt <= t_end:
        if not (dt > 0.0 and dt < np.inf) or steps >= max_steps:
            return t, steps, evals, False
        tc2 = _hermite_step(x, v, m, a, j, xp, vp, ap, jp, dt)
        evals += 1
        steps += 1
        t += dt
        dt = mu * math.sqrt(tc2)
    ok = dt > 0.0 and dt < np.inf
    return t, steps, evals, ok


@njit(cache=True, error_model="numpy")
def hermite_aarseth_evolve(x, v, m, t, t_end, eta, dt, max_steps=MAX_STEPS_PER_CALL):
    """Hermite with a shared step from Aarseth's criterion, min over bodies of

        dt_i = sqrt(eta (|a||a2| + |a1|^2) / (|a1||a3| + |a2|^2)),

    with the 2nd and 3rd derivatives a2, a3 interpolated from the accelerations and jerks at both ends of
    the previous step. `dt` is the step carried over from the previous call; dt <= 0 starts with
    dt = 0.01 min_i |a_i|/|j_i|. Returns (t, steps, force_evals, ok, dt_next).
    """
    n, d = x.shape
    a = np.empty_like(x)
    j = np.empty_like(x)
    xp = np.empty_like(x)
    vp = np.empty_like(x)
    ap = np.empty_like(x)
    jp = np.empty_like(x)
    a_old = np.empty_like(x)
    j_old = np.empty_like(x)
    _acc_jerk(x, v, m, a, j)
    evals = 1
    steps = 0
    if not dt > 0.0:
        dt = np.inf
        for i in range(n):
            an = 0.0
            jn = 0.0
            for q in range(d):
                an += a[i, q] * a[i, q]
                jn += j[i, q] * j[i, q]
            dt = min(dt, AARSETH_FIRST_STEP_ETA * math.sqrt(an / jn))
    while t + 0.5 * dt <= t_end:
        if not (dt > 0.0 and dt < np.inf) or steps >= max_steps:
            return t, steps, evals, False, dt
        a_old[:, :] = a
        j_old[:, :] = j
        _hermite_step(x, v, m, a, j, xp, vp, ap, jp, dt)
        evals += 1
        steps += 1
        t += dt
        new_dt = np.inf
        for i in range(n):
            s_a = 0.0
            s_j = 0.0
            s_2 = 0.0
            s_3 = 0.0
            for q in range(d):
                da = a_old[i, q] - a[i, q]
                a3 = (12.0 * da + 6.0 * (j_old[i, q] + j[i, q]) * dt) / (dt * dt * dt)
                a2 = (-6.0 * da - (4.0 * j_old[i, q] + 2.0 * j[i, q]) * dt) / (dt * dt) + a3 * dt
                s_a += a[i, q] * a[i, q]
                s_j += j[i, q] * j[i, q]
                s_2 += a2 * a2
                s_3 += a3 * a3
            num = math.sqrt(s_a * s_2) + s_j
            den = math.sqrt(s_j * s_3) + s_2
            new_dt = min(new_dt, math.sqrt(eta * num / den))
        dt = new_dt
    return t, steps, evals, dt > 0.0 and dt < np.inf, dt


@njit(cache=True, error_model="numpy")
def leapfrog_evolve(x, v, m, t, t_end, dt, max_steps=MAX_STEPS_PER_CALL):
    """Kick-drift-kick leapfrog with a fixed step dt while t + dt <= t_end + dt/2 (like `hermite_evolve`).
    Returns (t, steps, force_evals, ok)."""
    n, d = x.shape
    a = np.empty_like(x)
    _acc(x, m, a)
    evals = 1
    steps = 0
    h = 0.5 * dt
    while t + h <= t_end:
        if steps >= max_steps:
            return t, steps, evals, False
        for i in range(n):
            for q in range(d):
                v[i, q] += a[i, q] * h
                x[i, q] += v[i, q] * dt
        _acc(x, m, a)
        for i in range(n):
            for q in range(d):
                v[i, q] += a[i, q] * h
        evals += 1
        steps += 1
        t += dt
    return t, steps, evals, True


# Dormand-Prince 5(4) tableau.
_DP_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0],
        [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    ]
)
_DP_B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
_DP_E = _DP_B - np.array([5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])


@njit(cache=True, error_model="numpy")
def dopri5_evolve(x, v, m, t, t_end, tol, h, max_steps=MAX_STEPS_PER_CALL):
    """Dormand-Prince 5(4) with error control (rtol = atol = tol) that lands exactly on t_end.

    `h` is the step proposed by the previous call (h <= 0 starts from 1e-3 t_coll). Steps counts accepted
    steps; force_evals counts every stage (6 per attempted step thanks to first-same-as-last, plus one per
    call). Returns (t, steps, force_evals, ok, h_next).
    """
    n, d = x.shape
    k_x = np.zeros((7, n, d))
    k_v = np.zeros((7, n, d))
    xs = np.empty_like(x)
    vs = np.empty_like(x)
    acc = np.empty_like(x)
    jerk = np.empty_like(x)
    tc2 = _acc_jerk(x, v, m, acc, jerk)
    k_x[0] = v
    k_v[0] = acc
    evals = 1
    steps = 0
    attempts = 0
    if not h > 0.0:
        h = 1e-3 * math.sqrt(tc2)
    ok = True
    while t_end - t > 1e-12 * max(1.0, abs(t_end)):
        if attempts >= max_steps or not (h > 0.0 and h < np.inf):
            ok = False
            break
        last = h >= t_end - t
        step = t_end - t if last else h
        for s in range(1, 7):
            for i in range(n):
                for q in range(d):
                    sx = 0.0
                    sv = 0.0
                    for r in range(s):
                        sx += _DP_A[s, r] * k_x[r, i, q]
                        sv += _DP_A[s, r] * k_v[r, i, q]
                    xs[i, q] = x[i, q] + step * sx
                    vs[i, q] = v[i, q] + step * sv
            k_x[s] = vs
            _acc(xs, m, acc)
            k_v[s] = acc
        evals += 6
        attempts += 1
        err = 0.0
        for i in range(n):
            for q in range(d):
                ex = 0.0
                ev = 0.0
                for r in range(7):
                    ex += _DP_E[r] * k_x[r, i, q]
                    ev += _DP_E[r] * k_v[r, i, q]
                sx = tol + tol * max(abs(x[i, q]), abs(xs[i, q]))
                sv = tol + tol * max(abs(v[i, q]), abs(vs[i, q]))
                err += (step * ex / sx) ** 2 + (step * ev / sv) ** 2
        err = math.sqrt(err / (2 * n * d))
        factor = 0.9 * err ** (-0.2) if err > 0.0 else 5.0
        factor = min(5.0, max(0.2, factor))
        if err <= 1.0:
            x[:, :] = xs  # the 7th stage is the 5th-order solution
            v[:, :] = vs
            k_x[0] = k_x[6]
            k_v[0] = k_v[6]
            t = t_end if last else t + step
            steps += 1
            if not last or factor < 1.0:
                h = step * factor
        else:
            h = step * factor
    return t, steps, evals, ok, h


@njit(cache=True, error_model="numpy")
def total_energy(x, v, m):
    """Kinetic plus potential energy (G = 1, no softening)."""
    n, d = x.shape
    kin = 0.0
    for i in range(n):
        s = 0.0
        for q in range(d):
            s += v[i, q] * v[i, q]
        kin += 0.5 * m[i] * s
    pot = 0.0
    for i in range(n):
        for k in range(i + 1, n):
            r2 = 0.0
            for q in range(d):
                dx = x[k, q] - x[i, q]
                r2 += dx * dx
            pot -= m[i] * m[k] / math.sqrt(r2)
    return kin + pot


def collision_time(x: np.ndarray, v: np.ndarray, m: np.ndarray) -> float:
    """t_coll = min over pairs of min(r/v, sqrt(r^3 / (m_i + m_j))) in N-body time units."""
    return math.sqrt(_acc_jerk(x, v, m, np.empty_like(x), np.empty_like(x)))


# ---------------------------------------------------------------------------------- initial conditions
def draw_ic_parameters(rng: np.random.Generator | np.random.RandomState) -> np.ndarray:
    """K = (x1, y1, x2, y2) in au: x1 ~ U[5, 20], y1 ~ U[0, 10], x2 ~ U[-10, 0], y2 ~ U[5, 20].

    A legacy RandomState draws with one `uniform(low, high)` call, as the paper's code did (it accepts
    low > high for x2); a Generator draws low + (high - low) * U[0, 1), the same distribution.
    """
    if isinstance(rng, np.random.RandomState):
        return rng.uniform(low=IC_LOW, high=IC_HIGH)
    return IC_LOW + (IC_HIGH - IC_LOW) * rng.random(4)


def legacy_ic_parameters(ic_seed: int) -> np.ndarray:
    """The paper's K for a seed: one draw from a legacy `numpy.random.RandomState(ic_seed)`."""
    return draw_ic_parameters(np.random.RandomState(ic_seed))


def initial_conditions(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planar positions (au), velocities (N-body units) and masses of the system K, centre-of-mass frame.

    Body 0 at the origin moving at (0, 10) km/s, body 1 at (x1, y1) moving at (-10, 0) km/s, body 2 at
    (x2, y2) at rest; three equal masses.
    """
    x = np.array([[0.0, 0.0], [k[0], k[1]], [k[2], k[3]]])
    v = np.array([[0.0, 10.0], [-10.0, 0.0], [0.0, 0.0]]) / VELOCITY_UNIT_KMS
    m = np.full(N_BODIES, MASS)
    x -= (m[:, None] * x).sum(0) / m.sum()
    v -= (m[:, None] * v).sum(0) / m.sum()
    return x, v, m


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


# --------------------------------------------------------------------------------------- environments
_COLOURS = np.array([[255, 99, 71], [80, 200, 120], [100, 149, 237]], np.uint8)


class ThreeBodyTimestepEnv(gym.Env):
    """Pick the time-step parameter of a three-body integrator every 0.1 yr.

    Observation (13 floats): positions (x, y) of the three bodies in units of 10 au, their velocities in
    N-body units (centre-of-mass frame, body by body), and -log10 |dE| of the cumulative relative energy
    error (0 at reset). Action: index into `action_values` (for the default Hermite integrator,
    mu = logspace(-4, -1, 10)). Reward: `reward_fn`. Terminated when |dE| > max_energy_error (or the
    integration fails); truncated after max_steps RL steps.

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


def render_trails(trail: np.ndarray, size: int = 400) -> np.ndarray:
    """RGB image (size, size, 3) of the orbits: trail (T, 3, 2) in au, bodies as discs at the last point.

    The view is centred on the centre of mass and spans at least +-15 au, growing to fit the trail.
    """
    img = np.full((size, size, 3), 16, np.uint8)
    half = max(15.0, 1.1 * float(np.abs(trail).max()))
    scale = (size - 1) / (2.0 * half)
    pix = (trail * scale + (size - 1) / 2.0).astype(np.float64)
    pix[..., 1] = (size - 1) - pix[..., 1]  # y axis up
    for b in range(trail.shape[1]):
        dim = (_COLOURS[b].astype(np.float64) * 0.6).astype(np.uint8)
        pts = pix[:, b]
        if len(pts) > 1:
            seg = np.diff(pts, axis=0)
            n = np.maximum(np.ceil(np.abs(seg).max(1)).astype(np.int64), 1)
            frac = np.concatenate([np.arange(k) / k for k in n])
            start = np.repeat(pts[:-1], n, axis=0)
            line = start + np.repeat(seg, n, axis=0) * frac[:, None]
            line = np.rint(line).astype(np.int64)
            keep = ((line >= 0) & (line < size)).all(1)
            img[line[keep, 1], line[keep, 0]] = dim
        cx, cy = pts[-1]
        yy, xx = np.ogrid[:size, :size]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16.0] = _COLOURS[b]
    return img


# ------------------------------------------------------------------------------------ baselines, runs
Policy = Callable[[np.ndarray], object]


def fixed_mu_policy(index: int) -> Policy:
    """The baseline that always picks action `index` (mu = MU_VALUES[index] for Hermite)."""
    return lambda obs: index


@dataclass
class EpisodeRecord:
    """What one evaluation episode cost and how accurate it was."""

    ic_seed: int
    final_error: float
    max_error: float
    hermite_steps: int
    force_evals: int
    wall_time: float
    steps: int
    terminated: bool
    failed_at: int | None
    rewards: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)

    def episode_return(self, max_steps: int | None = None, stop_error: float | None = 0.1) -> float:
        """Return of the first `max_steps` steps, ending at the first step with |dE| > stop_error (the
        training protocol) when stop_error is given."""
        total = 0.0
        for i, (r, e) in enumerate(zip(self.rewards, self.errors, strict=True)):
            if max_steps is not None and i >= max_steps:
                break
            total += r
            if stop_error is not None and e > stop_error:
                break
        return total


def run_episode(
    policy: Policy,
    ic_seed: int,
    max_steps: int = 300,
    integrator: str = "hermite",
    max_energy_error: float = np.inf,
    continuous: bool = False,
    env: ThreeBodyTimestepEnv | None = None,
) -> EpisodeRecord:
    """Run `policy` (obs -> action) on the paper's system `ic_seed`.

    By default there is no early stop (max_energy_error = inf), as for the 30-yr evaluation; the error at
    the last step is recorded whatever it is, and `failed_at` is the first step with |dE| > 0.1.
    """
    if env is None:
        cls = ThreeBodyTimestepContinuousEnv if continuous else ThreeBodyTimestepEnv
        env = cls(
            max_steps=max_steps,
            max_energy_error=max_energy_error,
            integrator=integrator,
            report_wall_time=True,
        )
    obs, _ = env.reset(options={"ic_seed": ic_seed})
    rewards, errors, params = [], [], []
    failed_at = None
    done = terminated = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        rewards.append(reward)
        errors.append(info["energy_error"])
        params.append(info["mu"])
        if failed_at is None and info["energy_error"] > 0.1:
            failed_at = len(errors)
        done = terminated or truncated
    return EpisodeRecord(
        ic_seed=ic_seed,
        final_error=errors[-1],
        max_error=max(errors),
        hermite_steps=env.episode_steps,
        force_evals=env.episode_force_evals,
        wall_time=env.episode_wall_time,
        steps=len(errors),
        terminated=bool(terminated),
        failed_at=failed_at,
        rewards=rewards,
        errors=errors,
        params=params,
    )


def run_fixed_mu(mu_index: int, ic_seed: int, max_steps: int = 300, **kwargs) -> EpisodeRecord:
    """Baseline: the Hermite integrator with mu = MU_VALUES[mu_index] throughout."""
    return run_episode(fixed_mu_policy(mu_index), ic_seed, max_steps, **kwargs)


def run_aarseth(eta: float, ic_seed: int, max_steps: int = 300, max_energy_error: float = np.inf) -> EpisodeRecord:
    """Baseline: Hermite with Aarseth's time-step criterion at a fixed eta (any positive value)."""
    env = ThreeBodyTimestepEnv(
        max_steps=max_steps,
        max_energy_error=max_energy_error,
        integrator="hermite_aarseth",
        action_values=np.full(len(MU_VALUES), float(eta)),
        report_wall_time=True,
    )
    return run_episode(fixed_mu_policy(0), ic_seed, max_steps, env=env)
