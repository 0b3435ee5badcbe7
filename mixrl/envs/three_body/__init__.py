"""Adaptive time-stepping for the chaotic gravitational three-body problem.

An agent picks the time-step parameter mu of a 4th-order Hermite integrator every 0.1 yr and is rewarded for
a small cumulative energy error at a low cost (Saz Ulibarrena & Portegies Zwart 2025,
`reference/three_body.md`).

* `integrators`: units, the paper's initial conditions, and numba kernels that advance the state in place to a
  target time (Hermite with the shared step dt = mu * t_coll, Hermite with Aarseth's criterion, fixed-step
  leapfrog, Dormand-Prince 5(4));
* `env`: `ThreeBodyTimestepEnv` (Discrete(10) over mu), `ThreeBodyTimestepContinuousEnv` (Box over log10 mu)
  and the paper's reward `reward_fn`;
* `render`: the orbits as an RGB image.

The evaluation's baselines and episode runner live beside it, in scripts/three_body_eval.py.
"""

from mixrl.envs.three_body.env import (
    INTEGRATOR_ACTIONS,
    INTEGRATOR_PARAM_NAMES,
    MONOTONE_TERMINAL_REWARD,
    MU_VALUES,
    ThreeBodyTimestepContinuousEnv,
    ThreeBodyTimestepEnv,
    reward_fn,
)
from mixrl.envs.three_body.integrators import (
    YEAR,
    dopri5_evolve,
    hermite_aarseth_evolve,
    hermite_evolve,
    initial_conditions,
    leapfrog_evolve,
    legacy_ic_parameters,
    total_energy,
)

__all__ = [
    "INTEGRATOR_ACTIONS",
    "INTEGRATOR_PARAM_NAMES",
    "MONOTONE_TERMINAL_REWARD",
    "MU_VALUES",
    "YEAR",
    "ThreeBodyTimestepContinuousEnv",
    "ThreeBodyTimestepEnv",
    "dopri5_evolve",
    "hermite_aarseth_evolve",
    "hermite_evolve",
    "initial_conditions",
    "leapfrog_evolve",
    "legacy_ic_parameters",
    "reward_fn",
    "total_energy",
]
