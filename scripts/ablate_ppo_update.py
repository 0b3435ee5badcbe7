"""What each optimisation of the PPO loop buys: minibatch updates per second with one of them switched off, and the
rollout with and without the per-step critic pass, alternating the variants in one run.

    python scripts/ablate_ppo_update.py [--rounds 3] [--minibatches 512]

HalfCheetah shapes (17-dim observations, 6-dim actions, 64-64 tanh actor and critic, mixrl's default loss), one
epoch of --minibatches minibatches of 64 on a synthetic batch, rollouts in 8 envs, one torch thread. Rates are
per second of this process's CPU time (the machine may be shared), medians over rounds. Update variants:

    all optimisations    mixrl.agents.ppo.make_update: one gather per field and epoch, advantages z-scored for
                         all minibatches of an epoch at once, flat parameters with FlatAdam, one-kernel
                         gradient clipping, clip fraction and KL kept on the device
    compiled             all optimisations with --compile: the loss and its gradient in one torch.compile graph
    torch.optim Adam     per-parameter tensors, torch.optim.Adam(fused=True), clip_grad_norm_(foreach=True)
    per-minibatch gather as torch.optim Adam, and each minibatch indexes every field and z-scores its advantages
    .item() per minibatch as torch.optim Adam, and clip fraction and approx. KL go to the host every minibatch
    none of them         CleanRL's loop: both of the above, torch.optim.Adam's default (per-tensor) kernels and
                         clip_grad_norm_'s default
    PMOE-PPO, K = 5      all optimisations, with the mixture actor, the Q network and the frequency loss (eager
                         and compiled)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mixrl.agents import ppo
from mixrl.envs.factory import make_vec_env
from mixrl.optim import FlatAdam, flatten_parameters
from mixrl.policies.gaussian import DiagonalGaussianActor
from mixrl.policies.mixture import DiagonalGaussianMixtureActor, auxiliary_q

OBS_DIM, ACTION_DIM, NUM_ENVS, MINIBATCH = 17, 6, 8, 64
ARGS = ppo.Args()


def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return DiagonalGaussianActor(OBS_DIM, ACTION_DIM), ppo.make_critic(OBS_DIM, ARGS.hidden_sizes)


def agent_update(policy: str = "gaussian", compile: bool = False) -> Callable[[ppo.Batch, int], None]:
    """mixrl's update, one epoch of `n` minibatches; PMOE-PPO (K = 5 experts) with policy="gmm"."""
    actor, critic = networks()
    qf = None
    if policy == "gmm":
        actor = DiagonalGaussianMixtureActor(OBS_DIM, ACTION_DIM, ARGS.num_experts)
        qf = auxiliary_q(OBS_DIM, ACTION_DIM, ARGS.q_hidden_sizes)
    modules = [m for m in (actor, critic, qf) if m is not None]
    optimizer = FlatAdam(flatten_parameters(modules), ARGS.learning_rate, eps=ARGS.adam_eps)
    updates = {}  # n -> the update of n minibatches, built (and compiled) once

    def run(batch: ppo.Batch, n: int) -> None:
        if n not in updates:
            sizes = {"num_envs": 1, "num_steps": n * MINIBATCH, "num_minibatches": n, "update_epochs": 1}
            args = dataclasses.replace(ARGS, **sizes, policy=policy, compile=compile)
            updates[n] = ppo.make_update(args, actor, critic, qf, optimizer)
        updates[n](ppo.Batch(*(f[: n * MINIBATCH] for f in batch)))

    return run


def plain_update(fused_adam: bool, epoch_gather: bool, host_metrics: bool) -> Callable[[ppo.Batch, int], None]:
    """The loop of CleanRL's ppo_continuous_action around mixrl's loss, with the chosen optimisations."""
    actor, critic = networks()
    params = [*actor.parameters(), *critic.parameters()]
    adam = {"fused": True} if fused_adam else {}
    optimizer = torch.optim.Adam(params, ARGS.learning_rate, eps=ARGS.adam_eps, **adam)

    def normalise(adv: torch.Tensor) -> torch.Tensor:
        return (adv - adv.mean(-1, keepdim=True)) / (adv.std(-1, keepdim=True) + 1e-8)

    def run(batch: ppo.Batch, n: int) -> None:
        perm = torch.randperm(n * MINIBATCH)
        if epoch_gather:
            shuffled = ppo.Batch(*(f[perm].unflatten(0, (n, MINIBATCH)) for f in batch))
            shuffled = shuffled._replace(advantages=normalise(shuffled.advantages))
            minibatches = (ppo.Batch(*mb) for mb in zip(*(f.unbind(0) for f in shuffled)))
        else:
            indices = perm.view(n, MINIBATCH)
            minibatches = (ppo.Batch(*(f[i] for f in batch)) for i in indices)
        for mb in minibatches:
            if not epoch_gather:
                mb = mb._replace(advantages=normalise(mb.advantages))
            loss, log_ratio, _ = ppo.ppo_loss(ARGS, actor, critic, None, mb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, ARGS.max_grad_norm, foreach=True if fused_adam else None)
            optimizer.step()
            if host_metrics:
                ((log_ratio.exp() - 1.0).abs() > ARGS.clip_coef).float().mean().item()
                (log_ratio.exp() - 1.0 - log_ratio).mean().item()

    return run


def rollout_rate(per_step_critic: bool, steps: int) -> float:
    """Environment steps per CPU second of the rollout loop (8 HalfCheetah envs), V(s) per step or not."""
    actor, critic = networks()
    envs = make_vec_env("HalfCheetah-v5", NUM_ENVS, seed=0)
    obs = envs.reset()
    start = time.process_time()
    with torch.no_grad():
        for _ in range(steps):
            actions, _ = actor.sample(obs)
            if per_step_critic:
                critic(obs)
            obs = envs.step(actions)[0]
    rate = steps * NUM_ENVS / (time.process_time() - start)
    envs.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds")
    parser.add_argument("--minibatches", type=int, default=512, help="minibatch updates per variant per round")
    parser.add_argument("--rollout-steps", type=int, default=512, help="vector-env steps per rollout measurement")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    size = opts.minibatches * MINIBATCH
    torch.manual_seed(1)
    batch = ppo.Batch(
        torch.randn(size, OBS_DIM), torch.randn(size, ACTION_DIM), torch.full((size,), -8.0), *torch.randn(3, size)
    )
    variants = {
        "all optimisations": agent_update(),
        "all optimisations, compiled (--compile)": agent_update(compile=True),
        "torch.optim Adam": plain_update(fused_adam=True, epoch_gather=True, host_metrics=False),
        "per-minibatch gather": plain_update(fused_adam=True, epoch_gather=False, host_metrics=False),
        ".item() per minibatch": plain_update(fused_adam=True, epoch_gather=True, host_metrics=True),
        "none of them": plain_update(fused_adam=False, epoch_gather=False, host_metrics=True),
        "PMOE-PPO, K = 5 (all optimisations)": agent_update("gmm"),
        "PMOE-PPO, K = 5, compiled": agent_update("gmm", compile=True),
    }
    for run in variants.values():
        run(batch, 16)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    rollout = {"V(s) after the rollout, batched": [], "V(s) every step (CleanRL)": []}
    for _ in range(opts.rounds):
        for name, run in variants.items():
            start = time.process_time()
            run(batch, opts.minibatches)
            rates[name].append(opts.minibatches / (time.process_time() - start))
        for name in rollout:
            rollout[name].append(rollout_rate(name.startswith("V(s) every"), opts.rollout_steps))
    full = np.median(rates["all optimisations"])
    print("| update variant | minibatches per CPU second (median) | relative |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {np.median(values):.0f} | {np.median(values) / full:.2f} |")
    print("\n| rollout variant | env steps per CPU second (median) |\n|---|---|")
    for name, values in rollout.items():
        print(f"| {name} | {np.median(values):.0f} |")


if __name__ == "__main__":
    main()
