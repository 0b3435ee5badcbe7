"""The run plumbing of mixrl.runs and the agents' loops: which checkpoint a resume reads, which flags it takes,
atomic files, error types, and the smaller defects (utd < 1, raw observations in SAC's buffer, Discrete.start,
unbounded actions, final.pt without the buffer, PPO's learning rate on an extended resume, clean-up on errors)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import a2pr_args, dataset_root, datasets, dqn_args, ppo_args, sac_args, td3_bc_args  # noqa: F401

import mixrl
from mixrl import cli
from mixrl.agents import a2pr, dqn, ppo, sac, td3_bc
from mixrl.checkpoints import CHECKPOINT_FORMAT, atomic_write, find_checkpoint, load_checkpoint
from mixrl.envs.factory import TorchVecEnv
from mixrl.evaluation import evaluate_checkpoint
from mixrl.runs import (
    Parts,
    Run,
    RunFinished,
    RunPolicy,
    UsageError,
    agent_name,
    given_fields,
    given_flags,
    parse_args,
    resume_args,
    set_cpu_math,
)


def test_set_cpu_math_sets_the_threads_and_flushes_denormals():
    threads = torch.get_num_threads()
    try:
        torch.set_flush_denormal(False)
        denormal = torch.tensor([1e-40])  # below float32's smallest normal number, 1.2e-38
        assert (denormal * 1.0).item() > 0
        set_cpu_math(2)
        assert torch.get_num_threads() == 2
        assert (denormal * 1.0).item() == 0.0
        assert (torch.tensor([1e-30]) * 1e-10).item() == 0.0  # results below the range flushed too
        assert torch.tensor([1e-37]).mul(1.0).item() > 0  # normal numbers untouched
    finally:
        torch.set_flush_denormal(True)
        torch.set_num_threads(threads)


def count_env_steps(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count TorchVecEnv.step calls; raise RuntimeError at call `fail_at` (a crash that is no interrupt)."""
    step, calls = TorchVecEnv.step, []

    def counted(self, actions):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("crash")
        return step(self, actions)

    monkeypatch.setattr(TorchVecEnv, "step", counted)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# 1. resume reads the newest checkpoint
# ---------------------------------------------------------------------------------------------------------------


def test_resume_of_an_extended_run_continues_from_latest_not_final(tmp_path, monkeypatch):
    run = sac.main(sac_args(tmp_path, total_timesteps=200, eval_every=100))
    calls = count_env_steps(monkeypatch, fail_at=150)  # the extension crashes at step 350; latest.pt is at 300
    with pytest.raises(RuntimeError):
        sac.main(sac.Args(resume=str(run), total_timesteps=400))
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 300
    assert load_checkpoint(run)["global_step"] == 200  # load_policy and eval still prefer final.pt
    calls.clear()
    monkeypatch.undo()
    calls = count_env_steps(monkeypatch)
    sac.main(sac.Args(resume=str(run), total_timesteps=400))
    assert len(calls) == 100  # from step 300, not from final.pt's 200
    steps = [json.loads(line)["step"] for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300, 400]


# ---------------------------------------------------------------------------------------------------------------
# 3. utd < 1, no steps at all, resuming a finished offline run
# ---------------------------------------------------------------------------------------------------------------


def test_utd_below_one_zero_steps_and_resuming_a_finished_offline_run(tmp_path, datasets):  # noqa: F811
    ckpt = load_checkpoint(sac.main(sac_args(tmp_path, utd_ratio=0.25)))
    assert ckpt["global_step"] == 200 and ckpt["state"]["q_optimizer"]["steps"] == 25
    zero = td3_bc.main(td3_bc_args(tmp_path, total_steps=0))
    assert load_checkpoint(zero)["global_step"] == 0
    finished = td3_bc.main(td3_bc_args(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    with pytest.raises(RunFinished, match=r"finished at step 6 \(--total-steps 6\)"):
        td3_bc.main(td3_bc.Args(resume=str(finished)))
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before  # nothing written
    assert load_checkpoint(finished)["global_step"] == 6


# ---------------------------------------------------------------------------------------------------------------
# 4. given flags, not defaults; what a resume takes from where
# ---------------------------------------------------------------------------------------------------------------


def test_resume_takes_a_given_budget_even_when_it_equals_the_default(tmp_path, monkeypatch, capsys):
    run = str(sac.main(sac_args(tmp_path)))
    args, _ = resume_args(sac.Args(resume=run, total_timesteps=1_000_000), "total_timesteps")
    assert args.total_timesteps == 1_000_000
    args, _ = resume_args(sac.Args(resume=run, total_timesteps=300), "total_timesteps")
    assert args.total_timesteps == 300 and args.hidden_sizes == (16, 16)
    with pytest.raises(RunFinished):  # the saved budget, reached
        resume_args(sac.Args(resume=run), "total_timesteps")

    seen = []

    def fake_main(args):  # the CLI path: parse, mark the given flags, resume
        seen.append(resume_args(args, "total_timesteps")[0])
        return Path(run)

    monkeypatch.setattr(sac, "main", fake_main)
    cli.main(["sac", "--resume", run, "--total-timesteps", "1000000"])
    assert seen[0].total_timesteps == 1_000_000
    assert "from the command line --total-timesteps 1000000" in capsys.readouterr().out


def test_resume_refuses_flags_it_would_ignore_and_writes_nothing(tmp_path):
    run = sac.main(sac_args(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for flag, value in (("eval_every", 5), ("device", "meta"), ("hidden_sizes", (8,))):
        with pytest.raises(UsageError, match=f"--{flag.replace('_', '-')}"):
            sac.main(sac.Args(resume=str(run), **{flag: value}))
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    # a flag that repeats the saved value is no conflict
    args, _ = resume_args(sac.Args(resume=str(run), hidden_sizes=(16, 16), total_timesteps=300), "total_timesteps")
    assert args.hidden_sizes == (16, 16)


def test_given_flags_reads_every_form_of_a_flag():
    """--name value, --name=value (the value may hold '='), --no-name for a boolean; positional tokens and unknown
    names are no flags. parse_args reads sys.argv[1:] by default and passes tyro's options on."""
    argv = ["--seed", "3", "--env-kwargs=a=b", "--no-vae-branch", "--no-such-flag", "--alpha=1", "x", "--batch_size"]
    assert given_flags(a2pr.Args, argv) == {"seed", "env_kwargs", "vae_branch", "alpha", "batch_size"}
    assert given_flags(a2pr.Args, ["--vae-branch"]) == {"vae_branch"}


def test_parse_args_reads_sys_argv_and_passes_tyros_options(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prog", "--seed", "3", "--gamma=0.9"])
    args = parse_args(sac.Args)
    assert (args.seed, args.gamma) == (3, 0.9) and given_fields(args) == {"seed", "gamma"}
    with pytest.raises(SystemExit):
        parse_args(sac.Args, ["--help"], prog="mixrl sac-test")
    assert "mixrl sac-test" in capsys.readouterr().out


def test_given_fields_of_an_unmarked_dataclass_are_those_off_their_defaults():
    @dataclasses.dataclass
    class Plain:
        a: int = 1
        b: int = 2

    assert given_fields(Plain(b=5)) == {"b"} and given_fields(Plain(a=1)) == set()


def test_rewind_forgets_events_evaluations_and_temporary_files_after_the_checkpoint(tmp_path):
    """A run that logged steps 1..5 and was killed after its checkpoint at step 3: rewinding keeps the events and
    evaluations up to step 3 (a torn last line is dropped) and the checkpoint, removes the temporary files of a cut
    checkpoint write, and the events logged again at steps 4 and 5 replace the old ones (TensorBoard's purge_step)."""
    args = sac.Args(run_root=str(tmp_path))
    with Run(args, "sac", "Pendulum-v1") as run:
        for step in range(1, 6):
            run.log_scalars(step, {"x": step})
            run.log_evaluation({"step": step}, {"eval/y": -step})
        run.checkpoint_dir.mkdir()
        (run.checkpoint_dir / "latest.pt").write_text("kept")
        (run.checkpoint_dir / ".latest.pt.1234.tmp").write_text("cut")
    with open(run.dir / "evaluations.jsonl", "a") as f:
        f.write('{"step": 3')
    with Run(dataclasses.replace(args, resume=str(run.dir)), "sac", "Pendulum-v1", {"global_step": 3}) as resumed:
        for step in (4, 5):
            resumed.log_scalars(step, {"x": 10 * step})
    events = EventAccumulator(str(run.dir))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(1, 1), (2, 2), (3, 3), (4, 40), (5, 50)]
    assert [(e.step, e.value) for e in events.Scalars("eval/y")] == [(1, -1), (2, -2), (3, -3)]
    assert [json.loads(line)["step"] for line in (run.dir / "evaluations.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [p.name for p in run.checkpoint_dir.iterdir()] == ["latest.pt"]


def fake_run(run_dir: Path, **header) -> Path:
    """A run directory whose checkpoints/latest.pt holds sac_args' settings at step 200 and `header`."""
    (run_dir / "checkpoints").mkdir(parents=True)
    saved = {"format": CHECKPOINT_FORMAT, "args": dataclasses.asdict(sac_args(run_dir)), "global_step": 200}
    torch.save({**saved, **header}, run_dir / "checkpoints" / "latest.pt")
    return run_dir


def test_resume_args_reads_the_agent_or_old_checkpoints_algo_and_names_each_refused_flag(tmp_path, capsys):
    """The saved agent decides (RLPD is an rlif run, whatever the algo says); an older checkpoint without it is
    read by its algo (pmoe_sac: a sac run) and its list-valued settings compare equal to tuples. Every given
    flag is checked, and the error names each refused one, the run's agent and env, and the budget."""
    resume_args(sac.Args(resume=str(fake_run(tmp_path / "a", agent="sac", algo="rlpd"))), "total_timesteps")
    old = fake_run(tmp_path / "b", algo="pmoe_sac")
    saved = torch.load(old / "checkpoints" / "latest.pt", weights_only=False)
    saved["args"]["hidden_sizes"] = [16, 16]
    torch.save(saved, old / "checkpoints" / "latest.pt")
    args, _ = resume_args(sac.Args(resume=str(old), hidden_sizes=(16, 16)), "total_timesteps")
    assert args.hidden_sizes == (16, 16)

    other = fake_run(tmp_path / "c", agent="ppo", algo="pmoe_ppo", env_id="Hopper-v5")
    with pytest.raises(UsageError, match=re.escape("a pmoe_ppo run on Hopper-v5, not a sac run: continue it with")):
        resume_args(sac.Args(resume=str(other)), "total_timesteps")
    run = str(fake_run(tmp_path / "d", agent="sac", algo="sac"))
    with pytest.raises(UsageError, match=re.escape("but --eval-every 5 (saved: 0) differs: drop them (only ")):
        resume_args(sac.Args(resume=run, eval_every=5), "total_timesteps")
    refused = "but --eval-every 5 (saved: 0); --hidden-sizes (8,) (saved: (16, 16)) differ: drop them (only "
    with pytest.raises(UsageError, match=re.escape(refused + "--total-timesteps, --threads may change")):
        resume_args(sac.Args(resume=run, batch_size=16, eval_every=5, hidden_sizes=(8,)), "total_timesteps")
    with pytest.raises(UsageError, match=re.escape("--total-timesteps 100 is below the step")):
        resume_args(sac.Args(resume=run, total_timesteps=100), "total_timesteps")
    capsys.readouterr()
    resume_args(sac.Args(resume=run, total_timesteps=300, threads=2), "total_timesteps")
    resume_args(sac.Args(resume=run), "total_timesteps")
    printed = capsys.readouterr().out
    assert "from the command line --threads 2, --total-timesteps 300;" in printed
    assert "from the command line nothing;" in printed


def test_small_run_helpers(tmp_path, monkeypatch):
    """check_range's closed bounds, seed_everything's streams and deterministic kernels, check_finite over
    vector-valued metrics, crossed with a period of 1, the library versions a run records, and the steps per
    second since progress() on a clock set by hand."""
    import platform
    import random

    import gymnasium
    import mujoco

    from mixrl import runs

    runs.check_range(types.SimpleNamespace(g=1.0, h=(0, 1)), "g h", 0, 1)  # the bounds are inside
    with pytest.raises(UsageError, match="--g must be in"):
        runs.check_range(types.SimpleNamespace(g=1.5), "g", 0, 1)
    draws = []
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    for _ in range(2):
        runs.seed_everything(3)
        draws.append((random.random(), np.random.rand(), torch.rand(())))
    assert draws[0] == draws[1] and torch.backends.cudnn.deterministic
    runs.check_finite({"a": torch.zeros(()), "b": torch.ones(3)}, 1)
    with pytest.raises(runs.NonFiniteLossError):
        runs.check_finite({"a": torch.zeros(()), "b": torch.tensor([1.0, float("nan")])}, 1)
    assert runs.crossed(5, 4, 1) and not runs.crossed(5, 4, 0) and runs.crossed(10, 9, 5) and not runs.crossed(9, 6, 5)
    assert runs.library_versions() == {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
    }
    with runs.Run(sac.Args(run_root=str(tmp_path)), "sac", "Pendulum-v1") as run:
        monkeypatch.setattr(runs.time, "perf_counter", lambda: 1000.0)
        run.progress(1000, initial=100).close()
        monkeypatch.setattr(runs.time, "perf_counter", lambda: 1004.0)
        assert run.steps_per_second(300) == 50.0  # (300 - 100) steps in 4 s
        run._eval_seconds = 2.0
        assert run.steps_per_second(300) == 100.0  # evaluations do not count


# ---------------------------------------------------------------------------------------------------------------
# 5. another algorithm's run
# ---------------------------------------------------------------------------------------------------------------


def test_resume_refuses_another_agents_run_and_names_the_command(tmp_path):
    run = ppo.main(ppo_args(tmp_path, total_timesteps=32))
    with pytest.raises(UsageError, match=re.escape(f"mixrl ppo --resume {run}")):
        sac.main(sac.Args(resume=str(run)))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sac", "--resume", str(run)])
    assert "mixrl ppo --resume" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)


# ---------------------------------------------------------------------------------------------------------------
# 6. atomic, durable files; a torn line in evaluations.jsonl
# ---------------------------------------------------------------------------------------------------------------


def test_every_file_a_run_writes_is_fsynced_and_renamed_into_place(tmp_path, monkeypatch):
    synced, fsync = [], os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    run = sac.main(sac_args(tmp_path, eval_every=100))
    evaluate_checkpoint(run, episodes=1)
    (run / "evaluations.jsonl").write_text((run / "evaluations.jsonl").read_text() + '{"step": 2')  # a torn append
    sac.main(sac.Args(resume=str(run), total_timesteps=300))
    names = [Path(p).name for p in synced]
    for name in ("config.json", "latest.pt", "final.pt", "eval.json", "evaluations.jsonl"):
        assert any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in names), name  # the file, before rename
    assert str(run) in synced and str(run / "checkpoints") in synced  # the folders that hold the renames
    steps = [json.loads(line)["step"] for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300]
    assert not list(run.rglob("*.tmp"))


def test_atomic_write_makes_missing_folders_and_writes_beside_the_target(tmp_path):
    """The temporary file lies in the target's own folder (a rename across file systems would not be atomic), and
    missing parent folders are made. find_checkpoint prefers final.pt, or latest.pt with newest."""
    target = tmp_path / "a" / "b" / "c.txt"

    def write(f):
        assert [p.name.startswith(".c.txt.") for p in target.parent.iterdir()] == [True]
        f.write(b"done")

    atomic_write(target, write)
    assert [p.name for p in target.parent.iterdir()] == ["c.txt"] and target.read_text() == "done"
    run = tmp_path / "run"
    atomic_write(run / "checkpoints" / "latest.pt", lambda f: f.write(b""))
    assert find_checkpoint(run).name == "latest.pt"
    (run / "checkpoints" / "latest.pt").rename(run / "checkpoints" / "final.pt")
    assert find_checkpoint(run, newest=True).name == "final.pt"
    atomic_write(run / "checkpoints" / "latest.pt", lambda f: f.write(b""))
    assert find_checkpoint(run).name == "final.pt" and find_checkpoint(run, newest=True).name == "latest.pt"
    torch.save({"step": 1}, run / "other.pt")
    with pytest.raises(UsageError, match="is not a mixrl checkpoint"):
        load_checkpoint(run / "other.pt")


def test_run_directory_root_resume_and_agent_name(tmp_path, monkeypatch):
    """A given root wins over args.run_root; args.resume without a saved checkpoint starts a new directory; Args
    without checkpoint_every never checkpoint; runs started in the same second get suffixes; config.json and the
    hyperparameter table; signal handlers inside the run; an agent run as `python -m mixrl.agents.sac` is sac."""

    @dataclasses.dataclass
    class Plain:
        seed: int = 0
        run_root: str = str(tmp_path / "runs")
        resume: str | None = None

    with Run(Plain(), "plain", "Pendulum-v1", root=tmp_path / "other") as run:
        assert run.dir.parent == tmp_path / "other"
        run.end_iteration(5)  # no checkpoint_every, no parts: nothing to save
    with Run(Plain(resume=str(run.dir)), "plain", "Pendulum-v1") as new:
        assert new.dir.parent == tmp_path / "runs"

    # Three runs in the same second, the default root "runs", the config and the hyperparameter table
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mixrl.runs.time.time", lambda: 1000.0)
    args = sac.Args(env_id="mixrl/MultiGoal-v0", checkpoint_every=1)
    box = gym.spaces.Box(-1.0, 1.0, (1,))
    policy = RunPolicy(lambda: torch.nn.Linear(1, 1), lambda: {"class": "Linear"}, box, box, args.env_id)
    dirs = []
    for _ in range(3):
        with Run(args, "sac", args.env_id) as run:
            assert signal.getsignal(signal.SIGINT) == run._request_stop
            bar = run.progress(10)
            assert (bar.total, bar.n, run.steps_per_second(0)) == (10, 0, 0.0)
            bar.close()
            run.track(Parts({"net": torch.nn.Linear(1, 1)}), policy, global_step=0)
            run.end_iteration(1)  # checkpoint_every 1: step 1 ends an interval
            run.log_episodes(7, [1.5, 2.5], [10, 20])
            run.log_episodes(8, [], [])
            assert "ret=2.0" in run.bar.postfix and "sps=" in run.bar.postfix
            dirs.append(run.dir)
    assert [d.name for d in dirs] == [f"mixrl-MultiGoal-v0__sac__{args.seed}__1000{s}" for s in ("", "_1", "_2")]
    assert all(d.parent == Path("runs") and (d / "checkpoints" / "latest.pt").is_file() for d in dirs)
    with Run(dataclasses.make_dataclass("NoRoot", [("seed", int, 0)])(), "plain", "Pendulum-v1") as run:
        assert run.dir.parent == Path("runs")  # the default root of Args without run_root
    config = json.loads((dirs[0] / "config.json").read_text())
    assert {k: config[k] for k in ("algo", "agent", "env_id")} == {"algo": "sac", "agent": "sac", "env_id": args.env_id}
    assert config["args"]["checkpoint_every"] == 1 and config["versions"]["torch"] == torch.__version__
    saved = load_checkpoint(dirs[0] / "checkpoints" / "latest.pt")
    assert (saved["agent"], saved["algo"], saved["global_step"], saved["versions"]) == (
        "sac",
        "sac",
        1,
        config["versions"],
    )
    assert saved["state"]["net"].keys() == {"weight", "bias"} and saved["policy"] == {"class": "Linear"}
    events = EventAccumulator(str(dirs[0]))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("charts/episodic_return")] == [(7, 1.5), (7, 2.5)]
    assert [(e.step, e.value) for e in events.Scalars("charts/episodic_length")] == [(7, 10), (7, 20)]
    table = events.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("|param|value|\n|-|-|\n|env_id|mixrl/MultiGoal-v0|\n")

    main = types.SimpleNamespace(__spec__=types.SimpleNamespace(name="mixrl.agents.sac"))
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert agent_name(Plain()) == "test_runs" and agent_name(sac.Args()) == "sac"
    monkeypatch.setattr(Plain, "__module__", "__main__")
    assert agent_name(Plain()) == "sac"


# ---------------------------------------------------------------------------------------------------------------
# 7. one-line errors for user input only
# ---------------------------------------------------------------------------------------------------------------


def test_cli_turns_usage_errors_into_one_line_and_keeps_tracebacks_of_bugs(tmp_path, monkeypatch):
    def bug(args):
        raise ValueError("a bug deep inside numpy")

    monkeypatch.setattr(sac, "main", bug)
    with pytest.raises(ValueError, match="a bug deep inside numpy"):
        cli.main(["sac"])

    def usage(args):
        raise UsageError("--x 3 is wrong: use --x 2.")

    monkeypatch.setattr(sac, "main", usage)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sac"])
    assert exit_info.value.code == "mixrl sac: error: --x 3 is wrong: use --x 2."


# ---------------------------------------------------------------------------------------------------------------
# 8. SAC's buffer holds raw observations
# ---------------------------------------------------------------------------------------------------------------


def test_sac_normalize_obs_stores_raw_observations_and_normalises_batches(tmp_path):
    run = sac.main(sac_args(tmp_path, env_id="mixrl_test/Counting-v0", normalize_obs=True))
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    obs = ckpt["buffer"]["data"][:, :2]
    assert torch.equal(obs, obs.round()) and obs[:, 0].max() == 4  # (time step, episode count), as the env gave
    norm = ckpt["obs_normalizer"]
    assert norm["count"] > 200 and norm["mean"][0] == pytest.approx(2.0, abs=0.1)
    action = mixrl.load_policy(run)(np.array([1.0, 3.0], np.float32))
    assert action.shape == (1,) and np.isfinite(action).all()


# ---------------------------------------------------------------------------------------------------------------
# 9. the smaller ones
# ---------------------------------------------------------------------------------------------------------------


def test_torch_floor_has_the_cpu_fused_adam_kernel():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = tuple(int(x) for x in re.search(r'"torch>=(\d+)\.(\d+)', pyproject).groups())
    assert floor >= (2, 4)  # torch._fused_adam_ on CPU, which FlatAdam calls, came with 2.4


def test_continuous_agents_refuse_unbounded_actions(tmp_path):
    for main, args in ((sac.main, sac_args), (ppo.main, ppo_args)):
        with pytest.raises(UsageError, match="unbounded actions"):
            main(args(tmp_path, env_id="mixrl_test/UnboundedAction-v0"))
    assert not (tmp_path / "runs").exists()


def test_dqn_honours_discrete_start(tmp_path):
    run = dqn.main(dqn_args(tmp_path, env_id="mixrl_test/ShiftedDiscrete-v0", eval_every=100))  # env asserts
    actions = mixrl.load_policy(run)(np.zeros((5, 2), np.float32))
    assert set(actions.tolist()) <= {-1, 0, 1}
    assert evaluate_checkpoint(run, episodes=1)["mean_return"] >= -20


def test_final_checkpoint_has_no_replay_buffer_and_latest_has_it(tmp_path):
    run = sac.main(sac_args(tmp_path))
    final, latest = (torch.load(run / "checkpoints" / f"{n}.pt", weights_only=False) for n in ("final", "latest"))
    assert "buffer" not in final and latest["buffer"]["size"] == 200
    assert final["global_step"] == latest["global_step"] == 200
    assert mixrl.load_policy(run)(np.zeros(3)).shape == (1,)


def test_ppo_learning_rate_anneals_on_without_jumping_when_a_resume_extends_the_budget(tmp_path):
    run = ppo.main(ppo_args(tmp_path, total_timesteps=96, log_every=32))  # 3 iterations, each logged
    ppo.main(ppo.Args(resume=str(run), total_timesteps=192))  # 3 more
    events = EventAccumulator(str(run))
    events.Reload()
    rates = [event.value for event in sorted(events.Scalars("charts/learning_rate"), key=lambda e: e.step)]
    assert len(rates) == 6 and rates[:3] == pytest.approx([3e-4, 2e-4, 1e-4])
    assert all(later < earlier for earlier, later in zip(rates, rates[1:])) and rates[-1] > 0
    straight = ppo.main(ppo_args(tmp_path / "b", total_timesteps=96))
    with pytest.raises(RunFinished, match=r"finished at step 96 \(--total-timesteps 96\)"):  # the same budget
        ppo.main(ppo.Args(resume=str(straight)))
    assert load_checkpoint(straight)["global_step"] == 96


def test_a_crash_that_is_no_interrupt_closes_the_run_and_restores_the_signal_handlers(tmp_path, monkeypatch):
    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, handler), signal.signal(signal.SIGINT, handler)
    count_env_steps(monkeypatch, fail_at=150)
    try:
        with pytest.raises(RuntimeError):
            sac.main(sac_args(tmp_path))
        assert signal.getsignal(signal.SIGTERM) is handler and signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    run = next((tmp_path / "runs").iterdir())
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["global_step"] == 100


def test_an_agents_own_entry_point_resumes_with_the_saved_settings(tmp_path):
    run = sac.main(sac_args(tmp_path))
    resumed = subprocess.run(
        [sys.executable, "-m", "mixrl.agents.sac", "--resume", str(run), "--total-timesteps", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "from the command line --total-timesteps 300" in resumed.stdout
    ckpt = load_checkpoint(run)
    assert ckpt["global_step"] == 300 and tuple(ckpt["args"]["hidden_sizes"]) == (16, 16)
