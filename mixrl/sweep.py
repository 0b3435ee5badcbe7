"""`mixrl sweep`: many ordinary `mixrl <agent>` runs (agents x env ids x seeds x a grid of flags) as Ray tasks, on
this machine or on a Ray cluster, and `mixrl sweep report`: their learning curves as tables and plots.

    mixrl sweep --name sac-small --agents sac --env-ids Pendulum-v1 InvertedPendulum-v5 --seeds 1 2 3 \\
        --flags total-timesteps=5000 eval-every=1000 --grid utd-ratio=1,2
    mixrl sweep --config sweep.toml                       # the same keys in a TOML file (see SweepArgs)
    mixrl sweep report sweeps/sac-small --output results/sac_small

Layout: sweeps/<name>/sweep.json lists the trials; sweeps/<name>/<trial>/ is the `--run-root` of the trial's one run
directory, with trial.log (the run's output, every attempt) and trial.json once the run finished. A trial's folder
is named after its agent, flags, env id and seed, so a rerun finds it: finished trials are skipped, a trial with
checkpoints/latest.pt continues from it (`--resume`). Ray retries a trial whose process dies (`--max-retries`),
and the retry resumes the same way. On a cluster (`--address`) the sweep folder must be on a filesystem that all
machines share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from mixrl.agents import AGENTS
from mixrl.errors import MissingPathError, UsageError, require

RAY = ("ray", "sweep", "mixrl sweep (trials run as Ray tasks)")  # require()'s module, extra and purpose
INTERPRETER = re.compile(r"python[0-9.]*(\.exe)?")


@dataclass(frozen=True)
class Trial:
    """One run: `mixrl <agent> --env-id <env_id> --seed <seed> <flags>`, or an external `command` (a baseline from
    another library) whose "{trial_dir}" is replaced by the trial's folder and which writes evaluations.jsonl there."""

    agent: str
    env_id: str
    seed: int
    flags: tuple[tuple[str, str], ...] = ()
    variant: str = ""
    command: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The variant's name in reports: `variant`, else the agent."""
        return self.variant or self.agent

    @property
    def name(self) -> str:
        """Folder name: readable, unique per (variant, flags, env, seed), stable across reruns."""
        flags = ",".join(f"{k}={v}" for k, v in self.flags)
        digest = hashlib.sha1(f"{flags}|{' '.join(self.command)}".encode()).hexdigest()[:8]
        name = f"{self.label}__{self.env_id}__{self.seed}__{digest}"
        return re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)

    def argv(self, trial_dir: Path, resume: Path | None) -> list[str]:
        if self.command:
            return [part.replace("{trial_dir}", str(trial_dir)) for part in self.command]
        base = [sys.executable, "-m", "mixrl.cli", self.agent]
        if resume is not None:  # the saved Args of the run hold everything else
            return [*base, "--resume", str(resume)]
        argv = [*base, "--env-id", self.env_id, "--seed", str(self.seed), "--run-root", str(trial_dir)]
        for key, value in self.flags:
            argv += flag_argv(key, value)
        return argv


def flag_argv(key: str, value: Any) -> list[str]:
    """A flag for a tyro command line: True/False become --x / --no-x, a list or a space-separated value several
    arguments (hidden-sizes="64 64")."""
    flag = key.replace("_", "-").removeprefix("--")
    text = str(value)
    if text.lower() in ("true", "false"):
        return [f"--{flag}" if text.lower() == "true" else f"--no-{flag}"]
    values = [str(v) for v in value] if isinstance(value, (list, tuple)) else text.split()
    return [f"--{flag}", *values]


def parse_pairs(items: list[str] | tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise UsageError(f"--{what} {item!r} is not key=value: write e.g. --{what} total-timesteps=5000.")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass
class SweepArgs:
    """Run a grid of trials (agents x env ids x seeds x flag grid) as Ray tasks; each is an ordinary `mixrl <agent>`
    run. Finished trials are skipped and interrupted ones resume, so running a sweep again continues it."""

    name: str | None = None
    """sweep name: its folder is <root>/<name> (default: the config file's name)"""
    config: str | None = None
    """TOML file with these keys (name, agents, env_ids, seeds, max_concurrent, ...), plus tables `flags`
    ({flag = value}) and `grid` ({flag = [values]}) and `[[trials]]` entries (agent, env_id, seed, flags, variant);
    command-line values win"""
    agents: tuple[str, ...] = ()
    """agents to run (mixrl subcommands: sac, ppo, dqn, td3_bc, a2pr, bc, rlif, dagger)"""
    env_ids: tuple[str, ...] = ()
    """Gymnasium ids (module:id for your own package's tasks)"""
    seeds: tuple[int, ...] = (1,)
    """seeds of every (agent, env, grid point)"""
    flags: tuple[str, ...] = ()
    """flag=value given to every trial, e.g. total-timesteps=5000 hidden-sizes="64 64" normalize-obs=true"""
    grid: tuple[str, ...] = ()
    """flag=v1,v2,...: one trial per combination of the values (the variant's name lists them)"""
    root: str = "sweeps"
    """parent folder of sweep folders"""
    max_concurrent: int | None = None
    """trials at once (default: this machine's CPU cores; each trial uses one torch thread)"""
    address: str | None = None
    """join a running Ray cluster ("auto", "ray://host:10001") instead of starting Ray on this machine"""
    gpus_per_trial: float = 0.0
    """GPUs Ray reserves for each trial (pass device=cuda in --flags to train on them)"""
    max_retries: int = 2
    """times a trial whose process died is started again (it resumes from its checkpoints/latest.pt)"""
    dry_run: bool = False
    """list the trials and what would run, then stop"""


def load_config(args: SweepArgs) -> tuple[SweepArgs, list[Trial]]:
    """Merge the TOML file under the command line; returns the args and the file's explicit `[[trials]]`."""
    if args.config is None:
        return args, []
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = require("tomli", "sweep", "mixrl sweep --config on Python 3.10")
    path = Path(args.config)
    if not path.is_file():
        raise MissingPathError(f"--config {path}: no such file.")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--config {path}: not valid TOML ({err}).") from None
    names = {f.name for f in dataclasses.fields(SweepArgs)}
    unknown = set(config) - names - {"trials"}
    if unknown:
        known = ", ".join(sorted(names | {"trials"}))
        raise UsageError(f"--config {path}: unknown keys {', '.join(sorted(unknown))}; known keys: {known}.")
    merged = {}
    for f in dataclasses.fields(SweepArgs):
        given = getattr(args, f.name)
        if given != f.default or f.name not in config:
            merged[f.name] = given
        elif f.name in ("flags", "grid"):  # tables in TOML
            table = config[f.name]
            if f.name == "flags":
                merged[f.name] = tuple(f"{k}={toml_value(v)}" for k, v in table.items())
            else:
                merged[f.name] = tuple(f"{k}={','.join(map(toml_value, v))}" for k, v in table.items())
        else:
            value = config[f.name]
            merged[f.name] = tuple(value) if isinstance(value, list) else value
    merged["name"] = merged["name"] or path.stem
    trials = [
        Trial(
            t["agent"],
            t["env_id"],
            int(t.get("seed", 1)),
            tuple((k, toml_value(v)) for k, v in t.get("flags", {}).items()),
            t.get("variant", ""),
            tuple(t.get("command", ())),
        )
        for t in config.get("trials", [])
    ]
    return SweepArgs(**merged), trials


def toml_value(value: Any) -> str:
    """A TOML value as flag text: booleans true/false, lists space-separated (hidden-sizes = [64, 64])."""
    if isinstance(value, bool):
        return str(value).lower()
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def make_trials(args: SweepArgs) -> list[Trial]:
    """agents x env ids x grid points x seeds, every trial with the common flags."""
    common = parse_pairs(args.flags, "flags")
    grid = {k: [v.strip() for v in values.split(",")] for k, values in parse_pairs(args.grid, "grid").items()}
    for key in ("env-id", "env_id", "seed", "run-root", "run_root", "resume"):
        if key in common or key in grid:
            raise UsageError(f"--flags/--grid may not set {key}: the sweep sets it for each trial.")
    trials = []
    for agent, env_id in itertools.product(args.agents, args.env_ids):
        for point in itertools.product(*grid.values()):
            chosen = dict(zip(grid, point))
            variant = agent + "".join(f"[{k}={v}]" for k, v in chosen.items())
            flags = tuple({**common, **chosen}.items())
            trials += [Trial(agent, env_id, seed, flags, variant if chosen else "") for seed in args.seeds]
    return trials


def run_directories(trial_dir: Path) -> list[Path]:
    """The run directories a trial made (normally one)."""
    if not trial_dir.is_dir():
        return []
    return sorted(p for p in trial_dir.iterdir() if p.is_dir() and (p / "config.json").is_file())


def trial_state(trial: Trial, trial_dir: Path) -> tuple[str, Path | None]:
    """("done", None) once recorded, ("ended", run dir) when the run wrote final.pt but trial.json is missing,
    ("resume", run dir with checkpoints/latest.pt) or ("new", None)."""
    if (trial_dir / "trial.json").is_file():
        return "done", None
    for run_dir in run_directories(trial_dir):
        for state, name in (("ended", "final.pt"), ("resume", "latest.pt")):
            if (run_dir / "checkpoints" / name).is_file():
                return state, run_dir
    return "new", None


def _die_with_parent() -> None:
    """In the trial's process: receive SIGTERM when the Ray worker that started it dies (Linux), so the run saves
    checkpoints/latest.pt and stops instead of running on unsupervised."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_trial(trial: Trial, trial_dir: str) -> dict[str, Any]:
    """Run (or resume) one trial to its end in a child process; raise if it fails, so that Ray retries it."""
    folder = Path(trial_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state, resume = trial_state(trial, folder)
    if state == "done":
        return json.loads((folder / "trial.json").read_text())
    if state == "new" and not trial.command:
        for run_dir in run_directories(folder):  # started but killed before its first checkpoint: start afresh
            shutil.rmtree(run_dir)
    argv = trial.argv(folder, resume)
    if state == "ended":  # the run finished but its worker died before recording it
        return record_trial(trial, folder, shlex.join(argv), 0.0, resumed=True)
    env = {"MUJOCO_GL": "egl", **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    with open(folder / "trial.log", "a") as log:
        log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        (folder / "trial.pid").write_text(str(process.pid))
        returncode = process.wait()
    (folder / "trial.pid").unlink(missing_ok=True)
    seconds = folder / "trial.seconds"  # wall time summed over the attempts
    total = time.time() - start + (float(seconds.read_text()) if seconds.is_file() else 0.0)
    seconds.write_text(str(total))
    if returncode != 0:
        raise RuntimeError(f"trial {trial.name} exited with status {returncode}; see {folder / 'trial.log'}")
    return record_trial(trial, folder, shlex.join(argv), total, resumed=resume is not None)


def record_trial(trial: Trial, folder: Path, command: str, wall_seconds: float, resumed: bool) -> dict[str, Any]:
    """Write trial.json, the mark of a finished trial."""
    runs = run_directories(folder)
    result = {
        "trial": dataclasses.asdict(trial),
        "run_dir": str(runs[-1]) if runs else str(folder),
        "command": command,
        "wall_seconds": wall_seconds,
        "resumed": resumed,
    }
    tmp = folder / "trial.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, folder / "trial.json")
    return result


def save_manifest(sweep_dir: Path, trials: list[Trial], command: str | None) -> None:
    """sweep.json: every trial this sweep ever had and the commands that ran it (earlier invocations' are kept)."""
    path = sweep_dir / "sweep.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"trials": [], "commands": []}
    names = {Trial(**fix_trial(t)).name for t in manifest["trials"]}
    manifest["trials"] += [dataclasses.asdict(t) for t in trials if t.name not in names]
    commands = manifest.setdefault("commands", [])
    if command is not None and command not in commands:
        commands.append(command)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2))


def fix_trial(record: dict[str, Any]) -> dict[str, Any]:
    """A Trial's fields from JSON (lists back to tuples)."""
    return {**record, "flags": tuple(tuple(p) for p in record["flags"]), "command": tuple(record["command"])}


def run_sweep(args: SweepArgs, extra: list[Trial] | None = None, command: str | None = None) -> Path:
    """Run every trial not yet finished (those of `args`, then `extra`); returns the sweep folder. Raises
    RuntimeError when trials still fail after their retries. `command`, the invocation, is kept in sweep.json."""
    args, listed = load_config(args)
    if args.name is None:
        raise UsageError("Name the sweep: --name NAME (its folder is <root>/NAME), or give --config FILE.")
    trials = make_trials(args) + listed + list(extra or [])
    if not trials:
        raise UsageError("The sweep has no trials: give --agents and --env-ids (or [[trials]] in --config).")
    for trial in trials:
        if not trial.command and trial.agent not in AGENTS:
            raise UsageError(f"Unknown agent {trial.agent!r}; use one of: {', '.join(sorted(AGENTS))}.")
    sweep_dir = Path(args.root) / args.name
    todo = [t for t in trials if trial_state(t, sweep_dir / t.name)[0] != "done"]
    print(f"sweep {sweep_dir}: {len(trials)} trials, {len(trials) - len(todo)} finished, {len(todo)} to run")
    if args.dry_run:
        for t in todo:
            state, resume = trial_state(t, sweep_dir / t.name)
            print(f"  {state:6s} {shlex.join(t.argv(sweep_dir / t.name, resume))}")
        return sweep_dir
    if not todo:
        return sweep_dir
    require(*RAY)  # before the sweep folder is made
    save_manifest(sweep_dir, trials, command)
    failures = schedule(args, todo, sweep_dir)
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(todo)} trials failed after {args.max_retries} retries: "
            + "; ".join(failures)
            + ". Run the sweep again to resume them."
        )
    return sweep_dir


def schedule(args: SweepArgs, todo: list[Trial], sweep_dir: Path) -> list[str]:
    """Submit the trials as Ray tasks, at most `max_concurrent` at once; returns the failures' messages."""
    ray = require(*RAY)
    max_concurrent = args.max_concurrent or (os.cpu_count() or 1)
    if args.address is None:
        ray.init(num_cpus=max_concurrent, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        # the cluster's workers get what this shell points mixrl at: your packages, datasets, the GL backend
        env_vars = {k: os.environ[k] for k in ("PYTHONPATH", "MINARI_DATASETS_PATH", "MUJOCO_GL") if k in os.environ}
        try:
            ray.init(
                address=args.address, log_to_driver=False, configure_logging=False, runtime_env={"env_vars": env_vars}
            )
        except ConnectionError as err:
            raise UsageError(
                f"--address {args.address}: cannot join the Ray cluster ({str(err).splitlines()[0]}). Check the "
                "address (`ray status` on the head shows it), or try --address auto on a machine of the cluster."
            ) from None
    task = ray.remote(run_trial).options(
        num_cpus=1, num_gpus=args.gpus_per_trial, max_retries=args.max_retries, retry_exceptions=True
    )
    failures, pending, queue, done = [], {}, list(todo), 0
    try:
        while queue or pending:
            while queue and len(pending) < max_concurrent:
                trial = queue.pop(0)
                pending[task.remote(trial, str((sweep_dir / trial.name).resolve()))] = trial
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(ready[0])
            done += 1
            try:
                result = ray.get(ready[0])
                print(f"[{done}/{len(todo)}] {trial.name}: finished in {result['wall_seconds']:.0f} s", flush=True)
            except Exception as err:  # the task failed on its last retry
                failures.append(f"{trial.name} ({getattr(err, 'cause', err)})")
                print(f"[{done}/{len(todo)}] {trial.name}: FAILED, see {sweep_dir / trial.name / 'trial.log'}")
    finally:
        ray.shutdown()
    return failures


# ------------------------------------------------------------------------------------------------------ report
def shown_path(path: str | Path, root: str | Path | None = None) -> str:
    """`path` as a reader types it: relative to `root` (default: the working directory, where `mixrl` and the
    scripts run, the repository root), so that a committed report names no folder of the machine that wrote it."""
    try:
        return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(root or os.getcwd()))).as_posix()
    except ValueError:  # another drive (Windows)
        return str(path)


def shown_command(command: str | list[str], root: str | Path | None = None) -> str:
    """A command line as a reader types it: `<python> -m mixrl.cli ARGS` as `mixrl ARGS`, any other interpreter as
    `python`, and absolute paths (also the PATH of --flag=PATH or key=PATH) relative to `root` (see shown_path)."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if argv and (argv[0] == sys.executable or INTERPRETER.fullmatch(Path(argv[0]).name)):
        argv = ["mixrl", *argv[3:]] if argv[1:3] == ["-m", "mixrl.cli"] else ["python", *argv[1:]]
    shown = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if os.path.isabs(arg):
            arg = shown_path(arg, root)
        elif equals and os.path.isabs(value):
            arg = f"{key}={shown_path(value, root)}"
        shown.append(arg)
    return shlex.join(shown)


def trial_records(sweep_dir: Path, root: str | Path | None = None) -> list[dict[str, Any]]:
    """One record per finished trial: variant, env_id, seed, curve [(step, deterministic return)], wall_seconds,
    run_dir, training_return (mean of the last 100 training episodes, mixrl runs only), command. The run_dir and
    the command are as a reader types them, relative to `root` (default: the working directory; see shown_path),
    so that records can be committed."""
    manifest = sweep_dir / "sweep.json"
    if not manifest.is_file():
        raise MissingPathError(f"{sweep_dir} is no sweep folder (no sweep.json): run `mixrl sweep` first.")
    records = []
    for entry in json.loads(manifest.read_text())["trials"]:
        trial = Trial(**fix_trial(entry))
        done = sweep_dir / trial.name / "trial.json"
        if not done.is_file():
            continue
        result = json.loads(done.read_text())
        run_dir = Path(result["run_dir"])
        lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
        records.append(
            {
                "variant": trial.label,
                "env_id": trial.env_id,
                "seed": trial.seed,
                "curve": [(e["step"], e["mean_return"]) for e in map(json.loads, lines)],
                "wall_seconds": result["wall_seconds"],
                "run_dir": shown_path(run_dir, root),
                "training_return": None if trial.command else training_return(run_dir),
                "command": shown_command(result["command"], root),
            }
        )
    return records


def training_return(run_dir: Path, episodes: int = 100) -> float | None:
    """Mean return of the last `episodes` training episodes of a mixrl run, from its TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None
    return float(np.mean([e.value for e in acc.Scalars("charts/episodic_return")][-episodes:]))


def summarize(records: list[dict[str, Any]], order: list[str] | None = None) -> list[dict[str, Any]]:
    """Per (env, variant): seeds, steps, final return and AUC (mean of the evaluation curve) as mean +- std over
    seeds, training return, wall time. `order` lists variants in the order to show them (others follow)."""
    variants = list(dict.fromkeys([*(order or []), *(r["variant"] for r in records)]))
    rows = []
    for env_id in sorted({r["env_id"] for r in records}):
        for variant in variants:
            runs = sorted((r for r in records if r["env_id"] == env_id and r["variant"] == variant), key=seed_key)
            if not runs:
                continue
            finals = [r["curve"][-1][1] for r in runs]
            aucs = [float(np.mean([v for _, v in r["curve"]])) for r in runs]
            training = [r.get("training_return") for r in runs]
            rows.append(
                {
                    "env_id": env_id,
                    "variant": variant,
                    "seeds": [r["seed"] for r in runs],
                    "steps": runs[0].get("total_timesteps", runs[0]["curve"][-1][0]),
                    "final": [float(np.mean(finals)), float(np.std(finals))],
                    "auc": [float(np.mean(aucs)), float(np.std(aucs))],
                    "training": None if None in training else [float(np.mean(training)), float(np.std(training))],
                    "minutes": float(np.mean([r["wall_seconds"] for r in runs]) / 60),
                    "finals": finals,
                }
            )
    return rows


def seed_key(record: dict[str, Any]) -> int:
    return record["seed"]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of `summarize` rows."""
    lines = [
        "| env | variant | seeds | steps | final return | AUC | training return | wall time per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        training = "-" if row["training"] is None else "{:.0f} +- {:.0f}".format(*row["training"])
        lines.append(
            f"| {row['env_id']} | {row['variant']} | {', '.join(map(str, row['seeds']))} | {row['steps']} "
            "| {:.0f} +- {:.0f} ".format(*row["final"])
            + "| {:.0f} +- {:.0f} ".format(*row["auc"])
            + f"| {training} | {row['minutes']:.0f} min |"
        )
    return lines


def plot_curves(records: list[dict[str, Any]], path: Path, order: list[str] | None = None, reference=None) -> None:
    """One panel per env: mean evaluation curve per variant, shaded min-max over seeds. `reference` maps
    (variant, env) to (mean, label) drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env_ids = sorted({r["env_id"] for r in records})
    variants = list(dict.fromkeys([*(order or []), *(r["variant"] for r in records)]))
    fig, axes = plt.subplots(1, len(env_ids), figsize=(6 * len(env_ids), 4), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids):
        for variant in variants:
            runs = sorted((r for r in records if r["env_id"] == env_id and r["variant"] == variant), key=seed_key)
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            steps = np.array([s for s, _ in runs[0]["curve"][:n]])
            values = np.array([[v for _, v in r["curve"][:n]] for r in runs])
            ax.plot(steps, values.mean(0), label=variant)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
            if reference and (variant, env_id) in reference:
                mean, label = reference[(variant, env_id)]
                ax.axhline(mean, linestyle="--", color="grey", label=label)
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("deterministic evaluation return")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cpu_name() -> str:
    """The CPU model (as `lscpu` names it), for the report's provenance line."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class ReportArgs:
    """Aggregate a sweep's finished trials: final return and AUC, mean +- std over seeds, and learning curves."""

    sweep_dir: Annotated[str, tyro.conf.Positional]
    """the sweep folder (<root>/<name>)"""
    output: str | None = None
    """write <output>.md, <output>.json and <output>.png (default: <sweep_dir>/report.*)"""
    title: str | None = None
    """the report's heading (default: the sweep's name)"""
    variants: tuple[str, ...] = field(default_factory=tuple)
    """the order of the variants in the table (default: as in the sweep)"""


def report_command(args: ReportArgs) -> str:
    """The `mixrl sweep report` command line that `args` stand for."""
    argv = ["mixrl", "sweep", "report", args.sweep_dir]
    for flag, value in (("--output", args.output), ("--title", args.title)):
        argv += [flag, value] if value else []
    return shlex.join(argv + (["--variants", *args.variants] if args.variants else []))


def report(args: ReportArgs) -> Path:
    """Write the Markdown table, the JSON of every trial and the learning-curve plot; returns the .md file."""
    sweep_dir = Path(args.sweep_dir)
    records = trial_records(sweep_dir)
    if not records:
        raise UsageError(f"No finished trials in {sweep_dir} yet: run or continue it with `mixrl sweep` first.")
    out = Path(args.output) if args.output else sweep_dir / "report"
    rows = summarize(records, list(args.variants))
    plot_curves(records, out.with_suffix(".png"), list(args.variants))
    lines = [
        f"# {args.title or sweep_dir.name}",
        "",
        "Deterministic evaluation return, mean +- std over seeds: the final evaluation, and the AUC (the mean of the "
        "evaluation curve over training). The training return is the mean of the last 100 training episodes of "
        "each mixrl run (the stochastic policy). Wall times depend on what else the machine ran.",
        "",
        *table_lines(rows),
        "",
        f"![curves]({out.with_suffix('.png').name})",
        "",
        f"Shaded: min-max over seeds. Machine: {cpu_name()} ({os.cpu_count()} cores). {len(records)} finished trials "
        f"in {shown_path(sweep_dir)}, made with:",
        "",
        *(f"    {shown_command(c)}" for c in json.loads((sweep_dir / "sweep.json").read_text()).get("commands", [])),
        f"    {shown_command(report_command(args))}",
        "",
        "Trial commands:",
        "",
        *sorted(f"    {r['command']}" for r in records),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "trials": records}, indent=2))
    print("\n".join(lines[:-6]))
    return out.with_suffix(".md")


def main(rest: list[str]) -> None:
    """`mixrl sweep ...` and `mixrl sweep report ...`."""
    if rest and rest[0] == "report":
        report(tyro.cli(ReportArgs, args=rest[1:], prog="mixrl sweep report"))
        return
    try:
        sweep_dir = run_sweep(
            tyro.cli(SweepArgs, args=rest, prog="mixrl sweep"), command=shlex.join(["mixrl", "sweep", *rest])
        )
    except RuntimeError as err:  # trials that failed on every retry: their logs say why
        sys.exit(f"mixrl sweep: {err}")
    print(f"sweep folder: {sweep_dir} (tables and plots: mixrl sweep report {sweep_dir})")
