"""Residual policies (ResiP): the zero-initialised residual reproduces its base exactly, bases round-trip through
the normalised action space (mixrl checkpoints and Stable-Baselines3 zips), chunk queues follow each env's
autoreset, residual runs save, reload and evaluate with their base, PPO fixes a deliberately biased base, and PPO
fine-tuning a whole chunked base starts as that base."""

from __future__ import annotations

import copy
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CounterEnv
from torch import nn

from mixrl.agents import ppo, sac
from mixrl.checkpoints import CHECKPOINT_FORMAT, atomic_torch_save
from mixrl.envs.factory import make_vec_env
from mixrl.envs.residual import ChunkVecEnv, ResidualVecEnv
from mixrl.evaluation import Policy, evaluate, evaluate_checkpoint, load_policy
from mixrl.policies.chunked import ChunkedActor, ExecuteChunk
from mixrl.policies.loading import policy_spec
from mixrl.policies.residual import ChunkGaussianActor, FrozenBase, ResidualGaussianActor, ResidualPolicy
from mixrl.pretrained import load_base

GOAL, TOLERANCE, BIAS = 0.5, 0.02, 0.06


class Reach1D(gym.Env):
    """x' = x + 0.2 a, x_0 ~ U(-0.5, 0.5); reward -|x' - GOAL| per step; success when |x' - GOAL| < TOLERANCE at the
    end of the 20-step episode (info["is_success"] on every step)."""

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-0.5, 0.5)
        return np.array([self.x], np.float32), {"is_success": False}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.2 * np.clip(action[0], -1, 1), -2.0, 2.0))
        error = abs(self.x - GOAL)
        return np.array([self.x], np.float32), -error, False, False, {"is_success": error < TOLERANCE}


if "mixrl_test/Reach1D-v0" not in gym.registry:
    gym.register(id="mixrl_test/Reach1D-v0", entry_point=Reach1D, max_episode_steps=20)


class BiasedController(nn.Module):
    """a = clip(2 (GOAL - x), -1, 1) - BIAS: settles BIAS / 2 short of the goal, outside the tolerance. A class of
    the user's own (not one of mixrl's policy modules), so its files load only when trusted (--trust-pickle)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return (self.gain * (GOAL - obs)).clamp(-1.0, 1.0) - BIAS


def save_base(
    path, module: nn.Module, env_id: str = "mixrl_test/Reach1D-v0", obs_normalizer: dict | None = None, **spec
) -> str:
    """A mixrl checkpoint whose deterministic policy is `module`, rebuilt from the keyword arguments `spec`, on
    observations normalised by `obs_normalizer` (none by default)."""
    env = gym.make(env_id)
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "algo": "scripted",
            "env_id": env_id,
            "observation_space": env.observation_space,
            "action_space": env.action_space,
            "obs_normalizer": obs_normalizer,
            "policy": policy_spec(module, **spec),
        },
        path,
    )
    return str(path)


def counter_base(normalizer: dict | None = None, execute: int = 3) -> FrozenBase:
    """A FrozenBase for Counter-v0 (obs (t, episode)) whose chunk from normalised obs o is (0.1 o_0 + 0.01 h)_h."""
    chunked = ChunkedActor(2, 1, (4,), horizon=4, execute=execute)
    chunked.forward = lambda obs: (0.1 * obs[:, :1] + 0.01 * torch.arange(4.0)).unsqueeze(-1)
    return FrozenBase(chunked, 2, normalizer)


def test_zero_initialised_residual_reproduces_the_base_exactly(tmp_path):
    base = load_base(save_base(tmp_path / "base.pt", BiasedController()), trusted=True)
    head = ResidualGaussianActor(2, 1, (16, 16))
    residual = ResidualPolicy(base, head, obs_dim=1, alpha=0.1)
    obs = torch.linspace(-1.0, 1.0, 9)[:, None]
    assert torch.equal(residual.deterministic(obs), base.deterministic(obs))
    spaces = gym.make("mixrl_test/Reach1D-v0").observation_space, gym.make("mixrl_test/Reach1D-v0").action_space
    combined = evaluate(Policy(residual, *spaces), "mixrl_test/Reach1D-v0", episodes=5, seed=3)
    alone = evaluate(Policy(base, *spaces), "mixrl_test/Reach1D-v0", episodes=5, seed=3)
    assert combined["returns"] == alone["returns"] and combined["success_rate"] == alone["success_rate"] == 0.0
    # Exploration: Delta ~ N(0, e^-1), so alpha sigma = 0.037 in normalised units.
    delta, _ = head.sample(torch.zeros(20_000, 2))
    assert 0.1 * delta.std().item() == pytest.approx(0.1 * np.exp(-1.0), rel=0.03)


def test_zero_residual_around_a_chunked_base_takes_the_base_actions_step_for_step():
    env = gym.make("mixrl/PegInsertion-v0")
    torch.manual_seed(0)
    obs_dim = env.observation_space.shape[0]
    base = FrozenBase(ChunkedActor(obs_dim, 3, (32,), horizon=6, execute=4), obs_dim)
    residual = ResidualPolicy(base, ResidualGaussianActor(obs_dim + 3, 3, (32,)), obs_dim)
    actions = {}
    for name, actor in (("base", base), ("combined", residual)):
        policy, taken = Policy(actor, env.observation_space, env.action_space), []
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            policy.reset()
            for _ in range(10):
                taken.append(policy(obs))
                obs, *_ = env.step(taken[-1])
        actions[name] = np.array(taken)
    np.testing.assert_array_equal(actions["combined"], actions["base"])
    assert np.abs(np.diff(actions["base"], axis=0)).max() > 0  # the base does act


def test_vec_env_feeds_x_and_flushes_each_envs_chunk_queue_on_autoreset():
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 2), counter_base(), alpha=0.5)
    x = envs.reset()
    torch.testing.assert_close(x[:, 2], torch.zeros(2))  # obs (0, 0): the chunk (0, 0.01, 0.02, 0.03)
    base_actions = [x[0, 2].item()]
    for _ in range(6):  # Counter-v0 ends after 5 steps; same-step autoreset
        x, _, _, truncated, final_x = envs.step(torch.ones(2, 1))
        base_actions.append(x[0, 2].item())
        if truncated.any():
            assert final_x[0, 0].item() == 5.0 and x[0, 0].item() == 0.0  # final obs (5, 0), reset obs (0, 1)
            assert final_x[0, 2].item() == pytest.approx(0.32)  # the old queue's next action, peeked
    # chunks planned at t = 0, 3 (open loop in between) and at the reset, from obs t = 0 again
    np.testing.assert_allclose(base_actions, [0.0, 0.01, 0.02, 0.3, 0.31, 0.0, 0.01], atol=1e-6)


def test_mixrl_and_sb3_bases_round_trip_through_the_normalised_action_space(tmp_path):
    from stable_baselines3 import PPO, SAC

    env = gym.make("Pendulum-v1")  # actions in [-2, 2]
    obs = np.stack([env.observation_space.sample() for _ in range(16)])
    for algo in (PPO, SAC):
        model = algo("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]})
        if algo is PPO:  # an untrained PPO mean is ~0: shift it so that clipping to the bounds is exercised
            with torch.no_grad():
                model.policy.action_net.bias.fill_(1.5)
                model.policy.action_net.weight.mul_(100.0)
        model.save(tmp_path / f"{algo.__name__}.zip")
        base = load_base(tmp_path / f"{algo.__name__}.zip")
        assert base.obs_dim == 3 and not any(p.requires_grad for p in base.parameters())  # frozen
        residual_envs = ResidualVecEnv(make_vec_env("Pendulum-v1", 1), base)
        residual_envs.reset()
        assert residual_envs.state_dict()["queues"] is None  # an SB3 base keeps no action queues
        normalised = base.deterministic(torch.as_tensor(obs))
        assert normalised.abs().max() <= 1.0
        expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_allclose(Policy(base, env.observation_space, env.action_space)(obs), expected, atol=1e-5)
    # A mixrl checkpoint as base: its Policy and load_policy act alike, normaliser and chunk queues included.
    ppo_run = ppo.main(
        ppo.Args(
            env_id="Pendulum-v1",
            num_envs=2,
            num_steps=8,
            num_minibatches=2,
            total_timesteps=16,
            update_epochs=1,
            eval_episodes=1,
            run_root=str(tmp_path / "runs"),
        )
    )
    base = load_base(ppo_run)
    np.testing.assert_allclose(
        Policy(base, env.observation_space, env.action_space)(obs), load_policy(ppo_run)(obs), atol=1e-6
    )


def test_base_policy_runs_save_reload_and_evaluate_base_and_combined(tmp_path):
    base_path = save_base(tmp_path / "base.pt", BiasedController())
    common = dict(
        env_id="mixrl_test/Reach1D-v0",
        seed=0,
        num_envs=2,
        total_timesteps=80,
        eval_episodes=2,
        base_policy=base_path,
        trust_pickle=True,  # BiasedController is a class of the test's own
        run_root=str(tmp_path / "runs"),
    )
    runs = [
        ppo.main(ppo.Args(num_steps=20, num_minibatches=2, update_epochs=1, **common)),
        sac.main(sac.Args(learning_starts=20, batch_size=16, hidden_sizes=(16, 16), **common)),
    ]
    for run_dir in runs:
        policy = load_policy(run_dir, trusted=True)
        assert isinstance(policy.actor, ResidualPolicy) and isinstance(policy.actor.base, FrozenBase)
        result = evaluate_checkpoint(run_dir, episodes=3, trusted=True)
        assert result["base"]["success_rate"] == 0.0 and "success_rate" in result
    with pytest.raises(ValueError, match="does not fit Pendulum-v1"):  # a base made for another task
        ppo.main(ppo.Args(**{**common, "env_id": "Pendulum-v1"}, num_steps=20, num_minibatches=2))
    with pytest.raises(ValueError, match="drop --policy gmm"):
        ppo.main(ppo.Args(num_steps=20, num_minibatches=2, policy="gmm", **common))


def test_ppo_residual_fixes_a_biased_base(tmp_path):
    base_path = save_base(tmp_path / "base.pt", BiasedController())
    run_dir = ppo.main(
        ppo.Args(
            env_id="mixrl_test/Reach1D-v0",
            base_policy=base_path,
            trust_pickle=True,
            seed=0,
            num_envs=8,
            num_steps=20,
            num_minibatches=4,
            update_epochs=10,
            total_timesteps=8 * 20 * 25,
            hidden_sizes=(32, 32),
            learning_rate=1e-3,
            residual_log_std=0.0,
            normalize_reward=False,
            eval_episodes=20,
            eval_every=0,
            run_root=str(tmp_path / "runs"),
        )
    )
    result = evaluate_checkpoint(run_dir, episodes=20, trusted=True)
    assert result["base"]["success_rate"] == 0.0
    assert result["success_rate"] >= 0.9


def test_execute_chunk_sums_rewards_and_stops_where_the_episode_ends():
    env = ExecuteChunk(gym.make("mixrl_test/Counter-v0"), steps=3)  # reward = t; truncated at t = 5
    env.reset(seed=0)
    assert env.action_space.shape == (3,)
    obs, reward, _, truncated, _ = env.step(np.zeros(3, np.float32))
    assert (obs[0], reward, truncated) == (3, 1 + 2 + 3, False)
    obs, reward, _, truncated, _ = env.step(np.zeros(3, np.float32))
    assert (obs[0], reward, truncated) == (5, 4 + 5, True)  # the chunk's third action is never executed


def test_finetune_base_starts_as_the_base_and_trains_the_whole_network(tmp_path):
    env = gym.make("mixrl/PegInsertion-v0")
    obs_dim = env.observation_space.shape[0]
    torch.manual_seed(0)
    chunked = ChunkedActor(obs_dim, 3, (32,), horizon=6, execute=4)
    normalizer = {"mean": np.full(obs_dim, 0.01), "var": np.full(obs_dim, 0.04), "epsilon": 1e-8, "clip": 10.0}
    spec = dict(obs_dim=obs_dim, action_dim=3, hidden_sizes=(32,), horizon=6, execute=4)
    base_path = save_base(tmp_path / "base.pt", chunked, "mixrl/PegInsertion-v0", normalizer, **spec)
    common = dict(
        env_id="mixrl/PegInsertion-v0",
        base_policy=base_path,
        finetune_base=True,
        num_envs=2,
        num_steps=8,
        num_minibatches=2,
        update_epochs=2,
        total_timesteps=16,
        hidden_sizes=(16,),
        eval_episodes=1,
        run_root=str(tmp_path / "runs"),
    )
    # The PPO actor's mean is the chunk the base queues (k = 4 actions), on the base's normalised observations.
    base = load_base(base_path)
    actor = ChunkGaussianActor(copy.deepcopy(base.model).requires_grad_(True))
    x = ChunkVecEnv(make_vec_env(common["env_id"], 2, seed=5, wrapper=partial(ExecuteChunk, steps=4)), base).reset()
    base.deterministic(make_vec_env(common["env_id"], 2, seed=5).reset())  # plans a chunk for each env
    torch.testing.assert_close(actor.deterministic(x).unflatten(-1, (4, 3)), base.model.queue)
    noise = actor.sample(x.repeat(5000, 1))[0] - actor.deterministic(x).repeat(5000, 1)
    assert noise.std().item() == pytest.approx(np.exp(-3.3), rel=0.03)  # ResiP's exploration std, 0.037
    frozen = ppo.main(ppo.Args(learning_rate=0.0, **common))
    tuned = ppo.main(ppo.Args(learning_rate=1e-3, **common))
    base = Policy(load_base(base_path), env.observation_space, env.action_space)
    actions = {}
    for name, policy in (("base", base), ("frozen", load_policy(frozen)), ("tuned", load_policy(tuned))):
        assert isinstance(policy.actor, FrozenBase) and isinstance(policy.actor.model, ChunkedActor)
        obs, _ = env.reset(seed=1)
        policy.reset()
        taken = []
        for _ in range(10):  # across chunk boundaries: the saved policy executes 4 actions per chunk, as the base
            taken.append(policy(obs))
            obs, *_ = env.step(taken[-1])
        actions[name] = np.array(taken)
    np.testing.assert_array_equal(actions["frozen"], actions["base"])  # iteration 0: the base, action for action
    assert np.abs(actions["tuned"] - actions["base"]).max() > 0  # an update moves the network itself
    tuned_state = load_policy(tuned).actor.model.state_dict()
    assert all(not torch.equal(tuned_state[name], value) for name, value in chunked.state_dict().items())
    with pytest.raises(ValueError, match="chunked BC network"):  # a base that is no chunked network
        ppo.main(
            ppo.Args(
                **{**common, "base_policy": save_base(tmp_path / "c.pt", BiasedController(), "mixrl/PegInsertion-v0")},
                trust_pickle=True,
            )
        )


COUNTER_NORMALIZER = {"mean": np.array([2.0, 0.0]), "var": np.array([3.99, 0.99]), "epsilon": 0.01, "clip": 10.0}


def test_residual_env_state_round_trip_continues_mid_chunk():
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 2), counter_base())
    envs.reset()
    envs.step(torch.zeros(2, 1))  # one action into the first chunk of 3
    state = envs.state_dict()
    after = [envs.step(torch.zeros(2, 1))[0] for _ in range(6)]  # across a replan and an episode end
    envs.load_state_dict(state)
    torch.testing.assert_close(torch.stack([envs.step(torch.zeros(2, 1))[0] for _ in range(6)]), torch.stack(after))


def test_peek_reads_the_next_base_action_without_advancing_the_queues():
    base, obs = counter_base(), torch.tensor([[1.0, 0.0]])
    base.deterministic(obs)
    peeked = base.peek(obs)
    assert base.deterministic(obs) == peeked == pytest.approx(0.11)  # the second queued action


def test_residual_inputs_and_finetuning_observations_use_the_bases_normaliser():
    base = counter_base(COUNTER_NORMALIZER)
    x = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 1), base).reset()
    torch.testing.assert_close(x, torch.tensor([[-1.0, 0.0, -0.1]]))  # [(obs - mean) / std, base action]
    envs = ChunkVecEnv(make_vec_env("mixrl_test/Counter-v0", 1, wrapper=partial(ExecuteChunk, steps=3)), base)
    torch.testing.assert_close(envs.reset(), torch.tensor([[-1.0, 0.0]]))
    envs.step(torch.zeros(1, 3))  # t = 3
    x, _, _, truncated, final_x = envs.step(torch.zeros(1, 3))  # t = 5: the time limit, mid-chunk
    assert truncated.item()
    torch.testing.assert_close(final_x, torch.tensor([[1.5, 0.0]]))  # the true last obs (5, 0), normalised
    torch.testing.assert_close(x, torch.tensor([[-1.0, 1.0]]))  # the reset obs (0, 1)


def test_bases_that_do_not_fit_or_normalised_envs_are_refused():
    peg = partial(make_vec_env, "mixrl/PegInsertion-v0", 1)
    ResidualVecEnv(peg(), FrozenBase(ChunkedActor(14, 3, (8,)), 14))  # fits
    for obs_dim, action_dim in ((14, 2), (13, 3)):
        with pytest.raises(ValueError, match="does not fit mixrl/PegInsertion-v0"):
            ResidualVecEnv(peg(), FrozenBase(ChunkedActor(obs_dim, action_dim, (8,)), obs_dim))
    with pytest.raises(ValueError, match="does not fit mixrl_test/Counter-v0"):
        ChunkVecEnv(make_vec_env("mixrl_test/Counter-v0", 1, wrapper=partial(ExecuteChunk, steps=2)), counter_base())
    normalised = make_vec_env("mixrl_test/Counter-v0", 1, normalize_obs=True)
    with pytest.raises(ValueError, match="A residual's base needs raw observations"):
        ResidualVecEnv(normalised, counter_base())
    with pytest.raises(ValueError, match="A chunked base needs raw observations"):
        ChunkVecEnv(normalised, counter_base())
    with pytest.raises(ValueError, match=r"\(this base is BiasedController\)"):
        ChunkVecEnv(make_vec_env("mixrl_test/Counter-v0", 1), FrozenBase(BiasedController(), 2))


def test_defaults_are_the_reference_settings():
    """resip_rlif.md A: alpha 0.1; chunks of 8 predicted and 8 executed (the CPU defaults); the fine-tuning
    baseline's log-std fixed."""
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 1), counter_base())
    assert envs.policy.alpha == 0.1
    chunked = ChunkedActor(2, 1, (4,))
    assert (chunked.horizon, chunked.execute) == (8, 8)
    assert "log_std" not in dict(ChunkGaussianActor(chunked).named_parameters())


class StaggeredCounter(CounterEnv):
    """Counter-v0 (obs (t, episode)) whose episodes end at t = 4 for an even first seed and t = 6 for an odd one."""

    def reset(self, *, seed=None, options=None):
        if self.terminate_at is None:
            self.terminate_at = 4 if (seed or 0) % 2 == 0 else 6
        return super().reset(seed=seed, options=options)


if "mixrl_test/StaggeredCounter-v0" not in gym.registry:
    gym.register(id="mixrl_test/StaggeredCounter-v0", entry_point=StaggeredCounter)


def test_an_episode_end_flushes_only_that_envs_queue():
    """Env 0 ends at t = 4, env 1 at t = 6: env 1's open-loop chunk goes on untouched through env 0's reset."""
    envs = ResidualVecEnv(make_vec_env("mixrl_test/StaggeredCounter-v0", 2), counter_base())
    base_actions = [envs.reset()[:, 2].tolist()]
    for _ in range(6):
        base_actions.append(envs.step(torch.zeros(2, 1))[0][:, 2].tolist())
    env0, env1 = zip(*base_actions)
    # chunks of 3 planned from t: env 0 at t = 0, 3, then at its reset (t = 0 again); env 1 at t = 0, 3, 6 -> 0
    np.testing.assert_allclose(env0, [0.0, 0.01, 0.02, 0.3, 0.0, 0.01, 0.02], atol=1e-6)
    np.testing.assert_allclose(env1, [0.0, 0.01, 0.02, 0.3, 0.31, 0.32, 0.0], atol=1e-6)


def test_residual_action_and_clipped_inputs():
    """a = a_base + alpha Delta; the residual sees the base's normalised observation clipped to +-3 (the base itself
    to its normaliser's +-10); std = sqrt(var + epsilon)."""
    normalizer = {"mean": np.array([10.0, -10.0]), "var": np.array([0.99, 0.99]), "epsilon": 0.01, "clip": 10.0}
    base = counter_base(normalizer)
    assert not any(p.requires_grad for p in base.parameters())
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 1), base, alpha=0.5)
    x = envs.reset()
    torch.testing.assert_close(x, torch.tensor([[-3.0, 3.0, -1.0]]))  # base: 0.1 x (-10) = -1
    torch.testing.assert_close(envs.policy.combine(x, torch.tensor([[0.4]])), torch.tensor([[-0.8]]))
    chunk_envs = ChunkVecEnv(make_vec_env("mixrl_test/Counter-v0", 1, wrapper=partial(ExecuteChunk, steps=3)), base)
    torch.testing.assert_close(chunk_envs.reset(), torch.tensor([[-10.0, 10.0]]))
    assert ResidualPolicy(base, None, obs_dim=2).alpha == 0.1
    assert "log_std" not in dict(ResidualGaussianActor(3, 1, (4,)).named_parameters())  # fixed exploration noise


def test_stateless_bases_save_no_queues_and_other_bases_are_named_in_the_finetuning_error():
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Reach1D-v0", 1), FrozenBase(BiasedController(), 1))
    envs.reset()
    assert envs.state_dict()["queues"] is None

    class NoNetwork(nn.Module):
        obs_dim = 2

    with pytest.raises(ValueError, match=r"\(this base is NoNetwork\)"):
        ChunkVecEnv(make_vec_env("mixrl_test/Counter-v0", 1), NoNetwork())


# The residual envs on an accelerator. 'meta' stands in for a GPU on a CPU-only machine: an operation that mixes
# a meta tensor with a CPU tensor fails, as one that mixes CUDA and CPU tensors does.


def chunked_base(device: str = "cpu") -> FrozenBase:
    """A FrozenBase for Counter-v0 around a real (randomly initialised) chunked network, on `device`."""
    torch.manual_seed(0)
    return FrozenBase(ChunkedActor(2, 1, (4,), horizon=4, execute=3), 2, COUNTER_NORMALIZER).to(device)


def test_residual_envs_build_their_policy_on_the_envs_device():
    """The base's fit check, the residual policy (base, normaliser buffers) and x use the env's device, whether the
    base arrives on it already (load_base) or on the CPU."""
    for base_device in ("meta", "cpu"):
        envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 2, device="meta"), chunked_base(base_device))
        tensors = [*envs.policy.parameters(), *envs.policy.buffers(), envs.x, envs.reset()]
        assert {t.device.type for t in tensors} == {"meta"}, base_device
    chunk_envs = ChunkVecEnv(
        make_vec_env("mixrl_test/Counter-v0", 1, device="meta", wrapper=partial(ExecuteChunk, steps=3)), chunked_base()
    )
    assert {t.device.type for t in [*chunk_envs.base.buffers(), chunk_envs.reset()]} == {"meta"}


def test_residual_env_state_loads_onto_the_envs_device():
    """A checkpoint is read onto the CPU: restoring it puts x and the base's chunk queues back on the env's device."""
    envs = ResidualVecEnv(make_vec_env("mixrl_test/Counter-v0", 2, device="meta"), chunked_base("meta"))
    envs.reset()
    state = envs.state_dict()
    assert {state["x"].device.type} | {t.device.type for t in state["queues"].values()} == {"meta"}
    on_cpu = {
        **state,
        "x": torch.zeros(state["x"].shape),
        "queues": {name: torch.zeros(t.shape, dtype=t.dtype) for name, t in state["queues"].items()},
    }
    envs.load_state_dict(on_cpu)
    model = envs.policy.base.model
    assert {t.device.type for t in (envs.x, model.queue, model.position)} == {"meta"}


def test_steps_that_do_not_read_done_on_the_host_give_the_same_values():
    """On an accelerator every step takes the masked path (no host synchronisation); it equals the CPU's shortcut
    for steps without an episode end, across staggered episode ends and replans."""
    host, masked = (ResidualVecEnv(make_vec_env("mixrl_test/StaggeredCounter-v0", 2), counter_base()) for _ in "ab")
    assert host.read_done_on_host
    masked.read_done_on_host = False
    torch.testing.assert_close(host.reset(), masked.reset())
    generator = torch.Generator().manual_seed(0)
    for _ in range(9):
        delta = torch.randn(2, 1, generator=generator)
        for a, b in zip(host.step(delta), masked.step(delta)):
            torch.testing.assert_close(a, b)
