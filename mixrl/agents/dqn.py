"""Deep Q-Network (Mnih et al. 2015) with soft target updates, Huber loss and optional double-DQN targets.

    behaviour:  a = argmax_a Q(s, a) with probability 1 - eps, uniform otherwise,
                eps = eps_end + (eps_start - eps_end) exp(-global_step / eps_decay)
    target:     y = r + gamma (1 - terminated) Qbar(s', a'),   a' = argmax_a Qbar(s', a)
                (double DQN: a' = argmax_a Q(s', a), evaluated by Qbar)
    loss:       L = E[huber(Q(s, a) - y)],  AdamW (amsgrad), gradients clipped to [-100, 100] elementwise
    targets:    Qbar <- (1 - tau) Qbar + tau Q after every update

Time limits are not terminal: a truncated transition bootstraps from its true last observation. The
defaults are those of the adaptive time-stepping paper (`reference/three_body.md`) on
mixrl/ThreeBodyTimestep-v0, except for a global exploration counter and rewards scaled by 0.01 for
learning. Run `python -m mixrl.agents.dqn --help` (or `mixrl dqn --help`) for every option.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import make_vec_env, parse_env_kwargs
from mixrl.evaluation import Policy, evaluate, policy_spec
from mixrl.policies.discrete import QNetwork
from mixrl.runs import (
    Run,
    UsageError,
    check_finite,
    check_range,
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
    env_id: str = "mixrl/ThreeBodyTimestep-v0"
    """Gymnasium id of a task with a discrete action space; module:id for a task your own package registers"""
    env_kwargs: tuple[str, ...] = ()
    """keyword arguments of the env constructor: one JSON object, or key=value pairs (e.g. frame_skip=2 sparse=1)"""
    seed: int = 1
    """seed of the envs, torch, NumPy and Python"""
    total_timesteps: int = 200_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
    num_envs: int = 1
    """parallel environments (synchronous); each loop iteration collects one transition per env"""
    buffer_size: int = 10_000
    """replay buffer capacity in transitions"""
    gamma: float = 0.99
    """discount factor"""
    reward_scale: float = 0.01
    """multiply rewards by this before learning (logged returns stay unscaled). With the Huber loss it sets
    which TD errors fall in the quadratic (mean-seeking) rather than the linear (median-seeking) part; the
    original code learned from unscaled rewards (1.0), which underrates rare catastrophic errors"""
    tau: float = 0.005
    """Polyak rate of the target network: Qbar <- (1 - tau) Qbar + tau Q, after every update"""
    batch_size: int = 128
    """transitions per gradient update"""
    learning_starts: int = 128
    """environment steps before the first update (the buffer must hold at least one batch)"""
    learning_rate: float = 1e-3
    """AdamW learning rate"""
    amsgrad: bool = True
    """use the AMSGrad variant of AdamW"""
    grad_clip_value: float = 100.0
    """clip every gradient element to [-v, v] (0: no clipping)"""
    train_frequency: int = 1
    """environment steps (per env) between gradient updates"""
    hidden_sizes: tuple[int, ...] = (200, 200, 200)
    """hidden layer widths of the Q-network (each layer with its own weights)"""
    shared_hidden: bool = False
    """reuse one hidden layer for all but the first hidden layer (the original code's weight sharing)"""
    double_dqn: bool = False
    """pick the bootstrap action with the online network and evaluate it with the target network"""
    eps_start: float = 0.9
    """exploration rate at step 0"""
    eps_end: float = 0.05
    """asymptotic exploration rate"""
    eps_decay: float = 1000.0
    """e-folding time of the exploration rate, in environment steps of one env"""
    eps_per_episode: bool = False
    """restart the exploration schedule at every episode (the original code's counter) instead of one global
    step counter"""
    truncation_is_terminal: bool = False
    """treat time limits as terminal (no bootstrap; the original code's behaviour)"""
    normalize_obs: bool = False
    """z-score observations with running statistics (saved in checkpoints)"""
    eval_every: int = 5_000
    """environment steps between deterministic evaluations (0: only at the end); the best one is kept in
    checkpoints/best.pt"""
    eval_episodes: int = 10
    """episodes per evaluation (seeds 10000 + seed, ...: systems drawn apart from the training stream)"""
    checkpoint_every: int = 10_000
    """environment steps between checkpoints/latest.pt writes"""
    save_buffer: bool = True
    """include the replay buffer in checkpoints, so that --resume continues exactly"""
    log_every: int = 1000
    """environment steps between loss/SPS logs"""
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


def epsilon(args: Args, steps: torch.Tensor) -> torch.Tensor:
    """Exploration rate after `steps` environment steps (per env)."""
    return args.eps_end + (args.eps_start - args.eps_end) * torch.exp(-steps / args.eps_decay)


def make_update(args: Args, q_network: QNetwork, q_target: QNetwork, optimizer: torch.optim.Optimizer):
    """The DQN gradient step as a function of a batch -> detached metrics."""
    params, target_params = list(q_network.parameters()), list(q_target.parameters())

    def update(batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_q_target = q_target(batch.next_obs)
            if args.double_dqn:
                next_action = q_network(batch.next_obs).argmax(1, keepdim=True)
                next_q = next_q_target.gather(1, next_action).squeeze(1)
            else:
                next_q = next_q_target.max(1).values
            target = batch.rewards + args.gamma * (1.0 - batch.terminated) * next_q
        q = q_network(batch.obs).gather(1, batch.actions.long()).squeeze(1)
        loss = F.smooth_l1_loss(q, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip_value > 0:
            torch.nn.utils.clip_grad_value_(params, args.grad_clip_value)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, params, args.tau)
        return {"losses/td_loss": loss.detach(), "losses/q_values": q.detach().mean()}

    return update


def main(args: Args) -> Path:
    """Train DQN; returns the run directory."""
    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, "total_timesteps")
    check_range(args, "num_envs buffer_size batch_size hidden_sizes train_frequency eval_episodes threads", 1)
    check_range(args, "total_timesteps learning_starts learning_rate grad_clip_value eps_decay reward_scale", 0)
    check_range(args, "eval_every checkpoint_every log_every", 0)
    check_range(args, "gamma tau eps_start eps_end", 0, 1)
    if args.learning_starts < args.batch_size:
        raise UsageError(f"learning_starts ({args.learning_starts}) must be at least batch_size ({args.batch_size}).")
    set_cpu_math(args.threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device(args.device)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    envs = make_vec_env(
        args.env_id, args.num_envs, args.seed, device, normalize_obs=args.normalize_obs, env_kwargs=env_kwargs
    )
    if envs.continuous or envs.env_action_space.shape != ():
        raise UsageError(
            f"DQN needs a Discrete action space, but {args.env_id} has {envs.env_action_space}. "
            "Use `mixrl sac` or `mixrl ppo` for continuous actions."
        )
    obs_dim, num_actions = envs.obs_dim, int(envs.env_action_space.n)

    q_network = QNetwork(obs_dim, num_actions, args.hidden_sizes, args.shared_hidden).to(device)
    q_target = copy.deepcopy(q_network).requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), lr=args.learning_rate, amsgrad=args.amsgrad)
    update = make_update(args, q_network, q_target, optimizer)
    # Actions are stored as a float column of width 1 and cast back to indices in the update.
    rb = ReplayBuffer(args.buffer_size, obs_dim, 1, device)

    modules = {"q_network": q_network, "q_target": q_target}
    obs = envs.reset()
    global_step, best_return = 0, -math.inf
    episode_steps = torch.zeros(args.num_envs, device=device)
    if saved is not None:
        if "buffer" not in saved:
            raise UsageError(
                f"{args.resume}: checkpoint saved without its replay buffer (--no-save-buffer); cannot resume exactly."
            )
        state = saved["state"]
        for name, module in modules.items():
            module.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        rb.load_state_dict(saved["buffer"])
        envs.load_state_dict(saved["env_state"])
        obs, global_step = saved["obs"].to(device), saved["global_step"]
        episode_steps, best_return = saved["episode_steps"].to(device), saved["best_return"]
        set_rng_state(saved["rng"])

    def checkpoint() -> dict:
        payload = {
            "args": dataclasses.asdict(args),
            "env_kwargs": env_kwargs,
            "observation_space": envs.single_observation_space,
            "action_space": envs.env_action_space,
            "obs_normalizer": envs.normalizer_state(),
            "policy": policy_spec(
                q_network,
                obs_dim=obs_dim,
                num_actions=num_actions,
                hidden_sizes=args.hidden_sizes,
                shared_hidden=args.shared_hidden,
            ),
            "state": {
                **{name: m.state_dict() for name, m in modules.items()},
                "optimizer": optimizer.state_dict(),
            },
            "global_step": global_step,
            "episode_steps": episode_steps.clone(),
            "best_return": best_return,
            "obs": obs,
            "rng": rng_state(),
            "env_state": envs.state_dict(),
        }
        if args.save_buffer:
            payload["buffer"] = rb.state_dict()
        return payload

    def run_evaluation() -> dict:
        nonlocal best_return
        policy = Policy(
            q_network, envs.single_observation_space, envs.env_action_space, envs.normalizer_state(), device
        )
        result = evaluate(policy, args.env_id, args.eval_episodes, seed=10_000 + args.seed, env_kwargs=env_kwargs)
        mean, std = result["mean_return"], result["std_return"]
        line = {"step": global_step, "mean_return": mean, "std_return": std}
        run.log_evaluation(line, {"eval/return": mean, "eval/return_std": std})
        if mean > best_return:
            best_return = mean
            run.save_checkpoint({k: v for k, v in checkpoint().items() if k != "buffer"}, "best")
        return result

    with Run(args, "dqn", args.env_id, saved=saved) as run:
        bar = run.progress(args.total_timesteps, initial=global_step)
        last_log_time, last_log_step = time.time(), global_step
        while global_step < args.total_timesteps:
            if args.eps_per_episode:
                eps = epsilon(args, episode_steps)
            else:
                eps = epsilon(args, torch.full_like(episode_steps, global_step / args.num_envs))
            with torch.no_grad():
                greedy = q_network(obs).argmax(1)
            explore = torch.rand(args.num_envs, device=device) < eps
            random_actions = torch.randint(0, num_actions, (args.num_envs,), device=device)
            actions = torch.where(explore, random_actions, greedy)

            next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
            done = terminated | truncated
            rb.add(
                obs,
                actions,
                rewards * args.reward_scale,
                final_obs,
                done if args.truncation_is_terminal else terminated,
            )
            obs = next_obs
            episode_steps = torch.where(done, torch.zeros_like(episode_steps), episode_steps + 1)
            previous_step, global_step = global_step, global_step + args.num_envs
            bar.update(args.num_envs)
            run.log_episodes(global_step, *envs.pop_episodes())

            env_steps = global_step // args.num_envs
            if global_step >= args.learning_starts and env_steps % args.train_frequency == 0:
                metrics = update(rb.sample(args.batch_size))
                check_finite(metrics, global_step)
                if crossed(global_step, previous_step, args.log_every):
                    sps = (global_step - last_log_step) / max(time.time() - last_log_time, 1e-9)
                    last_log_time, last_log_step = time.time(), global_step
                    run.log_scalars(global_step, {**metrics, "charts/epsilon": eps.mean(), "charts/SPS": sps})
            if global_step < args.total_timesteps and crossed(global_step, previous_step, args.eval_every):
                run_evaluation()
            run.end_iteration(global_step, checkpoint)
        final = run_evaluation()
        run.save_final(checkpoint())
        bar.write(
            f"final deterministic return over {args.eval_episodes} episodes: "
            f"{final['mean_return']:.1f} +- {final['std_return']:.1f} (best {best_return:.1f})"
        )
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
