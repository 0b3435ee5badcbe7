"""A2PR (Liu et al., ICML 2024): TD3+BC whose BC target is chosen per sample by advantage among the dataset
action and a VAE reconstruction of the policy's action, and whose BC term is masked where neither is good.

One iteration, in this order (Q_1 is the first critic; V_old is V(s) before the value step):

    1 critic:  eps = clip(N(0, sigma^2), -c, c),   a' = clip(pibar(s') + eps, -1, 1)
               y = r + gamma nd min_j Qbar_j(s', a'),   L_Q = sum_j mean_B (Q_j(s, a) - y)^2,   nd = 1 - terminated
    2 value:   y_V = min(r + gamma nd min_j Q_j(s', a'), y)    (the just-updated online critics, the same a')
               L_V = mean_B (V(s) - y_V)^2                     (plain MSE: V estimates E_{a~beta} Q(s, a))
    3 VAE:     (a_hat, mu, sigma) = VAE(s, a),   w = vae_recon_weight 1[Q_1(s, a) > V_old(s)]
               L_VAE = mean_{B,A} w (a_hat - a)^2 + 0.5 mean_{B,Z} KL(N(mu, sigma^2) || N(0, I))   (KL unmasked)
    4 actor (every policy_freq iterations):
               pi = pi(s),   lambda = alpha / mean_B |Q_1(s, pi)|  (no gradient),   L_RL = -lambda mean_B Q_1(s, pi)
               a_gen = VAE(s, pi)  (encode-decode, with noise)
               A_data = Q_1(s, a) - V_old,   A_gen = Q_1(s, a_gen) - V_old,   a_bar = a_gen if A_gen >= A_data else a
               m = bc_weight 1[Q_1(s, a_gen) >= V_old  OR  Q_1(s, a) > V_old]     (an OR: m is never 2 bc_weight)
               L_pi = L_RL + mean_{B,A} m (pi - a_bar)^2,   then pibar, Qbar <- (1 - tau) . + tau .

Faithful to the authors' code: a_bar is not detached, so where a_gen is chosen the BC gradient reaches pi through
the VAE (`--detach-bc-target` cuts it). `--no-vae-branch` sets m = bc_weight and a_bar = a everywhere and skips
steps 2-3: with --bc-weight 1 and TD3+BC's 2 x 256 networks this is exactly TD3+BC's update.

States are z-scored with the dataset's statistics, actions are in [-1, 1] (max_action = 1); the loop, evaluation
and checkpoints are TD3+BC's (td3_bc.train; normalized_score is the D4RL score). Defaults follow the paper's code;
its per-dataset settings (alpha, bc_weight, vae_recon_weight, gamma) are in scripts/bench_offline.py.
Run `python -m mixrl.agents.a2pr --help` (or `mixrl a2pr --help`) for every option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mixrl.agents import td3_bc
from mixrl.buffers import Batch
from mixrl.datasets import load_dataset
from mixrl.flags import DatasetFlags, OfflineRunFlags, SpeedFlags
from mixrl.optim import FlatAdam, flatten_parameters, loss_gradient, matmul_precision
from mixrl.policies.critics import QEnsemble, ValueNetwork
from mixrl.policies.deterministic import DeterministicActor
from mixrl.policies.vae import ConditionalVAE, kl_to_standard_normal
from mixrl.runs import check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(OfflineRunFlags, SpeedFlags, DatasetFlags):
    seed: int = 1024
    """seed of torch, NumPy, Python and the evaluation episodes"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target actor and critics"""
    policy_noise: float = 0.2
    """std sigma of the target-policy smoothing noise (actions in [-1, 1])"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-c, c]"""
    policy_freq: int = 2
    """actor and target updates once every this many iterations"""
    alpha: float = 2.5
    """weight of the Q term: lambda = alpha / mean|Q_1(s, pi(s))| (the paper's code uses 40 on HalfCheetah)"""
    bc_weight: float = 0.5
    """weight m of the BC term where it is on (the authors' code calls it `mask`)"""
    vae_recon_weight: float = 1.0
    """weight of the VAE reconstruction on positive-advantage samples (the authors' `vae_weight`)"""
    detach_bc_target: bool = False
    """stop the BC gradient at the VAE reconstruction a_gen (false: the authors' code, gradient flows through)"""
    vae_branch: bool = True
    """choose the BC target by advantage and mask it (false: m = bc_weight, target = a, no V/VAE training)"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics (one optimiser for both)"""
    value_lr: float = 3e-4
    """Adam learning rate of V"""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE"""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden layer widths of the actor"""
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """hidden layer widths of each critic"""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """hidden layer widths of V"""
    vae_hidden: tuple[int, ...] = (750, 750)
    """hidden layer widths of the VAE's encoder and decoder"""
    latent_dim: int = 0
    """VAE latent size (0: twice the action size)"""
    normalize_obs: bool = True
    """z-score states with the dataset's mean and std + 1e-3 (kept in checkpoints for evaluation)"""
    reward_scale: float = 1.0
    """rewards are used as r * reward_scale + reward_shift"""
    reward_shift: float = 0.0
    """rewards are used as r * reward_scale + reward_shift (AntMaze: -1)"""


def check_args(args: Args) -> None:
    """Refuse values that cannot train, naming the fix."""
    check_range(args, "batch_size policy_freq actor_hidden critic_hidden value_hidden vae_hidden eval_episodes", 1)
    check_range(args, "log_every threads", 1)
    check_range(args, "total_steps latent_dim policy_noise noise_clip alpha bc_weight vae_recon_weight", 0)
    check_range(args, "actor_lr critic_lr value_lr vae_lr eval_every checkpoint_every", 0)
    check_range(args, "gamma tau", 0, 1)


def vae_loss(
    recon: torch.Tensor, actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_VAE, KL): mean_{B,A} w (a_hat - a)^2 + 0.5 KL; the reconstruction is weighted per sample by w (B,),
    the KL is not."""
    kl = kl_to_standard_normal(mean, std)
    return (weight.unsqueeze(-1) * (recon - actions).pow(2)).mean() + 0.5 * kl, kl


def bc_target_and_weight(
    q_data: torch.Tensor,
    q_gen: torch.Tensor,
    v: torch.Tensor,
    actions: torch.Tensor,
    generated: torch.Tensor,
    bc_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_bar, m): a_bar = a_gen where Q_1(s, a_gen) - V >= Q_1(s, a) - V, else a;
    m = bc_weight 1[Q_1(s, a_gen) >= V  OR  Q_1(s, a) > V], shape (B,)."""
    use_generated = (q_gen - v >= q_data - v).unsqueeze(-1)
    target = torch.where(use_generated, generated, actions)
    weight = bc_weight * torch.logical_or(q_gen >= v, q_data > v).float()
    return target, weight


class ValueObjective(nn.Module):
    """L_V as a module of V, with the just-updated critics read without gradient: (batch, a', y) ->
    (L_V, (V_old, Q_1(s, a)))."""

    def __init__(self, args: Args, value: ValueNetwork, qf: QEnsemble):
        super().__init__()
        self.args, self.value, self.qf = args, value, qf

    def forward(
        self, batch: Batch, next_actions: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        v = self.value(batch.obs)
        with torch.no_grad():
            online = td3_bc.td3_backup(self.args, batch, self.qf, next_actions)
            q_data = self.qf(batch.obs, batch.actions)[0]
        return (v - torch.minimum(online, target)).pow(2).mean(), (v.detach(), q_data)


class VAEObjective(nn.Module):
    """L_VAE as a module of the VAE, reconstructing only positive-advantage dataset actions, A = Q_1(s, a) - V_old(s)
    > 0: (batch, Q_1(s, a), V_old) -> (L_VAE, (KL, the mask 1[A > 0]))."""

    def __init__(self, vae: ConditionalVAE, recon_weight: float):
        super().__init__()
        self.vae, self.recon_weight = vae, recon_weight

    def forward(
        self, batch: Batch, q_data: torch.Tensor, v_old: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        recon, mean, std = self.vae(batch.obs, batch.actions)
        mask = (q_data > v_old).float()
        loss, kl = vae_loss(recon, batch.actions, mean, std, self.recon_weight * mask)
        return loss, (kl.detach(), mask)


class ActorObjective(nn.Module):
    """A2PR's L_pi as a module of the actor, through the critics and the VAE that the caller freezes (gradients
    reach the actions, not their weights): (batch, Q_1(s, a), V_old) -> (L_pi, (BC term, lambda, metrics))."""

    def __init__(self, args: Args, actor: DeterministicActor, qf: QEnsemble, vae: ConditionalVAE):
        super().__init__()
        self.args, self.actor, self.qf, self.vae = args, actor, qf, vae

    def forward(self, batch: Batch, q_data: torch.Tensor, v_old: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        pi = self.actor(batch.obs)
        q_pi = self.qf(batch.obs, pi)[0]
        lam = self.args.alpha / q_pi.abs().mean().detach()
        generated = self.vae(batch.obs, pi)[0]
        with torch.no_grad():
            q_gen = self.qf(batch.obs, generated)[0]
        if self.args.detach_bc_target:
            generated = generated.detach()
        bc_target, m = bc_target_and_weight(q_data, q_gen, v_old, batch.actions, generated, self.args.bc_weight)
        bc_loss = (m.unsqueeze(-1) * (pi - bc_target).pow(2)).mean()
        metrics = {
            "a2pr/bc_on_fraction": (m > 0).float().mean(),
            "a2pr/generated_target_fraction": (q_gen - v_old >= q_data - v_old).float().mean(),
        }
        return -lam * q_pi.mean() + bc_loss, (bc_loss.detach(), lam, metrics)


def make_networks(
    args: Args, obs_dim: int, action_dim: int, device
) -> tuple[dict[str, nn.Module], dict[str, FlatAdam]]:
    """(modules, optimizers) of td3_bc.make_networks with A2PR's sizes, plus V and the VAE (keys value, vae) when the
    VAE branch is on. Actor and critics come first, so equal seeds give td3_bc.py's initial weights."""
    modules, optimizers = td3_bc.make_networks(args, obs_dim, action_dim, device, args.actor_hidden, args.critic_hidden)
    if args.vae_branch:
        modules["value"] = ValueNetwork(obs_dim, args.value_hidden).to(device)
        latent_dim = args.latent_dim or 2 * action_dim
        modules["vae"] = ConditionalVAE(obs_dim, action_dim, latent_dim, args.vae_hidden).to(device)
        optimizers["value"] = FlatAdam(flatten_parameters([modules["value"]]), lr=args.value_lr)
        optimizers["vae"] = FlatAdam(flatten_parameters([modules["vae"]]), lr=args.vae_lr)
    return modules, optimizers


def make_update(args: Args, modules: dict[str, nn.Module], optimizers: dict[str, FlatAdam], step: int = 0):
    """The A2PR iteration as a function of a batch -> detached metrics; `step` counts the iterations done.

    `modules`: actor, actor_target, qf, qf_target and, with the VAE branch, value and vae; `optimizers`: the
    FlatAdams of the flattened actor, qf (key critic), value and vae."""
    actor, actor_target, qf, qf_target = (modules[k] for k in ("actor", "actor_target", "qf", "qf_target"))
    value, vae = modules.get("value"), modules.get("vae")
    actor_params, actor_target_params = list(actor.parameters()), list(actor_target.parameters())
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())

    def gradient(objective: nn.Module, name: str):
        return loss_gradient(objective, optimizers[name].params, args.compile)

    critic_gradient = gradient(td3_bc.CriticObjective(args, qf, qf_target, actor_target), "critic")
    if args.vae_branch:
        value_gradient = gradient(ValueObjective(args, value, qf), "value")
        vae_gradient = gradient(VAEObjective(vae, args.vae_recon_weight), "vae")
        actor_gradient = gradient(ActorObjective(args, actor, qf, vae), "actor")
    else:
        actor_gradient = gradient(td3_bc.ActorObjective(actor, qf, args.alpha, args.bc_weight), "actor")

    @matmul_precision(args.matmul_precision)
    def update(batch: Batch) -> dict[str, torch.Tensor]:
        nonlocal step
        step += 1
        # 1. critics: TD3 target with smoothed target-policy actions
        qf_loss, (q_mean, next_actions, target) = critic_gradient(batch)
        optimizers["critic"].step()
        metrics = {"losses/qf_loss": qf_loss, "losses/qf_values": q_mean}

        if args.vae_branch:
            # 2. V: MSE to the smaller of the updated critics' backup and the target backup
            value_loss, (v_old, q_data) = value_gradient(batch, next_actions, target)
            optimizers["value"].step()
            # 3. VAE (EPBL): reconstruct only positive-advantage dataset actions
            loss_vae, (kl, vae_mask) = vae_gradient(batch, q_data, v_old)
            optimizers["vae"].step()
            metrics.update(
                {
                    "losses/value_loss": value_loss,
                    "losses/vae_loss": loss_vae,
                    "losses/vae_kl": kl,
                    "losses/v_values": v_old.mean(),
                    "a2pr/vae_mask_fraction": vae_mask.mean(),
                }
            )

        if step % args.policy_freq == 0:
            # 4. actor, through frozen critics and VAE
            qf.requires_grad_(False)
            if args.vae_branch:
                vae.requires_grad_(False)
                actor_loss, (bc_loss, lam, a2pr_metrics) = actor_gradient(batch, q_data, v_old)
                metrics.update(a2pr_metrics)
                vae.requires_grad_(True)
            else:
                actor_loss, (bc_loss, lam) = actor_gradient(batch)
            optimizers["actor"].step()
            qf.requires_grad_(True)
            with torch.no_grad():
                torch._foreach_lerp_(q_target_params, q_params, args.tau)
                torch._foreach_lerp_(actor_target_params, actor_params, args.tau)
            metrics.update({"losses/actor_loss": actor_loss, "losses/bc_loss": bc_loss, "losses/lambda": lam})
        return metrics

    return update


def main(args: Args) -> Path:
    """Train A2PR on a Minari dataset; returns the run directory."""
    args, saved = start(args, check_args, budget="total_steps")
    data = load_dataset(args.dataset_id, torch.device(args.device), args.normalize_obs)
    modules, optimizers = make_networks(args, data.buffer.obs_dim, data.buffer.action_dim, data.buffer.device)
    return td3_bc.train(args, "a2pr", saved, data, modules, optimizers, make_update, args.actor_hidden)


if __name__ == "__main__":
    main(parse_args(Args))
