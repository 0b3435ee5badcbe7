"""The `mixrl` command line: help texts, a tiny training run, evaluation with video, and error messages."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from mixrl.checkpoints import load_checkpoint


def mixrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixrl.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_flags():
    top = mixrl("--help")
    assert top.returncode == 0 and "sac" in top.stdout and "eval" in top.stdout
    sac_help = mixrl("sac", "--help")
    assert sac_help.returncode == 0 and "--utd-ratio" in sac_help.stdout and "update-to-data" in sac_help.stdout
    module_help = subprocess.run([sys.executable, "-m", "mixrl.agents.sac", "--help"], capture_output=True, text=True)
    assert module_help.returncode == 0 and "--total-timesteps" in module_help.stdout
    assert "--video" in mixrl("eval", "--help").stdout


def test_train_then_eval_with_video(tmp_path):
    train = mixrl(
        "sac",
        "--env-id",
        "InvertedPendulum-v5",
        "--total-timesteps",
        "300",
        "--learning-starts",
        "100",
        "--batch-size",
        "32",
        "--eval-episodes",
        "1",
        "--run-root",
        str(tmp_path / "runs"),
    )
    assert train.returncode == 0, train.stderr
    run_dir = Path(train.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    assert (run_dir / "checkpoints" / "final.pt").is_file() and (run_dir / "config.json").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())

    evaluation = mixrl("eval", str(run_dir), "--episodes", "2", "--video", "--max-video-frames", "20")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "over 2 deterministic episodes" in evaluation.stdout
    video = run_dir / "videos" / "episode_0.mp4"
    assert video.is_file() and video.stat().st_size > 1000
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) >= 2 and frames[0].shape == (480, 480, 3)  # Gymnasium's MuJoCo default render size
    assert len(json.loads((run_dir / "eval.json").read_text())["returns"]) == 2


def test_errors_are_one_clear_line():
    unknown_env = mixrl("sac", "--env-id", "HalfCheeta-v5")
    assert unknown_env.returncode != 0 and "Did you mean: HalfCheetah-v5" in unknown_env.stderr
    assert "Traceback" not in unknown_env.stderr
    missing = mixrl("eval", "no/such/run")
    assert missing.returncode != 0 and "No run directory or checkpoint" in missing.stderr
    unknown_command = mixrl("sacc")
    assert unknown_command.returncode != 0 and "unknown command 'sacc'" in unknown_command.stderr


def test_sigterm_stops_after_the_iteration_with_the_resume_command(tmp_path):
    flags = ["--env-id", "Pendulum-v1", "--learning-starts", "50", "--batch-size", "16", "--hidden-sizes", "16"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mixrl.cli", "sac", *flags, "--checkpoint-every", "0", "--run-root", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/config.json")) and time.time() < deadline:  # the loop has started
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    (run,) = tmp_path.iterdir()
    step = load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"]
    assert process.returncode == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"mixrl sac: stopped at step {step}; continue with --resume {run}"


def test_training_command_gives_back_the_saved_args():
    """The command rebuilt from a checkpoint's Args parses to those Args: lists, booleans turned off, strings."""
    import dataclasses
    import shlex

    from mixrl.agents import sac
    from mixrl.cli import training_command
    from mixrl.runs import parse_args

    trained = sac.Args(
        env_id="Hopper-v5", env_kwargs=("ctrl_cost_weight=0.01",), hidden_sizes=(64, 32), autotune=False, compile=True,
        utd_ratio=2.0, policy="gmm", run_root="elsewhere",
    )  # fmt: skip
    saved = json.loads(json.dumps(dataclasses.asdict(trained)))  # as a checkpoint stores them: tuples as lists
    command = shlex.split(training_command({"agent": "sac", "algo": "pmoe_sac", "args": saved}))
    assert command[:2] == ["mixrl", "sac"] and "--run-root" not in command and "--seed" not in command
    assert parse_args(sac.Args, command[2:]) == dataclasses.replace(trained, run_root="runs")
