"""Training speed of mixrl against Stable-Baselines3 at identical settings, alternating A B A B in one run.

    python scripts/bench_speed.py sac [--rounds 2] [--steps 2000]
    python scripts/bench_speed.py pmoe-sac [--rounds 2] [--steps 2000]

SAC: HalfCheetah-v5, two 256-unit hidden layers, batch 256, one update per env step, one torch thread, CPU.
Speed is measured only while learning (after the random warm-up), from each library's own step counter.
The last line is `ALGO <unit>/s: mixrl=X sb3=Y ratio=Z`.

`pmoe-sac` compares mixrl PMOE-SAC (`--policy gmm`, K = 4 experts) with mixrl SAC at the same settings instead,
and ends with `pmoe-sac updates/s: pmoe=X sac=Y cost=Y/X` (how many times slower PMOE-SAC trains).

    python scripts/bench_speed.py rlpd [--utd 1] [--rounds 2] [--steps 2000]

`rlpd` compares the RLPD learner of `mixrl rlif --intervention none` (10 LayerNorm critics, target over 2 of them,
actor through the mean of all 10) with mixrl SAC (2 critics) at the same width (256-256), batch and update-to-data
ratio G = --utd: both then take G critic steps per env step, SAC with an actor step after each, RLPD with one
actor step after the G. Rate = critic updates per second (G x env steps per second); the last line is
`rlpd updates/s: rlpd=X sac=Y cost=Y/X`. `--updates-only` times the two update functions alone on a filled
buffer (HalfCheetah's 17-D observations and 6-D actions; RLPD: G critic steps then one actor step, SAC: G full
steps), alternating in rounds of --steps critic updates, after 5 untimed calls of each; it also prints the rates in
the process's CPU time (less sensitive to other jobs on a shared machine). Both contenders run under RLIF's
`keep_freed_memory` allocator setting, which is process-wide.

    python scripts/bench_speed.py ppo [--rounds 2] [--iterations 1] [--eager]

PPO: HalfCheetah-v5, 8 sync envs, 2048 steps per env per rollout, 10 epochs of minibatches of 64, separate 64-64
tanh actor and critic, no value clipping, no observation or reward normalisation, learning rate annealed, one
torch thread, CPU. Speed is environment steps per second over whole iterations (collection and update), after
one untimed warm-up iteration per run.

mixrl runs with `--compile` (each loss compiled with its gradient; the compile falls in the untimed warm-up)
unless `--eager`.

    python scripts/bench_speed.py resip [--rounds 2] [--iterations 2] [--eager] [--minibatch 64]

ResiP: `mixrl ppo --base-policy` (a frozen chunked-MLP base, 256-256, predicts every 8 steps; the residual actor
and the critic 256-256) against Stable-Baselines3 PPO (256-256 actor and critic, no base) on mixrl/PegInsertion-v0:
16 sync envs, 100 steps per env per rollout, 10 epochs of minibatches of --minibatch (64, SB3's default: 25 per
epoch; 400 is ResiP's few large minibatches), no normalisation, one torch thread, CPU. Environment steps per
second over whole iterations, after one untimed warm-up iteration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def mixrl_sac(steps: int, warmup: int, log_every: int, agent: str = "sac", **overrides) -> float:
    """(Critic) updates per second of mixrl SAC, or of another off-policy agent, while learning: env steps per
    second times the update-to-data ratio."""
    module = importlib.import_module(f"mixrl.agents.{agent}")

    with tempfile.TemporaryDirectory() as root:
        args = module.Args(
            env_id="HalfCheetah-v5",
            total_timesteps=warmup + steps,
            learning_starts=warmup,
            eval_every=0,
            eval_episodes=1,
            checkpoint_every=0,
            save_buffer=False,
            log_every=log_every,
            run_root=root,
            **overrides,
        )
        run_dir = module.main(args)
        sps = [v for step, v in read_scalars(run_dir, "charts/SPS") if step > warmup + log_every]
    # Windows have equal step counts, so the overall rate is the harmonic mean of the window rates.
    return args.utd_ratio * len(sps) / sum(1.0 / v for v in sps)


def update_rates(opts: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """rlpd --updates-only: critic updates per second of the RLPD and SAC update functions, no environment, per
    round: in wall-clock time and in the process's CPU time."""
    import copy

    from mixrl.agents import rlif, sac
    from mixrl.buffers import ReplayBuffer
    from mixrl.optim import FlatAdam, flatten_parameters
    from mixrl.policies.critics import QEnsemble
    from mixrl.policies.gaussian import TanhGaussianActor

    obs_dim, action_dim, hidden, n = 17, 6, (256, 256), 10_000
    torch.manual_seed(0)
    rb = ReplayBuffer(n, obs_dim, action_dim)
    rb.add(torch.randn(n, obs_dim), torch.rand(n, action_dim) * 2 - 1, torch.randn(n), torch.randn(n, obs_dim),
           torch.zeros(n))  # fmt: skip
    settings = {"hidden_sizes": hidden, "compile": not opts.eager, "matmul_precision": opts.precision}

    def parts(num_critics: int, layer_norm: bool):
        actor = TanhGaussianActor(obs_dim, action_dim, hidden)
        qf = QEnsemble(obs_dim, action_dim, num_critics, hidden, layer_norm)
        log_alpha = torch.zeros((), requires_grad=True)
        optimizers = [FlatAdam(flatten_parameters([actor]), 3e-4), FlatAdam(flatten_parameters([qf]), 3e-4)]
        return actor, qf, copy.deepcopy(qf).requires_grad_(False), log_alpha, [*optimizers, FlatAdam(log_alpha, 3e-4)]

    rlpd = rlif.make_update(rlif.Args(utd_ratio=opts.utd, **settings), *parts(10, True), -3.0)
    sac_update = sac.make_update(sac.Args(**settings), *parts(2, False), -6.0)
    steps = {
        "rlpd": lambda: rlpd([rb.sample(256) for _ in range(opts.utd)]),
        "sac": lambda: [sac_update(rb.sample(256)) for _ in range(opts.utd)],
    }
    for step in steps.values():
        for _ in range(5):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    cpu_rates: dict[str, list[float]] = {name: [] for name in steps}
    for rnd in range(opts.rounds):
        for name, step in steps.items():
            calls = max(opts.steps // opts.utd, 1)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(calls):
                step()
            rates[name].append(calls * opts.utd / (time.perf_counter() - start))
            cpu_rates[name].append(calls * opts.utd / (time.process_time() - cpu_start))
            rate, cpu_rate = rates[name][-1], cpu_rates[name][-1]
            print(f"round {rnd}: {name:5s} {rate:.1f} updates/s ({cpu_rate:.1f} per CPU second)", flush=True)
    cpu = {name: float(np.mean(values)) for name, values in cpu_rates.items()}
    print(f"rlpd updates/CPU s: rlpd={cpu['rlpd']:.1f} sac={cpu['sac']:.1f} cost={cpu['sac'] / cpu['rlpd']:.2f}")
    return rates, cpu_rates


def sb3_sac(steps: int, warmup: int) -> float:
    """Updates per second of Stable-Baselines3 SAC while learning (one update per env step)."""
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    class Timer(BaseCallback):
        def __init__(self):
            super().__init__()
            self.marks: dict[int, float] = {}

        def _on_step(self) -> bool:
            if self.num_timesteps in (warmup + 1, warmup + steps):
                self.marks[self.num_timesteps] = time.perf_counter()
            return True

    timer = Timer()
    model = SAC(
        "MlpPolicy",
        gym.make("HalfCheetah-v5"),
        learning_starts=warmup,
        batch_size=256,
        buffer_size=1_000_000,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": [256, 256]},
        device="cpu",
        seed=1,
        verbose=0,
    )
    model.learn(total_timesteps=warmup + steps, callback=timer)
    return (steps - 1) / (timer.marks[warmup + steps] - timer.marks[warmup + 1])


PPO_ENVS, PPO_STEPS, PPO_MINIBATCH = 8, 2048, 64


def mixrl_ppo(iterations: int, compile: bool) -> float:
    """Environment steps per second of mixrl PPO over whole iterations (collection and update), after one
    untimed warm-up iteration (which holds the torch.compile of the loss when `compile`)."""
    with tempfile.TemporaryDirectory() as root:
        return ppo_sps(
            root, iterations, PPO_ENVS, PPO_STEPS, PPO_MINIBATCH, compile, env_id="HalfCheetah-v5", normalize_obs=False
        )


def ppo_sps(
    root: str, iterations: int, num_envs: int, num_steps: int, minibatch: int, compile: bool, **overrides
) -> float:
    """Runs mixrl PPO under `root` for one untimed warm-up iteration plus `iterations` (10 epochs, no value
    clipping, no reward normalisation) and returns its environment steps per second over the timed ones."""
    from mixrl.agents import ppo

    batch = num_envs * num_steps
    args = ppo.Args(
        total_timesteps=(iterations + 1) * batch,
        num_envs=num_envs,
        num_steps=num_steps,
        num_minibatches=batch // minibatch,
        update_epochs=10,
        clip_vloss=False,
        normalize_reward=False,
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=0,
        compile=compile,
        run_root=root,
        **overrides,
    )
    sps = [v for _, v in read_scalars(ppo.main(args), "charts/SPS")][1:]
    # One SPS value per iteration, all of equal size: the overall rate is their harmonic mean.
    return len(sps) / sum(1.0 / v for v in sps)


RESIP_ENVS, RESIP_STEPS = 16, 100


def mixrl_resip(iterations: int, compile: bool, minibatch: int) -> float:
    """Environment steps per second of ResiP (mixrl PPO with --base-policy) over whole iterations, after one untimed
    warm-up iteration; the base is an untrained chunked BC network (its speed, not its skill, matters here)."""
    import gymnasium as gym

    from mixrl.checkpoints import CHECKPOINT_FORMAT, atomic_torch_save
    from mixrl.policies.chunked import ChunkedActor
    from mixrl.policies.loading import policy_spec

    env = gym.make("mixrl/PegInsertion-v0")
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    base = ChunkedActor(obs_dim, action_dim, (256, 256), horizon=8, execute=8)
    with tempfile.TemporaryDirectory() as root:
        base_path = Path(root) / "base.pt"
        spaces = {"observation_space": env.observation_space, "action_space": env.action_space}
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "algo": "bc",
                "env_id": "mixrl/PegInsertion-v0",
                **spaces,
                "obs_normalizer": None,
                "policy": policy_spec(
                    base, obs_dim=obs_dim, action_dim=action_dim, hidden_sizes=(256, 256), horizon=8, execute=8
                ),
            },
            base_path,
        )
        return ppo_sps(
            root,
            iterations,
            RESIP_ENVS,
            RESIP_STEPS,
            minibatch,
            compile,
            env_id="mixrl/PegInsertion-v0",
            base_policy=str(base_path),
            hidden_sizes=(256, 256),
        )


def sb3_ppo(
    iterations: int,
    env_id: str = "HalfCheetah-v5",
    n_envs: int = PPO_ENVS,
    n_steps: int = PPO_STEPS,
    batch_size: int = PPO_MINIBATCH,
    net_arch: tuple[int, ...] = (64, 64),
) -> float:
    """Environment steps per second of Stable-Baselines3 PPO over whole iterations (collection and update), after
    one untimed warm-up iteration."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class Timer(BaseCallback):
        def __init__(self):
            super().__init__()
            self.marks: list[float] = []

        def _on_rollout_start(self) -> None:
            self.marks.append(time.perf_counter())

        def _on_training_end(self) -> None:
            self.marks.append(time.perf_counter())

        def _on_step(self) -> bool:
            return True

    timer = Timer()
    model = PPO(
        "MlpPolicy",  # separate tanh actor and critic (64-64 by default), orthogonal init, Adam eps 1e-5
        make_vec_env(env_id, n_envs=n_envs, seed=1),  # DummyVecEnv: synchronous
        learning_rate=lambda progress: 3e-4 * progress,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=10,
        policy_kwargs={"net_arch": list(net_arch)},
        device="cpu",
        seed=1,
        verbose=0,
    )
    model.learn(total_timesteps=(iterations + 1) * n_envs * n_steps, callback=timer)
    return iterations * n_envs * n_steps / (timer.marks[-1] - timer.marks[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", choices=["sac", "pmoe-sac", "ppo", "rlpd", "resip"], help="algorithm to compare")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds (alternating the two contenders)")
    parser.add_argument("--steps", type=int, default=2000, help="learning steps measured per run")
    parser.add_argument("--warmup", type=int, default=1000, help="random steps before learning (not timed)")
    parser.add_argument("--iterations", type=int, default=1, help="ppo: rollout-and-update iterations per run")
    parser.add_argument("--eager", action="store_true", help="run mixrl without --compile")
    parser.add_argument("--minibatch", type=int, default=64, help="resip: PPO minibatch size (SB3's default 64)")
    parser.add_argument("--utd", type=int, default=1, help="rlpd: update-to-data ratio G of both contenders")
    parser.add_argument("--updates-only", action="store_true", help="rlpd: time the update functions alone")
    parser.add_argument(
        "--precision",
        choices=["highest", "medium"],
        default="highest",
        help="sac, pmoe-sac: mixrl's --matmul-precision (medium: bfloat16 products; SB3 always runs float32)",
    )
    parser.add_argument(
        "--sb3-flush-denormal",
        action="store_true",
        help="run SB3 with denormal floats flushed to zero too, as mixrl's agents always run (set_cpu_math)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    opts = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from mixrl.runs import set_cpu_math

    set_cpu_math(1)  # as mixrl's agents: one thread, denormals flushed
    if opts.algo == "rlpd":
        from mixrl.optim import keep_freed_memory

        keep_freed_memory()  # process-wide, so SAC runs under the same allocator setting as RLPD

    mixrl = partial(
        mixrl_sac, opts.steps, opts.warmup, log_every=500, compile=not opts.eager, matmul_precision=opts.precision
    )
    contenders = {
        "sac": {"mixrl": mixrl, "sb3": partial(sb3_sac, opts.steps, opts.warmup)},
        "pmoe-sac": {"pmoe": partial(mixrl, policy="gmm", num_experts=4), "sac": mixrl},
        "ppo": {"mixrl": partial(mixrl_ppo, opts.iterations, not opts.eager), "sb3": partial(sb3_ppo, opts.iterations)},
        "resip": {
            "mixrl": partial(mixrl_resip, opts.iterations, not opts.eager, opts.minibatch),
            "sb3": partial(
                sb3_ppo, opts.iterations, "mixrl/PegInsertion-v0", RESIP_ENVS, RESIP_STEPS, opts.minibatch, (256, 256)
            ),
        },
        "rlpd": {
            "rlpd": partial(
                mixrl, agent="rlif", intervention="none", utd_ratio=opts.utd, hidden_sizes=(256, 256), num_critics=10
            ),
            "sac": partial(mixrl, utd_ratio=float(opts.utd)),
        },
    }[opts.algo]
    unit = "env-steps/s" if opts.algo in ("ppo", "resip") else "updates/s"
    results: dict[str, list[float]] = {name: [] for name in contenders}
    extra = {}
    if opts.algo == "rlpd" and opts.updates_only:
        results, extra["cpu_rounds"] = update_rates(opts)
    else:
        for rnd in range(opts.rounds):
            for name, measure in contenders.items():
                if name == "sb3":  # SB3 as it ships: IEEE denormal arithmetic, unless --sb3-flush-denormal
                    torch.set_flush_denormal(opts.sb3_flush_denormal)
                results[name].append(measure())
                print(f"round {rnd}: {name:5s} {results[name][-1]:.1f} {unit}", flush=True)
    mean = {name: float(np.mean(values)) for name, values in results.items()}
    if opts.json is not None:  # the settings without --json: where this machine kept the file is none of them
        settings = {k: v for k, v in vars(opts).items() if k != "json"}
        opts.json.write_text(
            json.dumps({"algo": opts.algo, "rounds": results, **extra, "settings": settings}, indent=2, default=str)
        )
    if opts.algo in ("sac", "ppo", "resip"):
        mixrl_rate, sb3_rate = mean["mixrl"], mean["sb3"]
        print(f"{opts.algo} {unit}: mixrl={mixrl_rate:.1f} sb3={sb3_rate:.1f} ratio={mixrl_rate / sb3_rate:.2f}")
    elif opts.algo == "rlpd":
        rlpd_rate, sac_rate = mean["rlpd"], mean["sac"]
        print(f"rlpd updates/s: rlpd={rlpd_rate:.1f} sac={sac_rate:.1f} cost={sac_rate / rlpd_rate:.2f}")
    else:
        pmoe_rate, sac_rate = mean["pmoe"], mean["sac"]
        print(f"pmoe-sac updates/s: pmoe={pmoe_rate:.1f} sac={sac_rate:.1f} cost={sac_rate / pmoe_rate:.2f}")


if __name__ == "__main__":
    main()
