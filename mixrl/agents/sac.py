"""Soft Actor-Critic (Haarnoja et al. 2018): twin critics, automatic entropy tuning, update-to-data ratio.

    critic:  y = r + gamma (1 - terminated) [min_j Qbar_j(s', a') - alpha log pi(a'|s')],   a' ~ pi(.|s')
             L_Q = sum_j E[(Q_j(s, a) - y)^2]
    actor:   L_pi = E[alpha log pi(a~|s) - min_j Q_j(s, a~)],   a~ ~ pi(.|s) reparameterised
    alpha:   L_alpha = -E[log alpha (log pi(a~|s) + H_target)],   H_target = -|A|
    targets: Qbar <- (1 - tau) Qbar + tau Q after every update

Run `python -m mixrl.agents.sac --help` (or `mixrl sac --help`) for every option.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import make_vec_env
from mixrl.evaluation import Policy, evaluate, policy_spec
from mixrl.policies.critics import QEnsemble
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.runs import Run, check_finite, load_checkpoint, rng_state, seed_everything, set_rng_state


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """Gymnasium id of a task with a continuous (Box) action space"""
    seed: int = 1
    """seed of the envs, torch, NumPy and Python"""
    total_timesteps: int = 1_000_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
    num_envs: int = 1
    """parallel environments (synchronous); each loop iteration collects one transition per env"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics: Qbar <- (1 - tau) Qbar + tau Q"""
    batch_size: int = 256
    """transitions per gradient update"""
    learning_starts: int = 5000
    """uniform-random steps that fill the buffer before learning starts"""
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
    normalize_obs: bool = False
    """z-score observations with running statistics (saved in checkpoints)"""
    eval_every: int = 10_000
    """environment steps between deterministic evaluations (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
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


def make_update(args: Args, actor, qf, qf_target, log_alpha, optimizers, target_entropy):
    """The SAC gradient step as a function of a batch -> detached metrics."""
    actor_optimizer, q_optimizer, alpha_optimizer = optimizers
    q_params, q_target_params = list(qf.parameters()), list(qf_target.parameters())

    def update(batch: Batch) -> dict[str, torch.Tensor]:
        alpha = log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_prob = actor.sample(batch.next_obs)
            next_q = qf_target(batch.next_obs, next_actions).min(0).values - alpha * next_log_prob
            target = batch.rewards + args.gamma * (1.0 - batch.terminated) * next_q
        q = qf(batch.obs, batch.actions)
        qf_loss = (q - target).pow(2).mean(1).sum()
        q_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        q_optimizer.step()

        # Actor step through frozen critics: gradients reach the actions, not the critic weights.
        qf.requires_grad_(False)
        actions, log_prob = actor.sample(batch.obs)
        actor_loss = (alpha * log_prob - qf(batch.obs, actions).min(0).values).mean()
        actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_optimizer.step()
        qf.requires_grad_(True)

        metrics = {"losses/qf_loss": qf_loss.detach(), "losses/actor_loss": actor_loss.detach()}
        if args.autotune:
            alpha_loss = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
            alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            alpha_optimizer.step()
            metrics["losses/alpha_loss"] = alpha_loss.detach()
        with torch.no_grad():
            torch._foreach_lerp_(q_target_params, q_params, args.tau)
        metrics.update({"losses/alpha": alpha, "losses/qf_values": q.detach().mean(), "losses/entropy": -log_prob.detach().mean()})
        return metrics

    return update


def main(args: Args) -> Path:
    """Train SAC; returns the run directory."""
    if args.resume is not None:
        saved = load_checkpoint(args.resume)
        total = args.total_timesteps if args.total_timesteps != Args.total_timesteps else saved["args"]["total_timesteps"]
        args = dataclasses.replace(Args(**saved["args"]), resume=args.resume, total_timesteps=total)
        args.hidden_sizes = tuple(args.hidden_sizes)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device(args.device)
    envs = make_vec_env(args.env_id, args.num_envs, args.seed, device, normalize_obs=args.normalize_obs)
    if not envs.continuous:
        raise ValueError(
            f"SAC needs a continuous (Box) action space, but {args.env_id} has {envs.env_action_space}. "
            "Use `mixrl dqn` for discrete actions."
        )
    run = Run(args, "sac", args.env_id, args.run_root, resume=args.resume)
    obs_dim, action_dim = envs.obs_dim, envs.single_action_space.shape[0]

    actor = TanhGaussianActor(obs_dim, action_dim, args.hidden_sizes).to(device)
    qf = QEnsemble(obs_dim, action_dim, args.num_critics, args.hidden_sizes).to(device)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=True)
    fused = device.type in ("cpu", "cuda")
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=fused)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, fused=fused)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr, fused=fused)
    target_entropy = -action_dim * args.target_entropy_scale
    update = make_update(args, actor, qf, qf_target, log_alpha, (actor_optimizer, q_optimizer, alpha_optimizer), target_entropy)
    rb = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device)

    modules = {"actor": actor, "qf": qf, "qf_target": qf_target}
    optimizers = {"actor": actor_optimizer, "q": q_optimizer, "alpha": alpha_optimizer}
    obs = envs.reset()
    global_step, updates_due = 0, 0.0
    if args.resume is not None:
        state = saved["state"]
        for name, module in modules.items():
            module.load_state_dict(state[name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state[f"{name}_optimizer"])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        if "buffer" not in saved:
            raise ValueError(f"{args.resume}: checkpoint saved without its replay buffer (--no-save-buffer); cannot resume exactly.")
        rb.load_state_dict(saved["buffer"])
        envs.load_state_dict(saved["env_state"])
        obs, global_step, updates_due = saved["obs"].to(device), saved["global_step"], saved["updates_due"]
        set_rng_state(saved["rng"])

    def checkpoint() -> dict:
        payload = {
            "args": dataclasses.asdict(args),
            "env_kwargs": {},
            "observation_space": envs.single_observation_space,
            "action_space": envs.env_action_space,
            "obs_normalizer": envs.normalizer_state(),
            "policy": policy_spec(actor, obs_dim=obs_dim, action_dim=action_dim, hidden_sizes=args.hidden_sizes),
            "state": {
                **{name: m.state_dict() for name, m in modules.items()},
                **{f"{name}_optimizer": o.state_dict() for name, o in optimizers.items()},
                "log_alpha": log_alpha.detach().clone(),
            },
            "global_step": global_step,
            "updates_due": updates_due,
            "obs": obs,
            "rng": rng_state(),
            "env_state": envs.state_dict(),
        }
        if args.save_buffer:
            payload["buffer"] = rb.state_dict()
        return payload

    def run_evaluation() -> dict:
        policy = Policy(actor, envs.single_observation_space, envs.env_action_space, envs.normalizer_state(), device)
        result = evaluate(policy, args.env_id, args.eval_episodes, seed=10_000 + args.seed)
        run.log_scalars(global_step, {"eval/return": result["mean_return"], "eval/return_std": result["std_return"]})
        with open(run.dir / "evaluations.jsonl", "a") as f:
            f.write(json.dumps({"step": global_step, "mean_return": result["mean_return"], "std_return": result["std_return"]}) + "\n")
        return result

    bar = run.progress(args.total_timesteps, initial=global_step)
    last_log_time, last_log_step = time.time(), global_step
    metrics: dict[str, torch.Tensor] = {}
    try:
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = torch.rand(args.num_envs, action_dim, device=device) * 2.0 - 1.0
            else:
                with torch.no_grad():
                    actions, _ = actor.sample(obs)
            next_obs, rewards, terminated, _, final_obs = envs.step(actions)
            rb.add(obs, actions, rewards, final_obs, terminated)
            obs = next_obs
            previous_step, global_step = global_step, global_step + args.num_envs
            bar.update(args.num_envs)
            run.log_episodes(global_step, *envs.pop_episodes())

            if global_step >= args.learning_starts:
                updates_due += args.num_envs * args.utd_ratio
                while updates_due >= 1.0:
                    metrics = update(rb.sample(args.batch_size))
                    updates_due -= 1.0
                check_finite(metrics, global_step)
                if global_step // args.log_every > previous_step // args.log_every:
                    sps = (global_step - last_log_step) / max(time.time() - last_log_time, 1e-9)
                    last_log_time, last_log_step = time.time(), global_step
                    run.log_scalars(global_step, {**metrics, "charts/SPS": sps})
            if (
                args.eval_every
                and global_step < args.total_timesteps
                and global_step // args.eval_every > previous_step // args.eval_every
            ):
                run_evaluation()
            if args.checkpoint_every and global_step // args.checkpoint_every > previous_step // args.checkpoint_every:
                run.save_checkpoint(checkpoint())
    except KeyboardInterrupt:
        run.save_checkpoint(checkpoint())
        run.close()
        raise
    final = run_evaluation()
    run.save_checkpoint(checkpoint(), "final")
    run.save_checkpoint(checkpoint())
    bar.write(f"final deterministic return over {args.eval_episodes} episodes: {final['mean_return']:.1f} +- {final['std_return']:.1f}")
    run.close()
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(tyro.cli(Args))
