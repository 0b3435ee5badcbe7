"""Property tests of what users give the `mixrl` command: flag values out of range, truncated or random-byte
checkpoints, another agent's run, datasets with missing fields or wrong shapes. Each ends in one line naming the
problem and a nonzero exit, never a traceback, and changes nothing on disk."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import DATASET_ID, dataset_root, dqn_args, ppo_args, sac_args  # noqa: F401

from mixrl import cli
from mixrl.agents import dqn, ppo, sac

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# flag -> its smallest valid value, per agent (ints and floats below it must be refused)
AT_LEAST = {
    "sac": {"num-envs": 1, "batch-size": 1, "buffer-size": 1, "total-timesteps": 0, "utd-ratio": 0, "q-lr": 0},
    "ppo": {"num-envs": 1, "num-steps": 1, "update-epochs": 1, "total-timesteps": 0, "max-grad-norm": 0},
    "dqn": {"num-envs": 1, "batch-size": 1, "train-frequency": 1, "learning-rate": 0, "eval-episodes": 1},
    "td3_bc": {"batch-size": 1, "policy-freq": 1, "log-every": 1, "total-steps": 0, "actor-lr": 0},
    "a2pr": {"batch-size": 1, "policy-freq": 1, "latent-dim": 0, "bc-weight": 0, "vae-lr": 0},
}
UNIT = {"sac": ("gamma", "tau"), "ppo": ("gamma", "gae-lambda"), "dqn": ("eps-start", "tau")}


def tree_digest(path: Path) -> dict[str, str]:
    """Path -> sha256 of every file under `path` (nothing under it changed iff the digests are equal)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def refused(argv: list[str]) -> str:
    """Run the CLI in-process; it must exit nonzero with one line of text (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"mixrl {argv[0]}: ") and "\n" not in message, message
    assert "Traceback" not in message
    return message


@st.composite
def bad_flag(draw):
    agent = draw(st.sampled_from(sorted(AT_LEAST)))
    if agent in UNIT and draw(st.booleans()):
        name = draw(st.sampled_from(UNIT[agent]))
        value = draw(st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1.0001, max_value=1e9)))
        return agent, name, value
    name, minimum = draw(st.sampled_from(sorted(AT_LEAST[agent].items())))
    value = draw(st.integers(min_value=-(10**9), max_value=minimum - 1))
    return agent, name, value


@SETTINGS
@given(bad_flag())
def test_flag_values_out_of_range_are_refused_before_anything_is_written(case):
    agent, name, value = case
    with tempfile.TemporaryDirectory() as tmp:
        message = refused([agent, f"--{name}={value}", "--run-root", tmp])
        assert f"--{name}" in message
        assert not any(Path(tmp).iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny run of SAC, PPO and DQN."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "sac": sac.main(sac_args(root / "sac")),
        "ppo": ppo.main(ppo_args(root / "ppo", total_timesteps=32)),
        "dqn": dqn.main(dqn_args(root / "dqn")),
    }


@SETTINGS
@given(data=st.data())
def test_damaged_checkpoints_are_refused_and_left_as_they_are(runs, data):
    agent = data.draw(st.sampled_from(sorted(runs)))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(runs[agent], Path(tmp) / "run"))
        for name in ("final.pt", "latest.pt"):
            file = run / "checkpoints" / name
            content = file.read_bytes()
            if data.draw(st.booleans(), label=f"truncate {name}"):
                file.write_bytes(content[: data.draw(st.integers(0, len(content) - 1), label="length")])
            else:
                file.write_bytes(data.draw(st.binary(max_size=4096), label="bytes"))
        before = tree_digest(run)
        assert "checkpoint" in refused(["eval", str(run / "checkpoints" / "final.pt")])  # (eval RUN reads policy/)
        assert "checkpoint" in refused([agent, "--resume", str(run)])
        assert tree_digest(run) == before


@SETTINGS
@given(st.sampled_from(["sac", "ppo", "dqn"]), st.sampled_from(["sac", "ppo", "dqn"]))
def test_another_agents_run_is_refused_with_the_command_to_run(runs, command, owner):
    if command == owner:
        return
    before = tree_digest(runs[owner])
    assert f"mixrl {owner} --resume {runs[owner]}" in refused([command, "--resume", str(runs[owner])])
    assert tree_digest(runs[owner]) == before


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------

FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


@SETTINGS
@given(
    agent=st.sampled_from(["td3_bc", "a2pr"]),
    field=st.sampled_from(FIELDS),
    damage=st.sampled_from(["delete", "shorten", "widen"]),
)
def test_datasets_with_missing_fields_or_wrong_shapes_are_refused(dataset_root, monkeypatch, agent, field, damage):  # noqa: F811
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(dataset_root, Path(tmp) / "datasets"))
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
        with h5py.File(root / DATASET_ID / "data" / "main_data.hdf5", "r+") as f:
            episode = f["episode_1"]
            values = episode[field][()]
            del episode[field]
            if damage == "shorten":
                episode[field] = values[:-3]
            elif damage == "widen":
                episode[field] = np.stack([values, values], axis=-1)
        before = tree_digest(root)
        runs = str(Path(tmp) / "runs")
        message = refused([agent, "--dataset-id", DATASET_ID, "--run-root", runs, "--total-steps", "2"])
        assert DATASET_ID in message
        assert tree_digest(root) == before and not (Path(tmp) / "runs").exists()
