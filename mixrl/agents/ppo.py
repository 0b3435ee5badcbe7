"""Proximal Policy Optimization (Schulman et al. 2017) for continuous actions, as CleanRL's ppo_continuous_action,
or PMOE-PPO (Ren et al. 2021) with a Gaussian-mixture (mixture-of-experts) actor.

Each iteration collects T = num_steps steps in each of N envs with a ~ pi_old(.|s) (unbounded; clipped to [-1, 1]
only on the way to the env, the unclipped a is stored), then runs update_epochs epochs of minibatch Adam steps on

    GAE:     delta_t = r_t + gamma (1 - terminated_t) V_old(s'_t) - V_old(s_t),   s'_t the true next observation
             A_t = delta_t + gamma lambda (1 - done_t) A_{t+1},   R_t = A_t + V_old(s_t)        (lambda-returns)
    policy:  rho = exp(log pi(a|s) - log pi_old(a|s)),   L_clip = -E[min(rho A^, clip(rho, 1 - eps, 1 + eps) A^)]
             A^ = advantages z-scored within each minibatch
    value:   L_V = 1/2 E[max((V(s) - R)^2, (V_old(s) + clip(V(s) - V_old(s), -eps, eps) - R)^2)]   (--clip-vloss)
    total:   L = L_clip + c_V L_V - c_H H[pi(.|s)],   global gradient norm clipped, learning rate annealed linearly

PMOE-PPO (`--policy gmm`): pi(a|s) = sum_k w_k(s) N(a; mu_k(s), sigma_k), w(s) = softmax(Linear(s)). It acts with
k ~ Cat(w), a ~ N(mu_k, sigma_k); log pi is the mixture's, by logsumexp, so the surrogate trains w as well. An
auxiliary Q(s, a) learns the lambda-returns and names the best expert for the frequency loss:

    L_Q    = E[(Q(s, a) - R)^2]
    L_freq = E_{s,k}[(w_k(s) - onehot(argmax_j Q(s, a_j))_k)^2],   a_j ~ N(mu_j(s), sigma_j), one per expert, detached
    total:   L = L_clip + c_V L_V + L_freq + L_Q     (no entropy bonus: the mixture has no closed-form entropy)

`--gmm-grad ratio` drops L_freq and L_Q (and the Q network): w then learns from the surrogate's likelihood ratio
alone, the score-ratio estimator (Gumbel-softmax does not apply: PPO never differentiates through the action).

V_old and log pi_old are computed after each rollout in one batched pass (the parameters do not change during a
rollout) with the same function the update uses, so the ratio is exactly 1 on the first minibatch.
`losses/entropy` is the Monte-Carlo estimate -mean log pi_old(a|s) over the rollout, for both policies; it, the
explained variance of V_old and the learning rate are logged with the losses every --log-every steps (an iteration
is num_envs * num_steps steps).

ResiP (`--base-policy`) and whole-network fine-tuning (`--finetune-base`) change the actor and the envs' view of
the task, not the update (mixrl/policies/residual.py, mixrl/envs/residual.py).

Run `python -m mixrl.agents.ppo --help` (or `mixrl ppo --help`) for every option.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mixrl.buffers import RolloutBuffer, compute_gae
from mixrl.envs.factory import make_vec_env, parse_env_kwargs
from mixrl.envs.residual import ChunkVecEnv, ResidualVecEnv
from mixrl.flags import EnvFlags, RunFlags, SpeedFlags, VecEnvFlags
from mixrl.optim import FlatAdam, flatten_parameters, loss_gradient, matmul_precision, skip_guards_after_first_call
from mixrl.policies.chunked import ExecuteChunk
from mixrl.policies.critics import ValueNetwork
from mixrl.policies.gaussian import DiagonalGaussianActor
from mixrl.policies.loading import policy_spec, residual_spec
from mixrl.policies.mixture import (
    ACTOR_EVAL_RULES,
    DiagonalGaussianMixtureActor,
    auxiliary_q,
    gmm_log_prob,
    pmoe_ppo_losses,
)
from mixrl.policies.nets import orthogonal_init
from mixrl.policies.residual import ChunkGaussianActor, FrozenBase, ResidualGaussianActor, chunked_model
from mixrl.pretrained import load_base
from mixrl.runs import Parts, Run, RunPolicy, UsageError, check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(RunFlags, SpeedFlags, VecEnvFlags, EnvFlags):
    total_timesteps: int = 1_000_000
    """environment steps to train for (summed over envs, rounded down to whole rollouts); --resume may extend it"""
    num_steps: int = 2048
    """steps per env in each rollout; a rollout holds num_envs * num_steps transitions"""
    num_minibatches: int = 32
    """minibatches per epoch (must divide num_envs * num_steps)"""
    update_epochs: int = 10
    """passes over each rollout"""
    learning_rate: float = 3e-4
    """Adam learning rate (its starting value with --anneal-lr)"""
    anneal_lr: bool = True
    """decay the learning rate linearly towards zero over the iterations"""
    adam_eps: float = 1e-5
    """Adam epsilon"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    clip_coef: float = 0.2
    """eps of the clipped surrogate (and of the value clipping)"""
    clip_vloss: bool = True
    """clip the value update around V_old as the surrogate clips the ratio"""
    norm_adv: bool = True
    """z-score the advantages within each minibatch"""
    ent_coef: float = 0.0
    """c_H, weight of the entropy bonus (Gaussian policy only)"""
    vf_coef: float = 0.5
    """c_V, weight of the value loss"""
    max_grad_norm: float = 0.5
    """clip the gradient norm of the actor and critic together to this (gmm: the Q network's on its own, likewise)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and the critic (tanh)"""
    policy: Literal["gaussian", "gmm"] = "gaussian"
    """actor: diagonal Gaussian (PPO) or a Gaussian mixture of experts (PMOE-PPO)"""
    num_experts: int = 5
    """gmm: number of experts K"""
    q_hidden_sizes: tuple[int, ...] = (64, 64, 64)
    """gmm: hidden layer widths of the auxiliary Q(s, a) network (ReLU) behind the frequency loss"""
    gmm_grad: Literal["frequency", "ratio"] = "frequency"
    """gmm: how the mixing weights w learn: the surrogate plus PMOE's frequency loss (with the Q network), or
    the surrogate's likelihood ratio alone"""
    gmm_eval_rule: Literal["argmax_w", "weighted_mean", "sampled_k_mean", "sample"] = "argmax_w"
    """gmm: evaluation action: mean of argmax_k w_k, the mixture's mean sum_k w_k mu_k, mean of k ~ Cat(w), or a
    sample of the mixture (`mixrl eval --eval-rule` overrides it)"""
    normalize_obs: bool = True
    """z-score observations with running statistics, clipped to +-10 (saved with the policy); with --base-policy the
    base's own statistics normalise them instead"""
    normalize_reward: bool = True
    """divide rewards by the running std of the discounted return, clipped to +-10 (saved in checkpoints)"""
    base_policy: str | None = None
    """ResiP: a frozen base (mixrl run directory or checkpoint, or a Stable-Baselines3 .zip); the actor then learns
    a residual a = a_base + alpha Delta on x = [norm(obs), a_base] (mixrl/policies/residual.py)"""
    residual_alpha: float = 0.1
    """ResiP: alpha, the scale of the residual Delta in the base's normalised action space [-1, 1]"""
    residual_log_std: float = -1.0
    """ResiP: fixed log-std of Delta (exploration std alpha exp(log_std) = 0.037 in normalised units)"""
    finetune_base: bool = False
    """with --base-policy, a chunked BC run: instead of a residual, fine-tune the whole BC network, one chunk per
    action (its k executed actions, rewards summed; a step then counts k env steps or fewer); the Gaussian's mean
    is the unfrozen network, initialised from the base"""
    finetune_log_std: float = -3.3
    """--finetune-base: fixed log-std of each action of the chunk (-3.3: std 0.037, ResiP's exploration std)"""
    eval_every: int = 50_000
    """training steps between deterministic evaluations, checked after each iteration (0: only at the end)"""
    checkpoint_every: int = 50_000
    """training steps between checkpoints/latest.pt writes, checked after each iteration"""


GMM_OPTIONS = ("num_experts", "q_hidden_sizes", "gmm_grad", "gmm_eval_rule")


class Batch(NamedTuple):
    """A rollout flattened to T N rows, or one minibatch of its rows."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor


def check_args(args: Args) -> None:
    """Refuse options that do not fit together, naming the fix."""
    check_range(args, "num_envs num_steps update_epochs hidden_sizes q_hidden_sizes eval_episodes threads", 1)
    check_range(args, "total_timesteps learning_rate adam_eps clip_coef ent_coef vf_coef max_grad_norm", 0)
    check_range(args, "eval_every checkpoint_every log_every", 0)
    check_range(args, "gamma gae_lambda", 0, 1)
    if args.finetune_base and args.base_policy is None:
        raise UsageError("--finetune-base fine-tunes a base policy: give it with --base-policy PATH.")
    if args.policy not in ("gaussian", "gmm"):
        raise UsageError(f"--policy {args.policy!r} is not one of: gaussian, gmm.")
    if args.policy == "gaussian":
        changed = [name for name in GMM_OPTIONS if getattr(args, name) != getattr(Args, name)]
        if changed:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in changed)
            raise UsageError(f"{flags} only apply to the mixture policy: add --policy gmm.")
    elif args.base_policy is not None:
        raise UsageError("--base-policy trains a Gaussian residual: drop --policy gmm.")
    elif args.num_experts < 1:
        raise UsageError(f"--num-experts must be at least 1, got {args.num_experts}.")
    elif args.gmm_grad not in ("frequency", "ratio"):
        raise UsageError(f"--gmm-grad {args.gmm_grad!r} is not one of: frequency, ratio.")
    elif args.gmm_eval_rule not in ACTOR_EVAL_RULES:
        raise UsageError(f"--gmm-eval-rule {args.gmm_eval_rule!r} is not one of: {', '.join(ACTOR_EVAL_RULES)}.")
    elif args.ent_coef != 0.0:
        raise UsageError("--ent-coef needs a closed-form entropy, which the mixture policy lacks: use --ent-coef 0.")
    batch_size = args.num_envs * args.num_steps
    if args.num_minibatches < 1 or batch_size % args.num_minibatches:
        raise UsageError(
            f"--num-minibatches {args.num_minibatches} must divide the rollout of num_envs * num_steps = "
            f"{batch_size} transitions."
        )
    if args.norm_adv and batch_size // args.num_minibatches < 2:
        raise UsageError("--norm-adv needs minibatches of at least 2 transitions: use fewer --num-minibatches.")
    if args.total_timesteps < batch_size:
        raise UsageError(
            f"--total-timesteps {args.total_timesteps} is less than one rollout of num_envs * num_steps = "
            f"{batch_size} transitions."
        )


def make_envs(args: Args, base: nn.Module | None, env_kwargs: dict, device: torch.device):
    """The training envs, observations and rewards normalised as the flags ask. ResiP: observations become
    x = [norm(obs), a_base], actions Delta; --finetune-base: observations norm(obs), actions whole chunks (each
    sub-env executes a chunk per step)."""
    envs = make_vec_env(
        args.env_id,
        args.num_envs,
        args.seed,
        device,
        normalize_obs=args.normalize_obs and base is None,
        normalize_reward_gamma=args.gamma if args.normalize_reward else None,
        env_kwargs=env_kwargs,
        backend=args.backend,
        wrapper=partial(ExecuteChunk, steps=chunked_model(base).execute) if args.finetune_base else None,
    )
    if not envs.continuous:
        raise UsageError(
            f"PPO needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}. "
            "Use `mixrl dqn` for discrete actions."
        )
    if args.finetune_base:
        return ChunkVecEnv(envs, base)
    return envs if base is None else ResidualVecEnv(envs, base, args.residual_alpha)


def make_actor(args: Args, envs, base: nn.Module | None) -> tuple[nn.Module, dict]:
    """(actor on the envs' observations, the kwargs that rebuild it): PPO's diagonal Gaussian, PMOE-PPO's mixture,
    ResiP's residual Gaussian (the head of the envs' residual policy), or --finetune-base's Gaussian whose mean is the
    BC network itself, trainable."""
    kwargs = {
        "obs_dim": envs.obs_dim,
        "action_dim": envs.single_action_space.shape[0],
        "hidden_sizes": args.hidden_sizes,
    }
    if args.finetune_base:
        head = ChunkGaussianActor
        kwargs = {"model": copy.deepcopy(base.model).requires_grad_(True), "log_std": args.finetune_log_std}
    elif base is not None:
        head = ResidualGaussianActor
        kwargs.update(log_std=args.residual_log_std)
    elif args.policy == "gmm":
        head = DiagonalGaussianMixtureActor
        kwargs.update(num_experts=args.num_experts, eval_rule=args.gmm_eval_rule)
    else:
        head = DiagonalGaussianActor
    actor = head(**kwargs).to(args.device)
    if isinstance(envs, ResidualVecEnv):
        envs.policy.head = actor
    return actor, kwargs


def make_critic(obs_dim: int, hidden_sizes: tuple[int, ...]) -> ValueNetwork:
    """V(s): a tanh MLP with PPO's orthogonal init (hidden layers gain sqrt 2, output gain 1)."""
    critic = ValueNetwork(obs_dim, hidden_sizes, nn.Tanh)
    layers = [layer for layer in critic.net if isinstance(layer, nn.Linear)]
    for layer in layers[:-1]:
        orthogonal_init(layer)
    orthogonal_init(layers[-1], gain=1.0)
    return critic


def run_policy(args: Args, envs, actor: nn.Module, actor_kwargs: dict, base, env_kwargs: dict) -> RunPolicy:
    """The deterministic policy on raw observations that evaluations and checkpoints see: the actor; ResiP's
    base + alpha Delta (a copy, with its own action queues); --finetune-base's network as a chunked base, saved as
    the base's spec with the fine-tuned weights."""

    def acting() -> nn.Module:
        if args.finetune_base:
            return FrozenBase(copy.deepcopy(actor.trunk), base.obs_dim, base.obs_normalizer).to(args.device)
        return actor if base is None else copy.deepcopy(envs.policy)

    def spec() -> dict:
        if args.finetune_base:
            kwargs = base.spec["kwargs"]
            return policy_spec(acting(), **{**kwargs, "model": policy_spec(actor.trunk, **kwargs["model"]["kwargs"])})
        head = policy_spec(actor, **actor_kwargs)
        return head if base is None else residual_spec(envs.policy, head)

    spaces = envs.single_observation_space, envs.env_action_space
    return RunPolicy(acting, spec, *spaces, args.env_id, env_kwargs, obs_normalizer=envs.normalizer_state)


def rollout_batch(args: Args, rollout: RolloutBuffer, actor: nn.Module, critic: nn.Module) -> Batch:
    """The rollout as T N rows with V_old(s), log pi_old(a|s) (one batched pass each), advantages and returns."""
    values = critic(rollout.obs)
    next_values = critic(rollout.next_obs)
    dones = rollout.terminated | rollout.truncated
    advantages, returns = compute_gae(
        rollout.rewards, values, next_values, rollout.terminated, dones, args.gamma, args.gae_lambda
    )
    obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1)
    return Batch(obs, actions, actor.log_prob(obs, actions), advantages.flatten(), returns.flatten(), values.flatten())


def rollout_metrics(batch: Batch) -> dict[str, torch.Tensor]:
    """The explained variance 1 - Var[R - V_old] / Var[R] of the returns (1 where both vanish) and the Monte-Carlo
    entropy -mean log pi_old(a|s) of the rollout."""
    residual_var = (batch.returns - batch.values).var(correction=0)
    explained = 1.0 - residual_var / batch.returns.var(correction=0).clamp_min(1e-12)
    return {"losses/explained_variance": explained, "losses/entropy": -batch.log_probs.mean()}


def ppo_loss(
    args: Args, actor: nn.Module, critic: nn.Module, qf: nn.Module | None, mb: Batch
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one minibatch (advantages already normalised) -> (L, detached log rho, the loss terms)."""
    if args.policy == "gmm":
        logits, mean, log_std = actor.distribution_params(mb.obs)
        log_prob = gmm_log_prob(logits, mean, log_std, mb.actions, squash=False)
    else:
        log_prob = actor.log_prob(mb.obs, mb.actions)
    eps = args.clip_coef
    log_ratio = log_prob - mb.log_probs
    ratio = log_ratio.exp()
    policy_loss = -torch.min(ratio * mb.advantages, ratio.clamp(1.0 - eps, 1.0 + eps) * mb.advantages).mean()

    values = critic(mb.obs)
    if args.clip_vloss:
        clipped = mb.values + (values - mb.values).clamp(-eps, eps)
        value_loss = 0.5 * torch.max((values - mb.returns).square(), (clipped - mb.returns).square()).mean()
    else:
        value_loss = 0.5 * F.mse_loss(values, mb.returns)
    loss = policy_loss + args.vf_coef * value_loss
    terms = {"losses/policy_loss": policy_loss, "losses/value_loss": value_loss}
    if args.ent_coef:
        loss = loss - args.ent_coef * actor.entropy(mb.obs).mean()
    if qf is not None:  # PMOE-PPO: L + L_freq + L_Q
        freq_loss, q_loss = pmoe_ppo_losses(qf, mb.obs, mb.actions, mb.returns, logits, mean, log_std)
        loss = loss + freq_loss + q_loss
        terms.update({"losses/frequency_loss": freq_loss, "losses/q_loss": q_loss})
    return loss, log_ratio.detach(), terms


class Objective(nn.Module):
    """The minibatch loss as a module of every trained network: mb -> (L, (detached log rho, the loss terms))."""

    def __init__(self, args: Args, actor: nn.Module, critic: nn.Module, qf: nn.Module | None):
        super().__init__()
        self.args, self.actor, self.critic, self.qf = args, actor, critic, qf

    def forward(self, mb: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        loss, log_ratio, terms = ppo_loss(self.args, self.actor, self.critic, self.qf, mb)
        return loss, (log_ratio, terms)


def minibatches(args: Args, batch: Batch) -> list[Batch]:
    """One epoch's minibatches: the rows shuffled (one gather per field), cut into contiguous blocks, and with
    --norm-adv the advantages of every minibatch z-scored on their own, all at once."""
    num_mb = args.num_minibatches
    perm = torch.randperm(batch.obs.shape[0], device=batch.obs.device)
    shuffled = Batch(*(field[perm].unflatten(0, (num_mb, -1)) for field in batch))
    if args.norm_adv:
        adv = shuffled.advantages
        shuffled = shuffled._replace(advantages=(adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8))
    return [Batch(*mb) for mb in zip(*(field.unbind(0) for field in shuffled))]


def make_update(
    args: Args,
    actor: nn.Module,
    critic: nn.Module,
    qf: nn.Module | None,
    optimizer: FlatAdam,
) -> Callable[[Batch], dict[str, torch.Tensor]]:
    """The PPO update of one rollout -> detached metrics, without host synchronisation: update_epochs epochs of
    minibatch steps L -> gradient (norm clipped) -> Adam. The optimiser steps the flat tensor of all parameters
    (flatten_parameters); with --compile each loss is compiled with its gradient (loss_gradient)."""
    params = optimizer.params
    gradient = loss_gradient(Objective(args, actor, critic, qf), params, compile=args.compile)
    # Gradient-norm clipping groups: the agent's (actor and critic) and the auxiliary Q network's (stored last in
    # params), each clipped on its own, so that large Q gradients never shrink the PPO step.
    num_agent = sum(p.numel() for module in (actor, critic) for p in module.parameters())
    clip_groups = [g.view(1, -1) for g in params.grad.split([num_agent, params.numel() - num_agent]) if g.numel()]

    @matmul_precision(args.matmul_precision)
    @skip_guards_after_first_call(args.compile)  # every update has the same shapes, networks and settings
    def update(batch: Batch) -> dict[str, torch.Tensor]:
        log_ratios = []
        for _ in range(args.update_epochs):
            for mb in minibatches(args, batch):
                _, (log_ratio, terms) = gradient(mb)  # fills params.grad
                for group in clip_groups:  # g <- g max_norm / ||g|| where ||g|| > max_norm, per group
                    group.renorm_(2, 0, args.max_grad_norm)
                optimizer.step()
                log_ratios.append(log_ratio)
        # The loss terms and KL estimates of the last minibatch; the clip fraction over all minibatches.
        metrics = {name: value.detach() for name, value in terms.items()}
        metrics["losses/old_approx_kl"] = (-log_ratio).mean()
        metrics["losses/approx_kl"] = (log_ratio.exp() - 1.0 - log_ratio).mean()
        metrics["losses/clipfrac"] = ((torch.stack(log_ratios).exp() - 1.0).abs() > args.clip_coef).float().mean()
        return metrics

    return update


def annealed_lr(iteration: int, anchor: tuple[int, float, int]) -> float:
    """lr_i = lr_a (N + 1 - i) / (N + 1 - i_a): linear to zero after iteration N through the anchor (i_a, lr_a, N),
    which is (1, --learning-rate, N) for a new run; a resume that changes N anchors at its last iteration and rate,
    so the rate never jumps."""
    start, lr, num_iterations = anchor
    return lr * (num_iterations + 1 - iteration) / (num_iterations + 1 - start)


def main(args: Args) -> Path:
    """Train PPO or PMOE-PPO (ResiP with --base-policy); returns the run directory."""
    args, saved = start(args, check_args)
    device = torch.device(args.device)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    base = None if args.base_policy is None else load_base(args.base_policy, device, args.trust_pickle)
    envs = make_envs(args, base, env_kwargs, device)
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]
    actor, actor_kwargs = make_actor(args, envs, base)
    critic = make_critic(obs_dim, args.hidden_sizes).to(device)
    modules: dict[str, nn.Module] = {"actor": actor, "critic": critic}
    qf = None
    if args.policy == "gmm" and args.gmm_grad == "frequency":
        qf = modules["qf"] = auxiliary_q(obs_dim, action_dim, args.q_hidden_sizes).to(device)
    optimizer = FlatAdam(flatten_parameters(list(modules.values())), lr=args.learning_rate, eps=args.adam_eps)
    update = make_update(args, actor, critic, qf, optimizer)
    rollout = RolloutBuffer(args.num_steps, args.num_envs, obs_dim, action_dim, device)
    batch_size = args.num_envs * args.num_steps
    num_iterations = args.total_timesteps // batch_size
    policy = run_policy(args, envs, actor, actor_kwargs, base, env_kwargs)

    obs = envs.reset()
    with Run(args, "ppo" if args.policy == "gaussian" else "pmoe_ppo", args.env_id, saved) as run:
        global_step, obs, lr_anchor = run.track(
            Parts({**modules, "optimizer": optimizer}, envs),
            policy,
            total=num_iterations * batch_size,  # whole rollouts
            global_step=0,
            obs=obs,
            lr_anchor=(1, args.learning_rate, num_iterations),
        )
        if lr_anchor[2] != num_iterations:  # a resume that extends the budget: anneal on from the last rate
            done = global_step // batch_size
            lr_anchor = (done, annealed_lr(done, lr_anchor), num_iterations)
        for iteration in range(global_step // batch_size + 1, num_iterations + 1):
            if args.anneal_lr:
                optimizer.lr = annealed_lr(iteration, lr_anchor)
            with torch.no_grad():
                for t in range(args.num_steps):
                    actions, _ = actor.sample(obs)
                    next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
                    rollout.add(t, obs, actions, rewards, final_obs, terminated, truncated)
                    obs = next_obs
                    global_step += args.num_envs
                    run.log_episodes(global_step, *envs.pop_episodes())
                batch = rollout_batch(args, rollout, actor, critic)
            metrics = {**update(batch), **rollout_metrics(batch), "charts/learning_rate": optimizer.lr}
            run.end_iteration(global_step, metrics, obs=obs, lr_anchor=lr_anchor)
        run.finish(global_step, obs=obs, lr_anchor=lr_anchor)
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
