"""Behaviour cloning with action chunks, the frozen base policy of ResiP.

From each observation s_t of a Minari dataset an MLP predicts the next H actions; at test time it executes the
first k of a chunk open-loop, then predicts the next chunk (one queue per environment, emptied when that
environment resets).

    L = mean_{B, h < H, A} (pi_theta(s_t)_h - a_{t+h})^2,   a_{t+h} = a_{T-1} past the episode's end (T actions)

States are z-scored with the dataset's mean and std (+1e-3), the same transform at evaluation; actions are in
[-1, 1], rescaled from the env's bounds, and the head ends in tanh. The budget is gradient steps; every
--eval-every steps the policy runs --eval-episodes episodes and logs eval/return and eval/success_rate.

    mixrl dataset collect expert --policy scripted --env-id mixrl/PegInsertion-v0 --action-noise 0.05 --steps 5000
    mixrl bc --dataset-id mixrl/mixrl-peginsertion-v0/expert-v0 --num-episodes 20

Run `python -m mixrl.agents.bc --help` (or `mixrl bc --help`) for every option.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixrl.datasets import load_dataset
from mixrl.evaluation import Policy, evaluate, policy_spec
from mixrl.policies.chunked import ChunkedActor
from mixrl.runs import (
    Run,
    UsageError,
    check_finite,
    parse_args,
    resume_args,
    rng_state,
    seed_everything,
    set_cpu_math,
    set_rng_state,
)


@dataclass
class Args:
    dataset_id: str = "mixrl/mixrl-peginsertion-v0/expert-v0"
    """Minari dataset id in $MINARI_DATASETS_PATH (default ~/.minari/datasets); make one with `mixrl dataset collect`"""
    num_episodes: int = 0
    """train on the dataset's first N episodes (0: all of them)"""
    env_id: str | None = None
    """evaluation environment (default: the one the dataset records, with its kwargs)"""
    env_kwargs: tuple[str, ...] = ()
    """keyword arguments of the env constructor (merged over the dataset's): one JSON object, or key=value pairs"""
    seed: int = 0
    """seed of torch, NumPy, Python and the evaluation episodes"""
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
    eval_every: int = 5000
    """gradient steps between evaluations (0: only at the end)"""
    eval_episodes: int = 20
    """episodes per evaluation"""
    checkpoint_every: int = 10_000
    """gradient steps between checkpoints/latest.pt writes"""
    log_every: int = 1000
    """gradient steps between loss/SPS logs"""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda (the whole dataset is put there)"""
    threads: int = 1
    """torch CPU threads (more than one thrashes on small machines)"""
    torch_deterministic: bool = True
    """use deterministic torch kernels"""
    run_root: str = "runs"
    """parent folder of run directories"""
    resume: str | None = None
    """run directory to continue from its checkpoints/latest.pt (its saved Args are used)"""


def chunk_targets(actions: torch.Tensor | np.ndarray, horizon: int) -> torch.Tensor | np.ndarray:
    """(T, A) actions of one episode -> (T, H, A): row t holds a_t ... a_{t+H-1}, the last action repeated past T."""
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon), len(actions) - 1)
    return actions[index]


def main(args: Args) -> Path:
    """Train a chunked BC policy on a Minari dataset; returns the run directory."""
    saved = None
    if args.resume is not None:
        args, saved = resume_args(args, "total_steps")
    if not 1 <= args.execute <= args.horizon:
        raise UsageError(f"--execute {args.execute} must be between 1 and --horizon {args.horizon}.")
    set_cpu_math(args.threads)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device(args.device)
    data = load_dataset(args.dataset_id, device, num_episodes=args.num_episodes)
    env_id, env_kwargs, obs_space, action_space = data.resolve_env(args.env_id, args.env_kwargs)
    transitions, obs_normalizer = data.buffer.stored(), data.obs_normalizer
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

    global_step = 0
    if saved is not None:
        actor.load_state_dict(saved["state"]["actor"])
        optimizer.load_state_dict(saved["state"]["optimizer"])
        schedule.load_state_dict(saved["state"]["schedule"])
        global_step = saved["global_step"]
        set_rng_state(saved["rng"])

    def checkpoint() -> dict:
        check_finite({"losses/bc_loss": loss}, global_step)  # never save a state with a non-finite loss
        return {
            "args": dataclasses.asdict(args),
            "dataset_id": args.dataset_id,
            "env_kwargs": env_kwargs,
            "observation_space": obs_space,
            "action_space": action_space,
            "obs_normalizer": obs_normalizer,
            "policy": policy_spec(actor, **actor_kwargs),
            "state": {
                "actor": actor.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
            },
            "global_step": global_step,
            "rng": rng_state(),
        }

    def run_evaluation() -> dict:
        policy = Policy(actor, obs_space, action_space, obs_normalizer, device)
        result = evaluate(policy, env_id, args.eval_episodes, args.seed + 100, env_kwargs)
        scalars = {"eval/return": result["mean_return"], "eval/return_std": result["std_return"]}
        if "success_rate" in result:
            scalars["eval/success_rate"] = result["success_rate"]
        run.log_evaluation({"step": global_step, **scalars}, scalars)
        return scalars

    loss = torch.zeros(())
    with Run(args, "bc", env_id, saved=saved) as run:
        bar = run.progress(args.total_steps, initial=global_step)
        start_step, start_time = global_step, time.perf_counter()
        while global_step < args.total_steps:
            rows = torch.randint(len(obs), (args.batch_size,), device=device)
            loss = (actor(obs[rows]) - chunks[rows]).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            global_step += 1
            bar.update(1)
            if global_step % args.log_every == 0:
                check_finite({"losses/bc_loss": loss}, global_step)
                sps = (global_step - start_step) / (time.perf_counter() - start_time)
                run.log_scalars(global_step, {"losses/bc_loss": loss.detach(), "charts/SPS": sps})
            if args.eval_every and global_step % args.eval_every == 0 and global_step < args.total_steps:
                run_evaluation()
            run.end_iteration(global_step, checkpoint)
        final = run_evaluation()
        run.save_final(checkpoint())
        success = final.get("eval/success_rate")
        bar.write(
            f"final return over {args.eval_episodes} episodes: {final['eval/return']:.2f}"
            + (f", success rate {success:.2f}" if success is not None else "")
        )
    return run.dir


if __name__ == "__main__":
    main(parse_args(Args))
