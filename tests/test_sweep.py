"""`mixrl sweep` on Ray: trials from flags or TOML, a killed trial is retried and resumes from its own checkpoint to
the same result as an uninterrupted run, a finished sweep reruns nothing, and `mixrl sweep report` tabulates it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mixrl.agents import sac
from mixrl.checkpoints import load_checkpoint
from mixrl.cli import main as cli_main
from mixrl.sweep import SweepArgs, Trial, load_config, make_trials, record_trial, run_directories, save_manifest

FLAGS = {
    "total-timesteps": "1500",
    "learning-starts": "100",
    "batch-size": "16",
    "hidden-sizes": "16 16",
    "eval-every": "500",
    "eval-episodes": "1",
    "checkpoint-every": "100",
}
SWEEP = [
    *("sweep", "--name", "small", "--agents", "sac", "--env-ids", "Pendulum-v1", "--seeds", "1", "2"),
    *("--max-concurrent", "2", "--max-retries", "1", "--flags", *(f"{k}={v}" for k, v in FLAGS.items())),
]


def mixrl(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mixrl.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["mean_return"]) for e in map(json.loads, (run_dir / "evaluations.jsonl").open())]


def test_killed_trial_is_retried_and_resumed_and_a_finished_sweep_reruns_nothing(tmp_path, capsys):
    sweep = mixrl(*SWEEP)
    trial = tmp_path / "sweeps" / "small" / Trial("sac", "Pendulum-v1", 1, tuple(FLAGS.items())).name
    deadline = time.time() + 300
    while not list(trial.glob("*/checkpoints/latest.pt")):  # kill seed 1 once it has a checkpoint
        assert sweep.poll() is None and time.time() < deadline, sweep.stdout.read() if sweep.poll() else "timeout"
        time.sleep(0.05)
    os.kill(int((trial / "trial.pid").read_text()), signal.SIGKILL)
    output = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, output
    assert "2 trials, 0 finished, 2 to run" in output

    attempts = [line for line in (trial / "trial.log").read_text().splitlines() if line.startswith("==> ")]
    assert len(attempts) == 2 and "--resume" not in attempts[0] and "--resume" in attempts[1]
    (run_dir,) = run_directories(trial)  # the retry continued the same run directory
    assert load_checkpoint(run_dir)["global_step"] == 1500
    assert json.loads((trial / "trial.json").read_text())["resumed"]

    # The resumed trial ends where an uninterrupted run with the same flags does: nothing lost, nothing run twice.
    kwargs = {k.replace("-", "_"): v for k, v in FLAGS.items()}
    kwargs = {k: tuple(map(int, v.split())) if k == "hidden_sizes" else int(v) for k, v in kwargs.items()}
    direct = sac.main(sac.Args(env_id="Pendulum-v1", seed=1, run_root=str(tmp_path / "direct"), **kwargs))
    assert evaluations(run_dir) == evaluations(direct)

    # A rerun finds both trials finished: no Ray, no process, no file touched.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweeps").rglob("*") if p.is_file()}
    rerun = mixrl(*SWEEP)
    assert "2 trials, 2 finished, 0 to run" in rerun.communicate(timeout=120)[0] and rerun.returncode == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "sweeps").rglob("*") if p.is_file()}

    cli_main(["sweep", "report", str(tmp_path / "sweeps" / "small"), "--output", str(tmp_path / "report")])
    finals = [evaluations(run_directories(d)[0])[-1][1] for d in sorted((tmp_path / "sweeps" / "small").glob("sac*"))]
    row = json.loads((tmp_path / "report.json").read_text())["rows"][0]
    assert row["seeds"] == [1, 2] and row["final"] == pytest.approx([np.mean(finals), np.std(finals)])
    assert (
        f"| Pendulum-v1 | sac | 1, 2 | 1500 | {np.mean(finals):.0f} +- {np.std(finals):.0f} |"
        in (tmp_path / "report.md").read_text()
    )
    assert (tmp_path / "report.png").is_file()


def test_trials_from_a_toml_file_and_the_command_line(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(
        'agents = ["sac", "ppo"]\nenv_ids = ["Pendulum-v1"]\nseeds = [1, 2, 3]\n'
        "[flags]\ntotal-timesteps = 2000\nhidden-sizes = [32, 32]\n[grid]\nnormalize-obs = [true, false]\n"
        '[[trials]]\nagent = "dqn"\nenv_id = "CartPole-v1"\nseed = 7\nflags = {total-timesteps = 500}\n'
    )
    args, listed = load_config(SweepArgs(config=str(config), seeds=(4,)))
    trials = make_trials(args) + listed
    assert args.name == "grid" and len(trials) == 2 * 2 * 1 + 1  # the command line's seeds win over the file's
    names = {t.name for t in trials}
    assert len(names) == len(trials) and all("/" not in n for n in names)
    grid_labels = {f"{agent}[normalize-obs={value}]" for agent in ("sac", "ppo") for value in ("true", "false")}
    assert {t.label for t in trials} == grid_labels | {"dqn"}
    argv = next(t for t in trials if t.label == "sac[normalize-obs=false]").argv(tmp_path, None)
    assert argv[3:] == [
        *("sac", "--env-id", "Pendulum-v1", "--seed", "4", "--run-root", str(tmp_path)),
        *("--total-timesteps", "2000", "--hidden-sizes", "32", "32", "--no-normalize-obs"),
    ]
    assert listed[0].argv(tmp_path, None)[-2:] == ["--total-timesteps", "500"]

    cli_main(["sweep", "--config", str(config), "--dry-run"])
    out = capsys.readouterr().out
    assert "13 trials, 0 finished, 13 to run" in out and out.count(" new ") == 13  # the file's 3 seeds
    assert not (tmp_path / "sweeps").exists()  # a dry run writes nothing
    with pytest.raises(ValueError, match="may not set seed"):
        make_trials(SweepArgs(name="x", agents=("sac",), env_ids=("Pendulum-v1",), flags=("seed=3",)))
    with pytest.raises(SystemExit, match="Unknown agent 'sca'"):
        cli_main(["sweep", "--name", "x", "--agents", "sca", "--env-ids", "Pendulum-v1"])


def absolute_paths(text: str) -> list[str]:
    """The words of `text` that are absolute paths."""
    return [word for word in re.findall(r"[^\s\"'`(),|=]+", text) if word.startswith("/")]


def test_report_names_commands_and_paths_as_a_reader_types_them(tmp_path, capsys):
    """A finished trial as the sweep records it (the interpreter's path, the resolved trial folder), reported with
    absolute paths on the command line: the report names no folder of this machine, and its commands read as typed
    in the working directory (`mixrl sac ... --run-root sweeps/...`)."""
    sweep_dir = tmp_path / "sweeps" / "small"
    trial = Trial("sac", "Pendulum-v1", 1, tuple(FLAGS.items()))
    folder = (sweep_dir / trial.name).resolve()  # as Ray's task receives it
    run_dir = folder / "Pendulum-v1__sac__1__1796199002"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "evaluations.jsonl").write_text("".join(f'{{"step": {s}, "mean_return": {-s}}}\n' for s in (500, 1500)))
    save_manifest(sweep_dir, [trial], shlex.join(["mixrl", *SWEEP]))
    command = shlex.join(trial.argv(folder, None))
    assert command.startswith(sys.executable) and str(tmp_path) in command  # what the trial really ran
    record_trial(trial, folder, command, wall_seconds=60.0, resumed=False)

    cli_main(["sweep", "report", str(sweep_dir), "--output", str(tmp_path / "results" / "small")])
    md, js = (tmp_path / "results" / "small.md").read_text(), (tmp_path / "results" / "small.json").read_text()
    for text in (md, js):
        assert str(tmp_path) not in text and sys.executable not in text and not absolute_paths(text)
    typed = ["mixrl", *trial.argv(Path("sweeps/small") / trial.name, None)[3:]]  # mixrl sac ... --run-root sweeps/...
    assert f"    {shlex.join(typed)}" in md and typed[:2] == ["mixrl", "sac"]
    assert "    mixrl sweep report sweeps/small --output results/small" in md and "trials in sweeps/small," in md
    assert json.loads(js)["trials"][0]["run_dir"] == f"sweeps/small/{trial.name}/{run_dir.name}"
