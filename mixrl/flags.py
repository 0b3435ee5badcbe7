"""Flags that mean the same in every agent, defined once. An agent's Args inherits the groups that apply to it and
adds its algorithm's hyperparameters; it may re-declare a field to change its default (keeping its meaning):

    @record_given
    @dataclass
    class Args(RunFlags, SpeedFlags, ReplayFlags, VecEnvFlags, EnvFlags):
        env_id: str = "Hopper-v5"
        \"\"\"Gymnasium id ...\"\"\"
        gamma: float = 0.99
        ...

Base classes listed last come first on the command line (dataclass field order), so list EnvFlags last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EnvFlags:
    """The task."""

    env_id: str = "HalfCheetah-v5"
    """Gymnasium id of the task; module:id for a task your own package registers"""
    env_kwargs: tuple[str, ...] = ()
    """keyword arguments of the env constructor: one JSON object, or key=value pairs (e.g. frame_skip=2 sparse=1)"""


@dataclass
class DatasetFlags(EnvFlags):
    """Offline agents: the dataset they learn from and the env they are evaluated in."""

    env_id: str | None = None
    """evaluation environment (default: the one the dataset records; --env-kwargs are merged over its kwargs)"""
    dataset_id: str = "mixrl/hopper-v5/medium-v0"
    """Minari dataset id in $MINARI_DATASETS_PATH (default ~/.minari/datasets); make one with `mixrl dataset collect`"""
    total_steps: int = 1_000_000
    """gradient steps to train for; on --resume, a new value extends the run"""
    batch_size: int = 256
    """transitions per gradient step, sampled uniformly with replacement"""


@dataclass
class VecEnvFlags:
    """How an online agent steps its envs."""

    num_envs: int = 1
    """parallel environments (synchronous); each loop iteration collects one transition per env"""
    backend: Literal["gymnasium", "warp"] = "gymnasium"
    """simulator: Gymnasium envs stepped one by one on the CPU, or all envs at once on MuJoCo Warp (GPU-batched
    MuJoCo, with --device cuda; supports InvertedPendulum, HalfCheetah, Hopper, Walker2d and Ant v5)"""
    normalize_obs: bool = False
    """z-score observations with running statistics (saved with the policy)"""


@dataclass
class ReplayFlags:
    """Off-policy agents' replay buffer."""

    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions"""
    learning_starts: int = 5000
    """uniform-random steps that fill the buffer before learning starts (the budget must exceed it)"""
    save_buffer: bool = True
    """include the replay buffer in checkpoints, so that --resume continues exactly"""


@dataclass
class SpeedFlags:
    """How fast the updates run; learning is the same up to floating-point rounding."""

    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    """matrix products of the gradient updates (torch.set_float32_matmul_precision; acting and evaluation stay
    float32): highest = float32; high = TF32 on GPUs; medium = bfloat16 products with float32 accumulation (about
    3x faster products on CPUs with AMX and on GPUs, relative errors near 1e-2)"""
    compile: bool = False
    """torch.compile each loss with its gradient into one graph (faster updates after a compile of 15-60 s;
    random draws inside the losses then differ from an eager run's)"""


@dataclass
class RunFlags:
    """The run: seed, evaluation, checkpoints, logging, device, resume."""

    seed: int = 1
    """seed of the envs, torch, NumPy and Python"""
    eval_every: int = 10_000
    """training steps between deterministic evaluations (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per evaluation (reset seeds 10000 + seed + i, the same at every evaluation)"""
    checkpoint_every: int = 10_000
    """training steps between checkpoints/latest.pt writes"""
    log_every: int = 1000
    """training steps between loss and steps/s logs"""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda"""
    threads: int = 1
    """torch CPU threads (more than one thrashes on small machines)"""
    torch_deterministic: bool = True
    """use deterministic torch kernels"""
    run_root: str = "runs"
    """parent folder of run directories"""
    resume: str | None = None
    """run directory to continue from its checkpoints/latest.pt (its saved Args are used)"""
    trust_pickle: bool = False
    """read files that need pickle (--resume, --base-policy, --expert, --reference: checkpoints written before mixrl
    stored plain data, SB3 zips that store their policy only as a pickle) or name classes outside mixrl's policy
    modules: only for files whose author you trust; pickle runs whatever code the file names"""


@dataclass
class OfflineRunFlags(RunFlags):
    """RunFlags with the offline agents' defaults: steps are gradient steps."""

    seed: int = 0
    """seed of torch, NumPy, Python and the evaluation episodes"""
    eval_every: int = 5000
    """gradient steps between evaluations (0: only at the end)"""
    eval_episodes: int = 10
    """deterministic episodes per evaluation (reset seeds 10000 + seed + i, the same at every evaluation)"""
    checkpoint_every: int = 50_000
    """gradient steps between checkpoints/latest.pt writes"""
