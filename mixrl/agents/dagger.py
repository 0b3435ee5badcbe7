"""DAgger (Ross et al. 2011) and HG-DAgger (Kelly et al. 2019): interactive imitation of an expert with a
tanh-Gaussian behaviour-cloning learner, on the same simulated experts as RLIF (mixrl.envs.interventions).

    BC:         L = -E_{(s, a) ~ D}[log pi(a|s)]   (tanh-Gaussian log-density, AdamW with weight decay)
    pretrain:   on the demonstrations (--demos), then per iteration:
    DAgger:     the learner rolls out --episodes-per-iteration whole episodes (with its mean action); a random
                --relabel-fraction of the visited states get the expert's action as label and join the aggregate D
    HG-DAgger:  the expert watches and takes over for --takeover-steps when |a_exp - a|_1 >= threshold (with
                probability 1 - eps, eps otherwise; eps = eps0 exp(-decay episode)); its actions join D
    then --train-steps BC steps on D and the demonstrations.

Evaluations and checkpoints fall at the end of an iteration. The learner acts in one Gymnasium env (episodes are
collected and labelled whole, one after another, with the expert wrapped around the env): no --num-envs or --backend.

By default only expert labels join the aggregate (textbook DAgger and HG-DAgger); --keep-learner-actions also
keeps the learner's own actions on the states the expert did not label, as the RLIF authors' code does.

Run `python -m mixrl.agents.dagger --help` (or `mixrl dagger --help`) for every option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from mixrl.envs.factory import TorchVecEnv, make_vec_env, parse_env_kwargs
from mixrl.envs.interventions import unit_actions, vector_info
from mixrl.flags import EnvFlags, RunFlags
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.policies.loading import policy_spec
from mixrl.pretrained import intervention_wrapper
from mixrl.runs import Parts, Run, RunPolicy, UsageError, check_finite, parse_args, record_given, start


@record_given
@dataclass
class Args(RunFlags, EnvFlags):
    env_id: str = "Hopper-v5"
    """Gymnasium id of a task with a continuous (Box) action space; module:id for a task your own package registers"""
    method: Literal["dagger", "hg-dagger"] = "hg-dagger"
    """DAgger (expert labels on the learner's states) or HG-DAgger (the expert takes over when unhappy)"""
    total_timesteps: int = 100_000
    """environment steps to collect, learner's and expert's together (whole iterations; the last one may end early)"""
    expert: str | None = None
    """run directory or checkpoint of the expert"""
    expert_noise: float = 0.0
    """std of Gaussian noise on the expert's actions, in units of half the action range (a weaker expert)"""
    demos: str | None = None
    """Minari dataset id of demonstrations to pretrain on and keep in the training data"""
    episodes_per_iteration: int = 5
    """episodes collected between two training phases"""
    relabel_fraction: float = 0.5
    """DAgger: fraction of the learner's visited states that get the expert's label (the RLIF code: 0.5)"""
    keep_learner_actions: bool = False
    """also aggregate the learner's own actions on states the expert did not label (the RLIF code does)"""
    gate_threshold: float | None = None
    """HG-DAgger: L1 distance between expert and learner actions (in [-1, 1] units) that makes the expert take over
    (default |A| / 2, the RLIF code's 12 for 24 action dimensions)"""
    gate_epsilon: float = 0.05
    """HG-DAgger: probability of the opposite decision, decaying as eps exp(-decay episode)"""
    gate_decay: float = 0.1
    """HG-DAgger: decay rate of that probability per episode"""
    takeover_steps: int = 4
    """HG-DAgger: steps the expert keeps control once it takes over"""
    pretrain_steps: int = 10_000
    """BC steps on the demonstrations before the first rollout (the RLIF code: 100k)"""
    train_steps: int = 2_500
    """BC steps after each iteration's rollouts (the RLIF code: 25 epochs of 100)"""
    batch_size: int = 256
    """transitions per BC step"""
    learning_rate: float = 3e-4
    """AdamW learning rate"""
    weight_decay: float = 1e-3
    """AdamW weight decay"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of the learner"""


def check_args(args: Args, has_expert: bool) -> None:
    if args.method not in ("dagger", "hg-dagger"):
        raise UsageError(f"--method {args.method!r} is not one of: dagger, hg-dagger.")
    if args.expert is None and not has_expert:
        raise UsageError("DAgger needs --expert RUN (a mixrl run or checkpoint).")
    if not 0.0 < args.relabel_fraction <= 1.0:
        raise UsageError(f"--relabel-fraction must lie in (0, 1], got {args.relabel_fraction}.")
    if args.episodes_per_iteration < 1 or args.batch_size < 1:
        raise UsageError("--episodes-per-iteration and --batch-size must be at least 1.")


def bc_loss(actor: TanhGaussianActor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """-E[log pi(a|s)] of the tanh-Gaussian; labels clipped to +-0.999 so that atanh stays finite (as the RLIF code)."""
    return -actor.log_prob(obs, actions.clamp(-0.999, 0.999)).mean()


def expert_labels(method: str, intervened: torch.Tensor, fraction: float, keep_learner: bool) -> torch.Tensor:
    """Which of an episode's steps join the aggregate with the expert's label (1), the learner's own action (0)
    or not at all (-1). DAgger: a random `fraction` of the learner's steps; HG-DAgger: the expert's takeover steps."""
    expert = torch.rand(len(intervened)) < fraction if method == "dagger" else intervened
    return torch.where(expert, 1, 0 if keep_learner else -1)


def load_demos(args: Args, obs_dim: int, action_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The demonstrations' observations and actions in [-1, 1] (none without --demos)."""
    if args.demos is None:
        return torch.zeros(0, obs_dim, device=device), torch.zeros(0, action_dim, device=device)
    from mixrl.datasets import load_dataset

    buffer = load_dataset(args.demos, device, normalize_obs=False).buffer
    if (buffer.obs_dim, buffer.action_dim) != (obs_dim, action_dim):
        raise UsageError(f"--demos {args.demos} does not fit {args.env_id}'s observations and actions.")
    return buffer.stored()[:2]


def train(
    actor: TanhGaussianActor, optimizer, data_obs: torch.Tensor, data_actions: torch.Tensor, batch_size: int, steps: int
) -> dict[str, torch.Tensor]:
    """`steps` BC steps on batches drawn uniformly from the aggregate D (none while it is empty) -> the last loss."""
    loss = torch.zeros(())
    for _ in range(steps if len(data_obs) else 0):
        idx = torch.randint(0, len(data_obs), (batch_size,), device=data_obs.device)
        loss = bc_loss(actor, data_obs[idx], data_actions[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"losses/bc_loss": loss.detach()}


def rollout(
    run: Run, envs: TorchVecEnv, actor: TanhGaussianActor, obs: torch.Tensor, step: int, task_return: float, budget: int
) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor, int, float]:
    """One episode of the learner's mean action with the expert watching, cut at the step `budget`: its steps (obs,
    learner action, expert action, intervened) and the loop state after it (obs, step, task return of the running
    episode). Counts the takeovers in run.extra["interventions"]; logs the episode's task return (the env's reward
    is the intervention signal)."""
    steps = []
    done = False
    while not done and step < budget:
        with torch.no_grad():
            action = actor.deterministic(obs)
        next_obs, _, terminated, truncated, _ = envs.step(action)
        info = envs.info
        expert_action = torch.as_tensor(unit_actions(info, "expert_action", envs.env_action_space), device=obs.device)
        intervened = bool(vector_info(info, "intervened")[0])
        run.extra["interventions"] += int(vector_info(info, "takeover_start")[0])
        task_return += float(vector_info(info, "task_reward")[0])
        _, length = envs.pop_episodes()
        run.log_episodes(step + 1, [task_return] if length else [], length)
        task_return = 0.0 if length else task_return
        steps.append((obs[0], action[0], expert_action[0], torch.tensor(intervened)))
        obs, step, done = next_obs, step + 1, bool(terminated[0] or truncated[0])
    return steps, obs, step, task_return


def aggregate(run: Run, args: Args, steps: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (observations, actions) of an episode's steps that join D: the expert's label where expert_labels says
    so (counted in run.extra["expert_labels"]), the learner's own action where it keeps it."""
    states, learner, expert_actions, intervened = (torch.stack(x) for x in zip(*steps))
    which = expert_labels(args.method, intervened, args.relabel_fraction, args.keep_learner_actions)
    which = which.to(states.device)
    run.extra["expert_labels"] += int((which == 1).sum())
    return states[which >= 0], torch.where((which == 1).unsqueeze(1), expert_actions, learner)[which >= 0]


def main(args: Args, expert: Callable | None = None) -> Path:
    """Train DAgger or HG-DAgger; returns the run directory. `expert` (obs -> env action) replaces --expert."""
    args, saved = start(args, partial(check_args, has_expert=expert is not None))
    device = torch.device(args.device)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    mode = "gated" if args.method == "hg-dagger" else "none"
    options = {"gate_threshold": args.gate_threshold, "gate_epsilon": args.gate_epsilon, "gate_decay": args.gate_decay}
    wrapper = intervention_wrapper(args, mode, device, expert, **options)
    envs = make_vec_env(args.env_id, 1, args.seed, device, env_kwargs=env_kwargs, wrapper=wrapper)
    if not envs.continuous:
        raise UsageError(
            f"DAgger needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}."
        )
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]

    actor_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "hidden_sizes": args.hidden_sizes}
    actor = TanhGaussianActor(**actor_kwargs).to(device)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    data_obs, data_actions = load_demos(args, obs_dim, action_dim, device)  # the aggregate D, demonstrations first
    policy = RunPolicy.of(actor, partial(policy_spec, actor, **actor_kwargs), envs, args.env_id, env_kwargs)

    obs = envs.reset()
    with Run(args, args.method.replace("-", "_"), args.env_id, saved) as run:
        run.extra.update(interventions=0, expert_labels=0)  # takeovers and expert labels so far
        global_step, obs, iteration, task_return, data_obs, data_actions = run.track(
            Parts({"actor": actor, "optimizer": optimizer}, envs),
            policy,
            global_step=0,
            obs=obs,
            iteration=0,
            task_return=0.0,
            data_obs=data_obs,
            data_actions=data_actions,
        )
        if saved is None:
            check_finite(train(actor, optimizer, data_obs, data_actions, args.batch_size, args.pretrain_steps), 0)
        while global_step < args.total_timesteps:
            new_obs, new_actions = [], []
            for _ in range(args.episodes_per_iteration):
                steps, obs, global_step, task_return = rollout(
                    run, envs, actor, obs, global_step, task_return, args.total_timesteps
                )
                if not steps:
                    break
                states, actions = aggregate(run, args, steps)
                new_obs.append(states)
                new_actions.append(actions)
            data_obs = torch.cat([data_obs, *new_obs])
            data_actions = torch.cat([data_actions, *new_actions])
            iteration += 1
            metrics = train(actor, optimizer, data_obs, data_actions, args.batch_size, args.train_steps)
            metrics.update({f"charts/{name}": count for name, count in run.extra.items()})
            metrics["charts/aggregate_size"] = len(data_obs)
            run.end_iteration(
                global_step,
                metrics,
                obs=obs,
                iteration=iteration,
                task_return=task_return,
                data_obs=data_obs,
                data_actions=data_actions,
            )
        run.finish(
            global_step,
            obs=obs,
            iteration=iteration,
            task_return=task_return,
            data_obs=data_obs,
            data_actions=data_actions,
        )
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
