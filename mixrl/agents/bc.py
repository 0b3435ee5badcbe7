"""Behaviour cloning with action chunks, the frozen base policy of ResiP.

From each observation s_t of a Minari dataset an MLP predicts the next H actions; at test time it executes the
first k of a chunk open-loop, then predicts the next chunk (one queue per environment, emptied when that
environment resets).

    L = mean_{B, h < H, A} (pi_theta(s_t)_h - a_{t+h})^2,   a_{t+h} = a_{T-1} past the episode's end (T actions)

States are z-scored with the dataset's mean and std (+1e-3), the same transform at evaluation; actions are in
[-1, 1], rescaled from the env's bounds, and the head ends in tanh. The budget is gradient steps; every
--eval-every steps the policy runs --eval-episodes episodes (reset seeds 10000 + seed + i) and logs its mean return,
success rate and, where the dataset records reference scores, its D4RL score.

    mixrl dataset collect expert --policy scripted --env-id mixrl/PegInsertion-v0 --action-noise 0.05 --steps 5000
    mixrl bc --dataset-id mixrl/mixrl-peginsertion-v0/expert-v0 --num-episodes 20

Run `python -m mixrl.agents.bc --help` (or `mixrl bc --help`) for every option.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixrl.datasets import load_dataset
from mixrl.flags import DatasetFlags, OfflineRunFlags, SpeedFlags
from mixrl.optim import flatten_parameters, loss_gradient, matmul_precision
from mixrl.policies.chunked import ChunkedActor
from mixrl.policies.loading import policy_spec
from mixrl.runs import Parts, Run, RunPolicy, UsageError, check_range, parse_args, record_given, start


@record_given
@dataclass
class Args(OfflineRunFlags, SpeedFlags, DatasetFlags):
    eval_episodes: int = 20
    """deterministic episodes per evaluation (reset seeds 10000 + seed + i, the same at every evaluation)"""
    checkpoint_every: int = 10_000
    """gradient steps between checkpoints/latest.pt writes"""
    dataset_id: str = "mixrl/mixrl-peginsertion-v0/expert-v0"
    """Minari dataset id in $MINARI_DATASETS_PATH (default ~/.minari/datasets); make one with `mixrl dataset collect`"""
    num_episodes: int = 0
    """train on the dataset's first N episodes (0: all of them)"""
    total_steps: int = 20_000
    """gradient steps to train for; on --resume, a new value extends the run"""
    batch_size: int = 256
    """(observation, chunk) pairs per gradient step, sampled uniformly with replacement"""
    learning_rate: float = 1e-3
    """AdamW learning rate (cosine-annealed to zero over total_steps)"""
    weight_decay: float = 1e-6
    """AdamW weight decay"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """hidden layer widths of the MLP (ReLU)"""
    horizon: int = 8
    """H: actions predicted per chunk"""
    execute: int = 8
    """k <= H: actions of each chunk executed open-loop before predicting the next chunk"""


def check_args(args: Args) -> None:
    """Refuse values that cannot train, naming the fix."""
    check_range(args, "batch_size hidden_sizes horizon eval_episodes log_every threads", 1)
    check_range(args, "num_episodes total_steps learning_rate weight_decay eval_every checkpoint_every", 0)
    if not 1 <= args.execute <= args.horizon:
        raise UsageError(f"--execute {args.execute} must be between 1 and --horizon {args.horizon}.")


def chunk_targets(actions: torch.Tensor | np.ndarray, horizon: int) -> torch.Tensor | np.ndarray:
    """(T, A) actions of one episode -> (T, H, A): row t holds a_t ... a_{t+H-1}, the last action repeated past T."""
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon), len(actions) - 1)
    return actions[index]


class ChunkObjective(nn.Module):
    """L = mean_{B, h, A} (pi_theta(s)_h - a_{t+h})^2 as a module of the actor: (states, chunks) -> (L, ()), with no
    auxiliary values."""

    def __init__(self, actor: ChunkedActor):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, chunks: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        return (self.actor(obs) - chunks).square().mean(), ()


def make_update(
    args: Args, actor: ChunkedActor, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler
):
    """The BC gradient step as a function of (states, chunks) -> detached metrics. The actor's parameters become
    views into one flat tensor (flatten_parameters), whose gradient the loss writes (compiled with --compile) and
    `optimizer` (over those parameters) applies, at the learning rate of `schedule`."""
    flat = flatten_parameters([actor])
    gradient = loss_gradient(ChunkObjective(actor), flat, args.compile)

    @matmul_precision(args.matmul_precision)
    def update(obs: torch.Tensor, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, _ = gradient(obs, chunks)
        optimizer.step()
        schedule.step()
        return {"losses/bc_loss": loss}

    return update


def main(args: Args) -> Path:
    """Train a chunked BC policy on a Minari dataset; returns the run directory."""
    args, saved = start(args, check_args, budget="total_steps")
    device = torch.device(args.device)
    data = load_dataset(args.dataset_id, device, num_episodes=args.num_episodes)
    transitions = data.buffer.stored()
    obs = transitions.obs  # z-scored with the dataset's statistics
    episode_actions = transitions.actions.split(data.episode_lengths)
    chunks = torch.cat([chunk_targets(actions, args.horizon) for actions in episode_actions])  # (N, H, A)
    actor_kwargs = {
        "obs_dim": obs.shape[1],
        "action_dim": chunks.shape[2],
        "hidden_sizes": args.hidden_sizes,
        "horizon": args.horizon,
        "execute": args.execute,
    }
    actor = ChunkedActor(**actor_kwargs).to(device)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.total_steps, 1))
    update = make_update(args, actor, optimizer, schedule)
    spec = partial(policy_spec, actor, **actor_kwargs)
    policy = RunPolicy.of_dataset(actor, spec, data, args.env_id, args.env_kwargs)
    state = {"actor": actor, "optimizer": optimizer, "schedule": schedule}
    with Run(args, "bc", policy.env_id, saved, budget="total_steps") as run:
        global_step = run.track(Parts(state), policy, global_step=0)
        while global_step < args.total_steps:
            rows = torch.randint(len(obs), (args.batch_size,), device=device)
            metrics = update(obs[rows], chunks[rows])
            global_step += 1
            run.end_iteration(global_step, metrics)
        run.finish(global_step)
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
