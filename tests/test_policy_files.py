"""Policies people can share (issue 30): every run writes a data-only policy folder (model.safetensors + config.json)
that loads without unpickling and acts exactly as the run's checkpoint; checkpoints load with weights_only=True;
anything that needs pickle (old checkpoints, crafted files, SB3 zips storing their policy only as a pickle) is
refused with one line naming --trust-pickle, and never runs. Property-based tests of the folder's JSON and tensors."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import COMMON, OFFLINE, PPO, SAC

from mixrl.agents import a2pr, bc, dqn, ppo, rlif, sac, td3_bc
from mixrl.checkpoints import from_plain, load_checkpoint, space_from_json, space_to_json
from mixrl.cli import main as cli_main
from mixrl.datasets import CollectArgs, collect
from mixrl.errors import UsageError
from mixrl.evaluation import evaluate, evaluate_checkpoint, load_policy
from mixrl.export import export_policy
from mixrl.policies.files import CONFIG_FILE, TENSOR_FILE, read_policy_dir, write_policy_dir
from mixrl.policies.gaussian import TanhGaussianActor
from mixrl.policies.loading import policy_spec
from mixrl.policies.residual import ResidualPolicy, SB3Base
from mixrl.pretrained import load_base, load_reference_q

RUNS = {
    "sac": (sac, SAC),
    "sac-normalized": (sac, {**SAC, "normalize_obs": True}),
    "pmoe-sac": (sac, {**SAC, "policy": "gmm", "num_experts": 3, "gmm_eval_rule": "weighted_mean"}),
    "ppo": (ppo, {**PPO, "hidden_sizes": (16, 16)}),
    "pmoe-ppo": (ppo, {**PPO, "policy": "gmm", "num_experts": 3, "hidden_sizes": (16, 16)}),
    "rlif": (rlif, {**SAC, "intervention": "none", "num_critics": 4}),
    "dqn": (dqn, dict(env_id="CartPole-v1", total_timesteps=64, learning_starts=32, batch_size=16, **COMMON)),
    "td3_bc": (td3_bc, {**OFFLINE, "hidden_sizes": (16, 16)}),
    "a2pr": (a2pr, {**OFFLINE, "actor_hidden": (16, 16), "critic_hidden": (16, 16), "vae_hidden": (8,)}),
    "bc-chunks": (bc, {**OFFLINE, "hidden_sizes": (16,), "horizon": 4, "execute": 3}),
}
RESIDUAL = {  # run name -> (agent, settings, the run or file its base comes from)
    "resip-bc-base": (ppo, {**PPO, "num_envs": 2, "num_steps": 32, "hidden_sizes": (16,)}, "bc-chunks"),
    "residual-sac-sb3-base": (sac, SAC, "sb3.zip"),
}
DETERMINISTIC_RULES = ("argmax_w", "weighted_mean")


def sb3_zip(path: Path) -> Path:
    """A Stable-Baselines3 PPO model for Pendulum, its mean shifted so that clipping to the bounds is exercised."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("Pendulum-v1"), seed=0, policy_kwargs={"net_arch": [8]})
    with torch.no_grad():
        model.policy.action_net.bias.fill_(0.5)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each agent and head, and two residual runs: PPO around a chunked BC base, SAC around an SB3
    zip base."""
    root = tmp_path_factory.mktemp("policy_files")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
        collect(CollectArgs("random", env_id="Pendulum-v1", steps=200, ref_min_score=-1200.0, ref_max_score=-100.0))
        made = {
            name: module.main(module.Args(run_root=str(root / "runs"), **kw)) for name, (module, kw) in RUNS.items()
        }
        made["sb3.zip"] = sb3_zip(root / "sb3.zip")
        for name, (module, kw, base) in RESIDUAL.items():
            made[name] = module.main(module.Args(run_root=str(root / "runs"), base_policy=str(made[base]), **kw))
        yield made


KINDS = [*RUNS, *RESIDUAL]


def random_obs(space: gym.spaces.Box, n: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (3.0 * rng.standard_normal((n, *space.shape))).astype(space.dtype)


def assert_same_actions(shared, checkpoint, steps: int = 3) -> None:
    """Identical actions (max abs difference 0) on 256 observations, for `steps` calls in a row (chunked policies
    execute their queues, then plan again)."""
    shared.reset(), checkpoint.reset()
    for step in range(steps):
        obs = random_obs(shared.observation_space, seed=step)
        a, b = shared(obs), checkpoint(obs)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() == 0


@pytest.mark.parametrize("name", KINDS)
def test_every_policy_kind_round_trips_exactly(runs, name):
    """The shared folder acts as load_policy of the checkpoint, action for action, and returns the same."""
    run = Path(runs[name])
    assert sorted(p.name for p in (run / "policy").iterdir()) == [CONFIG_FILE, TENSOR_FILE]
    shared, checkpoint = load_policy(run / "policy"), load_policy(run / "checkpoints" / "final.pt")
    assert type(shared.actor) is type(checkpoint.actor)
    assert_same_actions(shared, checkpoint)
    assert load_policy(run).actor.state_dict().keys() == shared.actor.state_dict().keys()  # a run: its folder
    if name.startswith("pmoe"):
        for rule in DETERMINISTIC_RULES:
            assert_same_actions(load_policy(run / "policy", eval_rule=rule), load_policy(run, eval_rule=rule))
            exported = export_policy(run, "safetensors", run / f"policy-{rule}", eval_rule=rule)
            assert json.loads((exported / CONFIG_FILE).read_text())["eval_rule"] == rule
            assert_same_actions(load_policy(exported), load_policy(run, eval_rule=rule))
    if name in RESIDUAL:
        assert isinstance(shared.actor, ResidualPolicy)
        if name == "residual-sac-sb3-base":
            assert isinstance(shared.actor.base, SB3Base)
    ckpt = load_checkpoint(run)
    returns = [evaluate(p, ckpt["env_id"], 2, seed=7, env_kwargs=ckpt["env_kwargs"]) for p in (shared, checkpoint)]
    assert returns[0]["returns"] == returns[1]["returns"]


@pytest.mark.parametrize("name", KINDS)
def test_checkpoints_hold_plain_data_only(runs, name):
    """latest.pt and final.pt name no global that torch's weights-only unpickler refuses."""
    files = sorted((Path(runs[name]) / "checkpoints").glob("*.pt"))
    assert {f.name for f in files} >= {"final.pt", "latest.pt"}
    for file in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == []
        torch.load(file, weights_only=True)


def test_the_folder_is_what_hugging_face_users_expect(runs):
    """model.safetensors (tensors, its metadata "format": "pt") beside a strict-JSON config.json with the spaces,
    the spec without tensors, the evaluation rule, the versions and the tensor file's SHA-256."""
    from safetensors import safe_open

    folder = Path(runs["sac-normalized"]) / "policy"
    config = json.loads((folder / CONFIG_FILE).read_text(), parse_constant=lambda c: pytest.fail(c))
    data = (folder / TENSOR_FILE).read_bytes()
    assert config["tensors"] == {"file": TENSOR_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert space_from_json(config["observation_space"]) == gym.make("Pendulum-v1").observation_space
    assert config["agent"] == "sac" and config["env_id"] == "Pendulum-v1" and config["eval_rule"] is None
    assert config["obs_normalizer"]["mean"] == {"$ndarray": "obs_normalizer.mean"}
    assert {"torch", "gymnasium", "python"} <= set(config["versions"])
    with safe_open(str(folder / TENSOR_FILE), "pt") as f:
        assert f.metadata()["format"] == "pt"
        assert "policy.trunk.0.weight" in f.keys() and config["critic"] is None  # critics of raw observations only
    with safe_open(str(Path(runs["sac"]) / "policy" / TENSOR_FILE), "pt") as f:
        assert "critic.net.layers.0.weight" in f.keys()
    norm = load_policy(folder).obs_normalizer
    expected = load_checkpoint(runs["sac-normalized"])["obs_normalizer"]
    assert norm["mean"].dtype == expected["mean"].dtype and np.array_equal(norm["mean"], expected["mean"])
    assert norm["count"] == expected["count"] and norm["clip"] == expected["clip"]


def test_reference_critics_and_experts_load_from_the_folder(runs, tmp_path):
    """RLIF's --reference reads the folder's Q ensemble (the mean of 4 critics) as it reads the checkpoint's, and
    an RLIF run takes a policy folder as --expert and --reference."""
    run = Path(runs["rlif"])
    from_folder, from_checkpoint = load_reference_q(run / "policy"), load_reference_q(run / "checkpoints" / "final.pt")
    obs, actions = random_obs(gym.make("Pendulum-v1").observation_space, 1)[0], np.linspace(-2, 2, 9)[:, None]
    assert np.array_equal(from_folder(obs, actions), from_checkpoint(obs, actions))
    with pytest.raises(UsageError, match="no Q ensemble"):
        load_reference_q(Path(runs["dqn"]) / "policy")
    expert = str(Path(runs["sac"]) / "policy")
    args = rlif.Args(**{**SAC, "total_timesteps": 40, "learning_starts": 20}, expert=expert, run_root=str(tmp_path))
    assert (rlif.main(args) / "policy" / CONFIG_FILE).is_file()


def test_cli_eval_and_export_read_the_folder(runs, tmp_path, capsys):
    folder = Path(runs["ppo"]) / "policy"
    copy = shutil.copytree(folder, tmp_path / "downloaded")  # a folder from a hub: no run around it
    cli_main(["eval", str(copy), "--episodes", "1"])
    assert "ppo on Pendulum-v1: return" in capsys.readouterr().out
    assert json.loads((copy / "eval.json").read_text())["checkpoint"] == str(copy)
    cli_main(["export", str(copy), "--format", "torchscript", "--output", str(tmp_path / "p.pt")])
    script = torch.jit.load(str(tmp_path / "p.pt"))
    obs = random_obs(gym.make("Pendulum-v1").observation_space, 5)
    np.testing.assert_allclose(script(torch.as_tensor(obs)).numpy(), load_policy(copy)(obs), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Files that need pickle: older checkpoints, crafted ones, SB3 zips
# ---------------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it writes `marker` (what a crafted file would do, less politely)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def crafted_run(root: Path, marker: Path) -> Path:
    """A run directory whose latest.pt and final.pt are pickles that write `marker` when unpickled."""
    run = root / "Pendulum-v1__sac__1__1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "sac", "agent": "sac", "env_id": "Pendulum-v1"}))
    payload = {"format": "mixrl-checkpoint-2", "agent": "sac", "algo": "sac", "env_id": "Pendulum-v1"}
    for name in ("latest.pt", "final.pt"):
        torch.save({**payload, "policy": Payload(marker), "global_step": 1}, run / "checkpoints" / name)
    return run


def assert_refused_in_one_line(argv: list[str], marker: Path, match: str = "--trust-pickle") -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    message = str(exit_info.value.code)
    assert exit_info.value.code not in (0, None) and "\n" not in message and match in message, message
    assert not marker.exists()
    return message


def test_crafted_checkpoints_never_run(tmp_path):
    """A pickle whose __reduce__ writes a marker, handed to load_policy, `mixrl eval`, `mixrl export`, --expert,
    --reference, --base-policy and --resume: refused in one line naming --trust-pickle, the marker never written."""
    marker = tmp_path / "marker"
    run = crafted_run(tmp_path / "runs", marker)
    file = run / "checkpoints" / "final.pt"
    for path in (run, file):
        with pytest.raises(UsageError, match="needs pickle") as err:
            load_policy(path)
        assert "\n" not in str(err.value) and "--trust-pickle" in str(err.value)
        with pytest.raises(UsageError, match="needs pickle"):
            load_base(path)
        with pytest.raises(UsageError, match="needs pickle"):
            load_reference_q(str(path))
    assert not marker.exists()
    online = ["--env-id", "Pendulum-v1", "--total-timesteps", "64", "--run-root", str(tmp_path / "out")]
    for argv in (
        ["eval", str(run)],
        ["eval", str(file)],
        ["export", str(run), "--format", "safetensors"],
        ["export", str(file), "--format", "torchscript"],
        ["rlif", "--intervention", "value", "--expert", str(run), *online, "--learning-starts", "32"],
        [
            "rlif",
            "--intervention",
            "value",
            "--expert",
            str(file),
            "--reference",
            str(file),
            *online,
            "--learning-starts",
            "32",
        ],
        ["ppo", "--base-policy", str(run), *online, "--num-steps", "64"],
        ["sac", "--base-policy", str(file), *online, "--learning-starts", "32"],
        ["sac", "--resume", str(run)],
    ):
        assert_refused_in_one_line(argv, marker)
    assert not (tmp_path / "out").exists() and not (run / "eval.json").exists() and not (run / "policy").exists()
    # The exploit is real: the opt-in runs it (which is why it must stay an explicit choice).
    load_checkpoint(file, trusted=True)
    assert marker.read_text() == "pwned"


def test_a_refusal_is_one_line_and_a_nonzero_exit_status(tmp_path):
    marker = tmp_path / "marker"
    run = crafted_run(tmp_path, marker)
    done = subprocess.run([sys.executable, "-m", "mixrl.cli", "eval", str(run)], capture_output=True, text=True)
    assert done.returncode == 1 and not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixrl eval: error: ") and "--trust-pickle" in lines[0]


def edited_zip(source: Path, out: Path, **members: bytes) -> Path:
    """A copy of the zip `source` with some members replaced."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, members.get(item.filename, src.read(item.filename)))
    return out


def test_crafted_sb3_zips_never_run(runs, tmp_path):
    """An SB3 zip is read from its JSON and a weights-only policy.pth: a crafted policy.pth, or policy_kwargs stored
    only as a (crafted) pickle, is refused in one line; SB3's own loader would run the second."""
    import base64

    marker = tmp_path / "marker"
    source = runs["sb3.zip"]
    buffer = io.BytesIO()
    torch.save({"action_net.weight": Payload(marker)}, buffer)
    evil_weights = edited_zip(source, tmp_path / "weights.zip", **{"policy.pth": buffer.getvalue()})
    data = json.loads(zipfile.ZipFile(source).read("data"))
    data["policy_kwargs"] = {
        ":type:": "<class 'dict'>",
        ":serialized:": base64.b64encode(pickle.dumps(Payload(marker))).decode(),
        "net_arch": "<mixrl_test.Arch object at 0x7f00>",
    }
    evil_kwargs = edited_zip(source, tmp_path / "kwargs.zip", data=json.dumps(data).encode())
    online = ["--env-id", "Pendulum-v1", "--total-timesteps", "64", "--run-root", str(tmp_path / "out")]
    for evil in (evil_weights, evil_kwargs):
        with pytest.raises(UsageError, match="needs pickle") as err:
            load_base(evil)
        assert "\n" not in str(err.value) and "--trust-pickle" in str(err.value)
        assert_refused_in_one_line(["ppo", "--base-policy", str(evil), *online, "--num-steps", "64"], marker)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError):  # SB3's loader unpickles the kwargs: the opt-in runs the payload
        load_base(evil_kwargs, trusted=True)
    assert marker.read_text() == "pwned"


def test_an_sb3_zip_base_is_read_without_pickle_and_acts_as_sb3(runs, monkeypatch):
    from stable_baselines3 import PPO
    from stable_baselines3.common import save_util

    model = PPO.load(runs["sb3.zip"], device="cpu")
    monkeypatch.setattr(save_util, "load_from_zip_file", lambda *a, **k: pytest.fail("SB3's unpickling loader"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads"))
    base = load_base(runs["sb3.zip"])
    space = gym.make("Pendulum-v1").action_space
    obs = random_obs(gym.make("Pendulum-v1").observation_space, 64)
    expected = np.clip(model.predict(obs, deterministic=True)[0], space.low, space.high)
    acted = base.deterministic(torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(space.low + 0.5 * (acted + 1) * (space.high - space.low), expected, atol=1e-6)


def legacy(run: Path) -> Path:
    """Turn a run into one from before this change: pickled checkpoints ("mixrl-checkpoint-1"), no policy folder."""
    for file in (run / "checkpoints").glob("*.pt"):
        ckpt = from_plain(torch.load(file, weights_only=True))
        torch.save({**ckpt, "format": "mixrl-checkpoint-1"}, file)
    shutil.rmtree(run / "policy")
    return run


def test_older_pickled_runs_need_the_opt_in_and_export_to_a_folder(runs, tmp_path):
    run = legacy(Path(shutil.copytree(runs["pmoe-sac"], tmp_path / "old")))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / "final.pt")  # pickled spaces
    marker = tmp_path / "never"
    message = assert_refused_in_one_line(["eval", str(run)], marker)
    assert "needs pickle" in message
    assert_refused_in_one_line(["export", str(run), "--format", "safetensors"], marker)
    assert not (run / "policy").exists()
    cli_main(["export", str(run), "--format", "safetensors", "--trust-pickle"])  # the user's own older run
    assert_same_actions(load_policy(run), load_policy(run / "checkpoints" / "final.pt", trusted=True))
    assert_refused_in_one_line(["sac", "--resume", str(run), "--total-timesteps", "96"], marker)


def test_an_older_residual_run_embedding_its_sb3_zip_exports_its_base_as_data(runs, tmp_path):
    """Before policy files, a residual run embedded its SB3 base as the zip's bytes (pickle to read): the trusted
    export describes the base as data, and the folder then loads untrusted, acting as before."""
    run = Path(shutil.copytree(runs["residual-sac-sb3-base"], tmp_path / "old"))
    for file in (run / "checkpoints").glob("*.pt"):
        ckpt = from_plain(torch.load(file, weights_only=True))
        ckpt["policy"]["kwargs"]["base"]["kwargs"] = {"zip_bytes": Path(runs["sb3.zip"]).read_bytes()}
        torch.save({**ckpt, "format": "mixrl-checkpoint-1"}, file)
    shutil.rmtree(run / "policy")
    with pytest.raises(UsageError, match="--trust-pickle"):
        load_policy(run)
    export_policy(run, "safetensors", trusted=True)
    shared = load_policy(run)
    assert isinstance(shared.actor.base, SB3Base)
    assert_same_actions(shared, load_policy(runs["residual-sac-sb3-base"]))


# ---------------------------------------------------------------------------------------------------------------
# Property-based: the JSON metadata and the tensor file
# ---------------------------------------------------------------------------------------------------------------

SPACE = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACTIONS = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def synthetic(norm: dict | None = None, obs_space=SPACE, action_space=ACTIONS, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    kwargs = {"obs_dim": int(np.prod(obs_space.shape)), "action_dim": action_space.shape[0], "hidden_sizes": (4,)}
    actor = TanhGaussianActor(**kwargs)
    return {
        "agent": "sac",
        "algo": "sac",
        "env_id": "Pendulum-v1",
        "env_kwargs": {},
        "observation_space": obs_space,
        "action_space": action_space,
        "obs_normalizer": norm,
        "policy": policy_spec(actor, **kwargs),
    }


# Training runs in this process flush denormals to zero (mixrl.runs.set_cpu_math): draw no subnormal floats.
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32, allow_subnormal=False)


@st.composite
def boxes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    size = int(np.prod(shape))
    a = np.array(draw(st.lists(finite | st.just(-np.inf), min_size=size, max_size=size)), dtype).reshape(shape)
    b = np.array(draw(st.lists(finite | st.just(np.inf), min_size=size, max_size=size)), dtype).reshape(shape)
    return gym.spaces.Box(np.minimum(a, b), np.maximum(a, b), shape, dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obs_space=boxes(), data=st.data())
def test_metadata_round_trips_exactly(tmp_path_factory, obs_space, data):
    """Spaces, normaliser statistics (any float64 values, inf clip) and tuple kwargs come back exactly."""
    size = int(np.prod(obs_space.shape))
    stats = st.lists(
        st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False), min_size=size, max_size=size
    )
    norm = {
        "mean": np.array(data.draw(stats), np.float64).reshape(obs_space.shape),
        "var": np.abs(np.array(data.draw(stats), np.float64)).reshape(obs_space.shape),
        "epsilon": data.draw(st.floats(0, 1, allow_subnormal=False)),
        "clip": data.draw(st.floats(0.1, 10, allow_subnormal=False) | st.just(float("inf"))),
        "count": data.draw(st.integers(0, 2**40) | st.floats(0, 1e9, allow_subnormal=False)),
    }
    action_space = data.draw(boxes())
    folder = write_policy_dir(synthetic(norm, obs_space, gym.spaces.Box(-1, 1, (2,))), tmp_path_factory.mktemp("m"))
    back = read_policy_dir(folder)
    described = json.loads(json.dumps(space_to_json(action_space), allow_nan=False))
    assert back["observation_space"] == obs_space and space_from_json(described) == action_space
    for key, value in norm.items():
        assert np.array_equal(back["obs_normalizer"][key], value) and type(back["obs_normalizer"][key]) is type(value)
    assert back["policy"]["kwargs"]["hidden_sizes"] == (4,)


@pytest.fixture(scope="module")
def valid_folder(tmp_path_factory) -> Path:
    norm = {"mean": np.zeros(3), "var": np.ones(3), "epsilon": 1e-8, "clip": 10.0, "count": 5.0}
    return write_policy_dir(synthetic(norm), tmp_path_factory.mktemp("valid") / "policy")


def copy_of(folder: Path, tmp_path_factory) -> Path:
    return Path(shutil.copytree(folder, tmp_path_factory.mktemp("case") / "policy"))


def assert_clear_refusal_or_loads(folder: Path) -> None:
    """Loading either works, or fails with one UsageError of one line, and `mixrl eval` then writes nothing."""
    before = sorted(folder.iterdir())
    try:
        policy = load_policy(folder)
    except UsageError as err:
        assert "\n" not in str(err) and str(err)
        with pytest.raises(UsageError):
            evaluate_checkpoint(folder, episodes=1)
        assert sorted(folder.iterdir()) == before
        return
    policy(np.zeros(3, np.float32))


def json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from json_paths(item, (*prefix, i))


def edit(config, path, action, replacement):
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement


numbers = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | numbers | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
) | st.sampled_from([{"$tensor": "nope"}, {"$float": "x"}, {"$tuple": 3}, {"$numpy": "object", "value": 1},
                     {"$space": {"type": "Box"}}, "os.system", "subprocess.Popen", "builtins.eval"])  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), action=st.sampled_from(["delete", "replace"]), replacement=json_values)
def test_any_edit_of_the_json_is_refused_in_one_line_or_harmless(valid_folder, tmp_path_factory, data, action,
                                                                 replacement):  # fmt: skip
    folder = copy_of(valid_folder, tmp_path_factory)
    config = json.loads((folder / CONFIG_FILE).read_text())
    paths = [p for p in json_paths(config) if p]
    path = data.draw(st.sampled_from(paths))
    edit(config, path, action, replacement)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    assert_clear_refusal_or_loads(folder)


@pytest.mark.parametrize(
    "key", ["format", "algo", "env_id", "env_kwargs", "observation_space", "action_space", "policy", "tensors"]
)
def test_each_missing_key_is_named(valid_folder, tmp_path_factory, key):
    folder = copy_of(valid_folder, tmp_path_factory)
    config = json.loads((folder / CONFIG_FILE).read_text())
    del config[key]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UsageError, match=f"has no '{key}'"):
        load_policy(folder)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_truncated_or_edited_tensor_file_fails_its_hash(valid_folder, tmp_path_factory, data):
    folder = copy_of(valid_folder, tmp_path_factory)
    content = bytearray((folder / TENSOR_FILE).read_bytes())
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    else:
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] ^= data.draw(st.integers(1, 255))
    (folder / TENSOR_FILE).write_bytes(bytes(content))
    with pytest.raises(UsageError, match="does not match the SHA-256"):
        load_policy(folder)
    assert_clear_refusal_or_loads(folder)


def rewrite_tensors(folder: Path, change) -> None:
    """Replace model.safetensors by change(tensors) and record its new SHA-256 (an author who edits on purpose)."""
    from safetensors.torch import load, save

    tensors = change(load((folder / TENSOR_FILE).read_bytes()))
    data = save(tensors)
    (folder / TENSOR_FILE).write_bytes(data)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / CONFIG_FILE).write_text(json.dumps(config))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wrong_shapes_dtypes_and_names_with_a_matching_hash_are_refused(valid_folder, tmp_path_factory, data):
    folder = copy_of(valid_folder, tmp_path_factory)
    from safetensors.torch import load

    names = sorted(n for n in load((folder / TENSOR_FILE).read_bytes()) if n.startswith("policy."))
    name = data.draw(st.sampled_from(names))
    kind = data.draw(st.sampled_from(["shape", "dtype", "drop", "extra"]))
    dtype = data.draw(st.sampled_from([torch.float16, torch.float64, torch.int32, torch.uint8]))

    def change(tensors):
        t = tensors[name]
        if kind == "shape":
            tensors[name] = torch.zeros(t.numel() + 1, dtype=t.dtype)
        elif kind == "dtype":
            tensors[name] = t.to(dtype)
        elif kind == "drop":
            del tensors[name]
        else:
            tensors["extra"] = torch.zeros(2)
        return tensors

    rewrite_tensors(folder, change)
    with pytest.raises(UsageError) as err:
        load_policy(folder)
    assert "\n" not in str(err.value)
    assert_clear_refusal_or_loads(folder)


def test_classes_outside_the_allowlist_are_never_imported(valid_folder, tmp_path_factory, monkeypatch):
    """A policy class the file names outside mixrl's policy modules is refused before its module is imported."""
    root = tmp_path_factory.mktemp("pkg")
    marker = root / "imported"
    (root / "evil_policy_module.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Actor: pass\n")
    monkeypatch.syspath_prepend(str(root))
    for path in ("evil_policy_module.Actor", "os.system", "mixrl.policies.residual.importlib", "torch.nn.Linear"):
        folder = copy_of(valid_folder, tmp_path_factory)
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["policy"]["class"] = path
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(UsageError, match="policy class") as err:
            load_policy(folder)
        assert "\n" not in str(err.value)
    assert not marker.exists() and "evil_policy_module" not in sys.modules


# ---------------------------------------------------------------------------------------------------------------
# Property-based: the plain-data form of checkpoints
# ---------------------------------------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "<U3"]


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    raw = np.frombuffer(draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                                       max_size=dtype.itemsize * int(np.prod(shape)))), np.uint8)  # fmt: skip
    if dtype.kind == "U":
        return np.array(draw(st.lists(st.text("abc", max_size=3), min_size=int(np.prod(shape)),
                                      max_size=int(np.prod(shape)))), dtype).reshape(shape)  # fmt: skip
    return raw.view(dtype).reshape(shape).copy()


def generators(seed: int):
    return st.sampled_from([np.random.PCG64, np.random.Philox, np.random.MT19937, np.random.SFC64]).map(
        lambda kind: np.random.Generator(kind(seed))
    )


plain_leaves = (
    st.none() | st.booleans() | st.integers() | numbers | st.text(max_size=5) | arrays()
    | arrays().map(lambda a: a.reshape(-1)[0] if a.size else np.float32(1.5))
    | st.integers(0, 2**32 - 1).flatmap(generators)
    | st.lists(st.integers(), max_size=3).map(lambda items: deque(items, maxlen=5))
    | st.sampled_from([SPACE, ACTIONS, gym.spaces.Discrete(3, start=-1), gym.spaces.MultiBinary(2)])
)  # fmt: skip
plain_data = st.recursive(
    plain_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def assert_same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, np.random.Generator):
        assert_same(a.bit_generator.state, b.bit_generator.state)
        assert a.random() == b.random()
    elif isinstance(a, (list, tuple, deque)):
        assert len(a) == len(b) and getattr(a, "maxlen", None) == getattr(b, "maxlen", None)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert a == b


@settings(max_examples=60, deadline=None)
@given(value=plain_data)
def test_checkpoint_data_round_trips_through_weights_only_loading(value):
    """Arrays of every dtype (bit for bit), NumPy scalars, generators mid-stream, deques, spaces and containers
    come back equal after torch.save and torch.load(weights_only=True)."""
    from mixrl.checkpoints import to_plain

    buffer = io.BytesIO()
    torch.save({"value": to_plain(value)}, buffer)
    buffer.seek(0)
    assert_same(from_plain(torch.load(buffer, weights_only=True))["value"], value)


@pytest.mark.parametrize(
    "tagged",
    [
        {"__mixrl__": "generator", "bit_generator": "os.system", "state": {}},
        {"__mixrl__": "ndarray", "dtype": "O", "shape": [1], "data": torch.zeros(8, dtype=torch.uint8)},
        {"__mixrl__": "ndarray", "dtype": "<f8", "shape": [1000], "data": torch.zeros(8, dtype=torch.uint8)},
        {"__mixrl__": "ndarray", "dtype": "<f8", "shape": [1], "data": b"\0" * 8},
        {"__mixrl__": "space", "space": {"type": "Box", "shape": [2], "dtype": "object", "low": [0], "high": [1]}},
        {"__mixrl__": "pickle", "data": b"cos\nsystem\n"},
    ],
)
def test_a_crafted_tag_is_one_usage_error(tagged):
    with pytest.raises(UsageError) as err:
        from_plain({"format": "mixrl-checkpoint-2", "x": tagged})
    assert "\n" not in str(err.value)
