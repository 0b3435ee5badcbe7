"""Learning curves of mixrl agents (several seeds) against Stable-Baselines3 at the same budget and settings.

    python scripts/bench_learning.py run --variants sac sb3-sac --env-ids HalfCheetah-v5 --seeds 1 2 3 \
        --total-timesteps 100000 --name sac
    python scripts/bench_learning.py report --name sac

`run` writes one JSON per (variant, env, seed) into results/raw/<name>/ (jobs already there are skipped, so
several processes can share the work); `report` turns them into results/<name>.md and results/<name>.png:
final deterministic return and area under the learning curve (mean of the evaluation curve), mean +- std
over seeds. Evaluations: every --eval-every steps, deterministic, 5 episodes on seeds 10000 + seed + i.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent.parent / "results"

# variant -> (agent module or "sb3-sac" / "sb3-ppo", Args overrides). Shared hyperparameters follow SB3's SAC
# defaults except learning_starts (5000, as in CleanRL), so that both libraries run the same algorithm. The
# PMOE-SAC variants (K = 4 experts, component entropy, argmax_w evaluation) change only the actor and its
# estimator. sac-compiled is SAC with --compile (the same algorithm, other random draws) and sac-bf16 adds
# bfloat16 matrix products in the updates (--matmul-precision medium), the speed benchmark's settings. PPO runs
# mixrl's defaults (CleanRL's settings), which sb3-ppo reproduces as far as SB3 allows (run_sb3_ppo); pmoe-ppo
# (K = 5 experts, argmax_w evaluation) changes only the actor and adds its losses. Both compile their losses
# (Hopper-v5 ppo seeds 1 and 2 in results/raw/ppo ran before that, eagerly: their "overrides" say so).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sac": ("sac", {}),
    "sb3-sac": ("sb3-sac", {}),
    "sac-compiled": ("sac", {"compile": True}),
    "sac-bf16": ("sac", {"compile": True, "matmul_precision": "medium"}),
    "pmoe-sac": ("sac", {"policy": "gmm", "num_experts": 4}),
    "sac-gumbel": ("sac", {"policy": "gmm", "num_experts": 4, "gmm_grad": "gumbel"}),
    "sac-reinforce": ("sac", {"policy": "gmm", "num_experts": 4, "gmm_grad": "reinforce"}),
    "ppo": ("ppo", {"compile": True}),
    "sb3-ppo": ("sb3-ppo", {}),
    "pmoe-ppo": ("ppo", {"policy": "gmm", "num_experts": 5, "compile": True}),
}

# Published returns to compare with (variant, env) -> (mean, std, source); the protocol differs from ours.
PUBLISHED: dict[tuple[str, str], tuple[float, float, str]] = {
    ("ppo", "HalfCheetah-v5"): (1442.64, 46.03, "CleanRL ppo_continuous_action, HalfCheetah-v4"),
    ("ppo", "Hopper-v5"): (2382.86, 271.74, "CleanRL ppo_continuous_action, Hopper-v4"),
}
PUBLISHED_PROTOCOL = (
    "1M steps, 3 seeds, mean of the last 100 training (stochastic) episodes per seed, then mean +- std over seeds"
)


def training_return(run_dir: Path, episodes: int = 100) -> float | None:
    """Mean return of the last `episodes` training episodes of a mixrl run, from its TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None
    return float(np.mean([e.value for e in acc.Scalars("charts/episodic_return")][-episodes:]))


def run_mixrl(agent: str, overrides: dict[str, Any], env_id: str, seed: int, steps: int, eval_every: int) -> dict:
    import importlib

    module = importlib.import_module(f"mixrl.agents.{agent}")
    if "save_buffer" in {field.name for field in dataclasses.fields(module.Args)}:
        overrides = {"save_buffer": False, **overrides}  # off-policy agents: no replay buffer in checkpoints
    args = module.Args(
        env_id=env_id,
        seed=seed,
        total_timesteps=steps,
        eval_every=eval_every,
        eval_episodes=5,
        checkpoint_every=0,
        run_root=str(RESULTS.parent / "runs" / "bench"),
        **overrides,
    )
    run_dir = module.main(args)
    curve = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    return {
        "curve": [(c["step"], c["mean_return"]) for c in curve],
        "training_return": training_return(run_dir),
        "run_dir": str(run_dir),
    }


def sb3_evaluator(
    env_id: str, seed: int, steps: int, eval_every: int, normalize: Callable[[np.ndarray], np.ndarray] | None = None
):
    """A Stable-Baselines3 callback that evaluates the deterministic policy every `eval_every` steps with mixrl's
    protocol (5 episodes on seeds 10000 + seed + i); `normalize` maps raw observations to the model's input."""
    from stable_baselines3.common.callbacks import BaseCallback

    from mixrl.evaluation import evaluate

    class Evaluator(BaseCallback):
        def __init__(self):
            super().__init__()
            self.curve: list[tuple[int, float]] = []

        def policy(self, obs: np.ndarray) -> np.ndarray:
            return self.model.predict(obs if normalize is None else normalize(obs), deterministic=True)[0]

        def evaluate(self) -> None:
            result = evaluate(self.policy, env_id, episodes=5, seed=10_000 + seed)
            self.curve.append((self.num_timesteps, result["mean_return"]))

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0 and self.num_timesteps < steps:
                self.evaluate()
            return True

    return Evaluator()


def run_sb3_sac(env_id: str, seed: int, steps: int, eval_every: int) -> dict:
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC

    torch.set_num_threads(1)
    evaluator = sb3_evaluator(env_id, seed, steps, eval_every)
    model = SAC(
        "MlpPolicy",
        gym.make(env_id),
        learning_rate=3e-4,
        buffer_size=1_000_000,
        learning_starts=5000,
        batch_size=256,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        ent_coef="auto",
        policy_kwargs={"net_arch": [256, 256]},
        device="cpu",
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=steps, callback=evaluator)
    evaluator.evaluate()
    return {"curve": evaluator.curve}


def run_sb3_ppo(env_id: str, seed: int, steps: int, eval_every: int) -> dict:
    """SB3 PPO at mixrl's PPO defaults: one env, 2048 steps, minibatches of 64, 10 epochs, learning rate 3e-4
    annealed linearly, Adam eps 1e-5, gamma 0.99, lambda 0.95, clip 0.2, grad norm 0.5, separate 64-64 tanh
    actor and critic with orthogonal init, observations and rewards normalised (clip 10). Differences SB3 does not
    let us remove: its value clipping uses the clipped prediction alone (mixrl, as CleanRL, the larger of the
    clipped and unclipped errors), and its value loss is MSE where mixrl's is 1/2 MSE (so vf_coef 0.25 here
    gives the same loss as mixrl's 0.5)."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    envs = VecNormalize(DummyVecEnv([lambda: gym.make(env_id)]), gamma=0.99, clip_obs=10.0, clip_reward=10.0)
    evaluator = sb3_evaluator(env_id, seed, steps, eval_every, normalize=envs.normalize_obs)
    model = PPO(
        "MlpPolicy",
        envs,
        learning_rate=lambda progress: 3e-4 * progress,
        n_steps=2048,
        batch_size=64,
        n_epochs=10,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        clip_range_vf=0.2,
        ent_coef=0.0,
        vf_coef=0.25,
        max_grad_norm=0.5,
        device="cpu",
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=steps, callback=evaluator)
    evaluator.evaluate()
    return {"curve": evaluator.curve}


def findings_link(report: Path) -> list[str]:
    """Lines that point a generated report to its hand-written companion <report>_findings.md, when there is one."""
    findings = report.with_name(f"{report.stem}_findings.md")
    if not findings.exists():
        return []
    return [f"What these runs show and what was tried: [{findings.name}]({findings.name}).", ""]


def claim(lock: Path) -> bool:
    """Write this process's pid to the job's `lock` and return True, unless a live process holds it already (a
    lock whose pid is dead is stale and taken over)."""
    if lock.exists():
        try:
            os.kill(int(lock.read_text()), 0)
            return False
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            return False  # not a pid (held by hand), or another user's live process
    lock.write_text(str(os.getpid()))
    return True


def cmd_run(opts: argparse.Namespace) -> None:
    out = RESULTS / "raw" / opts.name
    out.mkdir(parents=True, exist_ok=True)
    for env_id in opts.env_ids:
        for variant in opts.variants:
            for seed in opts.seeds:
                path = out / f"{env_id}__{variant}__{seed}.json"
                lock = path.with_suffix(".running")
                if path.exists() or not claim(lock):
                    continue
                start = time.time()
                agent, overrides = VARIANTS[variant]
                print(
                    f"[bench_learning] {variant} on {env_id}, seed {seed}, {opts.total_timesteps} steps",
                    flush=True,
                )
                try:
                    if agent == "sb3-sac":
                        result = run_sb3_sac(env_id, seed, opts.total_timesteps, opts.eval_every)
                    elif agent == "sb3-ppo":
                        result = run_sb3_ppo(env_id, seed, opts.total_timesteps, opts.eval_every)
                    else:
                        result = run_mixrl(agent, overrides, env_id, seed, opts.total_timesteps, opts.eval_every)
                finally:
                    lock.unlink()
                result.update(
                    variant=variant,
                    env_id=env_id,
                    seed=seed,
                    total_timesteps=opts.total_timesteps,
                    overrides=overrides,
                    wall_seconds=time.time() - start,
                    command="python scripts/bench_learning.py " + " ".join(map(shlex.quote, sys.argv[1:])),
                )
                path.write_text(json.dumps(result, indent=2))


def cmd_report(opts: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = [opts.name, *opts.include]
    raw = [json.loads(p.read_text()) for folder in folders for p in sorted((RESULTS / "raw" / folder).glob("*.json"))]
    if not raw:
        sys.exit(f"No results in results/raw/{opts.name}: run `bench_learning.py run --name {opts.name}` first.")
    env_ids = sorted({r["env_id"] for r in raw})
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in raw)]
    lines = [
        f"# Learning benchmark: {opts.name}",
        "",
        "Deterministic evaluation return (5 episodes per evaluation), mean +- std over seeds. AUC is the mean of "
        "the evaluation curve over training (area under the curve divided by its length). Wall times were taken on a "
        "shared 2-core machine with other jobs running: compare speed with scripts/bench_speed.py instead.",
        "",
        "The training return is the mean of the last 100 training episodes of each mixrl run (the stochastic policy, "
        "as CleanRL reports it; - for SB3 and for runs that did not record it), then mean +- std over seeds.",
        "",
        "| env | variant | seeds | steps | final return | AUC | training return | wall time per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    published = []
    fig, axes = plt.subplots(1, len(env_ids), figsize=(6 * len(env_ids), 4), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids):
        for variant in variants:
            runs = [r for r in raw if r["env_id"] == env_id and r["variant"] == variant]
            if not runs:
                continue
            finals = [r["curve"][-1][1] for r in runs]
            aucs = [float(np.mean([v for _, v in r["curve"]])) for r in runs]
            minutes = np.mean([r["wall_seconds"] for r in runs]) / 60
            training = [r.get("training_return") for r in runs]
            training_cell = "-" if None in training else f"{np.mean(training):.0f} +- {np.std(training):.0f}"
            lines.append(
                f"| {env_id} | {variant} | {', '.join(str(r['seed']) for r in runs)} | {runs[0]['total_timesteps']} "
                f"| {np.mean(finals):.0f} +- {np.std(finals):.0f} | {np.mean(aucs):.0f} +- {np.std(aucs):.0f} "
                f"| {training_cell} | {minutes:.0f} min |"
            )
            steps = np.array([s for s, _ in runs[0]["curve"]])
            n = min(len(r["curve"]) for r in runs)
            values = np.array([[v for _, v in r["curve"][:n]] for r in runs])
            ax.plot(steps[:n], values.mean(0), label=variant)
            ax.fill_between(steps[:n], values.min(0), values.max(0), alpha=0.2)
            if (variant, env_id) in PUBLISHED:
                mean, std, source = PUBLISHED[(variant, env_id)]
                ax.axhline(mean, linestyle="--", color="grey", label=f"{source} (training return)")
                published.append(f"- {source}: {mean:.1f} +- {std:.1f}")
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("deterministic evaluation return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{opts.name}.png", dpi=100)
    commands = sorted({r["command"] for r in raw})
    if published:
        lines += ["", f"Published returns ({PUBLISHED_PROTOCOL}):", "", *published]
    lines += ["", f"![curves]({opts.name}.png)", "", *findings_link(RESULTS / f"{opts.name}.md")]
    lines += ["Shaded: min-max over seeds. Made with:", ""]
    lines += [f"    {c}" for c in commands] + [
        f"    python scripts/bench_learning.py report --name {opts.name}"
        + "".join(f" --include {folder}" for folder in opts.include),
        "",
    ]
    (RESULTS / f"{opts.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate the missing (variant, env, seed) jobs")
    run.add_argument("--variants", nargs="+", choices=list(VARIANTS), required=True, help="what to train")
    run.add_argument("--env-ids", nargs="+", default=["HalfCheetah-v5"], help="Gymnasium ids")
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds")
    run.add_argument("--total-timesteps", type=int, default=100_000, help="environment steps per run")
    run.add_argument("--eval-every", type=int, default=10_000, help="environment steps between evaluations")
    run.add_argument("--name", required=True, help="results/raw/<name>/ and results/<name>.md")
    report = sub.add_parser("report", help="write results/<name>.md and results/<name>.png")
    report.add_argument("--name", required=True, help="which results/raw/<name> to report")
    report.add_argument("--include", nargs="*", default=[], help="other results/raw/<name> folders to add (baselines)")
    opts = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    cmd_run(opts) if opts.command == "run" else cmd_report(opts)


if __name__ == "__main__":
    main()
