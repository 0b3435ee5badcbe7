"""RLIF (Luo et al. 2024): off-policy RL whose only reward is the intervention signal of a watching expert, learned
with RLPD (Ball et al. 2023), SAC with a large LayerNorm critic ensemble, a high update-to-data ratio and
demonstrations sampled beside the online data. With `--intervention none` it is plain RLPD on the task reward.

    reward:  r = -1 on the agent's transition before the expert takes over, 0 otherwise (the env's reward is
             discarded; mixrl.envs.interventions: who intervenes when, and which transitions are stored)
    critic:  y = r + gamma (1 - terminated) min_{j in J} Qbar_j(s', a'),   a' ~ pi(.|s'),  J = 2 of the N critics
             drawn at random per update (no entropy term, as the RLIF code; --backup-entropy adds -alpha log pi)
             L_Q = mean_j E[(Q_j(s, a) - y)^2],  each Q_j an MLP with LayerNorm before every ReLU
    actor:   L_pi = E[alpha log pi(a~|s) - mean_j Q_j(s, a~)]
    alpha:   L_alpha = -E[log alpha (log pi(a~|s) + H_target)],   H_target = -|A| / 2
    per env step: G = --utd-ratio critic steps (each on its own batch, each followed by the Polyak update of the
    targets; the target actions of all G batches drawn in one actor pass), then one actor and one alpha step on the
    last batch
    batch:   --offline-ratio of it from the demonstrations, the rest online (RLPD's symmetric sampling is 0.5); at 0
             the demonstrations simply sit in the replay buffer beside the online data (RLIF's released runs)

Demonstrations are a Minari dataset (`mixrl dataset collect expert ...`); with interventions their rewards are
set to 0, as the intervention signal is the only reward. The expert is any mixrl run or checkpoint
(`--expert`, optionally weakened by `--expert-noise`), the reference Q of value-based interventions that run's
critics (`--reference`, default the expert's run): their mean over an ensemble of more than 2, else their minimum.

Run `python -m mixrl.agents.rlif --help` (or `mixrl rlif --help`) for every option.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import make_vec_env
from mixrl.envs.interventions import InterventionLabeller, InterventionWrapper, unit_actions, vector_info
from mixrl.evaluation import Policy, evaluate, load_policy, policy_spec
from mixrl.optim import FlatAdam, flatten_parameters, keep_freed_memory, loss_gradient, matmul_precision
from mixrl.policies.critics import QEnsemble
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.runs import (
    Run,
    UsageError,
    check_finite,
    crossed,
    load_checkpoint,
    parse_args,
    record_given,
    resume_args,
    rng_state,
    seed_everything,
    set_cpu_math,
    set_rng_state,
)


@record_given
@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """Gymnasium id of a task with a continuous (Box) action space"""
    seed: int = 1
    """seed of the envs, the interventions, torch, NumPy and Python"""
    total_timesteps: int = 1_000_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
    num_envs: int = 1
    """parallel environments (synchronous); each loop iteration collects one transition per env"""
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
    demos: str | None = None
    """Minari dataset id of demonstrations that join the replay data (none: online data alone)"""
    offline_ratio: float = 0.0
    """fraction of each batch drawn from the demonstrations (0: they sit in one buffer with the online data)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (online transitions)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics: Qbar <- (1 - tau) Qbar + tau Q after every critic step"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_starts: int = 5000
    """steps with uniform-random agent actions before learning starts (the expert intervenes as usual)"""
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
    backup_entropy: bool = False
    """subtract alpha log pi(a'|s') in the target (SAC's soft target; the RLIF code leaves it out)"""
    alpha: float = 1.0
    """initial entropy temperature"""
    target_entropy_scale: float = 0.5
    """target entropy = -|A| * this"""
    eval_every: int = 10_000
    """environment steps between deterministic evaluations on the task reward (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    checkpoint_every: int = 10_000
    """environment steps between checkpoints/latest.pt writes"""
    save_buffer: bool = True
    """include the replay buffer in checkpoints, so that --resume continues exactly"""
    log_every: int = 1000
    """environment steps between loss/SPS logs"""
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    """matrix products of the gradient updates: highest = float32; high = TF32 on GPUs; medium = bfloat16 products
    with float32 accumulation (AMX CPUs, GPUs); acting and evaluation stay float32"""
    compile: bool = False
    """torch.compile each loss with its gradient into one graph (random draws inside then differ from eager)"""
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
    if args.utd_ratio < 1:
        raise UsageError(f"--utd-ratio must be at least 1, got {args.utd_ratio}.")
    if args.learning_starts < 1:
        raise UsageError("--learning-starts must be at least 1 (the online buffer must hold a transition).")


# ---------------------------------------------------------------------------------------------------------------
# The expert and the reference Q, loaded from mixrl runs (the wrapper takes them as callables)
# ---------------------------------------------------------------------------------------------------------------


def load_reference_q(path: str, device: str | torch.device = "cpu") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(obs, env actions (M, A)) -> Q_ref (M,) from the critics of a mixrl SAC or RLIF run: the mean over an
    ensemble of more than 2 critics (RLPD), else the minimum (SAC's twin critics), as the RLIF code."""
    ckpt = load_checkpoint(path, map_location=device)
    state, saved = ckpt.get("state", {}), ckpt["args"]
    if "qf" not in state or "num_critics" not in saved:
        raise UsageError(f"{path}: no Q ensemble in this checkpoint ({ckpt.get('algo')}); use a sac or rlif run.")
    if saved.get("normalize_obs"):
        raise UsageError(f"{path} was trained with --normalize-obs; the reference Q needs a run without it.")
    space = ckpt["action_space"]
    layer_norm = any(".norms." in name for name in state["qf"])
    obs_dim = int(np.prod(ckpt["observation_space"].shape))
    qf = QEnsemble(obs_dim, space.shape[0], saved["num_critics"], tuple(saved["hidden_sizes"]), layer_norm)
    qf.load_state_dict(state["qf"])
    qf.to(device).eval()
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
    expert = expert or load_policy(args.expert, device)
    compare = None
    if mode == "value":
        reference = args.reference or args.expert  # only rlif's Args, which has --reference, asks for value mode
        if q_value is None and reference is None:
            raise UsageError("--intervention value needs --reference RUN (or --expert RUN) for its critics.")
        if q_value is None:
            q_value = load_reference_q(reference, device)
        if args.compare == "reference":
            compare = load_policy(reference, device)

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
            if self.args.backup_entropy:
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


def main(args: Args, expert: Callable | None = None, reference_q: Callable | None = None) -> Path:
    """Train RLIF (or RLPD with --intervention none); returns the run directory. `expert` (obs -> env action) and
    `reference_q` ((obs, actions) -> Q) replace --expert and the reference's critics, e.g. by scripted ones; pass
    them again to --resume such a run."""
    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, "total_timesteps")
    check_args(args, expert is not None)
    set_cpu_math(args.threads)
    keep_freed_memory()
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device(args.device)
    intervening = args.intervention != "none"
    options = {
        "beta": args.beta,
        "delta": args.delta,
        "relative": args.relative_margin,
        "probability": args.intervention_probability,
    }
    wrapper = (
        intervention_wrapper(args, args.intervention, device, expert, reference_q, **options) if intervening else None
    )
    envs = make_vec_env(args.env_id, args.num_envs, args.seed, device, wrapper=wrapper)
    if not envs.continuous:
        raise UsageError(f"RLIF needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}.")
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]

    actor_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "hidden_sizes": args.hidden_sizes}
    actor = TanhGaussianActor(**actor_kwargs).to(device)
    qf = QEnsemble(obs_dim, action_dim, args.num_critics, args.hidden_sizes, args.critic_layer_norm).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=True)
    optimizers = {
        "actor": FlatAdam(flatten_parameters([actor]), lr=args.policy_lr),
        "q": FlatAdam(flatten_parameters([qf]), lr=args.q_lr),
        "alpha": FlatAdam(log_alpha, lr=args.alpha_lr),
    }
    if args.compile:
        torch.compiler.reset()
    update = make_update(
        args, actor, qf, qf_target, log_alpha, optimizers.values(), -action_dim * args.target_entropy_scale
    )
    rb = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device)
    demos = load_demos(args, obs_dim, action_dim, device)
    labeller = InterventionLabeller(args.num_envs, obs_dim, action_dim, device) if intervening else None

    modules = {"actor": actor, "qf": qf, "qf_target": qf_target}
    obs = envs.reset()
    global_step, interventions = 0, 0
    task_returns = np.zeros(args.num_envs)  # task return of the running episodes (the env reward is the signal)
    if saved is not None:
        state = saved["state"]
        for name, module in modules.items():
            module.load_state_dict(state[name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state[f"{name}_optimizer"])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        if "buffer" not in saved:
            raise UsageError(f"{args.resume}: checkpoint saved without its replay buffer; cannot resume exactly.")
        rb.load_state_dict(saved["buffer"])
        if labeller is not None:
            labeller.load_state_dict(saved["labeller"])
        envs.load_state_dict(saved["env_state"])
        obs, global_step, interventions = saved["obs"].to(device), saved["global_step"], saved["interventions"]
        task_returns = saved["task_returns"].copy()
        set_rng_state(saved["rng"])

    def checkpoint() -> dict:
        payload = {
            "args": dataclasses.asdict(args),
            "env_kwargs": {},
            "observation_space": envs.single_observation_space,
            "action_space": envs.env_action_space,
            "obs_normalizer": None,
            "policy": policy_spec(actor, **actor_kwargs),
            "state": {
                **{name: m.state_dict() for name, m in modules.items()},
                **{f"{name}_optimizer": o.state_dict() for name, o in optimizers.items()},
                "log_alpha": log_alpha.detach().clone(),
            },
            "global_step": global_step,
            "interventions": interventions,
            "task_returns": task_returns.copy(),
            "obs": obs,
            "rng": rng_state(),
            "env_state": envs.state_dict(),
        }
        if labeller is not None:
            payload["labeller"] = labeller.state_dict()
        if args.save_buffer:
            payload["buffer"] = rb.state_dict()
        return payload

    def run_evaluation(run: Run) -> dict:
        policy = Policy(actor, envs.single_observation_space, envs.env_action_space, None, device)
        result = evaluate(policy, args.env_id, args.eval_episodes, seed=10_000 + args.seed)
        mean, std = result["mean_return"], result["std_return"]
        line = {"step": global_step, "mean_return": mean, "std_return": std, "interventions": interventions}
        run.log_evaluation(line, {"eval/return": mean, "eval/return_std": std, "eval/interventions": interventions})
        return result

    with Run(args, "rlif" if intervening else "rlpd", args.env_id, saved=saved) as run:
        bar = run.progress(args.total_timesteps, initial=global_step)
        last_log_time, last_log_step = time.time(), global_step
        metrics: dict[str, torch.Tensor] = {}
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = torch.rand(args.num_envs, action_dim, device=device) * 2.0 - 1.0
            else:
                with torch.no_grad():
                    actions, _ = actor.sample(obs)
            next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
            previous_step, global_step = global_step, global_step + args.num_envs
            bar.update(args.num_envs)
            if intervening:
                info = envs.info
                executed = unit_actions(info, "action", envs.env_action_space)
                takeover_start = vector_info(info, "takeover_start")
                rows = labeller.step(
                    obs,
                    torch.as_tensor(executed, device=device),
                    torch.as_tensor(takeover_start, device=device),
                    torch.as_tensor(vector_info(info, "intervened"), device=device),
                    final_obs,
                    terminated,
                    truncated,
                )
                if len(rows[0]):
                    rb.add(*rows)
                interventions += int(takeover_start.sum())  # counted on the host copy: no device synchronisation
                task_returns += vector_info(info, "task_reward")
                signal_returns, lengths = envs.pop_episodes()  # the signal's return is minus the takeovers
                ended = np.flatnonzero((terminated | truncated).cpu().numpy())
                run.log_episodes(global_step, task_returns[ended].tolist(), lengths)
                for signal_return in signal_returns:
                    run.log_scalars(global_step, {"charts/episode_interventions": -signal_return})
                task_returns[ended] = 0.0
            else:
                rb.add(obs, actions, rewards, final_obs, terminated)
                run.log_episodes(global_step, *envs.pop_episodes())
            obs = next_obs

            if global_step >= args.learning_starts:
                for _ in range(args.num_envs):
                    batches = [
                        sample_mixed(rb, demos, args.batch_size, args.offline_ratio) for _ in range(args.utd_ratio)
                    ]
                    metrics = update(batches)
                check_finite(metrics, global_step)
                if crossed(global_step, previous_step, args.log_every):
                    sps = (global_step - last_log_step) / max(time.time() - last_log_time, 1e-9)
                    last_log_time, last_log_step = time.time(), global_step
                    run.log_scalars(global_step, {**metrics, "charts/SPS": sps, "charts/interventions": interventions})
            if global_step < args.total_timesteps and crossed(global_step, previous_step, args.eval_every):
                run_evaluation(run)
            run.end_iteration(global_step, checkpoint)
        final = run_evaluation(run)
        run.save_final(checkpoint())
        bar.write(
            f"final deterministic return over {args.eval_episodes} episodes: "
            f"{final['mean_return']:.1f} +- {final['std_return']:.1f}; expert interventions: {interventions}"
        )
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
