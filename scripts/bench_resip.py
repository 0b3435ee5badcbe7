"""ResiP on mixrl/PegInsertion-v0: a chunked BC base from scripted demonstrations, then residual PPO (ResiP),
residual SAC, PPO fine-tuning the whole BC network and PPO from scratch, success rate against environment steps.

    python scripts/bench_resip.py run --levels low --seeds 0 1 2 --methods resip ppo residual_sac finetune
    python scripts/bench_resip.py report          # results/resip.json -> results/resip.md, results/resip.png

`run` works through the (level, method, seed) jobs in order and records each finished one in results/resip.json,
so that an interrupted or extended benchmark continues where it stopped. Per level it first collects the
scripted demonstrations (`mixrl dataset collect expert --policy scripted`, a Minari dataset under --work) and
trains one chunked BC base on the first --demos episodes; that frozen base serves every residual run (made
again, deterministically, when its run directory is gone). `finetune` acts one chunk of k actions per PPO step; its
budget and evaluation steps are counted as k env steps per chunk (an upper bound: a chunk that ends an episode
executes fewer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # resip.json names run directories relative to it
RESULTS = ROOT / "results"
ENV_ID = "mixrl/PegInsertion-v0"
METHODS = ("resip", "residual_sac", "finetune", "ppo")
TABLE_START, TABLE_END = "<!-- table -->", "<!-- /table -->"
LABELS = {
    "base": "BC base (frozen)",
    "resip": "ResiP (residual PPO)",
    "residual_sac": "residual SAC",
    "finetune": "PPO fine-tuning the whole BC network",
    "ppo": "PPO from scratch",
}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"levels": {}, "runs": []}


def save_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def curve(run_dir: Path) -> list[list[float]]:
    """[(env step, success rate)] of a run's evaluations."""
    lines = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    return [[line["step"], line["success_rate"]] for line in lines]


def prepare_level(opts, level: str, results: dict) -> dict:
    """Demonstrations and the BC base of one randomness level (made once, then read from results)."""
    from mixrl.agents import bc
    from mixrl.datasets import CollectArgs, collect, datasets_root
    from mixrl.evaluation import evaluate_checkpoint
    from mixrl.sweep import shown_path

    recorded = results["levels"].get(level)
    if recorded is not None and (ROOT / recorded["base_run"]).exists():
        return recorded
    dataset_id = f"mixrl/peginsertion-{level}/expert-v0"
    if not (datasets_root() / dataset_id).exists():
        collect(
            CollectArgs(
                "expert",
                policy="scripted",
                env_id=ENV_ID,
                env_kwargs=(f"randomness={level}",),
                action_noise=opts.demo_noise,
                steps=opts.demo_steps,
                dataset_id=dataset_id,
            )
        )
    base_dir = bc.main(
        bc.Args(
            dataset_id=dataset_id,
            num_episodes=opts.demos,
            seed=0,
            total_steps=opts.bc_steps,
            horizon=opts.horizon,
            execute=opts.execute,
            eval_every=0,
            eval_episodes=opts.eval_episodes,
            run_root=str(Path(opts.work) / "runs"),
        )
    )
    base = evaluate_checkpoint(base_dir, episodes=opts.final_episodes, seed=20_000)
    if recorded is not None:  # made again: BC and the demonstrations are seeded, so the base must match
        if base["success_rate"] != recorded["base_success"]:
            raise SystemExit(
                f"The {level} base made again succeeds in {base['success_rate']:.2f}, not the recorded "
                f"{recorded['base_success']:.2f}: its runs would not be comparable."
            )
        recorded["base_run"] = shown_path(base_dir, ROOT)
        return recorded
    results["levels"][level] = {
        "dataset_id": dataset_id,
        "demos": opts.demos,
        "horizon": opts.horizon,
        "execute": opts.execute,
        "base_run": shown_path(base_dir, ROOT),
        "base_success": base["success_rate"],
        "base_episodes": opts.final_episodes,
    }
    return results["levels"][level]


def train(opts, level: str, method: str, seed: int, base_run: str, execute: int) -> Path:
    from mixrl.agents import ppo, sac

    common = dict(
        env_id=ENV_ID,
        env_kwargs=(f"randomness={level}",),
        seed=seed,
        total_timesteps=opts.steps,
        eval_every=opts.eval_every,
        eval_episodes=opts.eval_episodes,
        checkpoint_every=0,
        run_root=str(Path(opts.work) / "runs"),
    )
    if method == "residual_sac":
        return sac.main(
            sac.Args(
                base_policy=base_run,
                num_envs=4,
                learning_starts=2000,
                utd_ratio=0.25,
                hidden_sizes=(256, 256),
                **common,
            )
        )
    ppo_settings = dict(num_envs=16, num_steps=100, num_minibatches=4, update_epochs=10, hidden_sizes=(256, 256))
    if method == "finetune":  # one step = one chunk of `execute` env steps: 13 chunks cover a 100-step episode
        chunks = dict(total_timesteps=opts.steps // execute, eval_every=opts.eval_every // execute)
        return ppo.main(
            ppo.Args(
                base_policy=base_run,
                finetune_base=True,
                normalize_reward=False,
                learning_rate=1e-4,
                gamma=0.99**execute,
                **{**ppo_settings, "num_steps": -(-100 // execute)},
                **{**common, **chunks},
            )
        )
    if method == "resip":
        return ppo.main(ppo.Args(base_policy=base_run, normalize_reward=False, **ppo_settings, **common))
    return ppo.main(ppo.Args(**ppo_settings, **common))


def run(opts) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(Path(opts.work).resolve() / "minari"))
    path = RESULTS / "resip.json"
    results = load_results(path)
    from mixrl.evaluation import evaluate_checkpoint
    from mixrl.sweep import shown_command, shown_path

    results["command"] = shown_command(["python", "scripts/bench_resip.py", "run", *opts.argv], ROOT)

    for level in opts.levels:
        info = prepare_level(opts, level, results)
        save_results(path, results)
        for seed in opts.seeds:
            for method in opts.methods:
                done = {(r["level"], r["method"], r["seed"], r["steps"]) for r in results["runs"]}
                if (level, method, seed, opts.steps) in done:
                    continue
                start = time.time()
                run_dir = train(opts, level, method, seed, str(ROOT / info["base_run"]), info["execute"])
                final = evaluate_checkpoint(run_dir, episodes=opts.final_episodes, seed=20_000)
                scale = info["execute"] if method == "finetune" else 1  # env steps per learner step
                results["runs"].append(
                    {
                        "level": level,
                        "method": method,
                        "seed": seed,
                        "steps": opts.steps,
                        "run_dir": shown_path(run_dir, ROOT),
                        "curve": [[step * scale, success] for step, success in curve(run_dir)],
                        "final_success": final["success_rate"],
                        "final_episodes": opts.final_episodes,
                        "minutes": (time.time() - start) / 60,
                    }
                )
                save_results(path, results)
                print(f"{level} {method} seed {seed}: final success {final['success_rate']:.2f}", flush=True)


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else platform.machine()


def final_frame(policy, env, seed: int) -> tuple[bool, np.ndarray]:
    """(success, the last rendered frame) of one deterministic episode."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    done, info = False, {}
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        done = terminated or truncated
    return bool(info["is_success"]), env.render()


def video_still(run_dir: str, level: str, path: Path) -> int | None:
    """Save the last frames of the frozen base (left) and of ResiP (right) on the first evaluation seed where the
    base fails and ResiP succeeds; returns that seed."""
    import gymnasium as gym
    import imageio.v2 as imageio

    from mixrl.evaluation import Policy, load_policy

    combined = load_policy(run_dir)
    base = Policy(combined.actor.base, combined.observation_space, combined.action_space)
    env = gym.make(ENV_ID, randomness=level, render_mode="rgb_array", width=400, height=300)
    for seed in range(20_000, 20_100):
        base_success, base_frame = final_frame(base, env, seed)
        if base_success:
            continue
        success, frame = final_frame(combined, env, seed)
        if success:
            imageio.imwrite(path, np.concatenate([base_frame, frame], axis=1))
            return seed
    return None


def report(opts) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results(RESULTS / "resip.json")
    levels = [level for level in ("low", "medium", "high") if level in results["levels"]]
    rows = [
        "| level | method | seeds | env steps | final success (mean +- std over seeds) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        info = results["levels"][level]
        rows.append(
            f"| {level} | {LABELS['base']} ({info['demos']} demos, H = {info['horizon']}, k = {info['execute']}) | - | "
            f"0 | {info['base_success']:.2f} "
            f"({info['base_episodes']} episodes) | - |"
        )
        ax.axhline(info["base_success"], color="k", ls="--", label=LABELS["base"])
        budgets = sorted({(r["method"], r["steps"]) for r in results["runs"] if r["level"] == level})
        for method, budget in sorted(budgets, key=lambda mb: (METHODS.index(mb[0]), mb[1])):
            runs = [r for r in results["runs"] if (r["level"], r["method"], r["steps"]) == (level, method, budget)]
            finals = np.array([r["final_success"] for r in runs])
            per_seed = ", ".join(f"{r['seed']}: {r['final_success']:.2f}" for r in runs)
            rows.append(
                f"| {level} | {LABELS[method]} | {len(runs)} | {runs[0]['steps']:,} | "
                f"{finals.mean():.2f} +- {finals.std():.2f} ({runs[0]['final_episodes']} episodes each) | {per_seed} |"
            )
            steps = [p[0] for p in runs[0]["curve"]]
            if all([p[0] for p in r["curve"]] == steps for r in runs):
                values = np.array([[p[1] for p in r["curve"]] for r in runs])
                mean = values.mean(0)
                label = f"{LABELS[method]}, {budget // 1000}k steps ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
                # one colour per method in every panel; the longest budget solid, shorter ones dotted
                color = f"C{METHODS.index(method)}"
                longest = budget == max(b for m, b in budgets if m == method)
                ax.plot(steps, mean, marker="o", ms=3, color=color, ls="-" if longest else ":", label=label)
                if len(runs) > 1:
                    ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15 if longest else 0.08)
        ax.set(title=f"PegInsertion, {level} randomness", xlabel="environment steps", ylabel="success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "resip.png", dpi=110)
    resip_runs = [r for r in results["runs"] if (r["level"], r["method"]) == ("low", "resip")]
    kept = [r for r in resip_runs if (ROOT / r["run_dir"]).exists()]  # run directories are not kept in git
    if kept:
        seed = video_still(str(ROOT / kept[0]["run_dir"]), "low", RESULTS / "resip_still.png")
        print(f"results/resip_still.png: episode seed {seed}")
    elif resip_runs:
        print("results/resip_still.png kept as it was: no low-level ResiP run directory is left")
    table = "\n".join(rows)
    # The table goes between the markers of results/resip.md, whose prose is written by hand.
    doc = RESULTS / "resip.md"
    head, _, rest = doc.read_text().partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    made = f"<!-- made by python scripts/bench_resip.py report from results/resip.json; CPU: {cpu_name()} -->"
    doc.write_text(f"{head}{TABLE_START}\n{made}\n{table}\n{TABLE_END}{tail}")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train what is missing and record it in results/resip.json")
    r.add_argument("--levels", nargs="+", default=["low"], choices=["low", "medium", "high"])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--steps", type=int, default=100_000, help="environment steps per RL run")
    r.add_argument("--eval-every", type=int, default=16_000, help="environment steps between evaluations")
    r.add_argument("--eval-episodes", type=int, default=50, help="episodes per evaluation during training")
    r.add_argument("--final-episodes", type=int, default=200, help="episodes of each final evaluation")
    r.add_argument("--demos", type=int, default=3, help="demonstrations the BC base learns from")
    r.add_argument("--horizon", type=int, default=16, help="BC: actions predicted per chunk")
    r.add_argument("--execute", type=int, default=8, help="BC: actions of each chunk executed open-loop")
    r.add_argument("--demo-steps", type=int, default=8000, help="steps of scripted demonstrations collected")
    r.add_argument("--demo-noise", type=float, default=0.03, help="action noise of the scripted expert")
    r.add_argument("--bc-steps", type=int, default=5000, help="gradient steps of BC")
    r.add_argument("--work", default="bench_resip", help="folder for the runs and the Minari datasets")
    sub.add_parser("report", help="the table in results/resip.md, resip.png and resip_still.png from resip.json")
    opts, _ = parser.parse_known_args()
    if opts.command == "run":
        import sys

        opts.argv = sys.argv[2:]
        run(opts)
    else:
        report(opts)


if __name__ == "__main__":
    main()
