"""RLIF (Luo et al. 2024): off-policy RL whose only reward is the intervention signal of a watching expert, learned
with RLPD (Ball et al. 2023), SAC with a large LayerNorm critic ensemble, a high update-to-data ratio and
demonstrations sampled beside the online data. With `--intervention none` it is plain RLPD on the task reward.

    reward:  r = -1 on the agent's transition before the expert takes over, 0 otherwise (the env's reward is
             discarded; mixrl.envs.interventions: who intervenes when, and which transitions are stored)
    critic:  y = r + gamma (1 - terminated) min_{j in J} Qbar_j(s', a'),   a' ~ pi(.|s'),  J = 2 of the N critics
             drawn at random per update (with interventions no entropy term, as the RLIF code; with the task
             reward, as RLPD, minus alpha log pi(a'|s'); --backup-entropy on|off chooses)
             L_Q = mean_j E[(Q_j(s, a) - y)^2],  each Q_j an MLP with LayerNorm before every ReLU
    actor:   L_pi = E[alpha log pi(a~|s) - mean_j Q_j(s, a~)]
    alpha:   L_alpha = -E[log alpha (log pi(a~|s) + H_target)],   H_target = -|A| / 2
    per env step: G = --utd-ratio critic steps (each on its own batch, each followed by the Polyak update of the
    targets; the target actions of all G batches drawn in one actor pass), then one actor and one alpha step on the
    last batch
    batch:   --offline-ratio of it from the demonstrations, the rest online (RLPD's symmetric sampling is 0.5); at 0
             the demonstrations simply sit in the replay buffer beside the online data (RLIF's released runs)

A transition that ends the episode by termination is dropped, as in RLIF's code, which makes ending an episode
the way to escape the -1s; --terminal-label absorbing stores it with r = -1 / (1 - gamma) instead.

For its first --learning-starts steps the agent acts uniformly at random; the expert intervenes as usual.
Demonstrations are a Minari dataset (`mixrl dataset collect expert ...`); with interventions their rewards are
set to 0, as the intervention signal is the only reward. The expert is any mixrl run or checkpoint
(`--expert`, optionally weakened by `--expert-noise`), the reference Q of value-based interventions that run's
critics (`--reference`, default the expert's run): their mean over an ensemble of more than 2, else their minimum.

Run `python -m mixrl.agents.rlif --help` (or `mixrl rlif --help`) for every option.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import TorchVecEnv, make_vec_env, parse_env_kwargs
from mixrl.envs.interventions import InterventionLabeller, unit_actions, vector_info
from mixrl.envs.normalizers import DeviceObsNormalizer
from mixrl.flags import EnvFlags, ReplayFlags, RunFlags, SpeedFlags, VecEnvFlags
from mixrl.optim import FlatAdam, flatten_parameters, keep_freed_memory, loss_gradient, matmul_precision
from mixrl.policies.critics import QEnsemble
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.policies.loading import policy_spec
from mixrl.pretrained import intervention_wrapper
from mixrl.runs import Parts, Run, RunPolicy, UsageError, parse_args, record_given, start


@record_given
@dataclass
class Args(RunFlags, SpeedFlags, ReplayFlags, VecEnvFlags, EnvFlags):
    env_id: str = "Hopper-v5"
    """Gymnasium id of a task with a continuous (Box) action space; module:id for a task your own package registers"""
    total_timesteps: int = 1_000_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
    intervention: Literal["value", "random", "none"] = "value"
    """reward: the intervention signal of a value-based or a random expert, or (none) the task reward (RLPD)"""
    expert: str | None = None
    """run directory or checkpoint of the intervening expert (value, random)"""
    expert_noise: float = 0.0
    """std of Gaussian noise on the expert's actions, in units of half the action range (a weaker expert)"""
    reference: str | None = None
    """run directory or checkpoint whose critics are the reference Q of value-based interventions (default --expert)"""
    compare: Literal["expert", "reference"] = "expert"
    """value: compare Q(s, a) with Q(s, a_expert) (the paper) or Q(s, a_reference) (the RLIF code's default)"""
    beta: float = 0.95
    """value: intervention probability when the agent's action falls short (1 - beta otherwise)"""
    delta: float = 0.03
    """value: margin of the shortfall; relative: Q(s, a) < Q(s, a_cmp) - delta |Q(s, a_cmp)| (the code's alpha = 1 -
    delta), else additive: Q(s, a) < Q(s, a_cmp) - delta"""
    relative_margin: bool = True
    """value: the margin delta is relative to |Q(s, a_cmp)| (else additive, in units of Q)"""
    intervention_probability: float = 0.5
    """random: probability of an intervention at each step where the agent is in control"""
    takeover_steps: int = 4
    """steps the expert keeps control once it intervenes"""
    grace_steps: int = 0
    """agent steps after each takeover before the expert may intervene again: 0 tests at the hand-back, and a
    takeover that follows one at once charges no agent step; 1 is RLIF's loop, where every takeover follows an
    agent step that carries its -1"""
    terminal_label: Literal["drop", "takeover", "absorbing"] = "drop"
    """a transition that ends the episode by termination: dropped (RLIF's code; ending an episode stops the -1s,
    so the agent learns to fail fast), or stored as terminal with r = -1 (takeover: one takeover; still cheaper
    than going on) or r = -1 / (1 - gamma) (absorbing: a takeover at every step from there on; removes the
    incentive; results/rlif_findings.md)"""
    demos: str | None = None
    """Minari dataset id of demonstrations that join the replay data (none: online data alone)"""
    offline_ratio: float = 0.0
    """fraction of each batch drawn from the demonstrations (0: they sit in one buffer with the online data)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics: Qbar <- (1 - tau) Qbar + tau Q after every critic step"""
    batch_size: int = 256
    """transitions per gradient step"""
    utd_ratio: int = 5
    """critic steps per environment step (G); one actor step follows them"""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha"""
    hidden_sizes: tuple[int, ...] = (256, 256, 256)
    """hidden layer widths of the actor and of every critic"""
    num_critics: int = 10
    """size of the critic ensemble (one batched network)"""
    critic_subset: int = 2
    """target critics, drawn at random for each critic step, whose minimum makes the target"""
    critic_layer_norm: bool = True
    """LayerNorm before each ReLU of the critics"""
    backup_entropy: Literal["auto", "on", "off"] = "auto"
    """subtract alpha log pi(a'|s') in the target (SAC's soft target); auto: on with --intervention none (RLPD's
    configuration), off with interventions (the RLIF code leaves it out)"""
    alpha: float = 1.0
    """initial entropy temperature"""
    target_entropy_scale: float = 0.5
    """target entropy = -|A| * this"""


def check_args(args: Args, has_expert: bool = False) -> None:
    """Refuse options that do not fit together, naming the fix (`has_expert`: main was given an expert callable)."""
    if args.intervention not in ("value", "random", "none"):
        raise UsageError(f"--intervention {args.intervention!r} is not one of: value, random, none.")
    if args.intervention != "none" and args.expert is None and not has_expert:
        raise UsageError(f"--intervention {args.intervention} needs --expert RUN (a mixrl run or checkpoint).")
    if args.intervention == "none" and args.demos is None and args.offline_ratio > 0:
        raise UsageError("--offline-ratio needs --demos DATASET_ID.")
    if not 0.0 <= args.offline_ratio < 1.0:
        raise UsageError(f"--offline-ratio must lie in [0, 1), got {args.offline_ratio}.")
    if not 1 <= args.critic_subset <= args.num_critics:
        raise UsageError(
            f"--critic-subset must lie in [1, --num-critics = {args.num_critics}], got {args.critic_subset}."
        )
    if args.grace_steps < 0:
        raise UsageError(f"--grace-steps must be at least 0, got {args.grace_steps}.")
    if args.utd_ratio < 1:
        raise UsageError(f"--utd-ratio must be at least 1, got {args.utd_ratio}.")
    if args.learning_starts < 1:
        raise UsageError("--learning-starts must be at least 1 (the online buffer must hold a transition).")
    if args.backend == "warp" and args.intervention != "none":
        raise UsageError(
            "--backend warp has no Gymnasium envs for the intervening expert to wrap: use --backend gymnasium, or "
            "--intervention none (RLPD on the task reward)."
        )


# ---------------------------------------------------------------------------------------------------------------
# Data: demonstrations beside the online buffer
# ---------------------------------------------------------------------------------------------------------------


def load_demos(args: Args, obs_dim: int, action_dim: int, device: torch.device) -> ReplayBuffer | None:
    """The demonstrations as a ReplayBuffer (raw observations, actions in [-1, 1]); rewards 0 with interventions."""
    if args.demos is None:
        return None
    from mixrl.datasets import load_dataset

    dataset = load_dataset(args.demos, device, normalize_obs=False)
    if dataset.env_id is not None and dataset.env_id != args.env_id:
        raise UsageError(f"--demos {args.demos} was collected on {dataset.env_id}, not {args.env_id}.")
    buffer = dataset.buffer
    if (buffer.obs_dim, buffer.action_dim) != (obs_dim, action_dim):
        raise UsageError(
            f"--demos {args.demos} has observations/actions of sizes {buffer.obs_dim}/{buffer.action_dim}, "
            f"{args.env_id} {obs_dim}/{action_dim}."
        )
    if args.intervention != "none":
        buffer.data[:, obs_dim + action_dim] = 0.0  # the intervention signal is the only reward
    return buffer


def sample_mixed(online: ReplayBuffer, demos: ReplayBuffer | None, batch_size: int, offline_ratio: float) -> Batch:
    """A batch of round(offline_ratio B) demonstration transitions and the rest online ones (RLPD's symmetric
    sampling at 0.5); at offline_ratio 0, B uniform draws over both buffers together."""
    if demos is None:
        return online.sample(batch_size)
    if offline_ratio > 0.0:
        n_demo = round(offline_ratio * batch_size)
    else:
        share = torch.tensor(float(demos.size) / (demos.size + online.size))
        n_demo = int(torch.binomial(torch.tensor(float(batch_size)), share))
    parts = demos.sample(n_demo), online.sample(batch_size - n_demo)
    return Batch(*(torch.cat(fields) for fields in zip(*parts)))


# ---------------------------------------------------------------------------------------------------------------
# The RLPD update
# ---------------------------------------------------------------------------------------------------------------


def target_actions(actor: TanhGaussianActor, batches: list[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """a' ~ pi(.|s') and log pi(a'|s') for the next observations of each batch, in one pass of the actor over all of
    them (it does not change during the G critic steps of an env step)."""
    with torch.no_grad():
        next_actions, next_log_prob = actor.sample(torch.cat([batch.next_obs for batch in batches]))
    sizes = [len(batch.rewards) for batch in batches]
    return list(zip(next_actions.split(sizes), next_log_prob.split(sizes)))


def soft_backup(args: Args) -> bool:
    """Whether the critic target carries the entropy term: --backup-entropy on/off, or at auto RLPD's choice (on)
    for the task reward and RLIF's (off) for the intervention signal."""
    return args.intervention == "none" if args.backup_entropy == "auto" else args.backup_entropy == "on"


class CriticObjective(nn.Module):
    """L_Q of the ensemble: (batch, target actions a' ~ pi(.|s') and their log pi, alpha, target members J) ->
    (L_Q, mean Q). The target carries no gradient."""

    def __init__(self, args: Args, qf: QEnsemble, qf_target: QEnsemble):
        super().__init__()
        self.args, self.qf, self.qf_target = args, qf, qf_target

    def forward(
        self,
        batch: Batch,
        next_actions: torch.Tensor,
        next_log_prob: torch.Tensor,
        alpha: torch.Tensor,
        members: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            next_q = self.qf_target(batch.next_obs, next_actions, members).min(0).values
            if soft_backup(self.args):
                next_q = next_q - alpha * next_log_prob
            target = batch.rewards + self.args.gamma * (1.0 - batch.terminated) * next_q
        q = self.qf(batch.obs, batch.actions)
        return (q - target).pow(2).mean(), q.detach().mean()


class ActorObjective(nn.Module):
    """L_pi through the critics (which the caller freezes): (obs, alpha) -> (L_pi, detached log pi)."""

    def __init__(self, actor: TanhGaussianActor, qf: QEnsemble):
        super().__init__()
        self.actor, self.qf = actor, qf

    def forward(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actions, log_prob = self.actor.sample(obs)
        return (alpha * log_prob - self.qf(obs, actions).mean(0)).mean(), log_prob.detach()


def make_update(args: Args, actor, qf, qf_target, log_alpha, optimizers, target_entropy):
    """The RLPD step as a function of G + 1 batches -> detached metrics: a critic step (and Polyak update) on each
    of the first G, then an actor and an alpha step on the last. Actor and critics are flat (FlatAdam)."""
    actor_optimizer, q_optimizer, alpha_optimizer = optimizers
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())
    critic_gradient = loss_gradient(CriticObjective(args, qf, qf_target), q_optimizer.params, args.compile)
    actor_gradient = loss_gradient(ActorObjective(actor, qf), actor_optimizer.params, args.compile)

    @matmul_precision(args.matmul_precision)
    def update(batches: list[Batch]) -> dict[str, torch.Tensor]:
        alpha = log_alpha.detach().exp()
        # The G random subsets of target critics in one draw: each row of the argsort is a random permutation.
        draws = torch.rand(len(batches), args.num_critics, device=alpha.device).argsort(1)[:, : args.critic_subset]
        for batch, (actions, log_prob), members in zip(batches, target_actions(actor, batches), draws):
            qf_loss, q_mean = critic_gradient(batch, actions, log_prob, alpha, members)
            q_optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(q_target_params, q_params, args.tau)  # Qbar <- (1 - tau) Qbar + tau Q
        qf.requires_grad_(False)  # actor step through frozen critics
        actor_loss, log_prob = actor_gradient(batches[-1].obs, alpha)
        actor_optimizer.step()
        qf.requires_grad_(True)
        alpha_loss = -(log_alpha * (log_prob + target_entropy)).mean()
        log_alpha.grad.zero_()
        alpha_loss.backward()
        alpha_optimizer.step()
        return {
            "losses/qf_loss": qf_loss,
            "losses/actor_loss": actor_loss,
            "losses/alpha_loss": alpha_loss.detach(),
            "losses/alpha": alpha,
            "losses/qf_values": q_mean,
            "losses/entropy": -log_prob.mean(),
        }

    return update


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def make_wrapper(
    args: Args, device: torch.device, expert: Callable | None, reference_q: Callable | None
) -> Callable[[gym.Env], gym.Env] | None:
    """The wrapper that puts the intervening expert around each env (None with --intervention none)."""
    if args.intervention == "none":
        return None
    options = {
        "beta": args.beta,
        "delta": args.delta,
        "relative": args.relative_margin,
        "probability": args.intervention_probability,
        "grace_steps": args.grace_steps,
    }
    return intervention_wrapper(args, args.intervention, device, expert, reference_q, **options)


def terminal_reward(args: Args) -> float | None:
    """The reward of a transition that ends an episode by termination (--terminal-label), None where it is dropped."""
    return {"drop": None, "takeover": -1.0, "absorbing": -1.0 / (1.0 - args.gamma)}[args.terminal_label]


def make_networks(args: Args, actor_kwargs: dict, device: torch.device) -> tuple[dict, dict[str, FlatAdam]]:
    """The actor, the LayerNorm critic ensemble, its target copy and log alpha (by name), and their flat Adams."""
    actor = TanhGaussianActor(**actor_kwargs).to(device)
    obs_dim, action_dim = actor_kwargs["obs_dim"], actor_kwargs["action_dim"]
    qf = QEnsemble(obs_dim, action_dim, args.num_critics, args.hidden_sizes, args.critic_layer_norm).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=True)
    optimizers = {
        "actor": FlatAdam(flatten_parameters([actor]), lr=args.policy_lr),
        "q": FlatAdam(flatten_parameters([qf]), lr=args.q_lr),
        "alpha": FlatAdam(log_alpha, lr=args.alpha_lr),
    }
    return {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha}, optimizers


def store_labelled(
    run: Run,
    envs: TorchVecEnv,
    labeller: InterventionLabeller,
    rb: ReplayBuffer,
    step: int,
    transition: tuple[torch.Tensor, ...],
    task_returns: np.ndarray,
) -> None:
    """Store what the intervention signal has labelled after an env step (obs, final_obs, terminated, truncated):
    the InterventionLabeller's rows. Counts the takeovers in run.extra["interventions"], the episodes ended by
    termination in "terminations", those of them that had no -1 stored before their end (which cost nothing
    with --terminal-label drop) in "unlabelled_terminations" and the takeovers that stored a -1 on the agent's
    step before them in "charged_takeovers", and logs the episodes that ended with their task
    return (the env's reward is the signal) and their interventions."""
    obs, final_obs, terminated, truncated = transition
    info, device = envs.info, obs.device
    executed = unit_actions(info, "action", envs.env_action_space)
    takeover_start = vector_info(info, "takeover_start")
    intervened = vector_info(info, "intervened")
    rows = labeller.step(
        obs,
        torch.as_tensor(executed, device=device),
        torch.as_tensor(takeover_start, device=device),
        torch.as_tensor(intervened, device=device),
        final_obs,
        terminated,
        truncated,
    )
    if len(rows[0]):
        rb.add(*rows)
    run.extra["interventions"] += int(takeover_start.sum())  # counted on the host copy: no device synchronisation
    task_returns += vector_info(info, "task_reward")
    signal_returns, lengths = envs.pop_episodes()  # the signal's return is minus the takeovers
    # one read of the device: the ended episodes and the labeller's termination counters
    host = torch.cat([(terminated | truncated).long(), labeller.counts]).cpu().numpy()
    ended = np.flatnonzero(host[:-3])
    names = ("terminations", "unlabelled_terminations", "charged_takeovers")
    run.extra.update(zip(names, host[-3:].tolist()))
    run.log_episodes(step, task_returns[ended].tolist(), lengths)
    for signal_return in signal_returns:
        run.log_scalars(step, {"charts/episode_interventions": -signal_return})
    task_returns[ended] = 0.0


def main(args: Args, expert: Callable | None = None, reference_q: Callable | None = None) -> Path:
    """Train RLIF (or RLPD with --intervention none); returns the run directory. `expert` (obs -> env action) and
    `reference_q` ((obs, actions) -> Q) replace --expert and the reference's critics, e.g. by scripted ones; pass
    them again to --resume such a run."""
    args, saved = start(args, partial(check_args, has_expert=expert is not None))
    keep_freed_memory()
    device = torch.device(args.device)
    intervening = args.intervention != "none"
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    wrapper = make_wrapper(args, device, expert, reference_q)
    envs = make_vec_env(
        args.env_id, args.num_envs, args.seed, device, env_kwargs=env_kwargs, backend=args.backend, wrapper=wrapper
    )
    if not envs.continuous:
        raise UsageError(f"RLIF needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}.")
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]
    # --normalize-obs: the buffers hold raw observations; acting and every sampled batch (demonstrations too) are
    # z-scored with the running statistics of that moment, as in SAC. The expert and the reference Q see raw ones.
    normalizer = DeviceObsNormalizer(envs.single_observation_space.shape, device) if args.normalize_obs else None
    normalize = (lambda obs: obs) if normalizer is None else partial(normalizer, update=False)

    actor_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "hidden_sizes": args.hidden_sizes}
    modules, optimizers = make_networks(args, actor_kwargs, device)
    actor = modules["actor"]
    update = make_update(args, *modules.values(), optimizers.values(), -action_dim * args.target_entropy_scale)
    rb = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device)
    demos = load_demos(args, obs_dim, action_dim, device)
    labeller = (
        InterventionLabeller(args.num_envs, obs_dim, action_dim, device, terminal_reward(args)) if intervening else None
    )
    spec = partial(policy_spec, actor, **actor_kwargs)
    policy = RunPolicy.of(actor, spec, envs, args.env_id, env_kwargs, normalizer)
    state = {**modules, **{f"{name}_optimizer": o for name, o in optimizers.items()}}
    if normalizer is not None:
        state["obs_normalizer"] = normalizer

    obs = envs.reset()
    with Run(args, "rlif" if intervening else "rlpd", args.env_id, saved) as run:
        run.extra["interventions"] = 0  # expert takeovers so far, logged with every evaluation
        # task_returns: the task return of the running episodes (the env's reward is the intervention signal)
        task_returns = np.zeros(args.num_envs)
        global_step, obs, task_returns, labeller = run.track(
            Parts(state, envs, rb), policy, global_step=0, obs=obs, task_returns=task_returns, labeller=labeller
        )
        if normalizer is not None and saved is None:
            normalizer.rms.update(obs)  # running statistics of every observation the agent acts on
        metrics: dict[str, torch.Tensor] = {}
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = torch.rand(args.num_envs, action_dim, device=device) * 2.0 - 1.0
            else:
                with torch.no_grad():
                    actions, _ = actor.sample(normalize(obs))
            next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
            global_step += args.num_envs
            if intervening:
                transition = (obs, final_obs, terminated, truncated)
                store_labelled(run, envs, labeller, rb, global_step, transition, task_returns)
            else:
                rb.add(obs, actions, rewards, final_obs, terminated)
                run.log_episodes(global_step, *envs.pop_episodes())
            obs = next_obs
            if normalizer is not None:
                normalizer.rms.update(obs)

            if global_step >= args.learning_starts:
                for _ in range(args.num_envs):
                    batches = [
                        sample_mixed(rb, demos, args.batch_size, args.offline_ratio) for _ in range(args.utd_ratio)
                    ]
                    metrics = update(
                        [b._replace(obs=normalize(b.obs), next_obs=normalize(b.next_obs)) for b in batches]
                    )
                metrics.update({f"charts/{name}": value for name, value in run.extra.items()})
            run.end_iteration(global_step, metrics, obs=obs, task_returns=task_returns, labeller=labeller)
        run.finish(global_step, obs=obs, task_returns=task_returns, labeller=labeller)
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
