"""Planar N-body physics of the three-body task: units, initial conditions and numba integrators.

Units are N-body units: G = 1, total mass 1 (three bodies of 1/3), length 1 au. Time is converted from years
and velocities from km/s with the IAU solar mass parameter, so 1 yr = 10.883 time units and the velocity unit
is 51.59 km/s.

Each kernel advances (x, v) in place to a target time and returns its number of steps and force evaluations:
Hermite with the shared step dt = mu * t_coll (AMUSE `hermite0` semantics), Hermite with Aarseth's criterion,
fixed-step leapfrog and Dormand-Prince 5(4) with error control.
"""

from __future__ import annotations

import math

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
IC_LOW = np.array([5.0, 0.0, 0.0, 5.0])
IC_HIGH = np.array([20.0, 10.0, -10.0, 20.0])
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
