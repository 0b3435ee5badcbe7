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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixrl.buffers import Batch, ReplayBuffer
from mixrl.envs.factory import make_vec_env, parse_env_kwargs
from mixrl.envs.normalizers import DeviceObsNormalizer
from mixrl.flags import EnvFlags, ReplayFlags, RunFlags, SpeedFlags, VecEnvFlags
from mixrl.optim import flatten_parameters, loss_gradient, matmul_precision
from mixrl.policies.discrete import QNetwork
from mixrl.policies.loading import policy_spec
from mixrl.runs import Parts, Run, RunPolicy, UsageError, check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(RunFlags, SpeedFlags, ReplayFlags, VecEnvFlags, EnvFlags):
    env_id: str = "mixrl/ThreeBodyTimestep-v0"
    """Gymnasium id of a task with a discrete action space; module:id for a task your own package registers"""
    buffer_size: int = 10_000
    """replay buffer capacity in transitions"""
    learning_starts: int = 128
    """epsilon-greedy environment steps before the first update (the buffer must hold at least one batch; the budget
    must exceed it)"""
    eval_every: int = 5_000
    """environment steps between deterministic evaluations (0: only at the end); the best one is kept in
    checkpoints/best.pt"""
    eval_episodes: int = 10
    """episodes per evaluation (reset seeds 10000 + seed + i: systems drawn apart from the training stream)"""
    total_timesteps: int = 200_000
    """environment steps to train for (summed over envs); on --resume, a new value extends the run"""
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


def check_args(args: Args) -> None:
    """Refuse options that do not fit together, naming the fix."""
    check_range(args, "num_envs buffer_size batch_size hidden_sizes train_frequency eval_episodes threads", 1)
    check_range(args, "total_timesteps learning_starts learning_rate grad_clip_value eps_decay reward_scale", 0)
    check_range(args, "eval_every checkpoint_every log_every", 0)
    check_range(args, "gamma tau eps_start eps_end", 0, 1)
    if args.learning_starts < args.batch_size:
        raise UsageError(f"learning_starts ({args.learning_starts}) must be at least batch_size ({args.batch_size}).")
    if args.backend == "warp":
        raise UsageError(
            "--backend warp runs MuJoCo's continuous-control tasks, but DQN needs a discrete action space: "
            "use --backend gymnasium."
        )


def epsilon(args: Args, steps: torch.Tensor) -> torch.Tensor:
    """Exploration rate after `steps` environment steps (per env)."""
    return args.eps_end + (args.eps_start - args.eps_end) * torch.exp(-steps / args.eps_decay)


class TDObjective(nn.Module):
    """The TD loss as a module of the online network: batch -> (L = mean Huber(Q(s, a) - y), mean Q(s, a)). The
    target y is computed without gradient."""

    def __init__(self, args: Args, q_network: nn.Module, q_target: nn.Module):
        super().__init__()
        self.args, self.q_network, self.q_target = args, q_network, q_target

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            next_q_target = self.q_target(batch.next_obs)
            if self.args.double_dqn:
                next_action = self.q_network(batch.next_obs).argmax(1, keepdim=True)
                next_q = next_q_target.gather(1, next_action).squeeze(1)
            else:
                next_q = next_q_target.max(1).values
            target = batch.rewards + self.args.gamma * (1.0 - batch.terminated) * next_q
        q = self.q_network(batch.obs).gather(1, batch.actions.long()).squeeze(1)
        return F.smooth_l1_loss(q, target), q.detach().mean()


def make_update(args: Args, q_network: nn.Module, q_target: nn.Module, optimizer: torch.optim.Optimizer):
    """The DQN gradient step as a function of a batch -> detached metrics. The online network's parameters become
    views into one flat tensor (flatten_parameters), whose gradient the loss writes (compiled with --compile) and
    `optimizer` (over those parameters) applies."""
    params, target_params = list(q_network.parameters()), list(q_target.parameters())
    flat = flatten_parameters([q_network])
    gradient = loss_gradient(TDObjective(args, q_network, q_target), flat, args.compile)

    @matmul_precision(args.matmul_precision)
    def update(batch: Batch) -> dict[str, torch.Tensor]:
        loss, q_mean = gradient(batch)
        if args.grad_clip_value > 0:
            flat.grad.clamp_(-args.grad_clip_value, args.grad_clip_value)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, params, args.tau)
        return {"losses/td_loss": loss, "losses/q_values": q_mean}

    return update


def main(args: Args) -> Path:
    """Train DQN; returns the run directory."""
    args, saved = start(args, check_args)
    device = torch.device(args.device)
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    envs = make_vec_env(args.env_id, args.num_envs, args.seed, device, env_kwargs=env_kwargs, backend=args.backend)
    if envs.continuous or envs.env_action_space.shape != ():
        raise UsageError(
            f"DQN needs a Discrete action space, but {args.env_id} has {envs.env_action_space}. "
            "Use `mixrl sac` or `mixrl ppo` for continuous actions."
        )
    obs_dim, num_actions = envs.obs_dim, int(envs.env_action_space.n)
    # --normalize-obs: the buffer stores raw observations; acting and every sampled batch are z-scored with the
    # running statistics of that moment (as in SAC), so old rows never keep old statistics.
    normalizer = DeviceObsNormalizer(envs.single_observation_space.shape, device) if args.normalize_obs else None
    normalize = (lambda obs: obs) if normalizer is None else partial(normalizer, update=False)

    q_kwargs = {"obs_dim": obs_dim, "num_actions": num_actions, "hidden_sizes": args.hidden_sizes}
    q_kwargs["shared_hidden"] = args.shared_hidden
    q_network = QNetwork(**q_kwargs).to(device)
    q_target = copy.deepcopy(q_network).requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), lr=args.learning_rate, amsgrad=args.amsgrad)
    update = make_update(args, q_network, q_target, optimizer)
    # Actions are stored as a float column of width 1 and cast back to indices in the update.
    rb = ReplayBuffer(args.buffer_size, obs_dim, 1, device)
    spec = partial(policy_spec, q_network, **q_kwargs)
    policy = RunPolicy.of(q_network, spec, envs, args.env_id, env_kwargs, normalizer)
    state = {"q_network": q_network, "q_target": q_target, "optimizer": optimizer}
    if normalizer is not None:
        state["obs_normalizer"] = normalizer

    obs, episode_steps = envs.reset(), torch.zeros(args.num_envs, device=device)
    with Run(args, "dqn", args.env_id, saved, keep_best=True) as run:
        global_step, obs, episode_steps = run.track(
            Parts(state, envs, rb), policy, global_step=0, obs=obs, episode_steps=episode_steps
        )
        if normalizer is not None and saved is None:
            normalizer.rms.update(obs)  # running statistics of every observation the agent acts on
        metrics: dict[str, torch.Tensor] = {}
        while global_step < args.total_timesteps:
            if args.eps_per_episode:
                eps = epsilon(args, episode_steps)
            else:
                eps = epsilon(args, torch.full_like(episode_steps, global_step / args.num_envs))
            with torch.no_grad():
                greedy = q_network(normalize(obs)).argmax(1)
            explore = torch.rand(args.num_envs, device=device) < eps
            random_actions = torch.randint(0, num_actions, (args.num_envs,), device=device)
            actions = torch.where(explore, random_actions, greedy)

            next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
            done = terminated | truncated
            stored_done = done if args.truncation_is_terminal else terminated
            rb.add(obs, actions, rewards * args.reward_scale, final_obs, stored_done)
            obs = next_obs
            if normalizer is not None:
                normalizer.rms.update(obs)
            episode_steps = torch.where(done, torch.zeros_like(episode_steps), episode_steps + 1)
            global_step += args.num_envs
            run.log_episodes(global_step, *envs.pop_episodes())

            if global_step >= args.learning_starts and (global_step // args.num_envs) % args.train_frequency == 0:
                batch = rb.sample(args.batch_size)
                metrics = update(batch._replace(obs=normalize(batch.obs), next_obs=normalize(batch.next_obs)))
                metrics["charts/epsilon"] = eps.mean()
            run.end_iteration(global_step, metrics, obs=obs, episode_steps=episode_steps)
        run.finish(global_step, obs=obs, episode_steps=episode_steps)
    envs.close()
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
