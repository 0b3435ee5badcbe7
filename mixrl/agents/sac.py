"""Soft Actor-Critic (Haarnoja et al. 2018) with a tanh-Gaussian actor, or PMOE-SAC (Ren et al. 2021) with a
probabilistic mixture of experts: twin critics, automatic entropy tuning, update-to-data ratio.

    critic:  y = r + gamma (1 - terminated) [min_j Qbar_j(s', a') - alpha log pi(a'|s')],   a' ~ pi(.|s')
             L_Q = sum_j E[(Q_j(s, a) - y)^2]
    actor:   L_pi = E[alpha log pi(a~|s) - min_j Q_j(s, a~)],   a~ ~ pi(.|s) reparameterised
    alpha:   L_alpha = -E[log alpha (log pi(a~|s) + H_target)],   H_target = -|A|
    targets: Qbar <- (1 - tau) Qbar + tau Q after every update

PMOE-SAC (`--policy gmm`): pi(a|s) = sum_k w_k(s) pi_k(a|s), K tanh-Gaussian experts on a shared trunk mixed
by w(s) = softmax(Linear(s)). The actor step draws one reparameterised action a_k from every expert and
scores them all in one critic pass, q_k = min_j Q_j(s, a_k), k* = argmax_k q_k:

    critic:  a' = a'_k', k' ~ Cat(w(s')),   log pi(a'|s') = log pi_k'(a'|s')       (the drawn expert alone)
    actor:   L_pi = E[alpha log pi_k*(a_k*|s) - q_k*] + L_freq,   L_freq = E_{s,k}[(w_k(s) - onehot(k*)_k)^2]
    alpha:   L_alpha = -E[log alpha (log pi_k*(a_k*|s) + H_target)]

Only the winner k* gets Q and entropy gradients ("max" back-propagation); w learns only from L_freq.
`--gmm-entropy mixture` uses the mixture density log pi(a|s) = logsumexp_k [log w_k + log pi_k(a|s)] in all
three losses, so the entropy term trains w too. `--gmm-grad` swaps the estimator for w:
    gumbel     a = sum_k g_k a_k, g = gumbel_softmax(logits, tau); log pi = sum_k w_k log pi_k(a_k|s);
               w learns through Q and the entropy (this relaxed policy also acts and bootstraps)
    reinforce  experts as above; L_w = -E[log w_k(s) (q_k - sum_j w_j q_j)], k ~ Cat(w(s))
`--batch-reward-norm` is the PMOE reference code's r <- 10 (r - mean_B r) / (std_B r + 1e-6) (both policies).

Run `python -m mixrl.agents.sac --help` (or `mixrl sac --help`) for every option.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import make_vec_env, parse_env_kwargs
from mixrl.envs.normalizers import DeviceObsNormalizer
from mixrl.envs.residual import ResidualVecEnv
from mixrl.flags import EnvFlags, ReplayFlags, RunFlags, SpeedFlags, VecEnvFlags
from mixrl.optim import FlatAdam, flatten_parameters, loss_gradient, matmul_precision
from mixrl.policies.critics import QEnsemble
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.policies.loading import policy_spec, residual_spec
from mixrl.policies.mixture import (
    ACTOR_EVAL_RULES,
    ENTROPY_MODES,
    GaussianMixtureHead,
    draw_expert,
    frequency_loss,
    gmm_log_prob,
    gumbel_softmax_action,
    reinforce_mixing_loss,
    sample_experts,
    select_expert,
)
from mixrl.pretrained import load_base
from mixrl.runs import Parts, Run, RunPolicy, UsageError, check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(RunFlags, SpeedFlags, ReplayFlags, VecEnvFlags, EnvFlags):
    total_timesteps: int = 1_000_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics: Qbar <- (1 - tau) Qbar + tau Q"""
    batch_size: int = 256
    """transitions per gradient update"""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha"""
    utd_ratio: float = 1.0
    """update-to-data ratio: gradient updates per collected transition"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    num_critics: int = 2
    """size of the Q ensemble (the target takes the minimum over it)"""
    alpha: float = 1.0
    """entropy temperature (its initial value when --autotune)"""
    autotune: bool = True
    """learn alpha so that the policy entropy tracks the target -|A| * target_entropy_scale"""
    target_entropy_scale: float = 1.0
    """target entropy = -|A| * this"""
    policy: Literal["gaussian", "gmm"] = "gaussian"
    """actor: tanh-Gaussian (SAC) or a Gaussian mixture of experts (PMOE-SAC)"""
    num_experts: int = 4
    """gmm: number of experts K"""
    gmm_grad: Literal["frequency", "gumbel", "reinforce"] = "frequency"
    """gmm: how the mixing weights w learn: PMOE's frequency loss, Gumbel-softmax relaxation or REINFORCE"""
    gmm_entropy: Literal["component", "mixture"] = "component"
    """gmm: log pi of the chosen expert alone, or the mixture's log-density (the entropy then trains w too)"""
    gmm_eval_rule: Literal["argmax_w", "weighted_mean", "sampled_k_mean", "sample"] = "argmax_w"
    """gmm: evaluation action: mean of argmax_k w_k, sum_k w_k tanh(mu_k), mean of k ~ Cat(w), or a sample of
    k ~ Cat(w) (`mixrl eval --eval-rule` overrides it)"""
    gumbel_tau: float = 0.2
    """gmm with --gmm-grad gumbel: temperature of the Gumbel-softmax relaxation"""
    batch_reward_norm: bool = False
    """z-score rewards within each batch and scale by 10 (a quirk of the PMOE reference code)"""
    base_policy: str | None = None
    """residual SAC: a frozen base (mixrl run directory or checkpoint, or a Stable-Baselines3 .zip); the actor then
    learns a residual a = a_base + alpha Delta on x = [norm(obs), a_base] (mixrl/policies/residual.py)"""
    residual_alpha: float = 0.1
    """residual SAC: alpha, the scale of the residual Delta in [-1, 1] in the base's normalised action space"""


GMM_OPTIONS = ("num_experts", "gmm_grad", "gmm_entropy", "gmm_eval_rule", "gumbel_tau")


def check_args(args: Args) -> None:
    """Refuse options that do not fit together, naming the fix."""
    check_range(args, "num_envs buffer_size batch_size hidden_sizes num_critics eval_episodes threads", 1)
    check_range(args, "total_timesteps learning_starts utd_ratio policy_lr q_lr alpha_lr target_entropy_scale", 0)
    check_range(args, "eval_every checkpoint_every log_every", 0)
    check_range(args, "gamma tau", 0, 1)
    if not args.alpha > 0:
        raise UsageError(f"--alpha must be positive (the optimiser learns log alpha), got {args.alpha}.")
    if args.policy not in ("gaussian", "gmm"):
        raise UsageError(f"--policy {args.policy!r} is not one of: gaussian, gmm.")
    if args.policy == "gaussian":
        changed = [name for name in GMM_OPTIONS if getattr(args, name) != getattr(Args, name)]
        if changed:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in changed)
            raise UsageError(f"{flags}: options of the mixture policy only; add --policy gmm.")
        return
    if args.num_experts < 1:
        raise UsageError(f"--num-experts must be at least 1, got {args.num_experts}.")
    if args.gmm_grad not in ("frequency", "gumbel", "reinforce"):
        raise UsageError(f"--gmm-grad {args.gmm_grad!r} is not one of: frequency, gumbel, reinforce.")
    if args.gmm_entropy not in ENTROPY_MODES:
        raise UsageError(f"--gmm-entropy {args.gmm_entropy!r} is not one of: {', '.join(ENTROPY_MODES)}.")
    if args.gmm_eval_rule not in ACTOR_EVAL_RULES:
        raise UsageError(
            f"--gmm-eval-rule {args.gmm_eval_rule!r} is not one of: {', '.join(ACTOR_EVAL_RULES)} "
            "(argmax_q ranks the experts with a critic, which a saved policy does not carry)."
        )
    if args.gmm_grad == "gumbel" and args.gmm_entropy == "mixture":
        raise UsageError(
            "--gmm-grad gumbel acts with the blend sum_k g_k a_k, which is no sample of the mixture, so the "
            "mixture log-density is no entropy estimate for it: use --gmm-entropy component."
        )
    if args.gmm_grad != "gumbel" and args.gumbel_tau != Args.gumbel_tau:
        raise UsageError("--gumbel-tau only applies to --gmm-grad gumbel.")
    if args.gumbel_tau <= 0.0:
        raise UsageError(f"--gumbel-tau must be positive, got {args.gumbel_tau}.")


def normalize_batch_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """r~ = 10 (r - mean_B r) / (std_B r + 1e-6), the per-batch reward z-score of the PMOE reference code."""
    return 10.0 * (rewards - rewards.mean()) / (rewards.std() + 1e-6)


def gumbel_blend(
    logits: torch.Tensor, expert_actions: torch.Tensor, expert_log_prob: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed mixture action a = sum_k g_k a_k, g = gumbel_softmax(logits, tau), and its entropy term
    sum_k w_k log pi_k(a_k|s): the expected log-density of the expert that k ~ Cat(w) would pick."""
    log_prob = (logits.softmax(-1) * expert_log_prob).sum(-1)
    return gumbel_softmax_action(logits, expert_actions, tau), log_prob


def make_sampler(args: Args, actor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """obs -> (a ~ pi(.|s), the log pi that the critic target uses); the same sampler acts in the env."""
    if args.policy == "gaussian":
        return actor.sample
    if args.gmm_grad != "gumbel":
        return partial(actor.sample, entropy=args.gmm_entropy)

    def relaxed_sample(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, mean, log_std = actor.distribution_params(obs)
        actions, _, expert_log_prob = sample_experts(mean, log_std)
        return gumbel_blend(logits, actions, expert_log_prob, args.gumbel_tau)

    return relaxed_sample


def expert_q(qf: QEnsemble, obs: torch.Tensor, expert_actions: torch.Tensor) -> torch.Tensor:
    """q_k = min_j Q_j(s, a_k) for all K candidates in one critic pass: (B, K, A) -> (B K, .) -> (B, K)."""
    batch, k, _ = expert_actions.shape
    tiled = obs.unsqueeze(1).expand(batch, k, obs.shape[-1]).reshape(batch * k, -1)
    return qf(tiled, expert_actions.reshape(batch * k, -1)).min(0).values.view(batch, k)


def pmoe_actor_loss(
    args: Args, actor: GaussianMixtureHead, qf: QEnsemble, obs: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """PMOE-SAC actor objective -> (L_pi plus the loss of w, the log pi of the alpha loss, detached metrics).

    frequency, reinforce:  L_pi = E[alpha log pi_k*(a_k*|s) - q_k*],  k* = argmax_k q_k, plus L_freq or L_w
    gumbel:                L_pi = E[alpha sum_k w_k log pi_k(a_k|s) - min_j Q_j(s, sum_k g_k a_k)]
    """
    logits, mean, log_std = actor.distribution_params(obs)
    actions, pre_tanh, expert_log_prob = sample_experts(mean, log_std)  # (B, K, A), (B, K, A), (B, K)
    if args.gmm_grad == "gumbel":
        action, log_prob = gumbel_blend(logits, actions, expert_log_prob, args.gumbel_tau)
        loss = (alpha * log_prob - qf(obs, action).min(0).values).mean()
        with torch.no_grad():
            best = expert_q(qf, obs, actions).argmax(-1)  # for the win statistics only
    else:
        # k* from a no-gradient pass over all K candidates; the max passes gradient to a_k* alone, so only
        # a_k* is scored again with gradient (which skips the backward pass through K - 1 candidates).
        with torch.no_grad():
            q = expert_q(qf, obs, actions)
        best = q.argmax(-1)
        q_best = qf(obs, select_expert(actions, best)).min(0).values
        if args.gmm_entropy == "component":
            log_prob = expert_log_prob.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        else:
            log_prob = gmm_log_prob(logits, mean, log_std, pre_tanh=select_expert(pre_tanh, best))
        loss = (alpha * log_prob - q_best).mean()
        if args.gmm_grad == "frequency":
            loss = loss + frequency_loss(logits.softmax(-1), q)
        else:
            loss = loss + reinforce_mixing_loss(logits, draw_expert(logits), q)
    with torch.no_grad():
        log_w = F.log_softmax(logits, -1)
        wins = F.one_hot(best, actor.num_experts).float().mean(0)
        metrics = {f"pmoe/wins_expert_{k}": frequency for k, frequency in enumerate(wins.unbind())}
        metrics["pmoe/mixing_entropy"] = -(log_w.exp() * log_w).sum(-1).mean()
    return loss, log_prob, metrics


class CriticObjective(nn.Module):
    """L_Q as a module of the critics: (batch, alpha) -> (L_Q, mean Q). The target is computed without gradient."""

    def __init__(self, args: Args, qf: QEnsemble, qf_target: QEnsemble, sample: Callable):
        super().__init__()
        self.args, self.qf, self.qf_target, self.sample = args, qf, qf_target, sample

    def forward(self, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = normalize_batch_rewards(batch.rewards) if self.args.batch_reward_norm else batch.rewards
        with torch.no_grad():
            next_actions, next_log_prob = self.sample(batch.next_obs)
            next_q = self.qf_target(batch.next_obs, next_actions).min(0).values - alpha * next_log_prob
            target = rewards + self.args.gamma * (1.0 - batch.terminated) * next_q
        q = self.qf(batch.obs, batch.actions)
        return (q - target).pow(2).mean(1).sum(), q.detach().mean()


class ActorObjective(nn.Module):
    """L_pi as a module of the actor, through critics the caller freezes: (obs, alpha) -> (L_pi, (detached log pi
    for the alpha loss, PMOE metrics))."""

    def __init__(self, args: Args, actor: nn.Module, qf: QEnsemble):
        super().__init__()
        self.args, self.actor, self.qf = args, actor, qf

    def forward(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, dict]]:
        if self.args.policy == "gmm":
            loss, log_prob, metrics = pmoe_actor_loss(self.args, self.actor, self.qf, obs, alpha)
        else:
            actions, log_prob = self.actor.sample(obs)
            loss, metrics = (alpha * log_prob - self.qf(obs, actions).min(0).values).mean(), {}
        return loss, (log_prob.detach(), metrics)


def make_update(args: Args, actor, qf, qf_target, log_alpha, optimizers, target_entropy):
    """The SAC (or PMOE-SAC) gradient step as a function of a batch -> detached metrics. The actor and the critics
    are flattened (flatten_parameters) and stepped by the FlatAdams in `optimizers` (actor, critics, alpha)."""
    actor_optimizer, q_optimizer, alpha_optimizer = optimizers
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())
    critic = CriticObjective(args, qf, qf_target, make_sampler(args, actor))
    critic_gradient = loss_gradient(critic, q_optimizer.params, args.compile)
    actor_gradient = loss_gradient(ActorObjective(args, actor, qf), actor_optimizer.params, args.compile)

    @matmul_precision(args.matmul_precision)
    def update(batch: Batch) -> dict[str, torch.Tensor]:
        alpha = log_alpha.detach().exp()
        qf_loss, q_mean = critic_gradient(batch, alpha)
        q_optimizer.step()
        # Actor step through frozen critics: gradients reach the actions, not the critic weights.
        qf.requires_grad_(False)
        actor_loss, (log_prob, pmoe_metrics) = actor_gradient(batch.obs, alpha)
        actor_optimizer.step()
        qf.requires_grad_(True)

        metrics = {"losses/qf_loss": qf_loss, "losses/actor_loss": actor_loss}
        if args.autotune:
            alpha_loss = -(log_alpha * (log_prob + target_entropy)).mean()
            log_alpha.grad.zero_()
            alpha_loss.backward()
            alpha_optimizer.step()
            metrics["losses/alpha_loss"] = alpha_loss.detach()
        with torch.no_grad():
            torch._foreach_lerp_(q_target_params, q_params, args.tau)  # Qbar <- (1 - tau) Qbar + tau Q
        metrics.update(
            {"losses/alpha": alpha, "losses/qf_values": q_mean, "losses/entropy": -log_prob.mean(), **pmoe_metrics}
        )
        return metrics

    return update


def main(args: Args) -> Path:
    """Train SAC or PMOE-SAC; returns the run directory."""
    args, saved = start(args, check_args)
    device = torch.device(args.device)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    envs = make_vec_env(args.env_id, args.num_envs, args.seed, device, env_kwargs=env_kwargs, backend=args.backend)
    if not envs.continuous:
        raise UsageError(
            f"SAC needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}. "
            "Use `mixrl dqn` for discrete actions."
        )
    if args.base_policy is not None:  # residual SAC: observations become x = [norm(obs), a_base], actions Delta
        if args.policy != "gaussian" or args.normalize_obs:
            raise UsageError(
                "--base-policy trains a tanh-Gaussian residual on normalised inputs: drop --policy gmm "
                "and --normalize-obs."
            )
        envs = ResidualVecEnv(envs, load_base(args.base_policy, device, args.trust_pickle), args.residual_alpha)
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]
    # --normalize-obs: the buffer stores raw observations; acting and every sampled batch are z-scored with the
    # running statistics of that moment (as Stable-Baselines3's VecNormalize), so old rows never keep old statistics.
    normalizer = DeviceObsNormalizer(envs.single_observation_space.shape, device) if args.normalize_obs else None
    normalize = (lambda obs: obs) if normalizer is None else partial(normalizer, update=False)

    actor_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "hidden_sizes": args.hidden_sizes}
    if args.policy == "gmm":
        actor_kwargs.update(num_experts=args.num_experts, eval_rule=args.gmm_eval_rule)
    actor = (TanhGaussianActor if args.policy == "gaussian" else GaussianMixtureHead)(**actor_kwargs).to(device)
    if args.base_policy is not None:  # the residual's mean starts at zero: the combined policy starts as the base
        nn.init.zeros_(actor.mean.weight)
        nn.init.zeros_(actor.mean.bias)
        envs.policy.head = actor
    qf = QEnsemble(obs_dim, action_dim, args.num_critics, args.hidden_sizes).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=True)
    optimizers = {
        "actor": FlatAdam(flatten_parameters([actor]), lr=args.policy_lr),
        "q": FlatAdam(flatten_parameters([qf]), lr=args.q_lr),
        "alpha": FlatAdam(log_alpha, lr=args.alpha_lr),
    }
    target_entropy = -action_dim * args.target_entropy_scale
    update = make_update(args, actor, qf, qf_target, log_alpha, optimizers.values(), target_entropy)
    sample = make_sampler(args, actor)
    rb = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device)
    spec = partial(policy_spec, actor, **actor_kwargs)
    policy = RunPolicy.of(actor, spec, envs, args.env_id, env_kwargs, normalizer)
    if args.base_policy is not None:  # the residual acts with its base, on its own copy of the action queues
        policy.acting, policy.spec = lambda: copy.deepcopy(envs.policy), lambda: residual_spec(envs.policy, spec())
    modules = {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha}
    state = {**modules, **{f"{name}_optimizer": o for name, o in optimizers.items()}}
    if normalizer is not None:
        state["obs_normalizer"] = normalizer

    obs = envs.reset()
    with Run(args, "sac" if args.policy == "gaussian" else "pmoe_sac", args.env_id, saved) as run:
        global_step, obs, updates_due = run.track(
            Parts(state, envs, rb), policy, global_step=0, obs=obs, updates_due=0.0
        )
        if normalizer is not None and saved is None:
            normalizer.rms.update(obs)  # running statistics of every observation the agent acts on
        metrics: dict[str, torch.Tensor] = {}
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = torch.rand(args.num_envs, action_dim, device=device) * 2.0 - 1.0
            else:
                with torch.no_grad():
                    actions, _ = sample(normalize(obs))
            next_obs, rewards, terminated, _, final_obs = envs.step(actions)
            rb.add(obs, actions, rewards, final_obs, terminated)
            obs = next_obs
            if normalizer is not None:
                normalizer.rms.update(obs)
            global_step += args.num_envs
            run.log_episodes(global_step, *envs.pop_episodes())

            if global_step >= args.learning_starts:
                updates_due += args.num_envs * args.utd_ratio
                while updates_due >= 1.0:
                    batch = rb.sample(args.batch_size)
                    metrics = update(batch._replace(obs=normalize(batch.obs), next_obs=normalize(batch.next_obs)))
                    updates_due -= 1.0
            run.end_iteration(global_step, metrics, obs=obs, updates_due=updates_due)
        run.finish(global_step, obs=obs, updates_due=updates_due)
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
