"""RLIF against DAgger and HG-DAgger with the same simulated experts and the same environment-step budget.

    python scripts/make_experts.py reference-q|bc-levels|demos --env-id Hopper-v5 ...  # experts and demos first
    python scripts/bench_rlif.py run --env-ids Hopper-v5 --levels 0 1 2 --seeds 1 2 3 --total-timesteps 100000
    python scripts/bench_rlif.py report

run: one sweep trial (`mixrl rlif` or `mixrl dagger`, on mixrl sweep) per (env, expert level, method, seed) in
runs/sweeps/<name>. An expert level is an entry of results/raw/rlif/experts_<env>.json (a policy folder or
checkpoint and an action noise, 0 for the BC experts, with its return measured there); every method gets the same
expert, the same demonstrations (mixrl/<env>/rlif-demos-v0) and --total-timesteps environment steps, the expert's
steps included.

    rlif-value            mixrl rlif --intervention value  (reference Q: the reference folder's critic; a_cmp: the
                          expert's; terminating transitions dropped, as RLIF's code)
    rlif-value-absorbing  the same with --terminal-label absorbing (results/rlif_findings.md)
    rlif-value-grace      rlif-value with --grace-steps 1: the agent acts one untested step after each takeover,
                          as RLIF's loop, so that every takeover charges an agent step
    rlif-random           mixrl rlif --intervention random (p = 0.5 per step, as the released Hopper runs)
    hg-dagger    mixrl dagger --method hg-dagger   (gated takeovers, expert labels only)
    dagger       mixrl dagger --method dagger      (half of the visited states relabelled by the expert)

report: results/<name>.md, .json and .png: final deterministic return (mean +- std over seeds) against the
intervening expert's own return, the return against environment steps and against expert interventions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from make_experts import RAW, demos_id, experts_file

from mixrl.sweep import SweepArgs, Trial, cpu_name, run_sweep, shown_command, trial_records

SWEEPS = Path("runs/sweeps")
METHODS = {
    "rlif-value": ("rlif", {"intervention": "value", "terminal_label": "drop"}),
    "rlif-value-absorbing": ("rlif", {"intervention": "value", "terminal_label": "absorbing"}),
    "rlif-value-grace": ("rlif", {"intervention": "value", "terminal_label": "drop", "grace_steps": 1}),
    "rlif-random": ("rlif", {"intervention": "random", "intervention_probability": 0.5, "terminal_label": "drop"}),
    "hg-dagger": ("dagger", {"method": "hg-dagger"}),
    "dagger": ("dagger", {"method": "dagger"}),
}


def experts(env_id: str) -> dict:
    path = experts_file(env_id)
    if not path.is_file():
        sys.exit(f"No {path}: make the experts first (python scripts/make_experts.py bc-levels --env-id {env_id} ...).")
    return json.loads(path.read_text())


def level_name(level: dict) -> str:
    return f"L{level['target_fraction']:.2f}"


def trials(opts: argparse.Namespace) -> list[Trial]:
    out, records = [], {env_id: experts(env_id) for env_id in opts.env_ids}
    for env_id, index, method, seed in itertools.product(opts.env_ids, opts.levels, opts.methods, opts.seeds):
        record = records[env_id]
        level = record["levels"][index]
        agent, flags = METHODS[method]
        flags = {
            **flags,
            "expert": level["checkpoint"],
            "expert_noise": level["noise"],
            "demos": demos_id(env_id),
            "total_timesteps": opts.total_timesteps,
            "eval_every": opts.eval_every,
            "eval_episodes": opts.eval_episodes,
            "checkpoint_every": opts.eval_every,
            "hidden_sizes": " ".join(map(str, opts.hidden_sizes)),
        }
        if agent == "rlif":
            flags.update(
                reference=record["reference"],
                utd_ratio=opts.utd,
                learning_starts=opts.learning_starts,
                num_critics=opts.num_critics,
                matmul_precision=opts.matmul_precision,
                compile=opts.compile,
            )
        else:
            flags.update(pretrain_steps=opts.pretrain_steps, train_steps=opts.train_steps)
        variant = f"{method}@{level_name(level)}"
        out.append(Trial(agent, env_id, seed, tuple((k, str(v)) for k, v in flags.items()), variant))
    return out


def cmd_run(opts: argparse.Namespace) -> None:
    sweep = SweepArgs(name=opts.name, root=str(SWEEPS), max_concurrent=opts.max_concurrent)
    run_sweep(sweep, trials(opts))
    RAW.mkdir(parents=True, exist_ok=True)
    with open(RAW / f"{opts.name}_commands.txt", "a") as f:
        f.write(shown_command(["python", "scripts/bench_rlif.py", *sys.argv[1:]]) + "\n")


def evaluations(run_dir: str) -> list[dict]:
    """The run's evaluation lines (step, return, expert takeovers and, by agent, labels and termination counts)."""
    return [json.loads(line) for line in (Path(run_dir) / "evaluations.jsonl").read_text().splitlines()]


def interventions_curve(lines: list[dict]) -> list[tuple[int, int, float, int | None]]:
    """(step, expert takeovers so far, return, expert-labelled states so far (DAgger family)) of each evaluation."""
    return [(e["step"], e["interventions"], e["mean_return"], e.get("expert_labels")) for e in lines]


def mean_of(evaluations: list[dict], key: str) -> float | None:
    """The mean of a count over runs' last evaluations; None where the agent does not count it."""
    return float(np.mean([e[key] for e in evaluations])) if all(key in e for e in evaluations) else None


def cmd_report(opts: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = trial_records(SWEEPS / opts.name)
    if not records:
        sys.exit(f"No finished trials in {SWEEPS / opts.name}.")
    for r in records:
        r["method"], r["level"] = r["variant"].split("@")
        lines = evaluations(r["run_dir"])
        r["interventions"], r["last"] = interventions_curve(lines), lines[-1]
    rows, groups = [], sorted({(r["env_id"], r["level"]) for r in records})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for (env_id, level), (ax_steps, ax_int) in zip(groups, axes):
        record = experts(env_id)
        expert = next(x for x in record["levels"] if level_name(x) == level)
        for method in METHODS:
            runs = sorted((r for r in records if (r["env_id"], r["level"], r["method"]) == (env_id, level, method)),
                          key=lambda r: r["seed"])  # fmt: skip
            if not runs:
                continue
            finals = [r["curve"][-1][1] for r in runs]
            used = [r["interventions"][-1][1] for r in runs]
            labels = [r["interventions"][-1][3] for r in runs]
            last = [r["last"] for r in runs]
            rows.append(
                {
                    "env_id": env_id,
                    "level": level,
                    "method": method,
                    "seeds": [r["seed"] for r in runs],
                    "steps": runs[0]["curve"][-1][0],
                    "final": [float(np.mean(finals)), float(np.std(finals))],
                    "finals": finals,
                    "interventions": float(np.mean(used)),
                    "expert_labels": None if None in labels else float(np.mean(labels)),
                    "terminations": mean_of(last, "terminations"),
                    "unlabelled_terminations": mean_of(last, "unlabelled_terminations"),
                    "charged_takeovers": mean_of(last, "charged_takeovers"),
                    "expert": [expert["mean"], expert["std"]],
                    "minutes": float(np.mean([r["wall_seconds"] for r in runs]) / 60),
                }
            )
            steps = np.array([s for s, _ in runs[0]["curve"]])
            curves = np.array([[v for _, v in r["curve"]] for r in runs if len(r["curve"]) == len(steps)])
            color = f"C{list(METHODS).index(method)}"
            ax_steps.plot(steps, curves.mean(0), label=method, color=color)
            ax_steps.fill_between(steps, curves.min(0), curves.max(0), alpha=0.2, color=color)
            for r in runs if method != "dagger" else []:  # DAgger never hands control to the expert
                takeovers, returns = [i for _, i, _, _ in r["interventions"]], [v for _, _, v, _ in r["interventions"]]
                ax_int.plot(takeovers, returns, ".-", color=color, label=method if r is runs[0] else None)
        for ax in (ax_steps, ax_int):
            ax.axhline(expert["mean"], color="k", ls="--", lw=1, label="intervening expert")
            ax.axhline(record["reference_return"]["mean"], color="gray", ls=":", lw=1, label="reference agent")
            ax.set_ylabel("return")
        ax_steps.set_title(f"{env_id}, expert {level} ({expert['fraction']:.2f} of the reference)")
        ax_steps.set_xlabel("environment steps")
        ax_int.set_xlabel("expert interventions (takeovers) so far")
        ax_steps.legend(fontsize=7)
        ax_int.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"results/{opts.name}.png", dpi=110)
    (Path("results") / f"{opts.name}.json").write_text(json.dumps(rows, indent=2))
    commands = RAW / f"{opts.name}_commands.txt"
    lines = [
        "# RLIF against DAgger and HG-DAgger",
        "",
        "Deterministic evaluation return (task reward) of the learner, mean +- std over seeds, after the same budget",
        "of environment steps for every method (the expert's steps included), against the intervening expert's own",
        "return (deterministic, over the episodes its experts file records). Interventions: expert takeovers in the",
        "whole run (DAgger never hands over control), in brackets those that stored a -1 on the agent's step before",
        "them (RLIF runs that count them);",
        "expert labels: states that joined the DAgger aggregate with the expert's action; terminations (unlabelled):",
        "RLIF's episodes that ended by termination, and those of them with no -1 stored before their end.",
        "",
        "| env | expert | expert return | method | seeds | steps | final return | interventions | expert labels "
        "| terminations (unlabelled) | minutes per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        labels = "-" if row["expert_labels"] is None else f"{row['expert_labels']:.0f}"
        charged = "" if row["charged_takeovers"] is None else f" ({row['charged_takeovers']:.0f})"
        ends = "-"
        if row["terminations"] is not None:
            ends = f"{row['terminations']:.0f} ({row['unlabelled_terminations']:.0f})"
        lines.append(
            f"| {row['env_id']} | {row['level']} | {row['expert'][0]:.0f} +- {row['expert'][1]:.0f} | {row['method']} "
            f"| {', '.join(map(str, row['seeds']))} | {row['steps']} | {row['final'][0]:.0f} +- {row['final'][1]:.0f} "
            f"| {row['interventions']:.0f}{charged} | {labels} | {ends} | {row['minutes']:.0f} |"
        )
    lines += ["", f"![curves]({opts.name}.png)", "", f"Machine: {cpu_name()}, shared with other jobs. Made with:", ""]
    lines += [f"    {c}" for c in (commands.read_text().splitlines() if commands.is_file() else [])]
    lines += [f"    python scripts/bench_rlif.py report --name {opts.name}", ""]
    findings = Path("results") / f"{opts.name}_findings.md"
    if findings.is_file():
        lines += [f"Settings, experts and what these runs show: [{findings.name}]({findings.name}).", ""]
    Path(f"results/{opts.name}.md").write_text("\n".join(lines))
    print(f"wrote results/{opts.name}.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--env-ids", nargs="+", default=["InvertedDoublePendulum-v5", "Hopper-v5"])
    run.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2], help="indices into the experts file's levels")
    run.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    run.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    run.add_argument("--total-timesteps", type=int, default=100_000)
    run.add_argument("--eval-every", type=int, default=5000)
    run.add_argument("--eval-episodes", type=int, default=5)
    run.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 256])
    run.add_argument("--utd", type=int, default=2, help="rlif: critic steps per env step")
    run.add_argument("--learning-starts", type=int, default=1000, help="rlif: uniform-random agent steps first")
    run.add_argument("--num-critics", type=int, default=10, help="rlif: size of the critic ensemble")
    run.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default="highest", help="rlif")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="rlif: torch.compile")
    run.add_argument("--pretrain-steps", type=int, default=2000, help="dagger: BC steps on the demonstrations")
    run.add_argument("--train-steps", type=int, default=500, help="dagger: BC steps per iteration")
    run.add_argument("--max-concurrent", type=int, default=1)
    run.add_argument("--name", default="rlif")
    report = sub.add_parser("report")
    report.add_argument("--name", default="rlif")
    opts = parser.parse_args()
    {"run": cmd_run, "report": cmd_report}[opts.command](opts)


if __name__ == "__main__":
    main()
