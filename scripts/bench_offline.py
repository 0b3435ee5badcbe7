"""Offline RL benchmark: TD3+BC and A2PR on D4RL-style Minari datasets made from mixrl SAC runs.

    python scripts/bench_offline.py --envs HalfCheetah-v5 Hopper-v5 --seeds 0 1 2 --gradient-steps 1000000

Per environment it
  1. trains two SAC runs (or takes the checkpoints already in <work-dir>/sac/<env>/{medium,expert}.pt):
     "medium" for --sac-medium-steps env steps (saving its replay buffer), "expert" for --sac-expert-steps;
  2. makes the datasets <namespace>/<env>/{expert,medium,medium-replay,medium-expert}-v0 in
     $MINARI_DATASETS_PATH (existing ones are reused): expert and medium are --dataset-steps transitions of the
     deterministic policies with --action-noise Gaussian noise, medium-replay is the medium run's whole replay
     buffer, medium-expert the concatenation of medium and expert; every dataset carries the reference scores of
     the expert dataset (random policy and deterministic expert, --ref-episodes episodes each);
  3. trains TD3+BC and A2PR for --gradient-steps on each dataset of --kinds and seed as the trials of the Ray sweep
     <work-dir>/sweeps/offline (`mixrl sweep`: --max-concurrent runs at once, or a cluster with --address; queued
     with every dataset's first seed before any second one, the two algorithms alternating), and evaluates each
     final policy over --final-episodes deterministic episodes (seeds seed + 100, ...). Both agents run with
     --matmul-precision (default medium: bfloat16 products) and, with --compile, compiled losses.
A2PR uses the authors' per-dataset alpha, bc_weight, vae_recon_weight and gamma (A2PR_SETTINGS) unless
--no-a2pr-paper-settings. Finished runs are recorded in <work-dir>/runs.jsonl and skipped when the script is run
again; an interrupted run resumes from its checkpoints/latest.pt (a run whose process dies is retried at once).
The report, <results>.md and <results>.json, gives the D4RL
normalised score of the final policy per dataset (mean +- std over seeds) and its mean over datasets.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import tyro
from bench_learning import findings_link

from mixrl.agents import a2pr, sac, td3_bc
from mixrl.checkpoints import atomic_write
from mixrl.datasets import CollectArgs, collect, dataset_info, datasets_root, normalized_score
from mixrl.evaluation import evaluate_checkpoint
from mixrl.sweep import SweepArgs, Trial, run_sweep, shown_command, shown_path

ROOT = Path(__file__).resolve().parent.parent  # records name run directories relative to it

# (alpha, bc_weight, vae_recon_weight, gamma) of the A2PR authors per D4RL dataset: README, or draft README where
# the README gives none (reference/a2pr.md, section 3).
A2PR_SETTINGS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("halfcheetah", "medium"): (40.0, 1.0, 1.0, 0.99),
    ("halfcheetah", "medium-replay"): (40.0, 0.8, 1.5, 0.995),
    ("halfcheetah", "medium-expert"): (40.0, 15.0, 1.0, 0.99),
    ("hopper", "medium"): (2.5, 0.4, 1.0, 0.995),
    ("hopper", "medium-replay"): (2.5, 0.5, 1.5, 0.99),
    ("hopper", "medium-expert"): (2.5, 4.0, 1.0, 0.99),
    ("walker2d", "medium"): (2.5, 1.0, 1.5, 0.99),
    ("walker2d", "medium-replay"): (2.5, 1.2, 1.5, 0.995),
    ("walker2d", "medium-expert"): (2.5, 0.8, 1.0, 0.99),
}
Algo = Literal["td3_bc", "a2pr"]
ALGOS: tuple[Algo, ...] = get_args(Algo)


@dataclass
class Args:
    envs: tuple[str, ...] = ("HalfCheetah-v5", "Hopper-v5")
    """Gymnasium ids of the MuJoCo tasks"""
    kinds: tuple[str, ...] = ("medium", "medium-replay", "medium-expert")
    """datasets to train on per env"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of the offline runs"""
    algos: tuple[Algo, ...] = ALGOS
    """offline agents to run (the report always compares both, on the runs recorded so far)"""
    gradient_steps: int = 1_000_000
    """gradient steps per offline run"""
    eval_every: int = 5000
    """gradient steps between the runs' periodic evaluations"""
    eval_episodes: int = 10
    """episodes per periodic evaluation"""
    final_episodes: int = 50
    """deterministic episodes that score each final policy"""
    a2pr_paper_settings: bool = True
    """A2PR with the authors' per-dataset alpha, bc_weight, vae_recon_weight and gamma (else the defaults)"""
    sac_medium_steps: int = 200_000
    """env steps of the SAC run whose policy makes medium and whose replay buffer makes medium-replay"""
    sac_expert_steps: int = 1_000_000
    """env steps of the SAC run whose policy makes expert and sets ref_max_score"""
    sac_learning_starts: int = 5000
    """uniform-random env steps before SAC learns"""
    dataset_steps: int = 1_000_000
    """transitions of the medium and expert datasets"""
    action_noise: float = 0.1
    """std of the Gaussian action noise of the medium and expert rollouts (half action ranges)"""
    ref_episodes: int = 10
    """episodes that measure each reference score"""
    namespace: str = "mixrl-bench"
    """dataset ids are <namespace>/<env id, lower case>/<kind>-v0"""
    work_dir: str = "runs/bench_offline"
    """SAC checkpoints, offline runs and runs.jsonl"""
    results: str = "results/offline"
    """report path without extension: writes <results>.md and <results>.json"""
    device: str = "cpu"
    """torch device of the SAC runs and the offline agents"""
    matmul_precision: str = "medium"
    """matrix products of the offline agents' gradient steps (medium: bfloat16 products, float32 accumulation;
    highest: float32)"""
    compile: bool = False
    """torch.compile the offline agents' losses (with bfloat16 products: A2PR steps x1.2 faster, TD3+BC x1.5)"""
    max_concurrent: int | None = None
    """offline runs at once, each a trial of the Ray sweep <work-dir>/sweeps/offline (default: CPU cores)"""
    address: str | None = None
    """Ray cluster to run the offline runs on (default: Ray on this machine)"""
    stage: Literal["all", "datasets", "report"] = "all"
    """all: datasets, offline runs and report; datasets: only the SAC runs and datasets; report: only the report
    of the runs recorded so far"""


def dataset_id(args: Args, env_id: str, kind: str) -> str:
    return f"{args.namespace}/{env_id.lower()}/{kind}-v0"


def copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))


def sac_checkpoints(args: Args, env_id: str) -> tuple[Path, Path]:
    """<work-dir>/sac/<env>/{medium,expert}.pt, training the SAC runs that are missing."""
    folder = Path(args.work_dir) / "sac" / env_id
    for name, steps, seed in (("medium", args.sac_medium_steps, 0), ("expert", args.sac_expert_steps, 1)):
        target = folder / f"{name}.pt"
        if target.exists():
            continue
        print(f"[{env_id}] SAC {name}: {steps} env steps", flush=True)
        sac_args = sac.Args(
            env_id=env_id,
            seed=seed,
            total_timesteps=steps,
            learning_starts=args.sac_learning_starts,
            eval_every=0,
            checkpoint_every=50_000,
            device=args.device,
            run_root=str(folder / "runs"),
        )
        # latest.pt: the final state with the replay buffer (final.pt leaves it out), which medium-replay needs
        copy_atomic(sac.main(sac_args) / "checkpoints" / "latest.pt", target)
    return folder / "medium.pt", folder / "expert.pt"


def make_datasets(args: Args, env_id: str) -> None:
    """The expert, medium, medium-replay and medium-expert datasets of one env (those missing)."""
    medium, expert = sac_checkpoints(args, env_id)
    ids = {kind: dataset_id(args, env_id, kind) for kind in ("expert", "medium", "medium-replay", "medium-expert")}
    common = {"steps": args.dataset_steps, "ref_episodes": args.ref_episodes}
    if not (datasets_root() / ids["expert"]).exists():
        noise = args.action_noise
        collect(CollectArgs("expert", policy=str(expert), dataset_id=ids["expert"], action_noise=noise, **common))
    refs = dataset_info(ids["expert"])
    refs = {"ref_min_score": refs["ref_min_score"], "ref_max_score": refs["ref_max_score"]}
    todo = [
        CollectArgs("medium", policy=str(medium), action_noise=args.action_noise, **common, **refs),
        CollectArgs("medium-replay", policy=str(medium), **refs),
        CollectArgs("medium-expert", sources=(ids["medium"], ids["expert"]), **refs),
    ]
    for collect_args in todo:
        collect_args.dataset_id = ids[collect_args.kind]
        if not (datasets_root() / collect_args.dataset_id).exists():
            collect(collect_args)


def agent_flags(args: Args, algo: str, env_id: str, kind: str) -> dict[str, Any]:
    """The flags of one offline run (its seed and env id come from its trial)."""
    flags = {
        "dataset_id": dataset_id(args, env_id, kind),
        "total_steps": args.gradient_steps,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "checkpoint_every": args.eval_every,  # what a retried trial resumes from
        "device": args.device,
        "matmul_precision": args.matmul_precision,
        "compile": args.compile,
    }
    settings = A2PR_SETTINGS.get((env_id.split("-")[0].lower(), kind))
    if algo == "a2pr" and args.a2pr_paper_settings and settings is not None:
        alpha, bc_weight, vae_recon_weight, gamma = settings
        flags.update(alpha=alpha, bc_weight=bc_weight, vae_recon_weight=vae_recon_weight, gamma=gamma)
    return flags


def trial(args: Args, algo: str, env_id: str, kind: str, seed: int) -> Trial:
    flags = tuple((k, str(v)) for k, v in agent_flags(args, algo, env_id, kind).items())
    return Trial(algo, env_id, seed, flags, variant=f"{algo}[{kind}]")


def score_run(args: Args, algo: str, env_id: str, kind: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """Score the final policy of a finished offline run over --final-episodes episodes."""
    flags = agent_flags(args, algo, env_id, kind)
    last = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    info = dataset_info(flags["dataset_id"])
    returns = evaluate_checkpoint(run_dir, args.final_episodes, seed + 100, device=args.device)["returns"]
    scores = normalized_score(np.array(returns), info["ref_min_score"], info["ref_max_score"])
    settings = ("alpha", "bc_weight", "vae_recon_weight", "gamma", "matmul_precision", "compile")
    defaults = td3_bc.Args if algo == "td3_bc" else a2pr.Args
    return {
        "algo": algo,
        "env_id": env_id,
        "kind": kind,
        "seed": seed,
        "run_dir": shown_path(run_dir, ROOT),
        "gradient_steps": args.gradient_steps,
        "final_return": float(np.mean(returns)),
        "final_score": float(np.mean(scores)),
        "final_score_episode_std": float(np.std(scores)),
        "steps_per_second": last["steps_per_second"],
        "settings": {k: flags.get(k, getattr(defaults, k, None)) for k in settings},
    }


def machine(device: str) -> str:
    """CPU model and core count, and the GPU when the agents ran on one."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{cpu} ({os.cpu_count()} cores){gpu}"


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "-"


def evaluation_curve(record: dict[str, Any]) -> list[tuple[int, float]]:
    """[(gradient step, normalised score)] of a run's periodic evaluations; empty when its run dir is gone."""
    evaluations = ROOT / record["run_dir"] / "evaluations.jsonl"
    lines = [json.loads(line) for line in evaluations.read_text().splitlines()] if evaluations.exists() else []
    return [(line["step"], line.get("normalized_score", float("nan"))) for line in lines]


def plot_curves(args: Args, records: list[dict[str, Any]], path: Path) -> None:
    """One panel per dataset: the evaluation score of every run against gradient steps, one colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [(env_id, kind) for env_id in args.envs for kind in args.kinds]
    fig, axes = plt.subplots(len(args.envs), len(args.kinds), figsize=(4 * len(args.kinds), 3 * len(args.envs)))
    for ax, (env_id, kind) in zip(np.ravel(axes), datasets):
        for algo, colour in zip(ALGOS, ("tab:blue", "tab:red")):
            runs = [r for r in records if (r["algo"], r["env_id"], r["kind"]) == (algo, env_id, kind)]
            for i, r in enumerate(run for run in runs if run["curve"]):
                steps, scores = zip(*r["curve"])
                ax.plot(steps, scores, color=colour, alpha=0.8, label=algo if i == 0 else None)
        ax.set_title(f"{env_id} {kind}", fontsize=9)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("normalised score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_run_rows(args: Args, score: dict[tuple, float]) -> list[str]:
    """Markdown rows: every dataset and seed with both algorithms' final scores (`score[algo, env_id, kind,
    seed]`) and their difference, then each seed's mean over the datasets where both finished."""
    rows, pairs_by_seed = [], {seed: [] for seed in args.seeds}
    for env_id, kind, seed in itertools.product(args.envs, args.kinds, args.seeds):
        td3_bc, a2pr = (score.get((algo, env_id, kind, seed)) for algo in ALGOS)
        if td3_bc is None and a2pr is None:
            continue
        cells = [f"{s:.1f}" if s is not None else "-" for s in (td3_bc, a2pr)]
        if td3_bc is not None and a2pr is not None:
            pairs_by_seed[seed].append((td3_bc, a2pr))
            cells.append(f"{a2pr - td3_bc:+.1f}")
        else:
            cells.append("")
        rows.append(f"| {env_id} {kind} | {seed} | {' | '.join(cells)} |")
    for seed, pairs in pairs_by_seed.items():
        if pairs:
            td3_bc, a2pr = np.mean(pairs, axis=0)
            rows.append(
                f"| mean of seed {seed} ({len(pairs)} datasets) | {seed} | {td3_bc:.1f} | {a2pr:.1f} | "
                f"{a2pr - td3_bc:+.1f} |"
            )
    return rows


def report(args: Args, records: list[dict[str, Any]], command: str) -> None:
    """<results>.md, .json and .png: score per dataset and algorithm, their means over the datasets and seeds
    that both algorithms finished, gradient steps per second, evaluation curves (kept in the JSON's records)."""
    records = [{**r, "curve": evaluation_curve(r)} for r in records]
    score = {(r["algo"], r["env_id"], r["kind"], r["seed"]): r["final_score"] for r in records}
    rows, means, paired_runs = [], {algo: [] for algo in ALGOS}, 0
    for env_id in args.envs:
        for kind in args.kinds:
            info = dataset_info(dataset_id(args, env_id, kind))
            by_seed = {
                algo: {
                    seed: score[algo, env_id, kind, seed] for seed in args.seeds if (algo, env_id, kind, seed) in score
                }
                for algo in ALGOS
            }
            scores = {algo: list(by_seed[algo].values()) for algo in ALGOS}
            paired_seeds = set(by_seed["td3_bc"]) & set(by_seed["a2pr"])
            if paired_seeds:
                for algo in ALGOS:
                    means[algo].append(float(np.mean([by_seed[algo][seed] for seed in paired_seeds])))
                paired_runs += len(paired_seeds)
            cells = " | ".join(f"{mean_std(scores[algo])} ({len(scores[algo])})" for algo in ALGOS)
            dataset_score = info.get("normalized_score_mean", float("nan"))
            rows.append(f"| {info['dataset_id']} | {info['steps']:,} | {dataset_score:.1f} | {cells} |")
    speed = {algo: [r["steps_per_second"] for r in records if r["algo"] == algo] for algo in ALGOS}
    ratio = np.mean(speed["td3_bc"]) / np.mean(speed["a2pr"]) if speed["td3_bc"] and speed["a2pr"] else float("nan")
    paired = len(means["a2pr"])
    mean = {algo: np.mean(values) if values else float("nan") for algo, values in means.items()}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(args, records, out.with_suffix(".png"))
    lines = [
        "# Offline RL: TD3+BC and A2PR on datasets made from mixrl SAC runs",
        "",
        f"Made by `{command}` on {machine(args.device)}.",
        "",
        f"D4RL normalised score 100 (R - R_random) / (R_expert - R_random) of the final policy after "
        f"{args.gradient_steps:,} gradient steps, {args.final_episodes} deterministic episodes per run, mean ± std "
        "over seeds (number of runs in brackets). R_random and R_expert are measured on each env (uniform-random "
        "policy, deterministic SAC expert), so these scores are not comparable with published D4RL v2 numbers "
        "(different data, Gymnasium v5 envs). 'dataset' is the mean score of the dataset's own episodes.",
        "",
        "| dataset | transitions | dataset score | TD3+BC | A2PR |",
        "|---|---|---|---|---|",
        *rows,
        f"| **mean over the {paired} datasets with runs of both, on the seeds both finished ({paired_runs} runs "
        f"each)** | | | **{mean['td3_bc']:.1f}** | "
        f"**{mean['a2pr']:.1f}** |",
        "",
        f"A2PR - TD3+BC, mean over those datasets: **{mean['a2pr'] - mean['td3_bc']:+.1f} points**.",
        "",
        f"Gradient steps per second (training only, runs alternating on one machine, batch 256): "
        f"TD3+BC {mean_std(speed['td3_bc'])}, A2PR {mean_std(speed['a2pr'])}; TD3+BC / A2PR = {ratio:.2f}.",
        "",
        "Every run (final score, 'mean of seed' over the datasets where both algorithms finished that seed):",
        "",
        "| dataset | seed | TD3+BC | A2PR | A2PR - TD3+BC |",
        "|---|---|---|---|---|",
        *per_run_rows(args, score),
        "",
        f"![evaluation curves]({out.with_suffix('.png').name})",
        "",
        *findings_link(out.with_suffix(".md")),
        f"Settings: SAC medium run {args.sac_medium_steps:,} env steps, expert run {args.sac_expert_steps:,}; medium "
        f"and expert datasets {args.dataset_steps:,} transitions with action noise {args.action_noise}; offline "
        f"agents with --matmul-precision {args.matmul_precision}"
        + (" --compile" if args.compile else "")
        + "; A2PR with "
        + (
            "the authors' per-dataset alpha, bc_weight, vae_recon_weight, gamma."
            if args.a2pr_paper_settings
            else "its defaults."
        ),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "records": records}, indent=2))
    print("\n".join(lines))


def main(args: Args) -> None:
    torch.set_num_threads(1)
    command = shown_command(["python", "scripts/bench_offline.py", *sys.argv[1:]], ROOT)
    log = Path(args.work_dir) / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.stage != "report":
        for env_id in args.envs:
            make_datasets(args, env_id)
    if args.stage == "datasets":
        return
    if args.stage == "all":
        # every dataset's first seed before any second one, the two algorithms alternating; recorded runs are done
        keys = itertools.product(args.seeds, args.envs, args.kinds, args.algos)
        recorded = {record_key(r) for r in read_records(log)}
        todo = {
            trial(args, algo, env_id, kind, seed): (algo, env_id, kind, seed)
            for seed, env_id, kind, algo in keys
            if (algo, env_id, kind, seed, args.gradient_steps) not in recorded
        }
        sweep = SweepArgs(
            name="offline",
            root=str(Path(args.work_dir) / "sweeps"),
            max_concurrent=args.max_concurrent,
            address=args.address,
        )
        try:
            if todo:
                run_sweep(sweep, list(todo))
        finally:  # score and record what finished, also when some trials failed
            for t, (algo, env_id, kind, seed) in todo.items():
                result = Path(sweep.root, sweep.name, t.name, "trial.json")
                if result.exists():
                    run_dir = Path(json.loads(result.read_text())["run_dir"])
                    record = score_run(args, algo, env_id, kind, seed, run_dir)
                    with open(log, "a") as f:
                        f.write(json.dumps(record) + "\n")
    done = [r for r in read_records(log) if r["gradient_steps"] == args.gradient_steps and r["seed"] in args.seeds]
    report(args, done, command)


def read_records(log: Path) -> list[dict[str, Any]]:
    """The finished runs in runs.jsonl, read afresh: other processes append to it."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def record_key(record: dict[str, Any]) -> tuple:
    return record["algo"], record["env_id"], record["kind"], record["seed"], record["gradient_steps"]


if __name__ == "__main__":
    main(tyro.cli(Args))
