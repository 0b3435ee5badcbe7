"""TD3+BC (Fujimoto & Gu 2021): offline TD3 whose actor loss adds behaviour cloning of the dataset's actions.

    critic:  eps = clip(N(0, sigma^2), -c, c),   a' = clip(pibar(s') + eps, -1, 1)
             y = r + gamma (1 - terminated) min_j Qbar_j(s', a'),    L_Q = sum_j mean_B (Q_j(s, a) - y)^2
    actor (every policy_freq updates):
             lambda = alpha / mean_B |Q_1(s, pi(s))|   (no gradient)
             L_pi = -lambda mean_B Q_1(s, pi(s)) + mean_{B,A} (pi(s) - a)^2
    targets: pibar, Qbar <- (1 - tau) . + tau . after each actor update

States are z-scored with the dataset's mean and std (+1e-3), the same transform at evaluation; actions are in
[-1, 1] (max_action = 1), rescaled from the env's bounds. The budget is gradient steps over a fixed Minari
dataset (`mixrl dataset collect ...`, see mixrl/datasets/); every --eval-every steps the run evaluates the
deterministic actor on the dataset's env over --eval-episodes episodes (reset seeds 10000 + seed + i) and logs
its mean return and the D4RL score normalized_score = 100 (R - ref_min_score) / (ref_max_score - ref_min_score).
`train` is the offline loop, which A2PR (a2pr.py) shares.

Run `python -m mixrl.agents.td3_bc --help` (or `mixrl td3_bc --help`) for every option.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixrl.buffers import Batch
from mixrl.datasets import OfflineDataset, load_dataset
from mixrl.flags import DatasetFlags, OfflineRunFlags, SpeedFlags
from mixrl.optim import FlatAdam, flatten_parameters, loss_gradient, matmul_precision
from mixrl.policies.critics import QEnsemble
from mixrl.policies.deterministic import DeterministicActor, smoothed_target_actions
from mixrl.policies.loading import policy_spec
from mixrl.runs import Parts, Run, RunPolicy, check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(OfflineRunFlags, SpeedFlags, DatasetFlags):
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target actor and critics"""
    policy_noise: float = 0.2
    """std sigma of the target-policy smoothing noise (actions in [-1, 1])"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-c, c]"""
    policy_freq: int = 2
    """actor and target updates once every this many critic updates"""
    alpha: float = 2.5
    """weight of the Q term against BC: lambda = alpha / mean|Q_1(s, pi(s))|"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics (one optimiser for both)"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    normalize_obs: bool = True
    """z-score states with the dataset's mean and std + 1e-3 (kept in checkpoints for evaluation)"""
    reward_scale: float = 1.0
    """rewards are used as r * reward_scale + reward_shift"""
    reward_shift: float = 0.0
    """rewards are used as r * reward_scale + reward_shift (AntMaze: -1)"""


def check_args(args: Args) -> None:
    """Refuse values that cannot train, naming the fix."""
    check_range(args, "batch_size policy_freq hidden_sizes eval_episodes log_every threads", 1)
    check_range(args, "total_steps policy_noise noise_clip alpha actor_lr critic_lr eval_every checkpoint_every", 0)
    check_range(args, "gamma tau", 0, 1)


def td3_backup(args: Args, batch: Batch, qf: QEnsemble, next_actions: torch.Tensor) -> torch.Tensor:
    """r' + gamma (1 - terminated) min_j Q_j(s', a') with the critics `qf`, r' = r * reward_scale + reward_shift."""
    rewards = batch.rewards * args.reward_scale + args.reward_shift
    return rewards + args.gamma * (1.0 - batch.terminated) * qf(batch.next_obs, next_actions).min(0).values


class CriticObjective(nn.Module):
    """L_Q as a module of the critics: batch -> (L_Q, (mean Q, a', y)); a' and y are computed without gradient."""

    def __init__(self, args: Args, qf: QEnsemble, qf_target: QEnsemble, actor_target: DeterministicActor):
        super().__init__()
        self.args, self.qf, self.qf_target, self.actor_target = args, qf, qf_target, actor_target

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        noise, clip = self.args.policy_noise, self.args.noise_clip
        with torch.no_grad():
            next_actions = smoothed_target_actions(self.actor_target, batch.next_obs, noise, clip)
            target = td3_backup(self.args, batch, self.qf_target, next_actions)
        q = self.qf(batch.obs, batch.actions)
        return (q - target).pow(2).mean(1).sum(), (q.detach().mean(), next_actions, target)


class ActorObjective(nn.Module):
    """L_pi = -lambda mean_B Q_1(s, pi(s)) + bc_weight mean_{B,A} (pi(s) - a)^2 as a module of the actor, through
    critics the caller freezes: batch -> (L_pi, (BC term, lambda))."""

    def __init__(self, actor: DeterministicActor, qf: QEnsemble, alpha: float, bc_weight: float = 1.0):
        super().__init__()
        self.actor, self.qf, self.alpha, self.bc_weight = actor, qf, alpha, bc_weight

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        pi = self.actor(batch.obs)
        q_pi = self.qf(batch.obs, pi)[0]
        lam = self.alpha / q_pi.abs().mean().detach()
        bc_loss = self.bc_weight * (pi - batch.actions).pow(2).mean()
        return -lam * q_pi.mean() + bc_loss, (bc_loss.detach(), lam)


def make_networks(
    args, obs_dim: int, action_dim: int, device, actor_hidden: tuple[int, ...], critic_hidden: tuple[int, ...]
) -> tuple[dict[str, nn.Module], dict[str, FlatAdam]]:
    """(modules, optimizers): actor, twin critics and their targets, and the FlatAdams of the flattened actor and
    critics (keys actor and critic) with args.actor_lr and args.critic_lr."""
    actor = DeterministicActor(obs_dim, action_dim, actor_hidden).to(device)
    qf = QEnsemble(obs_dim, action_dim, 2, critic_hidden).to(device)
    modules = {
        "actor": actor,
        "actor_target": copy.deepcopy(actor).requires_grad_(False),
        "qf": qf,
        "qf_target": copy.deepcopy(qf).requires_grad_(False),
    }
    optimizers = {
        "actor": FlatAdam(flatten_parameters([actor]), lr=args.actor_lr),
        "critic": FlatAdam(flatten_parameters([qf]), lr=args.critic_lr),
    }
    return modules, optimizers


def make_update(args: Args, modules: dict[str, nn.Module], optimizers: dict[str, FlatAdam], step: int = 0):
    """The TD3+BC gradient step as a function of a batch -> detached metrics; `step` counts the updates done.

    `modules`: actor, actor_target, qf, qf_target; `optimizers`: the FlatAdams of the flattened actor and qf
    (keys actor and critic)."""
    actor, actor_target, qf, qf_target = (modules[k] for k in ("actor", "actor_target", "qf", "qf_target"))
    actor_params, actor_target_params = list(actor.parameters()), list(actor_target.parameters())
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())
    critic = CriticObjective(args, qf, qf_target, actor_target)
    critic_gradient = loss_gradient(critic, optimizers["critic"].params, args.compile)
    actor_gradient = loss_gradient(ActorObjective(actor, qf, args.alpha), optimizers["actor"].params, args.compile)

    @matmul_precision(args.matmul_precision)
    def update(batch: Batch) -> dict[str, torch.Tensor]:
        nonlocal step
        step += 1
        qf_loss, (q_mean, _, _) = critic_gradient(batch)
        optimizers["critic"].step()
        metrics = {"losses/qf_loss": qf_loss, "losses/qf_values": q_mean}

        if step % args.policy_freq == 0:
            # Actor step through frozen critics: gradients reach the actions, not the critic weights.
            qf.requires_grad_(False)
            actor_loss, (bc_loss, lam) = actor_gradient(batch)
            optimizers["actor"].step()
            qf.requires_grad_(True)
            with torch.no_grad():
                torch._foreach_lerp_(q_target_params, q_params, args.tau)
                torch._foreach_lerp_(actor_target_params, actor_params, args.tau)
            metrics.update({"losses/actor_loss": actor_loss, "losses/bc_loss": bc_loss, "losses/lambda": lam})
        return metrics

    return update


def train(
    args: Any,
    algo: str,
    saved: dict[str, Any] | None,
    data: OfflineDataset,
    modules: dict[str, nn.Module],
    optimizers: dict[str, FlatAdam],
    make_update: Callable[..., Callable[[Batch], dict[str, torch.Tensor]]],
    actor_hidden: tuple[int, ...],
) -> Path:
    """The offline loop of TD3+BC and A2PR: each step samples one batch uniformly from the dataset and makes one
    update, built by `make_update(args, modules, optimizers, step)` at the step the run starts from, for
    --total-steps steps; returns the run directory. The run checkpoints the modules and their optimisers and
    evaluates modules["actor"] (hidden widths `actor_hidden`) as RunPolicy.of_dataset describes."""
    dims = {"obs_dim": data.buffer.obs_dim, "action_dim": data.buffer.action_dim}
    spec = partial(policy_spec, modules["actor"], **dims, hidden_sizes=actor_hidden)
    policy = RunPolicy.of_dataset(modules["actor"], spec, data, args.env_id, args.env_kwargs)
    state = {**modules, **{f"{name}_optimizer": optimizer for name, optimizer in optimizers.items()}}
    with Run(args, algo, policy.env_id, saved, budget="total_steps") as run:
        global_step = run.track(Parts(state), policy, global_step=0)
        update = make_update(args, modules, optimizers, global_step)
        metrics: dict[str, torch.Tensor] = {}
        while global_step < args.total_steps:
            metrics.update(update(data.buffer.sample(args.batch_size)))
            global_step += 1
            run.end_iteration(global_step, metrics)
        run.finish(global_step)
    return run.dir


def main(args: Args) -> Path:
    """Train TD3+BC on a Minari dataset; returns the run directory."""
    args, saved = start(args, check_args, budget="total_steps")
    data = load_dataset(args.dataset_id, torch.device(args.device), args.normalize_obs)
    obs_dim, action_dim, sizes = data.buffer.obs_dim, data.buffer.action_dim, args.hidden_sizes
    modules, optimizers = make_networks(args, obs_dim, action_dim, data.buffer.device, sizes, sizes)
    return train(args, "td3_bc", saved, data, modules, optimizers, make_update, sizes)


if __name__ == "__main__":
    main(parse_args(Args))
