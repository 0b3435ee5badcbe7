"""The intervening-expert wrapper (value, random, gated, none) and RLIF's labelling of transitions, on scripted
sequences of CounterEnv (obs = (t, episode), time limit 5)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CounterEnv

from mixrl.envs.factory import make_vec_env
from mixrl.envs.interventions import InterventionLabeller, InterventionWrapper, vector_info

EXPERT = np.array([0.5], np.float32)


def expert(obs: np.ndarray) -> np.ndarray:
    return EXPERT.copy()


def closeness_q(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Q(s, a) = -|a - 0.5|: the expert's action is the best one."""
    return -np.abs(np.asarray(actions)[:, 0] - 0.5)


def wrapped(mode="value", terminate_at=None, **kwargs) -> InterventionWrapper:
    env = gym.wrappers.TimeLimit(CounterEnv(terminate_at), max_episode_steps=5)
    options = {"beta": 1.0, "delta": 0.1, "relative": False, "takeover_steps": 2, **kwargs}
    return InterventionWrapper(env, expert, mode, closeness_q if mode == "value" else None, seed=0, **options)


def run(env: InterventionWrapper, actions: list[float]) -> list[tuple]:
    """(reward, intervened, takeover_start, executed action, task reward, done) of each step."""
    env.reset(seed=0)
    steps = []
    for a in actions:
        _, reward, terminated, truncated, info = env.step(np.array([a], np.float32))
        steps.append(
            (reward, info["intervened"], info["takeover_start"], float(info["action"][0]), info["task_reward"])
        )
        if terminated or truncated:
            break
    return steps


def test_value_mode_takes_over_for_k_steps_and_signals_once():
    steps = run(wrapped(), [0.5, -1.0, 0.9, 0.55, 0.45])
    assert [s[0] for s in steps] == [0.0, -1.0, 0.0, 0.0, 0.0]  # -1 on the step the expert takes over
    assert [s[1] for s in steps] == [False, True, True, False, False]  # k = 2 expert steps
    assert [round(s[3], 2) for s in steps] == [0.5, 0.5, 0.5, 0.55, 0.45]  # the expert's action while it is in control
    assert [s[4] for s in steps] == [1.0, 2.0, 3.0, 4.0, 5.0]  # task reward kept in info


def test_value_mode_probability_beta():
    env = wrapped(beta=0.8, takeover_steps=1)
    env.reset(seed=0)
    starts = [env.wants_takeover(env.obs, np.array([-1.0]), EXPERT) for _ in range(4000)]
    calm = [env.wants_takeover(env.obs, np.array([0.5]), EXPERT) for _ in range(4000)]
    assert abs(np.mean(starts) - 0.8) < 0.03 and abs(np.mean(calm) - 0.2) < 0.03


@pytest.mark.parametrize(
    "q_agent, q_cmp, expected",
    [(9.8, 10.0, False), (9.6, 10.0, True), (-10.2, -10.0, False), (-10.4, -10.0, True), (0.0, 0.0, False)],
)
def test_relative_margin_is_a_shortfall_for_either_sign(q_agent, q_cmp, expected):
    """delta = 0.03: intervene when Q(s, a) < Q(s, a_cmp) - 0.03 |Q(s, a_cmp)|, for positive and negative Q."""
    env = InterventionWrapper(
        CounterEnv(), expert, "value", lambda obs, actions: np.array([q_agent, q_cmp]), beta=1.0, delta=0.03
    )
    env.reset(seed=0)
    assert env.wants_takeover(env.obs, np.array([0.0]), EXPERT) == expected


def test_additive_margin():
    env = InterventionWrapper(
        CounterEnv(),
        expert,
        "value",
        lambda obs, actions: np.array([-100.5, -100.0]),
        beta=1.0,
        delta=1.0,
        relative=False,
    )
    env.reset(seed=0)
    assert not env.wants_takeover(env.obs, np.array([0.0]), EXPERT)
    env.delta = 0.4
    assert env.wants_takeover(env.obs, np.array([0.0]), EXPERT)


def test_value_mode_compares_with_another_action():
    env = InterventionWrapper(
        CounterEnv(),
        expert,
        "value",
        closeness_q,
        compare=lambda obs: np.array([-1.0], np.float32),
        beta=1.0,
        delta=0.1,
        relative=False,
    )
    env.reset(seed=0)
    assert not env.wants_takeover(env.obs, np.array([-0.9]), EXPERT)  # as good as the comparison action


def test_random_mode_rate_and_none_mode():
    env = wrapped("random", probability=0.3, takeover_steps=1)
    env.reset(seed=0)
    assert abs(np.mean([env.wants_takeover(env.obs, np.zeros(1), EXPERT) for _ in range(4000)]) - 0.3) < 0.03
    steps = run(wrapped("none"), [-1.0] * 5)
    assert not any(s[1] for s in steps) and all(s[0] == 0.0 for s in steps)


def test_gated_mode_l1_threshold_and_decaying_epsilon():
    env = wrapped("gated", gate_threshold=1.0, gate_epsilon=0.5, gate_decay=0.0)
    env.reset(seed=0)
    far = np.mean([env.wants_takeover(env.obs, np.array([-0.6]), EXPERT) for _ in range(4000)])  # |1.1| >= 1
    near = np.mean([env.wants_takeover(env.obs, np.array([-0.4]), EXPERT) for _ in range(4000)])
    assert abs(far - 0.5) < 0.03 and abs(near - 0.5) < 0.03  # epsilon 0.5: both coins are fair
    env.gate_decay = 1.0
    env.reset()  # episode 1: eps = 0.5 exp(-1) = 0.18
    far = np.mean([env.wants_takeover(env.obs, np.array([-0.6]), EXPERT) for _ in range(4000)])
    near = np.mean([env.wants_takeover(env.obs, np.array([-0.4]), EXPERT) for _ in range(4000)])
    eps = 0.5 * np.exp(-1.0)
    assert abs(far - (1 - eps)) < 0.03 and abs(near - eps) < 0.03


def test_expert_noise_is_clipped_and_reproducible():
    a = wrapped(expert_noise=10.0)
    a.reset(seed=3)
    noisy = np.array([a.expert_action(a.obs) for _ in range(50)])
    assert noisy.min() >= -1.0 and noisy.max() <= 1.0 and noisy.std() > 0.1
    b = wrapped(expert_noise=10.0)
    b.reset(seed=3)
    assert np.array_equal(noisy, np.array([b.expert_action(b.obs) for _ in range(50)]))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="reference Q"):
        InterventionWrapper(CounterEnv(), expert, "value")
    with pytest.raises(ValueError, match="not one of: value, random, gated, none"):
        InterventionWrapper(CounterEnv(), expert, "sometimes")
    with pytest.raises(ValueError, match="needs an expert"):
        InterventionWrapper(CounterEnv(), None, "random")


# ---------------------------------------------------------------------------------------------------------------
# RLIF's labelling: which transitions are stored, with which reward
# ---------------------------------------------------------------------------------------------------------------


def label(env: InterventionWrapper, actions: list[float], labeller: InterventionLabeller | None = None) -> list[tuple]:
    """Drive one env through InterventionLabeller (default: RLIF's, which drops terminal transitions); the stored
    rows as (t of obs, action, reward, t of next_obs), with a fifth entry True for a stored terminal transition."""
    labeller = labeller or InterventionLabeller(1, 2, 1)
    obs, _ = env.reset(seed=0)
    rows = []
    for a in actions:
        next_obs, _, terminated, truncated, info = env.step(np.array([a], np.float32))

        def t(x):
            return torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(1, -1)

        out = labeller.step(
            t(obs),
            t(info["action"]),
            torch.tensor([info["takeover_start"]]),
            torch.tensor([info["intervened"]]),
            t(next_obs),
            torch.tensor([terminated]),
            torch.tensor([truncated]),
        )
        rows += [(o[0].item(), x.item(), r.item(), n[0].item(), *[True][: int(d)]) for o, x, r, n, d in zip(*out)]
        if labeller.terminal_reward is None:
            assert not out[4].any()  # no stored transition is terminal
        obs = next_obs
        if terminated or truncated:
            break
    return rows


def test_minus_one_goes_to_the_agent_transition_before_the_takeover():
    rows = label(wrapped(), [0.5, -1.0, 0.9, 0.55, 0.45])
    # t=0 agent, -1 since the expert takes over at s_1; t=1, 2 expert (r = 0); t=3 agent (0); t=4 agent hits the
    # time limit: stored at once with r = 0, bootstrapping from the final observation.
    rows = [(o, round(a, 2), r, n) for o, a, r, n in rows]
    assert rows == [(0, 0.5, -1.0, 1), (1, 0.5, 0.0, 2), (2, 0.5, 0.0, 3), (3, 0.55, 0.0, 4), (4, 0.45, 0.0, 5)]


def test_takeover_right_after_a_takeover_gives_no_minus_one_to_the_expert():
    rows = label(wrapped(), [-1.0, -1.0, -1.0, -1.0, -1.0])
    assert [r[2] for r in rows] == [0.0, 0.0, 0.0, 0.0, 0.0] and all(r[1] == 0.5 for r in rows)


def test_grace_step_lets_the_agent_act_after_each_takeover_so_every_takeover_carries_a_minus_one():
    """RLIF's loop (grace_steps=1): after a hand-back the agent acts one untested step, so a takeover that follows
    charges that step; without it the expert takes over again at once and nothing is charged."""
    env = wrapped(grace_steps=1)
    env.env._max_episode_steps = 8
    steps = run(env, [-1.0] * 8)
    assert [s[1] for s in steps] == [True, True, False, True, True, False, True, True]  # 2 expert steps, agent, ...
    labeller = InterventionLabeller(1, 2, 1)
    rows = label(env, [-1.0] * 8, labeller)
    assert [(o, r) for o, _, r, _ in rows if r != 0] == [(2, -1.0), (5, -1.0)]  # each agent step: -1
    assert labeller.counts[2] == 2  # both takeovers after the first charged an agent step
    env, labeller = wrapped(), InterventionLabeller(1, 2, 1)
    env.env._max_episode_steps = 8
    assert all(s[1] for s in run(env, [-1.0] * 8))  # one takeover after another
    assert all(r == 0 for _, _, r, _ in label(env, [-1.0] * 8, labeller)) and labeller.counts[2] == 0


def test_takeover_running_into_termination_drops_the_terminal_transition():
    # agent at t=0, expert takes over at s_1 (k = 2) and the episode terminates on its second step (t=2 -> 3).
    rows = label(wrapped(terminate_at=3), [0.5, -1.0, 0.0, 0.0])
    assert rows == [(0, 0.5, -1.0, 1), (1, 0.5, 0.0, 2)]


def test_agent_termination_is_dropped_and_the_previous_step_labelled_zero():
    rows = label(wrapped(terminate_at=2), [0.5, 0.5])
    assert rows == [(0, 0.5, 0.0, 1)]


def test_fail_fast_episode_costs_nothing_when_terminal_transitions_are_dropped():
    """The failure mechanism (InvertedPendulum learns to drop the pole, results/rlif_findings.md): with RLIF's
    labelling an episode that the agent ends by termination before the expert steps in stores only r = 0, while an
    episode in which the agent keeps going and is taken over once stores a -1. Under the labels, failing fast is
    the better policy; the labeller counts such terminations."""
    labeller = InterventionLabeller(1, 2, 1)
    fail_fast = label(wrapped(terminate_at=2), [0.5, 0.5], labeller)
    assert fail_fast == [(0, 0.5, 0.0, 1)]  # the terminal transition (s_1, a_1, s_2) is not stored at all
    assert labeller.counts.tolist() == [1, 1, 0]  # one termination, with no -1 stored before it; no -1 at all
    keeps_going = label(wrapped(), [0.5, 0.5, -1.0, 0.5, 0.5], labeller)
    assert sum(r[2] for r in fail_fast) == 0.0 > sum(r[2] for r in keeps_going) == -1.0
    assert label(wrapped(terminate_at=4), [0.5, -1.0, 0.0, 0.0], labeller)[0][2] == -1.0  # taken over, then ended
    assert labeller.counts.tolist() == [2, 1, 2]  # that termination had a -1 before it; two -1s stored in all


@pytest.mark.parametrize("terminal_reward", [-1.0, -10.0])
def test_terminal_label_option_stores_terminations_as_terminal_penalties(terminal_reward):
    """--terminal-label takeover (-1) / absorbing (-1 / (1 - gamma)): the transition that ends the episode by
    termination is stored, terminal, with the penalty, whoever acted; a truncation still bootstraps with r = 0."""
    labeller = InterventionLabeller(1, 2, 1, terminal_reward=terminal_reward)
    fail_fast = label(wrapped(terminate_at=2), [0.5, 0.5], labeller)
    assert fail_fast == [(0, 0.5, 0.0, 1), (1, 0.5, terminal_reward, 2, True)]
    assert sum(r[2] for r in fail_fast) == terminal_reward  # failing fast now costs as much as a takeover, or more
    expert_ends = label(wrapped(terminate_at=3), [0.5, -1.0, 0.0, 0.0], labeller)  # the takeover runs into it
    assert expert_ends == [(0, 0.5, -1.0, 1), (1, 0.5, 0.0, 2), (2, 0.5, terminal_reward, 3, True)]
    assert label(wrapped(takeover_steps=4), [0.5, 0.5, 0.5, -1.0, 0.0], labeller)[-1] == (4, 0.5, 0.0, 5)
    assert labeller.counts.tolist() == [2, 1, 2]


def test_takeover_running_into_truncation_is_stored_and_bootstraps():
    rows = label(wrapped(takeover_steps=4), [0.5, 0.5, 0.5, -1.0, 0.0])
    assert rows[-3:] == [(2, 0.5, -1.0, 3), (3, 0.5, 0.0, 4), (4, 0.5, 0.0, 5)]


def test_vector_env_autoreset_resets_the_takeover_and_labels_per_env():
    """Two envs, time limit 5. Env 0's expert takes over at t = 3 for k = 4 steps and runs into the time limit; the
    autoreset episode starts with the agent in control. Env 1's agent stays close to the expert (no takeover)."""

    def wrap(env):
        return InterventionWrapper(
            env, expert, "value", closeness_q, beta=1.0, delta=0.1, relative=False, takeover_steps=4
        )

    envs = make_vec_env("mixrl_test/Counter-v0", 2, seed=0, wrapper=wrap)
    labeller = InterventionLabeller(2, 2, 1)
    obs = envs.reset()
    stored, intervened_log = [], []
    for a0 in (0.5, 0.5, 0.5, -1.0, 0.0, 0.55, 0.55):
        next_obs, _, terminated, truncated, final_obs = envs.step(torch.tensor([[a0], [0.45]]))
        executed = torch.as_tensor(vector_info(envs.info, "action"), dtype=torch.float32)
        start = torch.as_tensor(vector_info(envs.info, "takeover_start"))
        intervened = torch.as_tensor(vector_info(envs.info, "intervened"))
        intervened_log.append(intervened.tolist())
        out = labeller.step(obs, executed, start, intervened, final_obs, terminated, truncated)
        stored += [(tuple(o.tolist()), round(x.item(), 2), r.item(), tuple(n.tolist())) for o, x, r, n, _ in zip(*out)]
        obs = next_obs
    assert intervened_log == [[False, False]] * 3 + [[True, False]] * 2 + [[False, False]] * 2
    assert stored == [
        ((0, 0), 0.5, 0.0, (1, 0)), ((0, 0), 0.45, 0.0, (1, 0)),
        ((1, 0), 0.5, 0.0, (2, 0)), ((1, 0), 0.45, 0.0, (2, 0)),
        ((2, 0), 0.5, -1.0, (3, 0)), ((2, 0), 0.45, 0.0, (3, 0)), ((3, 0), 0.5, 0.0, (4, 0)),  # takeover at s_3
        ((3, 0), 0.45, 0.0, (4, 0)), ((4, 0), 0.5, 0.0, (5, 0)), ((4, 0), 0.45, 0.0, (5, 0)),  # time limit: final obs
        ((0, 1), 0.55, 0.0, (1, 1)), ((0, 1), 0.45, 0.0, (1, 1)),  # the next episodes, agents in control
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The wrapper on an env with a non-unit action range, observation-dependent experts and Q, seeded resets
# ---------------------------------------------------------------------------------------------------------------


class DriftEnv(gym.Env):
    """obs = a 2-D position moved by the executed action (in [0, 4]^2); reset draws it from the env's seeded
    generator, or takes options["x"]."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(0.0, 4.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = options["x"] if options else self.np_random.uniform(-1.0, 1.0, 2)
        self.x = np.asarray(start, np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = self.x + np.asarray(action, np.float32)
        return self.x.copy(), 0.0, False, False, {}


def toward_origin(obs: np.ndarray) -> np.ndarray:
    """An expert whose action depends on the observation."""
    return np.clip(2.0 - obs, 0.0, 4.0).astype(np.float32)


def test_defaults_are_the_reference_settings():
    """resip_rlif.md B: beta 0.95, relative margin 0.03 (alpha 0.97), takeovers of 4 steps; HG-DAgger's gate at
    L1 >= half the action dimensions in [-1, 1] units (12 for the pen's 24), epsilon 0.05 exp(-0.1 episode)."""
    env = InterventionWrapper(DriftEnv(), toward_origin, q_value=lambda obs, actions: np.zeros(len(actions)))
    settings = (env.mode, env.beta, env.delta, env.relative, env.takeover_steps)
    assert settings == ("value", 0.95, 0.03, True, 4)
    assert (env.gate_threshold, env.gate_epsilon, env.gate_decay) == (1.0, 0.05, 0.1)


@pytest.mark.parametrize("beta, probability", [(0.0, 0.0), (1.0, 1.0)])
def test_probability_bounds_are_accepted(beta, probability):
    InterventionWrapper(DriftEnv(), toward_origin, "random", beta=beta, probability=probability)


@pytest.mark.parametrize("beta, probability", [(1.5, 0.5), (-0.1, 0.5), (0.5, 1.5), (0.5, -0.1)])
def test_probabilities_outside_zero_one_are_refused(beta, probability):
    with pytest.raises(ValueError, match="must lie in"):
        InterventionWrapper(DriftEnv(), toward_origin, "random", beta=beta, probability=probability)


def test_reset_passes_seed_and_options_and_reseeds_the_decisions():
    env = InterventionWrapper(DriftEnv(), toward_origin, "random", probability=0.5, takeover_steps=1, seed=7)
    first = env.reset(seed=3)[0]
    assert np.array_equal(env.reset(seed=3)[0], first) and not np.array_equal(env.reset(seed=4)[0], first)
    assert np.array_equal(env.reset(options={"x": [5.0, 6.0]})[0], [5.0, 6.0])

    def decisions(wrapper: InterventionWrapper, seed: int | None) -> list[bool]:
        wrapper.reset(seed=seed)
        return [wrapper.step(np.ones(2, np.float32))[4]["takeover_start"] for _ in range(40)]

    other = InterventionWrapper(DriftEnv(), toward_origin, "random", probability=0.5, takeover_steps=1, seed=8)
    assert decisions(env, 11) == decisions(other, 11)  # reset(seed) re-seeds the wrapper's generator
    fresh = [InterventionWrapper(DriftEnv(), toward_origin, "random", takeover_steps=1, seed=8) for _ in range(2)]
    assert decisions(fresh[0], None) == decisions(fresh[1], None)  # the constructor's seed alone decides


def test_expert_sees_the_observation_and_the_executed_action_reaches_the_env():
    env = InterventionWrapper(DriftEnv(), toward_origin, "random", probability=1.0, takeover_steps=1)
    obs, _ = env.reset(options={"x": [0.5, -1.0]})
    next_obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    np.testing.assert_allclose(info["expert_action"], [1.5, 3.0])  # 2 - obs
    np.testing.assert_allclose(next_obs, obs + info["expert_action"])  # the expert's action moved the env
    env.probability = 0.0
    next_obs2, _, _, _, info = env.step(np.array([0.25, 0.5], np.float64))
    np.testing.assert_allclose(next_obs2, next_obs + [0.25, 0.5])  # the agent's
    assert info["action"].dtype == np.float32 and info["expert_action"].dtype == np.float32


def test_value_test_reads_q_and_the_comparison_action_at_the_current_observation():
    seen = []

    def q_value(obs, actions):
        seen.append(np.array(obs))
        return -np.abs(np.asarray(actions) - toward_origin(obs)).sum(-1)  # the observation-dependent expert is best

    env = InterventionWrapper(
        DriftEnv(), toward_origin, "value", q_value, compare=toward_origin, beta=1.0, delta=0.1, relative=False
    )
    obs, _ = env.reset(options={"x": [1.0, 1.0]})
    assert not env.wants_takeover(obs, np.array([1.0, 1.0]), None)  # the comparison action itself
    assert env.wants_takeover(obs, np.array([3.0, 1.0]), None)
    np.testing.assert_array_equal(seen[0], obs)
    assert env.step(np.array([3.0, 1.0], np.float32))[4]["takeover_start"]  # step tests at its observation
    np.testing.assert_array_equal(seen[-1], obs)


def test_expert_noise_is_in_units_of_half_the_action_range():
    env = InterventionWrapper(DriftEnv(), lambda obs: np.full(2, 2.0, np.float32), "none", expert_noise=0.25, seed=0)
    env.reset(options={"x": [0.0, 0.0]})
    actions = np.array([env.expert_action(env.obs) for _ in range(5000)])
    assert np.abs(actions.mean(0) - 2.0).max() < 0.03  # around the expert's action
    assert np.abs(actions.std(0) - 0.5).max() < 0.03  # 0.25 x half range 2
    assert abs(np.corrcoef(actions.T)[0, 1]) < 0.05  # drawn per action dimension
    quiet = InterventionWrapper(DriftEnv(), toward_origin, "none", seed=5)
    quiet.reset()
    for _ in range(10):
        quiet.expert_action(quiet.obs)
    assert quiet.rng.random() == np.random.default_rng(5).random()  # a noise-free expert draws no numbers


def test_gate_measures_the_l1_distance_in_unit_actions_and_fires_at_the_threshold():
    env = InterventionWrapper(DriftEnv(), toward_origin, "gated", gate_threshold=0.5, gate_epsilon=0.0)
    env.reset(options={"x": [0.0, 0.0]})
    expert_action = np.array([2.0, 2.0], np.float32)
    assert env.wants_takeover(env.obs, np.array([3.0, 2.0]), expert_action)  # (3 - 2) / 2 = 0.5: at the threshold
    assert not env.wants_takeover(env.obs, np.array([2.4, 2.0]), expert_action)  # 0.2 in unit actions


def test_without_an_expert_the_info_reports_nan_expert_actions():
    env = InterventionWrapper(DriftEnv(), None, "none")
    env.reset(seed=0)
    info = env.step(np.ones(2, np.float32))[4]
    assert info["expert_action"].shape == (2,) and np.isnan(info["expert_action"]).all()


class ReferenceLabeller(InterventionLabeller):
    """The labeller as it was written with boolean-mask indexing (a host read per mask on a GPU)."""

    def step(self, obs, actions, takeover_start, intervened, final_obs, terminated, truncated):
        labelled = self.pending.clone()
        rewards = -takeover_start[labelled].float()
        rows = [(self.obs[labelled], self.actions[labelled], rewards, self.next_obs[labelled])]
        ended = terminated | truncated
        store_now = (intervened & ~terminated) | (~intervened & truncated & ~terminated)
        rows.append((obs[store_now], actions[store_now], torch.zeros_like(obs[store_now, 0]), final_obs[store_now]))
        wait = ~intervened & ~ended
        self.obs[wait], self.actions[wait], self.next_obs[wait] = obs[wait], actions[wait], final_obs[wait]
        self.pending = wait
        obs_rows, action_rows, reward_rows, next_rows = (torch.cat(parts) for parts in zip(*rows))
        return obs_rows, action_rows, reward_rows, next_rows, torch.zeros_like(reward_rows)


def test_labeller_rows_are_bitwise_those_of_boolean_mask_indexing():
    """Masked writes and one index give the same rows, in the same order, bit for bit (-0.0 rewards included), and
    the same state, over random steps of 7 envs."""
    gen = torch.Generator().manual_seed(0)
    mine, reference = InterventionLabeller(7, 3, 2), ReferenceLabeller(7, 3, 2)
    for _ in range(40):
        flags = torch.rand(4, 7, generator=gen) < torch.tensor([0.3, 0.4, 0.1, 0.1])[:, None]
        inputs = (torch.randn(7, 3, generator=gen), torch.randn(7, 2, generator=gen))
        inputs += (*flags[:2], torch.randn(7, 3, generator=gen), *flags[2:])
        for got, expected in zip(mine.step(*inputs), reference.step(*inputs)):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
        for name in ("obs", "actions", "next_obs", "pending"):
            assert torch.equal(mine.state_dict()[name], reference.state_dict()[name]), name
