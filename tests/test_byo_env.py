"""Bring your own environment: `--env-id module:id` and `--env-kwargs` on the agents, recorded in the checkpoint so
that `mixrl eval`, `load_policy` and `mixrl export` rebuild the same env with no flags (tests/byo_pkg is the
user's package)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mixrl
from mixrl.checkpoints import load_checkpoint
from mixrl.cli import main as cli_main
from mixrl.envs.factory import check_env_id, parse_env_kwargs
from mixrl.evaluation import evaluate

ENV_ID = "byo_pkg:byo_pkg/Reach-v0"
KWARGS = {"goal": [0.3, 0.9], "speed": 0.2}
TINY = ["--eval-every", "0", "--eval-episodes", "2", "--checkpoint-every", "0", "--run-root", "runs"]


def train(capsys, agent: str, *flags: str):
    cli_main([agent, "--env-id", ENV_ID, *flags, *TINY])
    return capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: ")


@pytest.mark.parametrize(
    "agent, flags",
    [
        (
            "sac",
            [
                "--env-kwargs",
                "goal=[0.3, 0.9]",
                "speed=0.2",
                "--total-timesteps",
                "60",
                "--learning-starts",
                "40",
                "--batch-size",
                "16",
            ],
        ),
        (
            "ppo",
            [
                "--env-kwargs",
                json.dumps(KWARGS),
                "--total-timesteps",
                "64",
                "--num-steps",
                "64",
                "--num-minibatches",
                "2",
            ],
        ),
    ],
)
def test_train_on_own_env_then_evaluate_and_export_without_flags(capsys, agent, flags, tmp_path):
    run_dir = train(capsys, agent, *flags, "--hidden-sizes", "16", "16")
    ckpt = load_checkpoint(run_dir)
    assert ckpt["env_id"] == ENV_ID and ckpt["env_kwargs"] == KWARGS

    # mixrl eval rebuilds the env with the recorded goal and speed: the same returns as evaluating by hand with
    # them, and not those of the package's default goal.
    cli_main(["eval", run_dir, "--episodes", "2", "--seed", "3"])
    assert f"on {ENV_ID}: return" in capsys.readouterr().out
    recorded = json.loads((tmp_path / run_dir / "eval.json").read_text())["returns"]
    policy = mixrl.load_policy(run_dir)
    assert recorded == evaluate(policy, ENV_ID, 2, seed=3, env_kwargs=KWARGS)["returns"]
    assert recorded != evaluate(policy, ENV_ID, 2, seed=3)["returns"]

    # the training run's own final evaluation used them too
    final = json.loads((tmp_path / run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    assert final["mean_return"] == pytest.approx(
        evaluate(policy, ENV_ID, 2, seed=10_000 + 1, env_kwargs=KWARGS)["mean_return"]
    )

    cli_main(["export", run_dir, "--format", "onnx"])
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / run_dir / "policy.onnx"))
    obs = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"obs": obs})[0], policy(obs), atol=1e-5)


def test_env_kwargs_forms_and_errors():
    assert parse_env_kwargs(["goal=[0.1, 0.2]", "speed=0.5", "name=left"]) == {
        "goal": [0.1, 0.2],
        "speed": 0.5,
        "name": "left",
    }
    assert parse_env_kwargs(['{"speed": 1, "sparse": true}']) == {"speed": 1, "sparse": True}
    assert parse_env_kwargs([]) == {}
    with pytest.raises(ValueError, match="not key=value"):
        parse_env_kwargs(["speed"])
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_env_kwargs(['{"speed": }'])
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg'.*PYTHONPATH"):
        check_env_id("no_such_pkg:no_such_pkg/Reach-v0")
    with pytest.raises(ValueError, match="Did you mean: byo_pkg/Reach-v0"):
        check_env_id("byo_pkg:byo_pkg/Rech-v0")


def test_videos_at_the_env_size_or_a_given_one_with_an_overlay(tmp_path):
    import imageio.v2 as imageio

    def policy(obs):
        return np.zeros(2, np.float32)

    plain = evaluate(policy, ENV_ID, 1, video_dir=tmp_path / "plain", max_video_frames=5)
    sized = evaluate(policy, ENV_ID, 1, video_dir=tmp_path / "sized", video_size=(160, 96), video_overlay=True)
    plain_frames, sized_frames = imageio.mimread(plain["videos"][0]), imageio.mimread(sized["videos"][0])
    assert plain_frames[0].shape == (48, 48, 3)  # the env's own render size
    assert sized_frames[0].shape == (96, 160, 3) and len(sized_frames) == 21  # first frame + 20 steps
    # the env draws on white; the overlay is white text on a black box in the top-left corner
    assert plain_frames[-1][:8, :40].mean() > 200
    corner = sized_frames[-1][:10, :120].astype(float)
    assert corner.mean() < 150 and corner.max() > 200
