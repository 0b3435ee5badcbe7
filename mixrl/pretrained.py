"""Frozen policies a learner starts from or watches: the base of a residual learner (ResiP: `mixrl ppo|sac
--base-policy`), and the intervening expert and reference Q of RLIF and DAgger (`--expert`, `--reference`).

The agents load them here and hand them to the parts that use them as modules or callables
(mixrl.envs.residual, mixrl.envs.interventions), so that envs/ and policies/ never load a checkpoint.
Checkpoints are read onto the CPU; only the networks move to `device`. Each reads a policy folder (preferred) or a
checkpoint that loads with weights_only=True, and nothing that needs pickle unless the user opted in (`trusted`,
`--trust-pickle`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.envs.interventions import InterventionWrapper
from mixrl.errors import MissingPathError, UsageError
from mixrl.evaluation import load_policy
from mixrl.policies.critics import QEnsemble
from mixrl.policies.files import read_policy
from mixrl.policies.loading import build_actor, policy_spec
from mixrl.policies.residual import FrozenBase, SB3Base

# ---------------------------------------------------------------------------------------------------------------
# Residual bases (ResiP)
# ---------------------------------------------------------------------------------------------------------------


def load_base(path: str | Path, device: str | torch.device = "cpu", trusted: bool = False) -> nn.Module:
    """A frozen base policy for a residual learner (mixrl.policies.residual): a mixrl policy folder, run directory
    or checkpoint (as load_policy reads them), or a Stable-Baselines3 .zip (read without unpickling where SB3 stored
    it readably: SB3Base.from_zip). Nothing is unpickled unless `trusted`. Its policy_spec() is attached as `.spec`
    (data only), so that residual checkpoints and policy folders embed it."""
    if str(path).endswith(".zip"):
        if not Path(path).is_file():
            raise MissingPathError(f"--base-policy {path}: no such Stable-Baselines3 zip.")
        base = SB3Base.from_zip(Path(path).read_bytes(), trusted, f"--base-policy {path}")
        kwargs = base.description
    else:
        ckpt = read_policy(path, trusted)
        obs_dim = int(np.prod(ckpt["observation_space"].shape))
        kwargs = {"model": ckpt["policy"], "obs_dim": obs_dim, "obs_normalizer": ckpt.get("obs_normalizer")}
        base = FrozenBase(build_actor(ckpt["policy"], trusted=trusted), obs_dim, kwargs["obs_normalizer"])
    base.spec = policy_spec(base, **kwargs)
    return base.to(device)


# ---------------------------------------------------------------------------------------------------------------
# The expert and the reference Q of RLIF and DAgger, loaded from mixrl runs (the wrapper takes them as callables)
# ---------------------------------------------------------------------------------------------------------------


def load_reference_q(
    path: str, device: str | torch.device = "cpu", trusted: bool = False
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(obs, env actions (M, A)) -> Q_ref (M,) from the critics of a mixrl SAC or RLIF run (its policy folder's
    `critic`, else its checkpoint's Q ensemble; nothing unpickled unless `trusted`): the mean over an ensemble of
    more than 2 critics (RLPD), else the minimum (SAC's twin critics), as the RLIF code."""
    ckpt = read_policy(path, trusted)
    if ckpt.get("critic") is None:
        if (ckpt.get("args") or {}).get("normalize_obs"):
            raise UsageError(f"{path} was trained with --normalize-obs; the reference Q needs a run without it.")
        raise UsageError(f"{path}: no Q ensemble in this policy ({ckpt.get('algo')}); use a sac or rlif run.")
    qf = build_actor(ckpt["critic"], device, trusted)
    if not isinstance(qf, QEnsemble):
        raise UsageError(f"{path}: its critic is a {type(qf).__name__}, not a QEnsemble.")
    space = ckpt["action_space"]
    obs_dim = int(np.prod(ckpt["observation_space"].shape))
    low, high = space.low, space.high

    def q_value(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = 2.0 * (np.asarray(actions) - low) / (high - low) - 1.0
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(1, obs_dim).expand(len(actions), -1)
            q = qf(o, torch.as_tensor(actions, dtype=torch.float32, device=device))
            return (q.mean(0) if len(q) > 2 else q.min(0).values).cpu().numpy()

    return q_value


def intervention_wrapper(
    args, mode: str, device: torch.device, expert: Callable | None = None, q_value: Callable | None = None, **options
) -> Callable[[gym.Env], gym.Env]:
    """A function that wraps an env in an InterventionWrapper driven by the expert (a callable, else loaded from
    `args.expert`), weakened by `args.expert_noise`, and in value mode by the reference Q (a callable, else the
    critics of `args.reference`, default the expert's run)."""
    trusted = getattr(args, "trust_pickle", False)
    expert = expert or load_policy(args.expert, device, trusted=trusted)
    compare = None
    if mode == "value":
        reference = args.reference or args.expert  # only rlif's Args, which has --reference, asks for value mode
        if q_value is None and reference is None:
            raise UsageError("--intervention value needs --reference RUN (or --expert RUN) for its critics.")
        if q_value is None:
            q_value = load_reference_q(reference, device, trusted)
        if args.compare == "reference":
            compare = load_policy(reference, device, trusted=trusted)

    def wrap(env: gym.Env) -> gym.Env:
        space = getattr(expert, "action_space", env.action_space)
        if space.shape != env.action_space.shape:
            raise UsageError(f"--expert {args.expert} acts in {space}, which does not fit {env.action_space}.")
        return InterventionWrapper(
            env,
            expert,
            mode,
            q_value,
            compare,
            takeover_steps=args.takeover_steps,
            expert_noise=args.expert_noise,
            **options,
        )

    return wrap
