"""The three-body time-stepping task: integrators, environments, reward, initial conditions, and DQN."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tiny import CountingEnv

import mixrl
from mixrl.agents import dqn
from mixrl.checkpoints import load_checkpoint
from mixrl.envs.three_body import (
    MONOTONE_TERMINAL_REWARD,
    MU_VALUES,
    YEAR,
    ThreeBodyTimestepEnv,
    dopri5_evolve,
    hermite_aarseth_evolve,
    hermite_evolve,
    initial_conditions,
    leapfrog_evolve,
    legacy_ic_parameters,
    reward_fn,
    total_energy,
)
from mixrl.evaluation import evaluate
from mixrl.policies.discrete import QNetwork

ENV_IDS = ["mixrl/ThreeBodyTimestep-v0", "mixrl/ThreeBodyTimestepContinuous-v0"]


def three_body_eval():
    """scripts/three_body_eval.py as a module (its baselines and episode runner)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "three_body_eval.py"
    spec = importlib.util.spec_from_file_location("three_body_eval", path)
    module = sys.modules["three_body_eval"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kepler_binary(e: float):
    """Two bodies of mass 1/2 on a relative orbit with a = 1 (period 2 pi), starting at apocentre."""
    m = np.array([0.5, 0.5])
    r_apo, v_apo = 1.0 + e, math.sqrt((1.0 - e) / (1.0 + e))
    x = np.array([[-0.5 * r_apo, 0.0], [0.5 * r_apo, 0.0]])
    v = np.array([[0.0, -0.5 * v_apo], [0.0, 0.5 * v_apo]])
    return x, v, m


def kepler_relative_position(e: float, t: float) -> np.ndarray:
    """Exact x2 - x1 of `kepler_binary(e)` at time t (Newton iterations on Kepler's equation)."""
    mean_anomaly = math.pi + t
    ecc_anomaly = mean_anomaly
    for _ in range(50):
        ecc_anomaly -= (ecc_anomaly - e * math.sin(ecc_anomaly) - mean_anomaly) / (1.0 - e * math.cos(ecc_anomaly))
    return -np.array([math.cos(ecc_anomaly) - e, math.sqrt(1.0 - e * e) * math.sin(ecc_anomaly)])


def test_hermite_fourth_order_on_kepler_orbit():
    e = 0.5
    errors = []
    for mu in [0.01, 0.005, 0.0025]:
        x, v, m = kepler_binary(e)
        t, steps, evals, ok = hermite_evolve(x, v, m, 0.0, 3 * 2 * math.pi, mu)
        assert ok and evals == steps + 1
        assert abs(t - 6 * math.pi) <= 0.5 * mu * 1.5**1.5  # within dt/2 of the target (t_coll <= 1.5^1.5)
        errors.append(np.linalg.norm((x[1] - x[0]) - kepler_relative_position(e, t)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 14.0) & (ratios < 19.0)), ratios


def test_energy_conserved_at_small_mu():
    x, v, m = initial_conditions(legacy_ic_parameters(0))
    e0 = total_energy(x, v, m)
    t = 0.0
    for i in range(1, 11):  # 1 yr in ten calls, as the env does
        t, _, _, ok = hermite_evolve(x, v, m, t, i * 0.1 * YEAR, 1e-3)
        assert ok
    assert abs((total_energy(x, v, m) - e0) / e0) < 1e-10


def test_other_integrators_conserve_energy_at_their_accurate_end():
    x0, v0, m = initial_conditions(legacy_ic_parameters(0))
    e0 = total_energy(x0, v0, m)
    runs = {
        "aarseth": lambda x, v, t, te, c: hermite_aarseth_evolve(x, v, m, t, te, 1e-6, c),
        "leapfrog": lambda x, v, t, te, c: (*leapfrog_evolve(x, v, m, t, te, 1e-5 * YEAR), c),
        "dopri5": lambda x, v, t, te, c: dopri5_evolve(x, v, m, t, te, 1e-13, c),
    }
    for name, run in runs.items():
        x, v, t, carry = x0.copy(), v0.copy(), 0.0, 0.0
        for i in range(1, 6):
            t, steps, evals, ok, carry = run(x, v, t, i * 0.1 * YEAR, carry)
            assert ok and steps > 0 and evals > steps, name
        assert abs((total_energy(x, v, m) - e0) / e0) < 1e-9, name


def test_other_integrators_follow_a_kepler_orbit():
    """Positions against the exact orbit after 1.3 periods in five calls (energy alone would pass a frozen state)."""
    e, t_end = 0.5, 1.3 * 2 * math.pi
    runs = {  # name -> (x, v, m, t, t_end, carry) -> (t, steps, evals, ok, carry), and its position tolerance
        "aarseth": (lambda x, v, m, t, te, c: hermite_aarseth_evolve(x, v, m, t, te, 1e-6, c), 1e-9),
        "leapfrog": (lambda x, v, m, t, te, c: (*leapfrog_evolve(x, v, m, t, te, 1e-3), c), 2e-5),
        "dopri5": (lambda x, v, m, t, te, c: dopri5_evolve(x, v, m, t, te, 1e-12, c), 1e-9),
    }
    for name, (run, tolerance) in runs.items():
        x, v, m = kepler_binary(e)
        t, carry = 0.0, 0.0
        for i in range(1, 6):
            t, _, _, ok, carry = run(x, v, m, t, i * t_end / 5, carry)
            assert ok, name
        assert t == pytest.approx(t_end, abs=2e-3), name
        error = np.linalg.norm((x[1] - x[0]) - kepler_relative_position(e, t))
        assert error < tolerance, (name, error)


def test_initial_conditions_of_seed_0():
    k = legacy_ic_parameters(0)
    np.testing.assert_allclose(k, [13.232, 7.152, -6.028, 13.173], atol=5e-4)
    env = ThreeBodyTimestepEnv()
    obs, info = env.reset(options={"ic_seed": 0})
    np.testing.assert_array_equal(info["ic"], k)
    com = np.array([k[0] + k[2], k[1] + k[3]]) / 3.0
    np.testing.assert_allclose(obs[2:4], (k[0:2] - com) / 10.0)  # body 1, centre-of-mass frame, 10 au units
    np.testing.assert_allclose(obs[0:2], -com / 10.0)
    assert obs[12] == 0.0
    np.testing.assert_allclose(obs[6:12].reshape(3, 2).sum(0), 0.0, atol=1e-15)  # no centre-of-mass drift
    assert info["energy"] < 0.0  # bound


def test_reward_matches_formula_by_hand():
    assert reward_fn(1e-6, 1e-2, step=1) == 0.0
    # -3000 * log10(1e-8 / 1e-10) / (8^3 * 2) + 4 / 2
    assert reward_fn(1e-8, 1e-2, step=2) == pytest.approx(-3000 * 2 / (512 * 2) + 2.0)
    # -3000 * (-4) / (14^3 * 5) + 4 / 4
    assert reward_fn(1e-14, 1e-4, step=5) == pytest.approx(12000 / (2744 * 5) + 1.0)
    assert reward_fn(1e-10, 1e-1, step=7) == pytest.approx(4.0)
    # divide-by-zero guard at |dE| = 1 and beyond: denominator max(|log10|dE||, 1)^3 = 1
    assert reward_fn(1.0, 1e-3, step=3) == pytest.approx(-3000 * 10 / 3 + 4 / 3)
    assert reward_fn(0.5, 1e-3, step=3) == pytest.approx(-3000 * (math.log10(0.5) + 10) / 3 + 4 / 3)
    # identical to the raw formula for |dE| <= 0.1
    assert reward_fn(0.1, 1e-3, step=2) == pytest.approx(-3000 * 9 / 2 + 4 / 3)


def test_env_reward_and_info_follow_the_formula():
    env = ThreeBodyTimestepEnv(report_wall_time=True)
    env.reset(options={"ic_seed": 3})
    for i, action in enumerate([5, 2, 3, 4, 9], start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["mu"] == MU_VALUES[action]
        assert reward == pytest.approx(reward_fn(info["energy_error"], MU_VALUES[action], i))
        assert obs[12] == pytest.approx(-math.log10(info["energy_error"]))
        if action < 9:  # within dt/2 of the target, and dt < 0.04 yr here
            assert info["time_yr"] == pytest.approx(0.1 * i, abs=0.02)
        assert info["force_evals"] == info["hermite_steps"] + 1 and info["wall_time"] >= 0.0
        assert not (terminated or truncated)


def test_monotone_terminal_reward_replaces_only_the_terminating_step():
    """The same system and actions with the paper's reward and with a fixed terminal reward: equal rewards until
    the blow-up step, which costs MONOTONE_TERMINAL_REWARD whatever |dE| is (the paper's formula pays less for a
    larger blow-up)."""

    def rewards(terminal_reward):
        env = ThreeBodyTimestepEnv(max_energy_error=1e-9, terminal_reward=terminal_reward)
        env.reset(options={"ic_seed": 0})
        out, terminated = [], False
        while not terminated:
            _, reward, terminated, _, _ = env.step(5 if not out else 9)
            out.append(reward)
        return out

    paper, monotone = rewards(None), rewards(MONOTONE_TERMINAL_REWARD)
    assert len(paper) == len(monotone) >= 3 and monotone[:-1] == paper[:-1]
    assert monotone[-1] == MONOTONE_TERMINAL_REWARD != paper[-1]
    # Below the paper's worst non-terminating reward (step 2, |dE| = 0.1), and the registered id uses it.
    assert MONOTONE_TERMINAL_REWARD < reward_fn(0.1, MU_VALUES[0], step=2)
    assert gym.make("mixrl/ThreeBodyTimestepMonotone-v0").unwrapped.terminal_reward == MONOTONE_TERMINAL_REWARD
    assert gym.make("mixrl/ThreeBodyTimestep-v0").unwrapped.terminal_reward is None


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_checker(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.shape == (400, 400, 3) and frame.dtype == np.uint8 and frame.max() > 100


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reproducible_from_seed(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(5):
            obs, reward, *_ = env.step(env.action_space.sample())
            out += [obs, np.array([reward])]
        obs, _ = env.reset()  # the next episode's system comes from the same generator
        return np.concatenate(out + [obs])

    np.testing.assert_array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7)[:12], rollout(8)[:12])


def test_truncation_and_termination():
    env = gym.make("mixrl/ThreeBodyTimestep-v0", max_steps=3)
    env.reset(seed=0)
    flags = [env.step(9)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env = gym.make("mixrl/ThreeBodyTimestep-v0", max_energy_error=1e-12)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(9)
    assert terminated and not truncated and info["energy_error"] > 1e-12


def test_continuous_action_is_log10_mu():
    env = gym.make("mixrl/ThreeBodyTimestepContinuous-v0")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([-2.5], np.float32))
    assert info["mu"] == pytest.approx(10**-2.5)


def test_fixed_mu_baseline_record():
    record = three_body_eval().run_fixed_mu(9, ic_seed=0, max_steps=20)
    assert record.steps == 20 and len(record.rewards) == 20 and record.rewards[0] == 0.0
    assert record.final_error == record.errors[-1] and record.hermite_steps > 0
    assert record.force_evals == record.hermite_steps + 20


# ------------------------------------------------------------------------------------------------ DQN
def tiny_dqn_args(tmp_path, **overrides):
    defaults = dict(
        total_timesteps=300,
        learning_starts=64,
        batch_size=32,
        hidden_sizes=(32, 32),
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=100,
        run_root=str(tmp_path / "runs"),
    )
    return dqn.Args(**{**defaults, **overrides})


def test_dqn_smoke_run_checkpoint_and_load_policy(tmp_path):
    run_dir = dqn.main(tiny_dqn_args(tmp_path, double_dqn=True))
    ckpt = load_checkpoint(run_dir, newest=True)  # latest.pt holds the replay buffer, final.pt does not
    assert ckpt["algo"] == "dqn" and ckpt["env_id"] == "mixrl/ThreeBodyTimestep-v0"
    assert ckpt["global_step"] == 300 and ckpt["buffer"]["size"] == 300
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    stored = ckpt["buffer"]["data"][:, 13]  # the action column: indices stored as floats
    assert torch.equal(stored, stored.round()) and stored.min() >= 0 and stored.max() <= 9

    policy = mixrl.load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(6, 13))
    actions = policy(obs)
    assert actions.shape == (6,) and actions.dtype == np.int64 and np.all((actions >= 0) & (actions < 10))
    assert policy(obs[2]) == actions[2]
    env = gym.make("mixrl/ThreeBodyTimestep-v0")
    obs, _ = env.reset(seed=0)
    env.step(policy(obs))

    net = QNetwork(13, 10, (32, 32))
    net.load_state_dict(ckpt["state"]["q_network"])
    q = net(torch.as_tensor(obs, dtype=torch.float32)[None])
    assert int(q.argmax()) == policy(obs)
    middle = 0.05 + 0.85 * math.exp(-1.0)  # eps_end + (eps_start - eps_end) exp(-steps / eps_decay), steps = 1000
    assert dqn.epsilon(dqn.Args(), torch.tensor([0.0, 1000.0, 1e6])).tolist() == pytest.approx([0.9, middle, 0.05])


def test_dqn_resume_continues_exactly(tmp_path):
    straight = load_checkpoint(dqn.main(tiny_dqn_args(tmp_path / "a", total_timesteps=400)))
    first_half = dqn.main(tiny_dqn_args(tmp_path / "b", total_timesteps=250))  # in the middle of an episode
    resumed = load_checkpoint(dqn.main(dqn.Args(resume=str(first_half), total_timesteps=400)))
    assert resumed["global_step"] == straight["global_step"] == 400
    for name in ("q_network", "q_target"):
        for key, value in straight["state"][name].items():
            assert torch.equal(value, resumed["state"][name][key]), f"{name}.{key} differs after resume"


@pytest.mark.parametrize("double_dqn", [False, True])
def test_dqn_update_by_hand(double_dqn):
    """Q(s) = W s on s in {e1, e2}: online Q(e1) = (1, 2, 3), Q(e2) = (0, 5, -1); target Qbar(e1) = (10, 20, 0),
    Qbar(e2) = (4, 1, 2); gamma 0.5. Transitions (s, a, r, s', terminated): (e1, 0, 1, e2, 0), (e2, 1, 2, e1, 0),
    (e1, 2, 3, e2, 1). DQN bootstraps from max Qbar(s') = (4, 20): y = (3, 12, 3). Double DQN evaluates the online
    argmax (a' = 1 on e2, 2 on e1) with Qbar: (1, 0), y = (1.5, 2, 3). Q(s, a) = (1, 5, 3); loss = mean Huber."""
    online, target = torch.nn.Linear(2, 3, bias=False), torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 5.0], [3.0, -1.0]]))
        target.weight.copy_(torch.tensor([[10.0, 4.0], [20.0, 1.0], [0.0, 2.0]]))
    target.requires_grad_(False)
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    batch = dqn.Batch(
        obs=torch.tensor([e1, e2, e1]),
        actions=torch.tensor([[0.0], [1.0], [2.0]]),
        rewards=torch.tensor([1.0, 2.0, 3.0]),
        next_obs=torch.tensor([e2, e1, e2]),
        terminated=torch.tensor([0.0, 0.0, 1.0]),
    )
    args = dqn.Args(gamma=0.5, tau=0.25, double_dqn=double_dqn)
    online_before, target_before = online.weight.detach().clone(), target.weight.clone()
    metrics = dqn.make_update(args, online, target, torch.optim.SGD(online.parameters(), lr=0.0))(batch)

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    y = [1.5, 2.0, 3.0] if double_dqn else [3.0, 12.0, 3.0]
    expected = sum(huber(q - t) for q, t in zip([1.0, 5.0, 3.0], y)) / 3
    assert metrics["losses/td_loss"].item() == pytest.approx(expected)
    torch.testing.assert_close(target.weight, 0.75 * target_before + 0.25 * online_before)  # Polyak, tau = 0.25


def test_dqn_refuses_continuous_actions(tmp_path):
    with pytest.raises(ValueError, match="Discrete action space.*ThreeBodyTimestepContinuous"):
        dqn.main(tiny_dqn_args(tmp_path, env_id="mixrl/ThreeBodyTimestepContinuous-v0"))
    with pytest.raises(ValueError, match="--backend warp .*discrete action space"):
        dqn.main(tiny_dqn_args(tmp_path, backend="warp"))
    assert not (tmp_path / "runs").exists()


class DiscreteCountingEnv(CountingEnv):
    """tests/tiny.py's CountingEnv (obs = (time step, episode count), integers that normalisation would turn into
    fractions) with actions in {0, 1}, reward = action."""

    action_space = gym.spaces.Discrete(2)

    def step(self, action):
        self.t += 1
        return np.array([self.t, self.episode], np.float32), float(action), False, False, {}


def test_dqn_normalize_obs_stores_raw_observations_and_best_pt_holds_the_best_evaluation(tmp_path):
    if "mixrl_test/DiscreteCounting-v0" not in gym.registry:
        gym.register(id="mixrl_test/DiscreteCounting-v0", entry_point=DiscreteCountingEnv, max_episode_steps=5)
    args = tiny_dqn_args(tmp_path, env_id="mixrl_test/DiscreteCounting-v0", normalize_obs=True, eval_every=100)
    run_dir = dqn.main(args)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    obs = ckpt["buffer"]["data"][:, :2]
    assert torch.equal(obs, obs.round()) and obs[:, 0].max() == 4  # (time step, episode count), as the env gave
    norm = ckpt["obs_normalizer"]
    assert norm["count"] > 300 and norm["mean"][0] == pytest.approx(2.0, abs=0.1)
    np.testing.assert_array_equal(norm["mean"], ckpt["state"]["obs_normalizer"]["mean"])  # resumed from there
    assert mixrl.load_policy(run_dir)(np.array([1.0, 3.0], np.float32)) in (0, 1)

    evaluations = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [line["step"] for line in evaluations] == [100, 200, 300]
    best = max(evaluations, key=lambda line: line["mean_return"])  # the first of equal returns
    best_ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best_ckpt["global_step"] == best["step"] and "buffer" not in best_ckpt
    assert best_ckpt["best_return"] == ckpt["best_return"] == best["mean_return"]


class MatchSignEnv(gym.Env):
    """One-step episodes: obs is +1 or -1, reward 1 for action 1 on +1 and action 0 on -1, else 0."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = 1.0 if self.np_random.random() < 0.5 else -1.0
        return np.array([self.sign], np.float32), {}

    def step(self, action):
        reward = float(int(action) == (1 if self.sign > 0 else 0))
        return np.array([self.sign], np.float32), reward, True, False, {}


def test_dqn_learns_a_contextual_bandit(tmp_path):
    if "mixrl_test/MatchSign-v0" not in gym.registry:
        gym.register(id="mixrl_test/MatchSign-v0", entry_point=MatchSignEnv)
    args = tiny_dqn_args(tmp_path, env_id="mixrl_test/MatchSign-v0", total_timesteps=600, eps_decay=100.0)
    run_dir = dqn.main(args)
    result = evaluate(mixrl.load_policy(run_dir), "mixrl_test/MatchSign-v0", episodes=20)
    assert result["mean_return"] == 1.0
    assert load_checkpoint(run_dir)["global_step"] == 600
