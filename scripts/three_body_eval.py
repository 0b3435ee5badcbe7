"""Evaluate adaptive time-stepping on the three-body problem: a trained policy against the baselines.

For the paper's systems (ic seeds 0..N-1, 30 yr = 300 RL steps, no early stop) it runs the policy, the ten
fixed mu of the Hermite integrator and Aarseth's criterion over a grid of eta, and reports final |dE|
against cost (Hermite steps, force evaluations, integrator wall time): medians, inter-quartile ranges,
failures, returns, whether the policy is dominated by a fixed mu, and a log-log plot with the Pareto front
of the baselines. A transfer experiment drives other integrators with the same policy (no retraining):
fixed-step leapfrog (action -> dt) and Dormand-Prince 5(4) (action -> tolerance), each against its own ten
fixed actions. It also measures the integrator speed.

    python scripts/three_body_eval.py --policy runs/<run dir or checkpoint>
    python scripts/three_body_eval.py --seeds 5 --transfer-seeds 2      # quick look, baselines only

Writes results/three_body.md, results/three_body.json and results/three_body.png.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tyro

from mixrl.envs.three_body import (
    INTEGRATOR_ACTIONS,
    INTEGRATOR_PARAM_NAMES,
    MU_VALUES,
    YEAR,
    ThreeBodyTimestepContinuousEnv,
    ThreeBodyTimestepEnv,
    hermite_evolve,
    initial_conditions,
    legacy_ic_parameters,
)

# ------------------------------------------------------------------------------------ baselines, episodes
Policy = Callable[[np.ndarray], object]


def fixed_mu_policy(index: int) -> Policy:
    """The baseline that always picks action `index` (mu = MU_VALUES[index] for Hermite)."""
    return lambda obs: index


@dataclass
class EpisodeRecord:
    """What one evaluation episode cost and how accurate it was."""

    ic_seed: int
    final_error: float
    max_error: float
    hermite_steps: int
    force_evals: int
    wall_time: float
    steps: int
    terminated: bool
    failed_at: int | None
    rewards: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)

    def episode_return(self, max_steps: int | None = None, stop_error: float | None = 0.1) -> float:
        """Return of the first `max_steps` steps, ending at the first step with |dE| > stop_error (the
        training protocol) when stop_error is given."""
        total = 0.0
        for i, (r, e) in enumerate(zip(self.rewards, self.errors, strict=True)):
            if max_steps is not None and i >= max_steps:
                break
            total += r
            if stop_error is not None and e > stop_error:
                break
        return total


def run_episode(
    policy: Policy,
    ic_seed: int,
    max_steps: int = 300,
    integrator: str = "hermite",
    max_energy_error: float = np.inf,
    continuous: bool = False,
    env: ThreeBodyTimestepEnv | None = None,
) -> EpisodeRecord:
    """Run `policy` (obs -> action) on the paper's system `ic_seed`.

    By default there is no early stop (max_energy_error = inf), as for the 30-yr evaluation; the error at
    the last step is recorded whatever it is, and `failed_at` is the first step with |dE| > 0.1.
    """
    if env is None:
        cls = ThreeBodyTimestepContinuousEnv if continuous else ThreeBodyTimestepEnv
        env = cls(
            max_steps=max_steps,
            max_energy_error=max_energy_error,
            integrator=integrator,
            report_wall_time=True,
        )
    obs, _ = env.reset(options={"ic_seed": ic_seed})
    rewards, errors, params = [], [], []
    failed_at = None
    done = terminated = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        rewards.append(reward)
        errors.append(info["energy_error"])
        params.append(info["mu"])
        if failed_at is None and info["energy_error"] > 0.1:
            failed_at = len(errors)
        done = terminated or truncated
    return EpisodeRecord(
        ic_seed=ic_seed,
        final_error=errors[-1],
        max_error=max(errors),
        hermite_steps=env.episode_steps,
        force_evals=env.episode_force_evals,
        wall_time=env.episode_wall_time,
        steps=len(errors),
        terminated=bool(terminated),
        failed_at=failed_at,
        rewards=rewards,
        errors=errors,
        params=params,
    )


def run_fixed_mu(mu_index: int, ic_seed: int, max_steps: int = 300, **kwargs) -> EpisodeRecord:
    """Baseline: the Hermite integrator with mu = MU_VALUES[mu_index] throughout."""
    return run_episode(fixed_mu_policy(mu_index), ic_seed, max_steps, **kwargs)


def run_aarseth(eta: float, ic_seed: int, max_steps: int = 300, max_energy_error: float = np.inf) -> EpisodeRecord:
    """Baseline: Hermite with Aarseth's time-step criterion at a fixed eta (any positive value)."""
    env = ThreeBodyTimestepEnv(
        max_steps=max_steps,
        max_energy_error=max_energy_error,
        integrator="hermite_aarseth",
        action_values=np.full(len(MU_VALUES), float(eta)),
        report_wall_time=True,
    )
    return run_episode(fixed_mu_policy(0), ic_seed, max_steps, env=env)


@dataclass
class Args:
    policy: str | None = None
    """run directory or checkpoint of a trained discrete policy (loaded with mixrl.load_policy); none: only
    the baselines"""
    seeds: int = 100
    """initial conditions: ic seeds 0 .. seeds-1 (the paper's systems)"""
    max_steps: int = 300
    """RL steps of 0.1 yr per run"""
    aarseth_etas: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    """eta grid of the Aarseth baseline"""
    transfer_integrators: tuple[str, ...] = ("leapfrog", "dopri5")
    """integrators the policy is transferred to (empty: no transfer experiment)"""
    transfer_seeds: int = 100
    """ic seeds of the transfer experiment"""
    out: str = "results/three_body"
    """output path prefix (.md, .json, .png)"""
    threads: int = 1
    """torch CPU threads for the policy"""
    trust_pickle: bool = False
    """also load a --policy that needs pickle (an older run of your own): unpickling can run the author's code"""


@dataclass
class Summary:
    """Medians, quartiles and failure counts of a set of runs."""

    name: str
    integrator: str
    param: float | None
    runs: int
    err_median: float
    err_q25: float
    err_q75: float
    steps_median: float
    steps_q25: float
    steps_q75: float
    evals_median: float
    wall_median: float
    wall_q25: float
    wall_q75: float
    policy_time_median: float
    failures: int
    return_10yr: float
    return_30yr: float


def summarise(name: str, integrator: str, param: float | None, records: list[EpisodeRecord], policy_time) -> Summary:
    err = np.array([r.final_error for r in records])
    steps = np.array([r.hermite_steps for r in records], np.float64)
    wall = np.array([r.wall_time for r in records])

    def q(values, percent):
        return float(np.percentile(values, percent))

    return Summary(
        name=name,
        integrator=integrator,
        param=param,
        runs=len(records),
        err_median=q(err, 50),
        err_q25=q(err, 25),
        err_q75=q(err, 75),
        steps_median=q(steps, 50),
        steps_q25=q(steps, 25),
        steps_q75=q(steps, 75),
        evals_median=q([r.force_evals for r in records], 50),
        wall_median=q(wall, 50),
        wall_q25=q(wall, 25),
        wall_q75=q(wall, 75),
        policy_time_median=float(np.median(policy_time)) if len(policy_time) else 0.0,
        failures=sum(r.failed_at is not None for r in records),
        return_10yr=float(np.mean([r.episode_return(100, 0.1) for r in records])),
        return_30yr=float(np.mean([r.episode_return(None, None) for r in records])),
    )


class TimedPolicy:
    """Wraps obs -> action and accumulates the time spent in it (policy inference, not the integrator)."""

    def __init__(self, policy: Callable):
        self.policy, self.elapsed = policy, 0.0

    def __call__(self, obs):
        start = time.perf_counter()
        action = self.policy(obs)
        self.elapsed += time.perf_counter() - start
        return action


def run_policy(policy: Callable, seeds: range, max_steps: int, integrator: str = "hermite"):
    records, policy_times = [], []
    for seed in seeds:
        timed = TimedPolicy(policy)
        records.append(run_episode(timed, seed, max_steps, integrator=integrator))
        policy_times.append(timed.elapsed)
    return records, policy_times


def measure_speed() -> dict[str, float]:
    """Hermite steps per second on one core: one long evolve call (kernel), and through 0.1-yr calls."""
    x0, v0, m = initial_conditions(legacy_ic_parameters(0))
    hermite_evolve(x0.copy(), v0.copy(), m, 0.0, 0.1 * YEAR, 1e-3)  # compile / load the cache
    best = {}
    for label, chunks in (("kernel", 1), ("env_chunks", 100)):
        rates = []
        for _ in range(3):
            x, v, t, steps = x0.copy(), v0.copy(), 0.0, 0
            start = time.perf_counter()
            for i in range(1, chunks + 1):
                t, s, _, _ = hermite_evolve(x, v, m, t, i * 10.0 * YEAR / chunks, 1e-4)
                steps += s
            rates.append(steps / (time.perf_counter() - start))
        best[label] = max(rates)
        best[f"{label}_steps"] = steps
    return best


def trained_by(path: str, trusted: bool) -> str:
    """The agent command that reproduces the checkpoint's run, with the checkpoint's step and the run's wall time."""
    from mixrl.checkpoints import find_checkpoint, load_checkpoint
    from mixrl.cli import training_command

    file = find_checkpoint(path)
    ckpt = load_checkpoint(file, trusted=trusted)
    run_dir = file.parent.parent
    minutes = ""
    final = run_dir / "checkpoints" / "final.pt"
    if (run_dir / "config.json").is_file() and final.is_file():
        elapsed = final.stat().st_mtime - (run_dir / "config.json").stat().st_mtime
        minutes = f"; the run took {elapsed / 60:.0f} min of wall time"
    return f"`{training_command(ckpt)}` (checkpoint `{file.name}` at environment step {ckpt['global_step']}{minutes})"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (cost, error), sorted by cost."""
    front = []
    for i, (c, e) in enumerate(points):
        if not any(c2 <= c and e2 <= e and (c2 < c or e2 < e) for c2, e2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def dominated_by(target: Summary, others: list[Summary]) -> list[str]:
    """Names of the summaries with median cost and median error both <= the target's (one strictly)."""
    out = []
    for s in others:
        le = s.steps_median <= target.steps_median and s.err_median <= target.err_median
        if le and (s.steps_median < target.steps_median or s.err_median < target.err_median):
            out.append(s.name)
    return out


def fmt(x: float) -> str:
    return f"{x:.2e}" if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.3g}"


def table(rows: list[Summary], wall_unit: float = 1e-3) -> list[str]:
    lines = [
        "| method | median \\|dE\\| [IQR] | median Hermite/integrator steps [IQR] | median force evals "
        "| median wall ms [IQR] | failures | mean return 10 yr | mean return 30 yr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        lines.append(
            f"| {s.name} | {fmt(s.err_median)} [{fmt(s.err_q25)}, {fmt(s.err_q75)}] "
            f"| {s.steps_median:.0f} [{s.steps_q25:.0f}, {s.steps_q75:.0f}] | {s.evals_median:.0f} "
            f"| {s.wall_median / wall_unit:.3g} [{s.wall_q25 / wall_unit:.3g}, {s.wall_q75 / wall_unit:.3g}] "
            f"| {s.failures}/{s.runs} | {s.return_10yr:.1f} | {s.return_30yr:.1f} |"
        )
    return lines


def plot(path: Path, rl_records, fixed_records, fixed: list[Summary], aarseth: list[Summary], rl, transfer, actions):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
    baselines = fixed + aarseth
    front = [baselines[i] for i in pareto_front([(s.steps_median, s.err_median) for s in baselines])]
    colours = plt.cm.viridis(np.linspace(0, 0.95, len(MU_VALUES)))

    ax = axes[0, 0]
    for idx in (0, 4, 9):
        recs = fixed_records[idx]
        ax.scatter(
            [r.hermite_steps for r in recs],
            [r.final_error for r in recs],
            s=8,
            alpha=0.35,
            color=colours[idx],
            label=f"runs, fixed mu={MU_VALUES[idx]:.1e}",
        )
    if rl is not None:
        ax.scatter(
            [r.hermite_steps for r in rl_records],
            [r.final_error for r in rl_records],
            s=10,
            alpha=0.6,
            color="crimson",
            marker="^",
            label="runs, RL policy",
        )
    ax.set_title("per-run final |dE| vs Hermite steps (30 yr)")

    for ax, key, q25, q75, unit, label in (
        (axes[0, 0], "steps_median", "steps_q25", "steps_q75", 1.0, "Hermite steps"),
        (axes[0, 1], "wall_median", "wall_q25", "wall_q75", 1.0, "integrator wall time [s]"),
    ):
        for group, marker, tag in ((fixed, "o", "fixed mu"), (aarseth, "s", "Aarseth eta")):
            xs = np.array([getattr(s, key) for s in group]) / unit
            ys = np.array([s.err_median for s in group])
            xerr = [
                xs - np.array([getattr(s, q25) for s in group]),
                np.array([getattr(s, q75) for s in group]) - xs,
            ]
            yerr = [ys - np.array([s.err_q25 for s in group]), np.array([s.err_q75 for s in group]) - ys]
            ax.errorbar(
                xs,
                ys,
                xerr=xerr,
                yerr=yerr,
                fmt=marker,
                ms=6,
                capsize=2,
                mfc="none",
                color="tab:blue" if tag == "fixed mu" else "tab:green",
                label=f"median [IQR], {tag}",
            )
        fx = [getattr(s, key) / unit for s in front]
        ax.plot(fx, [s.err_median for s in front], "k--", lw=1, label="Pareto front of baselines (in steps)")
        if rl is not None:
            ax.errorbar(
                [getattr(rl, key)],
                [rl.err_median],
                xerr=[[getattr(rl, key) - getattr(rl, q25)], [getattr(rl, q75) - getattr(rl, key)]],
                yerr=[[rl.err_median - rl.err_q25], [rl.err_q75 - rl.err_median]],
                fmt="*",
                ms=16,
                color="crimson",
                capsize=3,
                label="median [IQR], RL policy",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final |dE| after 30 yr")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0, 1].set_title("medians: final |dE| vs integrator wall time")

    ax = axes[1, 0]
    if actions is not None:
        counts = np.bincount(actions, minlength=len(MU_VALUES))
        ax.bar(range(len(MU_VALUES)), counts / counts.sum(), color=colours)
        ax.set_xticks(range(len(MU_VALUES)), [f"{m:.0e}" for m in MU_VALUES], rotation=45)
        ax.set_xlabel("mu chosen by the RL policy")
        ax.set_ylabel("fraction of RL steps")
        ax.set_title("actions of the RL policy (all seeds, 30 yr)")
    else:
        ax.set_visible(False)

    ax = axes[1, 1]
    for k, (integrator, (fixed_t, rl_t)) in enumerate(transfer.items()):
        c = f"C{k + 3}"
        ax.plot(
            [s.steps_median for s in fixed_t],
            [s.err_median for s in fixed_t],
            "o-",
            color=c,
            mfc="none",
            label=f"{integrator}, fixed {INTEGRATOR_PARAM_NAMES[integrator]}",
        )
        if rl_t is not None:
            ax.plot(
                [rl_t.steps_median],
                [rl_t.err_median],
                "*",
                ms=16,
                color=c,
                mec="k",
                label=f"{integrator}, RL policy (transferred)",
            )
    ax.plot(
        [s.steps_median for s in fixed],
        [s.err_median for s in fixed],
        "o-",
        color="tab:blue",
        mfc="none",
        label="Hermite, fixed mu",
    )
    if rl is not None:
        ax.plot([rl.steps_median], [rl.err_median], "*", ms=16, color="crimson", label="Hermite, RL policy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("median integrator steps (30 yr)")
    ax.set_ylabel("median final |dE|")
    ax.set_title("transfer to other integrators (no retraining)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: Args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = range(args.seeds)
    started = time.time()

    speed = measure_speed()
    print(
        f"Hermite speed: {speed['kernel'] / 1e6:.2f} M steps/s (one call), "
        f"{speed['env_chunks'] / 1e6:.2f} M steps/s (0.1-yr calls)",
        flush=True,
    )

    policy = None
    if args.policy is not None:
        import mixrl

        policy = mixrl.load_policy(args.policy, trusted=args.trust_pickle)

    fixed_records, fixed = [], []
    for i, mu in enumerate(MU_VALUES):
        recs, _ = run_policy(fixed_mu_policy(i), seeds, args.max_steps)
        fixed_records.append(recs)
        fixed.append(summarise(f"fixed mu={mu:.2e}", "hermite", float(mu), recs, []))
        print(
            f"fixed mu={mu:.1e}: median |dE| {fixed[-1].err_median:.2e}, steps {fixed[-1].steps_median:.0f}",
            flush=True,
        )
    aarseth = []
    for eta in args.aarseth_etas:
        recs = [run_aarseth(eta, s, args.max_steps) for s in seeds]
        aarseth.append(summarise(f"Aarseth eta={eta:.0e}", "hermite_aarseth", float(eta), recs, []))
        print(
            f"Aarseth eta={eta:.0e}: median |dE| {aarseth[-1].err_median:.2e}, steps {aarseth[-1].steps_median:.0f}",
            flush=True,
        )

    rl = rl_records = actions = None
    if policy is not None:
        rl_records, ptimes = run_policy(policy, seeds, args.max_steps)
        rl = summarise("RL policy (DQN)", "hermite", None, rl_records, ptimes)
        actions = np.concatenate([np.searchsorted(MU_VALUES, np.array(r.params) * (1 - 1e-9)) for r in rl_records])
        print(f"RL: median |dE| {rl.err_median:.2e}, steps {rl.steps_median:.0f}", flush=True)

    transfer: dict[str, tuple[list[Summary], Summary | None]] = {}
    t_seeds = range(args.transfer_seeds)
    for integrator in args.transfer_integrators:
        values = INTEGRATOR_ACTIONS[integrator]
        fixed_t = []
        for i, value in enumerate(values):
            recs, _ = run_policy(fixed_mu_policy(i), t_seeds, args.max_steps, integrator)
            fixed_t.append(
                summarise(
                    f"{integrator} {INTEGRATOR_PARAM_NAMES[integrator]}={value:.1e}",
                    integrator,
                    float(value),
                    recs,
                    [],
                )
            )
            print(
                f"{fixed_t[-1].name}: median |dE| {fixed_t[-1].err_median:.2e}, steps {fixed_t[-1].steps_median:.0f}",
                flush=True,
            )
        rl_t = None
        if policy is not None:
            recs, ptimes = run_policy(policy, t_seeds, args.max_steps, integrator)
            rl_t = summarise(f"{integrator}, RL policy", integrator, None, recs, ptimes)
            print(f"{rl_t.name}: median |dE| {rl_t.err_median:.2e}, steps {rl_t.steps_median:.0f}", flush=True)
        transfer[integrator] = (fixed_t, rl_t)

    plot(out.with_suffix(".png"), rl_records, fixed_records, fixed, aarseth, rl, transfer, actions)
    elapsed = time.time() - started
    write_report(args, command, out, speed, fixed, aarseth, rl, transfer, actions, elapsed)
    data = {
        "command": command,
        "speed_steps_per_s": speed,
        "fixed_mu": [asdict(s) for s in fixed],
        "aarseth": [asdict(s) for s in aarseth],
        "rl": asdict(rl) if rl else None,
        "rl_runs": [
            {
                "ic_seed": r.ic_seed,
                "final_error": r.final_error,
                "hermite_steps": r.hermite_steps,
                "wall_time": r.wall_time,
                "failed_at": r.failed_at,
            }
            for r in (rl_records or [])
        ],
        "transfer": {
            k: {"fixed": [asdict(s) for s in f], "rl": asdict(r) if r else None} for k, (f, r) in transfer.items()
        },
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(f"wrote {out}.md, {out}.json, {out}.png in {elapsed:.0f} s")


def write_report(args, command, out, speed, fixed, aarseth, rl, transfer, actions, elapsed) -> None:
    lines = [
        "# Adaptive time-stepping for the three-body problem: RL policy vs fixed mu and Aarseth's criterion",
        "",
        f"Made by `{command}` ({elapsed / 60:.1f} min on {platform.machine()}, {platform.python_version()}; one core).",
        "",
        f"Systems: ic seeds 0-{args.seeds - 1} (the paper's initial conditions), {args.max_steps} RL steps "
        f"of 0.1 yr ({args.max_steps / 10:g} yr), no early stop. Cost: Hermite steps (deterministic; force "
        "evaluations = steps + one per 0.1-yr call) and integrator wall time (the evolve calls only; policy "
        "inference is listed separately). Failures: runs whose |dE| exceeded 0.1 at some step. Returns: "
        "the paper's reward (W1 = 3000, W3 = 4); '10 yr' follows the training protocol (first 100 steps, "
        "ending at the first |dE| > 0.1), '30 yr' sums all steps.",
        "",
        "## Integrator speed",
        "",
        f"Hermite (numba, shared step dt = mu t_coll), seed 0, mu = 1e-4, 10 yr "
        f"({speed['kernel_steps']} steps): **{speed['kernel'] / 1e6:.2f} M steps/s** in one call, "
        f"{speed['env_chunks'] / 1e6:.2f} M steps/s in 0.1-yr calls as the env makes them (best of 3).",
        "",
    ]
    if rl is not None:
        rows = [rl] + fixed
        best_fixed_10 = max(fixed, key=lambda s: s.return_10yr)
        best_fixed_30 = max(fixed, key=lambda s: s.return_30yr)
        dom = dominated_by(rl, fixed)
        dom_all = dominated_by(rl, fixed + aarseth)
        verdict = "beats" if rl.return_10yr > best_fixed_10.return_10yr else "does not beat"
        lines += [
            "## RL policy vs fixed mu (Hermite)",
            "",
            f"Policy: `{args.policy}`, trained by {trained_by(args.policy, args.trust_pickle)}.",
            "",
            "Median policy inference per 30-yr run: "
            f"{rl.policy_time_median * 1e3:.1f} ms (vs {rl.wall_median * 1e3:.1f} ms in the integrator).",
            "",
            *table(rows),
            "",
            f"* (median steps, median |dE|) of the RL policy dominated by a fixed mu: "
            f"**{'no' if not dom else 'yes, by ' + ', '.join(dom)}**; by any baseline including Aarseth: "
            f"{'no' if not dom_all else ', '.join(dom_all)}.",
            f"* Mean 10-yr return: RL {rl.return_10yr:.1f} vs best fixed mu {best_fixed_10.return_10yr:.1f} "
            f"({best_fixed_10.name}): **{verdict}**. Mean 30-yr return: RL {rl.return_30yr:.1f} vs best "
            f"fixed mu {best_fixed_30.return_30yr:.1f} ({best_fixed_30.name}).",
        ]
        if actions is not None:
            frac = np.bincount(actions, minlength=len(MU_VALUES)) / len(actions)
            lines.append(
                "* Actions of the RL policy (fraction of RL steps per mu): "
                + ", ".join(f"{m:.0e}: {f:.2f}" for m, f in zip(MU_VALUES, frac, strict=True) if f > 0)
                + "."
            )
        lines.append("")
    else:
        lines += ["## Fixed mu (Hermite)", "", *table(fixed), ""]
    baselines = fixed + aarseth
    front = [baselines[i].name for i in pareto_front([(s.steps_median, s.err_median) for s in baselines])]
    lines += [
        "## Aarseth's criterion (Hermite, shared step = min over bodies)",
        "",
        *table(aarseth),
        "",
        f"Pareto front of the baselines in (median steps, median |dE|): {', '.join(front)}.",
        "",
    ]
    if transfer:
        lines += [
            "## Transfer to other integrators (no retraining)",
            "",
            f"The Hermite-trained policy drives other integrators on ic seeds 0-{args.transfer_seeds - 1}: "
            "action index i selects the i-th of the integrator's own ten values (smallest = most accurate). "
            "Leapfrog (kick-drift-kick) takes a fixed dt in yr; Dormand-Prince 5(4) takes a relative and "
            "absolute tolerance and chooses its own steps (variable step). Steps here are that integrator's "
            "steps; one DOPRI step costs 6 force evaluations.",
            "",
        ]
        for integrator, (fixed_t, rl_t) in transfer.items():
            rows = ([rl_t] if rl_t else []) + fixed_t
            lines += [f"### {integrator}", "", *table(rows), ""]
            if rl_t is not None:
                dom = [
                    s.name for s in fixed_t if s.steps_median <= rl_t.steps_median and s.err_median <= rl_t.err_median
                ]
                lines += [
                    f"RL policy dominated by a fixed {INTEGRATOR_PARAM_NAMES[integrator]}: "
                    f"{'no' if not dom else ', '.join(dom)}.",
                    "",
                ]
    lines += ["![error vs cost](three_body.png)", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
