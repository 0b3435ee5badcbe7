"""`mixrl export`: ONNX and TorchScript graphs of every agent's deterministic policy equal `load_policy` on raw
observations (normalisation and action rescaling folded in, any batch size) and drive rollouts to the same return."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from tiny import COMMON, OFFLINE, PPO, SAC

import mixrl
from mixrl.agents import a2pr, dqn, ppo, rlif, sac, td3_bc
from mixrl.cli import main as cli_main
from mixrl.datasets import CollectArgs, collect
from mixrl.evaluation import evaluate
from mixrl.export import export_policy

RUNS = {
    "sac": (sac, SAC),
    "sac-normalized": (sac, {**SAC, "normalize_obs": True}),
    "pmoe-sac-weighted-mean": (sac, {**SAC, "policy": "gmm", "num_experts": 3, "gmm_eval_rule": "weighted_mean"}),
    "ppo": (ppo, {**PPO, "hidden_sizes": (16, 16)}),
    "pmoe-ppo": (ppo, {**PPO, "policy": "gmm", "num_experts": 3, "hidden_sizes": (16, 16)}),
    "rlif": (rlif, {**SAC, "intervention": "none"}),
    "dqn": (dqn, dict(env_id="CartPole-v1", total_timesteps=64, learning_starts=32, batch_size=16, **COMMON)),
    "td3_bc": (td3_bc, {**OFFLINE, "hidden_sizes": (16, 16)}),
    "a2pr": (a2pr, {**OFFLINE, "actor_hidden": (16, 16), "critic_hidden": (16, 16), "vae_hidden": (8,)}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each agent and head (PPO trains with observation normalisation, SAC once with it)."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
        collect(CollectArgs("random", env_id="Pendulum-v1", steps=200, ref_min_score=-1200.0, ref_max_score=-100.0))
        yield {name: module.main(module.Args(run_root=str(root / "runs"), **kw)) for name, (module, kw) in RUNS.items()}


def random_obs(policy, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (3.0 * rng.standard_normal((n, *policy.observation_space.shape))).astype(policy.observation_space.dtype)


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_and_torchscript_equal_load_policy(runs, name, tmp_path):
    policy = mixrl.load_policy(runs[name])
    onnx_file = export_policy(runs[name], "onnx", tmp_path / "policy.onnx")
    script_file = export_policy(runs[name], "torchscript", tmp_path / "policy.pt")
    session = onnxruntime.InferenceSession(str(onnx_file))
    script = torch.jit.load(str(script_file))
    for batch in (1, 7):
        obs = random_obs(policy, batch, seed=batch)
        expected = policy(obs)
        from_onnx = session.run(None, {"obs": obs})[0]
        from_script = script(torch.as_tensor(obs)).numpy()
        assert from_onnx.shape == from_script.shape == expected.shape
        assert from_onnx.dtype == from_script.dtype == expected.dtype
        np.testing.assert_allclose(from_onnx, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(from_script, expected, rtol=0, atol=1e-5)


def test_normalisation_is_folded_in(runs, tmp_path):
    """The normalised run's graph differs from the same network fed raw observations."""
    policy = mixrl.load_policy(runs["sac-normalized"])
    assert policy.obs_normalizer is not None
    session = onnxruntime.InferenceSession(str(export_policy(runs["sac-normalized"], "onnx", tmp_path / "p.onnx")))
    obs = random_obs(policy, 5)
    policy.obs_normalizer = None
    assert not np.allclose(session.run(None, {"obs": obs})[0], policy(obs), atol=1e-3)


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_exported_policy_drives_a_rollout_to_the_same_return(runs, name, tmp_path):
    policy = mixrl.load_policy(runs[name])
    session = onnxruntime.InferenceSession(str(export_policy(runs[name], "onnx", tmp_path / "policy.onnx")))
    dtype = policy.observation_space.dtype

    def onnx_policy(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {"obs": np.asarray(obs, dtype)[None]})[0][0]

    env_id = "CartPole-v1" if name == "dqn" else "Pendulum-v1"
    direct, exported = evaluate(policy, env_id, episodes=2, seed=5), evaluate(onnx_policy, env_id, episodes=2, seed=5)
    assert exported["returns"] == pytest.approx(direct["returns"], abs=1e-3)


def test_stochastic_rule_is_refused_and_cli_writes_next_to_the_run(runs, capsys):
    with pytest.raises(ValueError, match="draws a random expert.*--eval-rule argmax_w"):
        export_policy(runs["pmoe-sac-weighted-mean"], "onnx", eval_rule="sample")
    with pytest.raises(ValueError, match="draws a random expert"):
        export_policy(runs["pmoe-ppo"], "torchscript", eval_rule="sampled_k_mean")
    with pytest.raises(SystemExit, match="mixrl export: error: No run directory or checkpoint"):
        cli_main(["export", "no/such/run"])
    capsys.readouterr()
    cli_main(["export", str(runs["td3_bc"]), "--format", "torchscript"])
    assert (runs["td3_bc"] / "policy.torchscript.pt").is_file()
    assert "exported torchscript" in capsys.readouterr().out
