"""DAgger (Ross et al. 2011) and HG-DAgger (Kelly et al. 2019): interactive imitation of an expert with a
tanh-Gaussian behaviour-cloning learner, on the same simulated experts as RLIF (mixrl.envs.interventions).

    BC:         L = -E_{(s, a) ~ D}[log pi(a|s)]   (tanh-Gaussian log-density, AdamW with weight decay)
    pretrain:   on the demonstrations (--demos), then per iteration:
    DAgger:     the learner rolls out --episodes-per-iteration whole episodes (with its mean action); a random
                --relabel-fraction of the visited states get the expert's action as label and join the aggregate D
    HG-DAgger:  the expert watches and takes over for --takeover-steps when |a_exp - a|_1 >= threshold (with
                probability 1 - eps, eps otherwise; eps = eps0 exp(-decay episode)); its actions join D
    then --train-steps BC steps on D and the demonstrations.

By default only expert labels join the aggregate (textbook DAgger and HG-DAgger); --keep-learner-actions also
keeps the learner's own actions on the states the expert did not label, as the RLIF authors' code does.

Run `python -m mixrl.agents.dagger --help` (or `mixrl dagger --help`) for every option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mixrl.agents.rlif import intervention_wrapper
from mixrl.envs.factory import make_vec_env
from mixrl.envs.interventions import unit_actions, vector_info
from mixrl.evaluation import Policy, evaluate, policy_spec
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.runs import (
    Run,
    UsageError,
    check_finite,
    crossed,
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
    """seed of the env, the expert's decisions, torch, NumPy and Python"""
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
    eval_every: int = 10_000
    """environment steps between deterministic evaluations, checked after each iteration (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    checkpoint_every: int = 10_000
    """environment steps between checkpoints/latest.pt writes, checked after each iteration"""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda"""
    threads: int = 1
    """torch CPU threads"""
    torch_deterministic: bool = True
    """use deterministic torch kernels"""
    run_root: str = "runs"
    """parent folder of run directories"""
    resume: str | None = None
    """run directory to continue from its checkpoints/latest.pt (its saved Args are used)"""


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


def main(args: Args, expert: Callable | None = None) -> Path:
    """Train DAgger or HG-DAgger; returns the run directory. `expert` (obs -> env action) replaces --expert."""
    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, "total_timesteps")
    check_args(args, expert is not None)
    set_cpu_math(args.threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device(args.device)
    mode = "gated" if args.method == "hg-dagger" else "none"
    options = {"gate_threshold": args.gate_threshold, "gate_epsilon": args.gate_epsilon, "gate_decay": args.gate_decay}
    wrapper = intervention_wrapper(args, mode, device, expert, **options)
    envs = make_vec_env(args.env_id, 1, args.seed, device, wrapper=wrapper)
    if not envs.continuous:
        raise UsageError(
            f"DAgger needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}."
        )
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]

    actor_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "hidden_sizes": args.hidden_sizes}
    actor = TanhGaussianActor(**actor_kwargs).to(device)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    demo_obs = torch.zeros(0, obs_dim, device=device)
    demo_actions = torch.zeros(0, action_dim, device=device)
    if args.demos is not None:
        from mixrl.datasets import load_dataset

        demo_buffer = load_dataset(args.demos, device, normalize_obs=False).buffer
        if (demo_buffer.obs_dim, demo_buffer.action_dim) != (obs_dim, action_dim):
            raise UsageError(f"--demos {args.demos} does not fit {args.env_id}'s observations and actions.")
        demo_obs, demo_actions = demo_buffer.stored()[:2]
    data_obs, data_actions = demo_obs, demo_actions  # the aggregate D, demonstrations first

    def train(steps: int) -> dict[str, torch.Tensor]:
        loss = torch.zeros(())
        for _ in range(steps if len(data_obs) else 0):
            idx = torch.randint(0, len(data_obs), (args.batch_size,), device=device)
            loss = bc_loss(actor, data_obs[idx], data_actions[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {"losses/bc_loss": loss.detach()}

    obs = envs.reset()
    global_step, iteration, interventions, labels, task_return = 0, 0, 0, 0, 0.0
    if saved is not None:
        state = saved["state"]
        actor.load_state_dict(state["actor"])
        optimizer.load_state_dict(state["optimizer"])
        data_obs, data_actions = state["data_obs"].to(device), state["data_actions"].to(device)
        envs.load_state_dict(saved["env_state"])
        obs, global_step, iteration = saved["obs"].to(device), saved["global_step"], saved["iteration"]
        interventions, labels, task_return = saved["interventions"], saved["expert_labels"], saved["task_return"]
        set_rng_state(saved["rng"])

    def checkpoint() -> dict:
        return {
            "args": dataclasses.asdict(args),
            "env_kwargs": {},
            "observation_space": envs.single_observation_space,
            "action_space": envs.env_action_space,
            "obs_normalizer": None,
            "policy": policy_spec(actor, **actor_kwargs),
            "state": {
                "actor": actor.state_dict(),
                "optimizer": optimizer.state_dict(),
                "data_obs": data_obs,
                "data_actions": data_actions,
            },
            "global_step": global_step,
            "iteration": iteration,
            "interventions": interventions,
            "expert_labels": labels,
            "task_return": task_return,
            "obs": obs,
            "rng": rng_state(),
            "env_state": envs.state_dict(),
        }

    def run_evaluation(run: Run) -> dict:
        policy = Policy(actor, envs.single_observation_space, envs.env_action_space, None, device)
        result = evaluate(policy, args.env_id, args.eval_episodes, seed=10_000 + args.seed)
        mean, std = result["mean_return"], result["std_return"]
        line = {"step": global_step, "mean_return": mean, "std_return": std, "interventions": interventions,
                "expert_labels": labels}  # fmt: skip
        run.log_evaluation(line, {"eval/return": mean, "eval/return_std": std, "eval/interventions": interventions})
        return result

    with Run(args, args.method.replace("-", "_"), args.env_id, saved=saved) as run:
        bar = run.progress(args.total_timesteps, initial=global_step)
        if saved is None:
            check_finite(train(args.pretrain_steps), 0)
        while global_step < args.total_timesteps:
            previous_step = global_step
            new_obs, new_actions = [], []
            for _ in range(args.episodes_per_iteration):
                steps: list[tuple[torch.Tensor, ...]] = []  # (obs, learner action, expert action, intervened)
                done = False
                while not done and global_step < args.total_timesteps:
                    with torch.no_grad():
                        action = actor.deterministic(obs)
                    next_obs, _, terminated, truncated, _ = envs.step(action)
                    info = envs.info
                    expert_action = torch.as_tensor(
                        unit_actions(info, "expert_action", envs.env_action_space), device=device
                    )
                    intervened = bool(vector_info(info, "intervened")[0])
                    interventions += int(vector_info(info, "takeover_start")[0])
                    task_return += float(vector_info(info, "task_reward")[0])
                    _, length = envs.pop_episodes()  # the env's reward is the intervention signal: log the task's
                    run.log_episodes(global_step + 1, [task_return] if length else [], length)
                    task_return = 0.0 if length else task_return
                    steps.append((obs[0], action[0], expert_action[0], torch.tensor(intervened)))
                    obs, global_step, done = next_obs, global_step + 1, bool(terminated[0] or truncated[0])
                    bar.update(1)
                if not steps:
                    break
                states, learner, expert_actions, intervened = (torch.stack(x) for x in zip(*steps))
                which = expert_labels(args.method, intervened, args.relabel_fraction, args.keep_learner_actions)
                which = which.to(device)
                labels += int((which == 1).sum())
                new_obs.append(states[which >= 0])
                new_actions.append(torch.where((which == 1).unsqueeze(1), expert_actions, learner)[which >= 0])
            data_obs = torch.cat([data_obs, *new_obs])
            data_actions = torch.cat([data_actions, *new_actions])
            iteration += 1
            metrics = train(args.train_steps)
            check_finite(metrics, global_step)
            counts = {"charts/aggregate_size": len(data_obs), "charts/interventions": interventions}
            run.log_scalars(global_step, {**metrics, **counts, "charts/expert_labels": labels})
            if global_step < args.total_timesteps and crossed(global_step, previous_step, args.eval_every):
                run_evaluation(run)
            run.end_iteration(global_step, checkpoint)
        final = run_evaluation(run)
        run.save_final(checkpoint())
        bar.write(
            f"final deterministic return over {args.eval_episodes} episodes: {final['mean_return']:.1f} +- "
            f"{final['std_return']:.1f}; expert labels: {labels}, takeovers: {interventions}"
        )
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
