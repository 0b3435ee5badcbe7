"""The MuJoCo Warp backend against Gymnasium on the CPU: one-step equivalence from synchronised states, reset
distributions, autoreset with final observations, exact state round trips, errors, and PPO learning through it.

Warp compiles its kernels on first use (about a minute on a cold cache, then cached in ~/.cache/warp); the envs
are built once per session and shared.
"""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from mixrl.envs.factory import make_vec_env
from mixrl.envs.warp import SUPPORTED_IDS

wp = pytest.importorskip("warp")

NUM_WORLDS = 64
NUM_STATES = 8  # distinct synchronised states per task; world i holds state i % NUM_STATES


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def warp_env():
    """One WarpVecEnv of NUM_WORLDS worlds per task and device, built on first request and shared by the session."""
    envs = {}

    def get(env_id: str, device: str = "cpu"):
        if (env_id, device) not in envs:
            envs[env_id, device] = make_vec_env(env_id, NUM_WORLDS, seed=0, device=device, backend="warp")
        return envs[env_id, device]

    return get


def gym_states(env_id: str, rng: np.random.Generator) -> list[gym.Env]:
    """NUM_STATES Gymnasium envs driven by random actions for 0-40 steps (restarted if they end), with their
    physics state rounded to float32 so that both backends start from the same numbers."""
    envs = []
    for i in range(NUM_STATES):
        env = gym.make(env_id)
        env.reset(seed=i)
        env.action_space.seed(i)
        for _ in range(rng.integers(0, 40)):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        data = env.unwrapped.data
        for field in (data.qpos, data.qvel, data.qacc_warmstart, data.xpos, data.cfrc_ext):
            field[:] = field.astype(np.float32)
        envs.append(env)
    return envs


def load_states(warp, envs: list[gym.Env], elapsed: list[int]) -> None:
    """Copy the Gymnasium envs' physics state and step counters into the warp worlds (world i <- env i % n)."""
    v = warp._views
    for w in range(warp.num_envs):
        data = envs[w % len(envs)].unwrapped.data
        v.qpos[w] = torch.from_numpy(data.qpos)
        v.qvel[w] = torch.from_numpy(data.qvel)
        v.xpos[w] = torch.from_numpy(data.xpos)
        v.cfrc_ext[w] = torch.from_numpy(data.cfrc_ext)
        warp._qacc_warmstart[w] = torch.from_numpy(data.qacc_warmstart)
        warp._elapsed[w] = elapsed[w % len(envs)]
    warp._position = warp.task.position(v)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("env_id", SUPPORTED_IDS)
def test_one_step_matches_gymnasium(warp_env, env_id, device):
    """On CUDA through the captured CUDA graph (a GPU's float32 sums round otherwise: a looser tolerance)."""
    tol = 1e-4 if device == "cpu" else 1e-3
    rng = np.random.default_rng(0)
    envs = gym_states(env_id, rng)
    warp = warp_env(env_id, device)
    if device == "cuda":
        assert warp.cuda_graph and warp.step_mode.startswith("one CUDA graph per step"), warp.step_mode
    warp.reset()
    # Two envs one step before the time limit: truncated in both backends.
    elapsed = [env._elapsed_steps for env in envs]
    elapsed[1] = elapsed[5] = warp.task.max_episode_steps - 1
    for env, steps in zip(envs, elapsed):
        env._elapsed_steps = steps
    load_states(warp, envs, elapsed)
    actions = rng.uniform(-1.0, 1.0, (NUM_STATES, warp.single_action_space.shape[0])).astype(np.float32)
    warp_actions = torch.from_numpy(actions[np.arange(NUM_WORLDS) % NUM_STATES]).to(device)
    env_actions = warp.to_env_action(warp_actions)[:NUM_STATES]
    expected = [env.step(a) for env, a in zip(envs, env_actions)]
    out = warp.step(warp_actions)
    assert all(x.device.type == device for x in out)
    obs, reward, terminated, truncated, final_obs = (x.cpu() for x in out)
    for w in range(NUM_WORLDS):
        e_obs, e_reward, e_terminated, e_truncated, _ = expected[w % NUM_STATES]
        got = final_obs[w].numpy()
        np.testing.assert_allclose(got, e_obs, rtol=tol, atol=tol, err_msg=f"world {w}")
        assert reward[w].item() == pytest.approx(e_reward, rel=tol, abs=10 * tol), w
        assert (terminated[w].item(), truncated[w].item()) == (e_terminated, e_truncated), w
    assert truncated[1] and truncated[5]
    for env in envs:
        env.close()


@pytest.mark.parametrize("env_id", SUPPORTED_IDS)
def test_reset_distribution_matches_gymnasium(warp_env, env_id):
    warp = warp_env(env_id)
    warp_obs = warp.reset().numpy()
    env = gym.make(env_id)
    gym_obs = np.stack([env.reset(seed=1000 + i)[0] for i in range(NUM_WORLDS)])
    env.close()
    assert warp_obs.shape == gym_obs.shape
    # Means within 5 standard errors; spreads within 35% (64 samples from uniform or Gaussian noise).
    std = gym_obs.std(0)
    np.testing.assert_allclose(warp_obs.mean(0), gym_obs.mean(0), atol=1e-6 + 5 * std.max() / np.sqrt(NUM_WORLDS))
    np.testing.assert_allclose(warp_obs.std(0), std, rtol=0.35, atol=1e-6)
    # Seeded: the same seed gives the same worlds.
    np.testing.assert_array_equal(warp.reset().numpy(), warp_obs)


def test_autoreset_masks_final_obs_and_episodes(warp_env):
    warp = warp_env("Hopper-v5")
    warp.reset()
    warp.pop_episodes()
    v = warp._views
    # World 0 falls (z below the healthy range), world 1 reaches the time limit, the others continue.
    v.qpos[0, 1] = 0.5
    warp._elapsed[1] = warp._lengths[1] = warp.task.max_episode_steps - 1
    warp._returns[2] = 7.0  # an unfinished episode keeps its return
    obs, reward, terminated, truncated, final_obs = warp.step(torch.zeros(NUM_WORLDS, 3))
    done = terminated | truncated
    assert terminated.tolist() == [True] + [False] * (NUM_WORLDS - 1)
    assert truncated.tolist() == [False, True] + [False] * (NUM_WORLDS - 2)
    # Ended worlds: final_obs is the last observation, obs a fresh reset (within the noise of the initial state).
    assert final_obs[0, 0] < 0.7  # Hopper's observation starts with z (x is left out)
    init_obs = torch.cat([warp.task.init_qpos[1:], warp.task.init_qvel])
    noise = warp.task.noise + 1e-6
    assert ((obs[done] - init_obs).abs() <= noise).all()
    assert not torch.equal(obs[:2], final_obs[:2])
    assert torch.equal(obs[~done], final_obs[~done])
    assert warp._elapsed[:2].tolist() == [0, 0] and (warp._elapsed[2:] == 1).all()
    returns, lengths = warp.pop_episodes()
    assert lengths == [1, warp.task.max_episode_steps]
    assert returns == pytest.approx(reward[:2].double().tolist())
    assert warp._returns[2].item() == pytest.approx(7.0 + reward[2].item())


def test_contact_frame_set_after_kernels_are_built_warns(warp_env):
    from mixrl.envs.warp.contact import use_mujoco_c_plane_capsule_frame

    warp_env("Ant-v5").step(torch.zeros(NUM_WORLDS, 8))  # builds the collision kernels, if no test did yet
    with pytest.warns(UserWarning, match="built its collision kernels before"):
        use_mujoco_c_plane_capsule_frame()


def test_state_dict_round_trip_is_exact(warp_env):
    warp = warp_env("Ant-v5")
    warp.reset()
    gen = torch.Generator().manual_seed(0)
    actions = [torch.rand(NUM_WORLDS, 8, generator=gen) * 2 - 1 for _ in range(4)]
    warp._elapsed[:3] = warp.task.max_episode_steps - 2  # resets happen within the replayed steps
    warp.step(actions[0])
    state = warp.state_dict()
    first = [warp.step(a) for a in actions[1:]]
    warp.load_state_dict(state)
    again = [warp.step(a) for a in actions[1:]]
    for out_a, out_b in zip(first, again):
        for a, b in zip(out_a, out_b):
            assert torch.equal(a, b)


def test_normalisation_state_is_what_load_policy_reads():
    envs = make_vec_env(
        "InvertedPendulum-v5", 16, seed=3, normalize_obs=True, normalize_reward_gamma=0.99, backend="warp"
    )
    obs = envs.reset()
    for _ in range(3):
        obs, reward, *_ = envs.step(torch.rand(16, 1) * 2 - 1)
    state = envs.normalizer_state()
    assert set(state) == {"clip", "epsilon", "mean", "var", "count"}
    assert isinstance(state["mean"], np.ndarray) and state["mean"].shape == (4,) and state["count"] > 64
    assert obs.dtype == torch.float32 and reward.dtype == torch.float32 and obs.abs().max() <= 10.0


def test_unsupported_ids_and_backends_are_refused():
    with pytest.raises(ValueError, match="supported: InvertedPendulum-v5, HalfCheetah-v5"):
        make_vec_env("Pendulum-v1", backend="warp")
    with pytest.raises(ValueError, match="PGS"):
        make_vec_env("Humanoid-v5", backend="warp")
    with pytest.raises(ValueError, match="Unknown backend"):
        make_vec_env("Pendulum-v1", backend="jax")


def test_gymnasium_backend_never_imports_warp():
    code = (
        "import sys, mixrl, mixrl.agents.ppo, mixrl.agents.sac\n"
        "from mixrl.envs.factory import make_vec_env\n"
        "make_vec_env('Pendulum-v1').reset()\n"
        "assert 'warp' not in sys.modules and 'mujoco_warp' not in sys.modules, 'warp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ppo_learns_inverted_pendulum_through_warp(tmp_path):
    from mixrl.agents import ppo

    args = ppo.Args(
        env_id="InvertedPendulum-v5",
        backend="warp",
        num_envs=128,  # many worlds and short rollouts: on a CPU each MuJoCo step costs the same for any number
        num_steps=16,
        num_minibatches=8,
        update_epochs=10,
        total_timesteps=32768,  # 16 iterations
        learning_rate=1e-3,
        anneal_lr=False,
        eval_every=0,
        eval_episodes=5,
        checkpoint_every=0,
        run_root=str(tmp_path / "runs"),
        seed=1,
    )
    run_dir = ppo.main(args)
    final = json.loads((run_dir / "evaluations.jsonl").read_text().splitlines()[-1])
    # A random policy drops the pole after about 5-10 steps (return = steps); 1000 is the episode cap.
    assert final["mean_return"] > 300, final


# ---------------------------------------------------------------------------------------------------------------
# CUDA paths: what a CPU can check (the driver check, the capture fallbacks, the episode read-back), and the CUDA
# graph itself where a GPU is present (`make gpu-check` runs the tests named *cuda*)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "driver, match",
    [
        (None, r"driver for CUDA 13\.0 or newer \(found no NVIDIA driver\)"),
        ((12, 8), r"found a driver for CUDA 12\.8\)"),
    ],
)
def test_cuda_without_a_usable_driver_is_one_line_naming_the_driver(monkeypatch, driver, match):
    from mixrl.envs.warp import vec_env
    from mixrl.errors import UsageError

    monkeypatch.setattr(vec_env.wp, "get_cuda_device_count", lambda: 0)
    monkeypatch.setattr(vec_env.wp, "get_cuda_toolkit_version", lambda: (13, 4))
    monkeypatch.setattr(vec_env.wp, "get_cuda_driver_version", lambda: driver)
    with pytest.raises(UsageError, match=match) as error:
        make_vec_env("InvertedPendulum-v5", 4, device="cuda", backend="warp")
    assert "\n" not in str(error.value) and "--device cpu" in str(error.value)
    vec_env.check_cuda_driver(torch.device("cpu"))  # the CPU needs no driver


class FakeCapture:
    """wp.ScopedCapture that fails while `opt.graph_conditional` is in `fails_with`; records what it captured."""

    def __init__(self, opt, fails_with, log):
        self.opt, self.fails_with, self.log = opt, fails_with, log

    def __call__(self, device):
        self.graph = None
        return self

    def __enter__(self):
        self.log.append("begin")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self.opt.graph_conditional in self.fails_with:
                raise RuntimeError(f"capture failed (conditional={self.opt.graph_conditional})\nmore lines")
            self.graph = f"graph(conditional={self.opt.graph_conditional})"


@pytest.mark.parametrize(
    "mempool, conditional_nodes, fails_with, graph, steps",
    [
        ((True, True), True, (), "graph(conditional=True)", [True, True]),
        ((True, True), True, (True,), "graph(conditional=False)", [True, True, False, False]),
        ((True, True), False, (), "graph(conditional=False)", [False, False]),  # CUDA < 12.4: never tried
        ((True, False), True, (), "graph(conditional=True)", [True, True]),  # the pool is switched on first
        ((True, True), True, (True, False), None, [True, True, False, False]),
        ((False, False), True, (), None, []),  # no pool: no capture is tried
    ],
)
def test_graph_capture_retries_without_conditional_nodes_before_falling_back(
    monkeypatch, mempool, conditional_nodes, fails_with, graph, steps
):
    from types import SimpleNamespace

    from mixrl.envs.warp import vec_env

    opt, log, enabled = SimpleNamespace(graph_conditional=True), [], []
    monkeypatch.setattr(vec_env.wp, "is_mempool_supported", lambda device: mempool[0])
    monkeypatch.setattr(vec_env.wp, "is_mempool_enabled", lambda device: mempool[1])
    monkeypatch.setattr(vec_env.wp, "set_mempool_enabled", lambda device, on: enabled.append(on))
    monkeypatch.setattr(vec_env.wp, "is_conditional_graph_supported", lambda: conditional_nodes)
    monkeypatch.setattr(vec_env.wp, "ScopedCapture", FakeCapture(opt, fails_with, log))
    captured, mode = vec_env.capture_physics(lambda: log.append(opt.graph_conditional), "cuda:0", opt)
    assert captured == graph
    assert [entry for entry in log if entry != "begin"] == steps  # a warm-up step before each capture
    assert enabled == ([True] if mempool == (True, False) else [])
    if graph is None:
        assert mode.startswith("kernels launched one by one") and opt.graph_conditional  # MuJoCo Warp's default
    else:
        assert mode.startswith("one CUDA graph per step") and opt.graph_conditional == ("True" in graph)
        assert ("without conditional graph nodes" in mode) == ("False" in graph)
    assert "\n" not in mode and ("failed: capture failed" in mode) == bool(fails_with)


def test_finished_episodes_survive_state_dict_load_and_close(warp_env):
    """Episodes that ended since the last pop_episodes are in the state (a resumed run logs them) and are not lost
    by close."""
    warp = warp_env("Hopper-v5")
    warp.reset()
    warp.pop_episodes()
    warp._views.qpos[0, 1] = 0.5  # world 0 falls
    _, reward, terminated, *_ = warp.step(torch.zeros(NUM_WORLDS, 3))
    assert terminated[0]
    warp.step(torch.zeros(NUM_WORLDS, 3))  # a second unread step
    state = warp.state_dict()
    episode = ([pytest.approx(reward[0].item())], [1])
    assert (state["episodes"]["returns"], state["episodes"]["lengths"]) == episode
    assert warp.pop_episodes() == episode  # state_dict pops nothing
    warp.load_state_dict(state)
    assert warp.pop_episodes() == episode  # carried by the state
    assert warp.pop_episodes() == ([], [])
    warp._views.qpos[3, 1] = 0.5
    warp.step(torch.zeros(NUM_WORLDS, 3))
    warp.close()
    assert warp.pop_episodes()[1] == [3]  # read at close, popped after it (world 3 ran for 3 steps)
    assert warp.pop_episodes(wait=False) == ([], [])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_episodes_are_returned_at_once_and_without_waiting():
    envs = make_vec_env("Hopper-v5", NUM_WORLDS, seed=0, device="cuda", backend="warp")
    envs.reset()
    envs._views.qpos[:2, 1] = 0.5  # worlds 0 and 1 fall at the next step
    envs.step(torch.zeros(NUM_WORLDS, 3, device="cuda"))
    assert envs.pop_episodes(wait=True)[1] == [1, 1]  # the step that ended them, not 15 steps later
    envs._views.qpos[2, 1] = 0.5
    envs.step(torch.zeros(NUM_WORLDS, 3, device="cuda"))
    torch.cuda.set_sync_debug_mode("error")  # pop_episodes(wait=False) must not synchronise
    try:
        early = envs.pop_episodes(wait=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert early[1] + envs.pop_episodes(wait=False)[1] == [1]
    envs.close()
