"""Faults: SIGTERM at any point of an iteration (inside an update too) stops at the iteration's end and resumes
exactly, for every agent; SIGKILL at random moments and during a checkpoint write leaves no corrupt file, and
the run continues from what is left."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tiny import a2pr_args, dataset_root, datasets, dqn_args, ppo_args, rlpd_args, sac_args, td3_bc_args  # noqa: F401

import mixrl
from mixrl.agents import a2pr, dqn, ppo, rlif, sac, td3_bc
from mixrl.buffers import ReplayBuffer
from mixrl.checkpoints import load_checkpoint
from mixrl.envs.factory import TorchVecEnv
from mixrl.optim import FlatAdam
from mixrl.runs import Interrupted

AGENTS = {
    "sac": (sac, sac_args, "total_timesteps"),
    "ppo": (ppo, ppo_args, "total_timesteps"),
    "rlif": (rlif, rlpd_args, "total_timesteps"),
    "dqn": (dqn, dqn_args, "total_timesteps"),
    "td3_bc": (td3_bc, td3_bc_args, "total_steps"),
    "a2pr": (a2pr, a2pr_args, "total_steps"),
}
# (agent, the method that sends SIGTERM to the process, at which call): inside an update (between two optimiser
# steps), between an env step and storing its transition, before sampling a batch, mid-rollout.
POINTS = [
    ("sac", FlatAdam, "step", 7),  # the actor's step of the 4th update: after its critic step
    ("sac", TorchVecEnv, "step", 130),
    ("sac", ReplayBuffer, "sample", 5),
    ("rlif", FlatAdam, "step", 11),  # the actor's step of the 3rd RLPD update: after its 2 critic steps
    ("rlif", TorchVecEnv, "step", 90),
    ("ppo", FlatAdam, "step", 6),  # the 2nd epoch of the 2nd iteration
    ("ppo", TorchVecEnv, "step", 40),
    ("dqn", torch.optim.AdamW, "step", 30),
    ("dqn", TorchVecEnv, "step", 120),
    ("td3_bc", FlatAdam, "step", 3),  # the actor's step of the 2nd update, after its critic step
    ("td3_bc", ReplayBuffer, "sample", 2),
    ("a2pr", FlatAdam, "step", 6),  # the VAE step of the 2nd update: after its critic and value steps
    ("a2pr", FlatAdam, "step", 10),
]


def final_state(run) -> dict[str, dict[str, torch.Tensor]]:
    """The networks' weights and the FlatAdam moments of a run's final checkpoint."""
    states = load_checkpoint(run)["state"].items()
    return {
        name: {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
        for name, state in states
        if isinstance(state, dict)
    }


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """agent -> the final state of its uninterrupted tiny run (computed once)."""
    cache = {}

    def get(agent: str):
        if agent not in cache:
            module, make_args, _ = AGENTS[agent]
            cache[agent] = final_state(module.main(make_args(tmp_path_factory.mktemp(agent))))
        return cache[agent]

    return get


@pytest.mark.usefixtures("datasets")
@pytest.mark.parametrize(("agent", "owner", "method", "call"), POINTS, ids=lambda p: getattr(p, "__name__", str(p)))
def test_sigterm_anywhere_in_an_iteration_resumes_exactly(
    tmp_path,
    monkeypatch,
    straight_runs,
    agent,
    owner,
    method,
    call,
):
    module, make_args, budget = AGENTS[agent]
    straight = straight_runs(agent)

    original, calls = getattr(owner, method), []

    def terminated_at_call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)  # `kill`, delivered between two bytecodes of this iteration
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, terminated_at_call)
    with pytest.raises(Interrupted):
        module.main(make_args(tmp_path / "stopped"))
    monkeypatch.setattr(owner, method, original)
    run = next((tmp_path / "stopped" / "runs").iterdir())
    stopped_at = load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"]
    assert 0 < stopped_at < getattr(make_args(tmp_path), budget)
    resumed = final_state(module.main(module.Args(resume=str(run))))
    assert resumed.keys() == straight.keys()
    for name, state in straight.items():
        for key, value in state.items():
            assert torch.equal(value, resumed[name][key]), f"{name}.{key} differs after SIGTERM at {stopped_at}"


# ---------------------------------------------------------------------------------------------------------------
# SIGKILL
# ---------------------------------------------------------------------------------------------------------------

TRAIN = """
import sys
from mixrl.agents import sac
run_root, resume = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
args = sac.Args(env_id="Pendulum-v1", total_timesteps=4000, learning_starts=100, batch_size=16, hidden_sizes=(16, 16),
                eval_every=100, eval_episodes=1, checkpoint_every=50, run_root=run_root, resume=resume)
sac.main(args)
"""
KILLED_WHILE_SAVING = """
import os, signal, torch
save, calls = torch.save, []
def save_then_die(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the third checkpoint write: half a file, then SIGKILL
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)
torch.save = save_then_die
"""


def python(code: str, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *argv], env=env, stderr=subprocess.PIPE)


def check_left_files(run) -> int:
    """Every checkpoint left loads and gives a policy; evaluations.jsonl is whole lines (but a torn last one)."""
    for file in (run / "checkpoints").glob("*.pt"):
        policy = mixrl.load_policy(file)
        assert policy([0.0, 0.0, 0.0]).shape == (1,)
    lines = (run / "evaluations.jsonl").read_text().splitlines() if (run / "evaluations.jsonl").exists() else []
    for line in lines[:-1]:
        json.loads(line)
    return load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"]


def test_sigkill_during_a_checkpoint_write_and_at_random_moments_loses_nothing_written(tmp_path):
    root = str(tmp_path / "runs")
    killed = python(KILLED_WHILE_SAVING + TRAIN, root)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    (run,) = (tmp_path / "runs").iterdir()
    assert list((run / "checkpoints").glob(".latest.pt.*.tmp"))  # the write was cut short...
    assert check_left_files(run) == 100  # ...and latest.pt is still the second one

    rng = random.Random(0)
    steps = [100]
    for _ in range(2):  # resume, then SIGKILL at a random moment once it has written a newer checkpoint
        process = python(TRAIN, root, str(run))
        deadline = time.time() + 300
        while check_step(run) <= steps[-1] and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        steps.append(check_left_files(run))
    assert steps[0] < steps[1] <= steps[2] < 4000, steps
    done = sac.main(sac.Args(resume=str(run), total_timesteps=steps[-1] + 100))
    assert check_left_files(done) == steps[-1] + 100 and load_checkpoint(done)["global_step"] == steps[-1] + 100
    assert not list(run.rglob("*.tmp"))
    evaluations = [json.loads(line)["step"] for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert evaluations == [*range(100, steps[-1] + 100, 100), steps[-1] + 100]


def check_step(run) -> int:
    try:
        return torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["global_step"]
    except Exception:  # noqa: BLE001  (not written yet, or being replaced)
        return -1
