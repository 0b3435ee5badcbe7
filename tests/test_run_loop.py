"""The run loop every agent shares (mixrl/runs.py): finished runs, budgets that train nothing, a full disk, and
one evaluation rule for all agents."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from test_smoke import AGENTS, OFFLINE
from tiny import dataset_root, datasets, dqn_args, rlpd_args, sac_args  # noqa: F401

from mixrl import checkpoints, runs
from mixrl.agents import dqn, rlif, sac
from mixrl.checkpoints import load_checkpoint
from mixrl.runs import RunFinished, UsageError


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run directory with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_is_refused_and_writes_nothing(tmp_path):
    run_dir = sac.main(sac_args(tmp_path, eval_every=100))
    before = snapshot(run_dir)
    steps = [json.loads(line)["step"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert steps == [100, 200]
    with pytest.raises(RunFinished, match=r"finished at step 200 .*--resume .* --total-timesteps N"):
        sac.main(sac.Args(resume=str(run_dir)))
    with pytest.raises(RunFinished):  # the same budget given again
        sac.main(sac.Args(resume=str(run_dir), total_timesteps=200))
    assert snapshot(run_dir) == before
    # Killed after the final evaluation and latest.pt, before final.pt: finished all the same.
    (run_dir / "checkpoints" / "final.pt").unlink()
    before = snapshot(run_dir)
    with pytest.raises(RunFinished):
        sac.main(sac.Args(resume=str(run_dir)))
    assert snapshot(run_dir) == before
    # A larger budget extends it: one new evaluation line per new evaluation, no duplicate step.
    sac.main(sac.Args(resume=str(run_dir), total_timesteps=300))
    steps = [json.loads(line)["step"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300]


def test_a_run_stopped_at_its_last_step_before_the_final_evaluation_is_not_finished(tmp_path, monkeypatch):
    """A periodic checkpoint at the budget would hold a state without its final evaluation: none is written there,
    so the newest checkpoint before the end resumes and evaluates once."""
    real_evaluate = runs.Run.evaluate

    def evaluate_then_crash(self, step):
        if step == 200:
            raise RuntimeError("killed during the final evaluation")
        return real_evaluate(self, step)

    monkeypatch.setattr(runs.Run, "evaluate", evaluate_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        sac.main(sac_args(tmp_path, eval_every=100, checkpoint_every=100))
    monkeypatch.setattr(runs.Run, "evaluate", real_evaluate)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(run_dir, newest=True)["global_step"] == 100
    sac.main(sac.Args(resume=str(run_dir)))
    steps = [json.loads(line)["step"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert steps == [100, 200]


@pytest.mark.parametrize("budget", [100, 50])
@pytest.mark.parametrize("agent", ["sac", "dqn", "rlif"])
def test_a_budget_at_or_below_learning_starts_is_refused_before_anything_is_written(tmp_path, agent, budget):
    module, make_args = {"sac": (sac, sac_args), "dqn": (dqn, dqn_args), "rlif": (rlif, rlpd_args)}[agent]
    with pytest.raises(UsageError, match=f"--total-timesteps {budget} is not above --learning-starts 100"):
        module.main(make_args(tmp_path, total_timesteps=budget, learning_starts=100))
    assert not (tmp_path / "runs").exists()


def test_a_full_disk_is_one_line_with_the_resume_command_and_the_last_checkpoint_intact(tmp_path, monkeypatch):
    real_save = checkpoints.atomic_torch_save
    writes = []

    def save_until_the_disk_is_full(obj, path):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(obj, path)

    monkeypatch.setattr(runs, "atomic_torch_save", save_until_the_disk_is_full)
    with pytest.raises(UsageError) as caught:
        sac.main(sac_args(tmp_path, total_timesteps=300))
    (run_dir,) = (tmp_path / "runs").iterdir()
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message and "latest.pt of step 100 is intact" in message
    assert f"mixrl sac --resume {run_dir}" in message
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 100  # the previous one, whole


def test_a_file_size_limit_at_the_command_line_is_one_line_not_a_traceback(tmp_path):
    """`ulimit -f 52` (KiB): the checkpoint of step 200 fits, the one of step 400 (a fuller buffer) does not."""
    flags = "--env-id Pendulum-v1 --total-timesteps 1000 --learning-starts 100 --batch-size 16 --checkpoint-every 200"
    flags += " --hidden-sizes 16 16 --buffer-size 1000"
    command = f"ulimit -f 52; exec {sys.executable} -m mixrl.cli sac {flags} --run-root {tmp_path}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, env=os.environ)
    (run_dir,) = tmp_path.iterdir()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "mixrl sac: error: No room to write a run file (File too large) at step 400: checkpoints/latest.pt of step "
        f"200 is intact; free disk space, then continue with `mixrl sac --resume {run_dir}`."
    )
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 200


@pytest.mark.parametrize("agent", list(AGENTS))
def test_every_agent_evaluates_from_the_same_seeds_on_a_forked_rng(request, tmp_path, monkeypatch, agent):
    """One rule for all agents: evaluation episodes start from reset seed 10_000 + seed, and evaluating leaves the
    torch RNG of training where it was (a stochastic evaluation rule draws from a forked stream)."""
    if agent in OFFLINE:
        request.getfixturevalue("datasets")
    seeds = []

    def drawing_evaluate(policy, env_id, episodes, seed, env_kwargs=None):
        seeds.append(seed)
        torch.rand(7)  # an evaluation that draws: must not shift the training stream
        return {"mean_return": 0.0, "std_return": 0.0}

    monkeypatch.setattr(runs, "evaluate", drawing_evaluate)
    AGENTS[agent](tmp_path, "cpu")
    assert seeds and set(seeds) == {runs.eval_seed(1)} == {10_001}
    state = torch.get_rng_state()
    with runs.Run(sac_args(tmp_path), "sac", "Pendulum-v1") as run:
        run.policy = types.SimpleNamespace(
            acting=lambda: torch.nn.Identity(), observation_space=None, action_space=None, env_id="x", env_kwargs={},
            obs_normalizer=lambda: None, score=None,
        )  # fmt: skip
        monkeypatch.setattr(runs, "Policy", lambda *args: None)
        run.evaluate(0)
    assert torch.equal(torch.get_rng_state(), state)
