"""Learning curves of mixrl agents (several seeds) against Stable-Baselines3 at the same budget and settings.

    python scripts/bench_learning.py run --variants sac sb3-sac --env-ids HalfCheetah-v5 --seeds 1 2 3 \
        --total-timesteps 100000 --name sac
    python scripts/bench_learning.py report --name sac

`run` runs every (variant, env, seed) as a trial of the `mixrl sweep` runs/sweeps/<name> (on Ray: --max-concurrent
trials at once, or a cluster with --address; finished trials are skipped, interrupted ones resume), then records
each finished trial as one JSON in results/raw/<name>/. `report` turns those into results/<name>.md and
results/<name>.png with mixrl.sweep's tables and plots: final deterministic return and area under the learning curve
(mean of the evaluation curve), mean +- std over seeds. Evaluations: every --eval-every steps, deterministic,
5 episodes on seeds 10000 + seed + i.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixrl.sweep import SweepArgs, Trial, plot_curves, run_sweep, shown_command, summarize, table_lines, trial_records

ROOT = Path(__file__).resolve().parent.parent  # results/ record paths relative to it
RESULTS = ROOT / "results"
SWEEPS = ROOT / "runs" / "sweeps"

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


def trials(opts: argparse.Namespace) -> list[Trial]:
    """One sweep trial per (env, variant, seed): a `mixrl <agent>` run, or this script's `sb3` command."""
    out = []
    for env_id, variant, seed in itertools.product(opts.env_ids, opts.variants, opts.seeds):
        agent, overrides = VARIANTS[variant]
        if agent.startswith("sb3-"):
            command = [sys.executable, str(Path(__file__).resolve()), "sb3", "--variant", variant]
            command += ["--env-id", env_id, "--seed", str(seed), "--total-timesteps", str(opts.total_timesteps)]
            command += ["--eval-every", str(opts.eval_every), "--out", "{trial_dir}"]
            out.append(Trial(agent, env_id, seed, variant=variant, command=tuple(command)))
            continue
        flags = {
            "total_timesteps": opts.total_timesteps,
            "eval_every": opts.eval_every,
            "eval_episodes": 5,
            "checkpoint_every": opts.eval_every,  # what a retried trial resumes from
            **overrides,
        }
        out.append(Trial(agent, env_id, seed, tuple((k, str(v)) for k, v in flags.items()), variant))
    return out


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


def cmd_run(opts: argparse.Namespace) -> None:
    """Run the missing trials as the sweep runs/sweeps/<name>, then record the finished ones in results/raw/<name>/."""
    todo = trials(opts)
    sweep = SweepArgs(name=opts.name, root=str(SWEEPS), max_concurrent=opts.max_concurrent, address=opts.address)
    command = shown_command(["python", "scripts/bench_learning.py", *sys.argv[1:]], ROOT)
    try:
        run_sweep(sweep, todo, command)
    finally:  # record what finished, also when some trials failed
        out = RESULTS / "raw" / opts.name
        out.mkdir(parents=True, exist_ok=True)
        by_name = {t.name: t for t in todo}
        for record in trial_records(SWEEPS / opts.name, ROOT):  # run_dir and command relative to ROOT
            trial = by_name.get((ROOT / record["run_dir"]).relative_to(SWEEPS / opts.name).parts[0])
            path = out / f"{record['env_id']}__{record['variant']}__{record['seed']}.json"
            if trial is None or path.exists():
                continue
            record.update(
                total_timesteps=opts.total_timesteps,
                overrides=VARIANTS[trial.variant][1],
                command=command,
                trial_command=record["command"],
            )
            path.write_text(json.dumps(record, indent=2))


def cmd_sb3(opts: argparse.Namespace) -> None:
    """One Stable-Baselines3 run; its evaluation curve goes to <out>/evaluations.jsonl, as a mixrl run's does."""
    runner = run_sb3_sac if opts.variant == "sb3-sac" else run_sb3_ppo
    curve = runner(opts.env_id, opts.seed, opts.total_timesteps, opts.eval_every)["curve"]
    lines = [json.dumps({"step": step, "mean_return": value}) for step, value in curve]
    Path(opts.out, "evaluations.jsonl").write_text("\n".join(lines) + "\n")


def cmd_report(opts: argparse.Namespace) -> None:
    folders = [opts.name, *opts.include]
    raw = [json.loads(p.read_text()) for folder in folders for p in sorted((RESULTS / "raw" / folder).glob("*.json"))]
    if not raw:
        sys.exit(f"No results in results/raw/{opts.name}: run `bench_learning.py run --name {opts.name}` first.")
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
        *table_lines(summarize(raw, list(VARIANTS))),
    ]
    reference = {
        key: (mean, f"{source} (training return)")
        for key, (mean, _, source) in PUBLISHED.items()
        if any((r["variant"], r["env_id"]) == key for r in raw)
    }
    plot_curves(raw, RESULTS / f"{opts.name}.png", list(VARIANTS), reference)
    published = [f"- {PUBLISHED[key][2]}: {PUBLISHED[key][0]:.1f} +- {PUBLISHED[key][1]:.1f}" for key in reference]
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
    run = sub.add_parser("run", help="train and evaluate the missing (variant, env, seed) trials on Ray")
    run.add_argument("--variants", nargs="+", choices=list(VARIANTS), required=True, help="what to train")
    run.add_argument("--env-ids", nargs="+", default=["HalfCheetah-v5"], help="Gymnasium ids")
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds")
    run.add_argument("--total-timesteps", type=int, default=100_000, help="environment steps per run")
    run.add_argument("--eval-every", type=int, default=10_000, help="environment steps between evaluations")
    run.add_argument("--name", required=True, help="runs/sweeps/<name>, results/raw/<name>/ and results/<name>.md")
    run.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: CPU cores)")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: Ray on this machine)")
    report = sub.add_parser("report", help="write results/<name>.md and results/<name>.png")
    report.add_argument("--name", required=True, help="which results/raw/<name> to report")
    report.add_argument("--include", nargs="*", default=[], help="other results/raw/<name> folders to add (baselines)")
    sb3 = sub.add_parser("sb3", help="one Stable-Baselines3 run (a trial of `run`)")
    sb3.add_argument("--variant", choices=[v for v, (agent, _) in VARIANTS.items() if agent.startswith("sb3-")])
    sb3.add_argument("--env-id", required=True)
    sb3.add_argument("--seed", type=int, required=True)
    sb3.add_argument("--total-timesteps", type=int, required=True)
    sb3.add_argument("--eval-every", type=int, required=True)
    sb3.add_argument("--out", required=True, help="folder of evaluations.jsonl")
    opts = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    {"run": cmd_run, "report": cmd_report, "sb3": cmd_sb3}[opts.command](opts)


if __name__ == "__main__":
    main()
