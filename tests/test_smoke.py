"""Smoke runs of every agent on every device at hand (`pytest -m smoke`; `make gpu-check` runs them on a GPU), and
the CPU's view of the GPU paths: which per-step code waits for the device, and the Makefile's torch stamp.

A smoke run trains a few hundred steps in-process with tiny networks and checks what a user gets: a run directory
with a finite final evaluation, and a policy that `mixrl.load_policy` rebuilds on the CPU and that acts in the
env's own action space. The `cuda` runs are skipped where torch sees no GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny import DATASET_ID, a2pr_args, dataset_root, datasets, dqn_args, ppo_args, sac_args, td3_bc_args  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode

import mixrl
from mixrl.envs.interventions import InterventionLabeller
from mixrl.policies.chunked import ChunkedActor

REPO = Path(__file__).resolve().parent.parent
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")),
]

# ---------------------------------------------------------------------------------------------------------------
# Every agent, a few hundred steps, on each device
# ---------------------------------------------------------------------------------------------------------------

PD_GAINS = np.array([1.0, 10.0, 1.0, 2.0])  # force = K s balances InvertedPendulum-v5


def pd_expert(obs: np.ndarray) -> np.ndarray:
    """A scripted InvertedPendulum-v5 expert (obs -> env action), for RLIF and DAgger."""
    return np.clip([np.asarray(obs) @ PD_GAINS], -3.0, 3.0).astype(np.float32)


def pd_critic(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """A scripted reference Q for value-based interventions: minus the distance to the expert's force."""
    return -np.abs(np.asarray(actions)[:, 0] - pd_expert(obs)[0])


def common(tmp_path, device: str) -> dict:
    return {"device": device, "seed": 1, "eval_every": 0, "eval_episodes": 1, "run_root": str(tmp_path / "runs")}


def run_sac(tmp_path, device, **kw):
    from mixrl.agents import sac

    return sac.main(sac_args(tmp_path, **{**common(tmp_path, device), "total_timesteps": 300, **kw}))


def run_ppo(tmp_path, device, **kw):
    from mixrl.agents import ppo

    return ppo.main(ppo_args(tmp_path, **{**common(tmp_path, device), "total_timesteps": 256, **kw}))


def run_dqn(tmp_path, device):
    from mixrl.agents import dqn

    return dqn.main(dqn_args(tmp_path, **common(tmp_path, device), total_timesteps=300))


def run_td3_bc(tmp_path, device):
    from mixrl.agents import td3_bc

    return td3_bc.main(td3_bc_args(tmp_path, **common(tmp_path, device), total_steps=200, checkpoint_every=100))


def run_a2pr(tmp_path, device):
    from mixrl.agents import a2pr

    return a2pr.main(a2pr_args(tmp_path, **common(tmp_path, device), total_steps=200, checkpoint_every=100))


def run_bc(tmp_path, device):
    from mixrl.agents import bc

    args = bc.Args(dataset_id=DATASET_ID, total_steps=200, batch_size=16, hidden_sizes=(16, 16))
    return bc.main(dataclasses.replace(args, **common(tmp_path, device), checkpoint_every=100))


def run_rlif(tmp_path, device):
    from mixrl.agents import rlif

    args = rlif.Args(env_id="InvertedPendulum-v5", total_timesteps=300, learning_starts=100, batch_size=16)
    args = dataclasses.replace(args, hidden_sizes=(16, 16), checkpoint_every=100, **common(tmp_path, device))
    return rlif.main(args, expert=pd_expert, reference_q=pd_critic)


def run_dagger(tmp_path, device):
    from mixrl.agents import dagger

    args = dagger.Args(env_id="InvertedPendulum-v5", total_timesteps=300, batch_size=16, hidden_sizes=(16, 16))
    # The loop's own budget fields (not in the stable list): one episode per iteration, short training.
    args = dataclasses.replace(args, episodes_per_iteration=1, pretrain_steps=0, train_steps=50)
    return dagger.main(dataclasses.replace(args, checkpoint_every=0, **common(tmp_path, device)), expert=pd_expert)


AGENTS = {
    "sac": run_sac,
    "sac-gmm": lambda tmp_path, device: run_sac(tmp_path, device, policy="gmm"),
    "ppo": run_ppo,
    "ppo-gmm": lambda tmp_path, device: run_ppo(tmp_path, device, policy="gmm"),
    "dqn": run_dqn,
    "td3_bc": run_td3_bc,
    "a2pr": run_a2pr,
    "bc": run_bc,
    "rlif": run_rlif,
    "dagger": run_dagger,
}
OFFLINE = {"td3_bc", "a2pr", "bc"}  # trained on the Minari dataset of tests/tiny.py (Pendulum-v1)
ENV_IDS = {"dqn": "CartPole-v1", "rlif": "InvertedPendulum-v5", "dagger": "InvertedPendulum-v5"}  # else Pendulum-v1


@pytest.mark.smoke
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("agent", list(AGENTS))
def test_agent_trains_evaluates_and_its_policy_loads(request, tmp_path, agent, device):
    if agent in OFFLINE:
        request.getfixturevalue("datasets")
    run_dir = AGENTS[agent](tmp_path, device)
    final = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(final["mean_return"]), final
    policy = mixrl.load_policy(run_dir)  # on the CPU, whatever device trained it
    env = gym.make(ENV_IDS.get(agent, "Pendulum-v1"))
    obs, _ = env.reset(seed=0)
    action = np.asarray(policy(obs))
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        assert action.shape == () and space.contains(int(action))
    else:
        assert action.shape == space.shape and np.all(action >= space.low) and np.all(action <= space.high)
    env.close()


# ---------------------------------------------------------------------------------------------------------------
# Host synchronisations of per-step code, counted on the CPU
# ---------------------------------------------------------------------------------------------------------------

aten = torch.ops.aten
# Ops whose result the host must read (data-dependent values or shapes): on a GPU each waits for the device.
READS = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select, aten.equal, aten.unique_dim}
INDEXING = {aten.index, aten.index_put, aten.index_put_}  # with a boolean mask they call nonzero


class HostSyncs(TorchDispatchMode):
    """Records the torch ops in its block that would make the host wait for a GPU (`ops`, by name)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        masks = [i for i in (args[1] if packet in INDEXING else []) if i is not None and i.dtype == torch.bool]
        if packet in READS or masks:
            self.ops.append(packet.__name__)
        return func(*args, **(kwargs or {}))


def test_host_sync_counter_sees_masks_and_reads():
    x, mask = torch.arange(4.0), torch.tensor([True, False, True, False])
    with HostSyncs() as syncs:
        x[mask] = 0.0
        if mask.any():
            x[mask].sum()
        torch.where(mask, x, 1.0).masked_fill_(mask, 2.0)
    assert syncs.ops == ["index_put_", "_local_scalar_dense", "index"]


def actor_pair() -> tuple[ChunkedActor, ChunkedActor]:
    torch.manual_seed(0)
    actor = ChunkedActor(3, 2, (8,), horizon=4, execute=3)
    masked = ChunkedActor(3, 2, (8,), horizon=4, execute=3)
    masked.load_state_dict(actor.state_dict())
    masked._refill_selected = masked._refill_masked  # the GPU's path, on the CPU
    return actor, masked


def test_chunked_actor_acts_without_host_syncs_off_the_cpu():
    """Off the CPU, queues are refilled by masked writes: the same actions as planning only the empty rows (CPU),
    and nothing read on the host. A "meta" tensor has no data at all, so any host read there fails."""
    actor, masked = actor_pair()
    gen = torch.Generator().manual_seed(1)
    resets = {2: [False, True, False, False, True], 5: [True, True, True, True, True], 6: [True, False] * 2 + [False]}
    for t in range(10):
        obs = torch.randn(5, 3, generator=gen)
        with HostSyncs() as syncs:
            if t in resets:
                masked.reset(torch.tensor(resets[t]))
            got = masked.deterministic(obs)
        if t in resets:
            actor.reset(torch.tensor(resets[t]))
        torch.testing.assert_close(got, actor.deterministic(obs), rtol=1e-6, atol=1e-7)
        assert syncs.ops == [], t
    meta = ChunkedActor(3, 2, (8,), horizon=4, execute=3).to("meta")
    for _ in range(4):
        assert meta.deterministic(torch.zeros(5, 3, device="meta")).shape == (5, 2)
        meta.reset(torch.tensor([True, False, False, True, False], device="meta"))


def test_intervention_labeller_reads_the_host_once_per_step():
    """One read per step: the number of rows to store (boolean-mask indexing read it for every tensor)."""
    labeller = InterventionLabeller(6, 3, 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        flags = torch.rand(4, 6, generator=gen) < 0.3
        with HostSyncs() as syncs:
            labeller.step(torch.randn(6, 3), torch.randn(6, 2), *flags[:2], torch.randn(6, 3), *flags[2:])
        assert syncs.ops == ["nonzero"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")
def test_cuda_per_step_paths_sync_only_where_they_must():
    actor = ChunkedActor(3, 2, (8,), horizon=4, execute=3).cuda()
    labeller = InterventionLabeller(6, 3, 2, "cuda")
    obs, flags = torch.randn(6, 3, device="cuda"), torch.rand(4, 6, device="cuda") < 0.3
    actor.deterministic(obs)  # the first call allocates the queues
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            actor.deterministic(obs)
            actor.reset(flags[0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = labeller.step(obs, torch.randn(6, 2, device="cuda"), *flags[:2], obs, *flags[2:])
    assert all(r.device.type == "cuda" for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# The Makefile reinstalls torch when TORCH_SPEC or TORCH_INDEX change
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_reinstalls_torch_when_its_spec_or_index_changes(tmp_path):
    """`make install` on a venv whose pip only logs its arguments."""
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").touch()
    (venv / "bin" / "pip").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (venv / "bin" / "pip").chmod(0o755)

    def install(*variables: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k not in {"TORCH_SPEC", "TORCH_INDEX", "MAKEFLAGS"}}
        subprocess.run(["make", "-s", "-C", str(REPO), "install", f"VENV={venv}", *variables], check=True, env=env)
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [line for line in lines if "torch" in line]

    fresh = install()
    assert fresh == ["uninstall --quiet --yes torch", "install --quiet torch==2.13.0"]
    assert install() == []  # nothing changed: pip is not called
    assert install("TORCH_SPEC=torch") == ["uninstall --quiet --yes torch", "install --quiet torch"]
    assert install("TORCH_SPEC=torch") == []
    index = "TORCH_INDEX=https://wheels.invalid/cu128"
    assert install("TORCH_SPEC=torch", index) == [
        "uninstall --quiet --yes torch",
        "install --quiet torch --index-url https://wheels.invalid/cu128",
    ]
    assert install("TORCH_SPEC=torch", index) == []
    os.utime(venv / ".torch-spec", (0, 0))
    os.utime(venv / ".installed", (1, 1))  # older than pyproject.toml: the project is reinstalled, torch kept
    assert install("TORCH_SPEC=torch", index) == ["install --quiet torch --index-url https://wheels.invalid/cu128"]
