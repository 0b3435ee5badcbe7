"""Chunked behaviour cloning: chunk targets, one action queue per env (flushed on that env's reset), scripted
demonstrations in Minari, a BC run that load_policy and `mixrl eval` replay."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mixrl.agents import bc
from mixrl.datasets import CollectArgs, collect, open_dataset, read_episodes
from mixrl.evaluation import evaluate_checkpoint, load_policy
from mixrl.policies.chunked import ChunkedActor

DEMOS = "mixrl/mixrl-peginsertion-v0/expert-v0"


def test_chunk_targets_repeat_the_last_action_past_the_end():
    actions = np.arange(4.0)[:, None]  # T = 4, A = 1
    chunks = bc.chunk_targets(actions, 3)
    np.testing.assert_array_equal(chunks[..., 0], [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]])


def counting_actor(horizon: int = 4, execute: int = 3) -> tuple[ChunkedActor, list[torch.Tensor]]:
    """A ChunkedActor whose chunk from observation o is (10 o + h)_h, recording every batch it plans for."""
    actor = ChunkedActor(1, 1, (4,), horizon, execute)
    planned = []

    def chunk(obs: torch.Tensor) -> torch.Tensor:
        planned.append(obs[:, 0].clone())
        return (10.0 * obs + torch.arange(float(horizon))).unsqueeze(-1)

    actor.forward = chunk
    return actor, planned


def test_each_env_executes_its_queue_open_loop_and_replans_when_empty_or_reset():
    actor, planned = counting_actor()
    act = lambda o0, o1: actor.deterministic(torch.tensor([[o0], [o1]]))[:, 0].tolist()  # noqa: E731
    assert act(1, 2) == [10, 20]  # both plan
    assert act(5, 5) == [11, 21]  # open loop: the new observations are ignored
    actor.reset(torch.tensor([False, True]))  # env 1 reset: its queue is flushed, env 0's is kept
    assert act(5, 7) == [12, 70]
    assert act(8, 8) == [80, 71]  # env 0's queue of execute = 3 actions ran out
    assert [p.tolist() for p in planned] == [[1, 2], [7], [8]]
    actor.reset()
    assert act(3, 4) == [30, 40]


def test_queue_state_round_trip_continues_exactly():
    actor, _ = counting_actor()
    actor.deterministic(torch.tensor([[1.0]]))
    state = actor.queue_state()
    first = actor.deterministic(torch.tensor([[9.0]]))
    actor.load_queue_state(state)
    assert actor.deterministic(torch.tensor([[9.0]])) == first == 11.0


def test_execute_must_fit_in_the_horizon():
    for execute in (0, 5):
        with pytest.raises(ValueError, match=f"execute={execute} must be between 1 and horizon=4"):
            ChunkedActor(3, 2, (8,), horizon=4, execute=execute)
    for execute in (1, 4):
        assert ChunkedActor(3, 2, (8,), horizon=4, execute=execute).execute == execute


def test_a_single_observation_gives_one_chunk():
    assert ChunkedActor(3, 2, (8,), horizon=4, execute=2)(torch.zeros(3)).shape == (4, 2)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """A datasets root with 400 steps of the noisy scripted expert on PegInsertion (low randomness)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        args = CollectArgs("expert", policy="scripted", env_id="mixrl/PegInsertion-v0", steps=400, ref_episodes=2)
        collect(dataclasses.replace(args, action_noise=0.03))
        yield root


def test_scripted_demos_are_successful_episodes(demos, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(demos))
    dataset = open_dataset(DEMOS)
    episodes = read_episodes(dataset)
    assert sum(len(e["actions"]) for e in episodes) == 400
    complete = episodes[:-1]  # the last one is cut at 400 steps
    assert np.mean([e["rewards"].sum() for e in complete]) >= 0.9
    assert dataset.storage.metadata["ref_max_score"] == 1.0


def test_bc_run_trains_evaluates_and_replays(demos, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(demos))
    args = bc.Args(
        dataset_id=DEMOS,
        num_episodes=5,
        total_steps=300,
        batch_size=64,
        hidden_sizes=(32, 32),
        horizon=6,
        execute=4,
        eval_every=0,
        eval_episodes=2,
        log_every=100,
        run_root=str(tmp_path / "runs"),
    )
    run_dir = bc.main(args)
    evaluation = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluation) == 1 and 0.0 <= evaluation[0]["success_rate"] <= 1.0
    refs = open_dataset(DEMOS).storage.metadata
    low, high = refs["ref_min_score"], refs["ref_max_score"]
    assert evaluation[0]["normalized_score"] == pytest.approx(100 * (evaluation[0]["mean_return"] - low) / (high - low))
    policy = load_policy(run_dir)
    assert isinstance(policy.actor, ChunkedActor) and policy.actor.execute == 4
    obs = np.zeros((3, 14), np.float32)
    assert policy(obs).shape == (3, 3) and policy.actor.position.tolist() == [1, 1, 1]
    policy.reset()
    assert len(policy.actor.position) == 0
    result = evaluate_checkpoint(run_dir, episodes=2)
    assert result["algo"] == "bc" and 0.0 <= result["success_rate"] <= 1.0
    with pytest.raises(ValueError, match="--num-episodes 500"):
        bc.main(dataclasses.replace(args, num_episodes=500))
