"""Simulated intervening experts (RLIF, Luo et al. 2024; HG-DAgger, Kelly et al. 2019) as a Gymnasium wrapper.

An expert watches the agent. At each step where it is not already in control it decides, from the agent's
proposed action a, whether to take over; once it does, it acts for `takeover_steps` steps and hands back.

    value    intervene ~ Bernoulli(beta) if Q(s, a) < Q(s, a_cmp) - margin, else Bernoulli(1 - beta)
             margin = delta (additive) or delta |Q(s, a_cmp)| (relative: the paper's Q(s, a) < alpha Q(s, a_cmp)
             with delta = 1 - alpha when Q > 0, and still a shortfall, not a tighter bar, when Q < 0)
    random   intervene ~ Bernoulli(p) at every step
    gated    intervene ~ Bernoulli(1 - eps) if |a_exp - a|_1 >= threshold, else Bernoulli(eps),
             eps = eps0 exp(-decay episode_index) (HG-DAgger as in the RLIF code; actions compared in [-1, 1])
    none     never; the expert's action is still reported (DAgger relabels with it)

Q is the reference agent's critic and a_cmp the comparison action (the expert's by default, or another
callable's such as the reference agent's), both given as callables so that this module loads no policies.

The reward becomes the intervention signal: -1 on the step at which the expert takes over, 0 otherwise.
RLIF puts that -1 on the agent's transition *before* the takeover (s, a, s'), the action that led to the state
the expert stepped in at: `InterventionLabeller` does this for a vector env, and decides what is stored:

* every agent transition, with r = -1 when a takeover started at its next state, else 0;
* every takeover transition, with r = 0 (the reference code stored only the last one of each takeover, a side
  effect of its loop; the others are valid experience of the expert's actions);
* an episode end: a time-limit truncation is stored with r = 0 and bootstraps from the final observation; a
  transition that ends the episode by termination is dropped by default (`terminal_reward=None`), as the
  reference code in effect does (it never stored an episode's last transition). Dropping it does not hide the
  termination from the learner: the -1s stop when the episode ends, so the states before a termination are
  worth more (fewer -1s ahead) than those of an episode that goes on, and the agent learns to end episodes to
  escape the expert (InvertedPendulum-v5 learns to drop the pole: results/rlif_findings.md). A stored terminal
  with r = 0 would say the same outright. With `terminal_reward` set, the terminating transition is stored,
  whoever acted, as terminal (no bootstrap) with that reward: -1 counts a termination as one takeover (which
  still beats a future of takeovers, and the agent still fails fast), -1 / (1 - gamma) values the end as a
  takeover at every step from there on, worse than any way of going on (`mixrl rlif --terminal-label
  takeover|absorbing`).
* an expert transition never carries -1: when the expert takes over again right after handing back, the
  takeover simply goes on, and no agent transition is charged for it (about half of all takeovers on
  InvertedDoublePendulum with a weak agent). With `grace_steps = 1` (RLIF's loop, which lets the agent act one
  untested step after each takeover) every takeover follows an agent step, which carries its -1.

`info` of every step: task_reward (the env's reward), intervened (the expert acted this step), takeover_start
(this step began a takeover), expert_action and action (the one executed), in the env's action space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

Mode = Literal["value", "random", "gated", "none"]
MODES = ("value", "random", "gated", "none")


class InterventionWrapper(gym.Wrapper):
    """A continuous-action env in which a simulated expert takes over from the agent (see the module docstring).

    expert: obs -> action in the env's action space (e.g. `mixrl.load_policy(path)`).
    q_value: (obs, actions) -> Q, for a batch of actions (M, A) at one observation -> (M,) (value mode).
    compare: obs -> the comparison action of the value test (default: the expert's action).
    expert_noise: std of Gaussian noise added to the expert's action, in units of half the action range, then
    clipped (a weaker expert); drawn from this wrapper's generator, which checkpoints carry.
    grace_steps: agent steps after each takeover before the expert may take over again (RLIF's code: 1).
    """

    def __init__(
        self,
        env: gym.Env,
        expert: Callable[[np.ndarray], np.ndarray] | None,
        mode: Mode = "value",
        q_value: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        compare: Callable[[np.ndarray], np.ndarray] | None = None,
        beta: float = 0.95,
        delta: float = 0.03,
        relative: bool = True,
        probability: float = 0.5,
        gate_threshold: float | None = None,
        gate_epsilon: float = 0.05,
        gate_decay: float = 0.1,
        takeover_steps: int = 4,
        expert_noise: float = 0.0,
        grace_steps: int = 0,
        seed: int | None = None,
    ):
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"Interventions need a continuous (Box) action space, got {env.action_space}.")
        if mode not in MODES:
            raise ValueError(f"Intervention mode {mode!r} is not one of: {', '.join(MODES)}.")
        if expert is None and mode != "none":
            raise ValueError(f"Intervention mode {mode!r} needs an expert policy.")
        if mode == "value" and q_value is None:
            raise ValueError("Value-based interventions need the reference Q function (q_value).")
        if not 0.0 <= beta <= 1.0 or not 0.0 <= probability <= 1.0:
            raise ValueError(f"beta ({beta}) and probability ({probability}) must lie in [0, 1].")
        if takeover_steps < 1:
            raise ValueError(f"takeover_steps must be at least 1, got {takeover_steps}.")
        if grace_steps < 0:
            raise ValueError(f"grace_steps must be at least 0, got {grace_steps}.")
        self.expert, self.mode, self.q_value, self.compare = expert, mode, q_value, compare
        self.beta, self.delta, self.relative, self.probability = beta, delta, relative, probability
        low, high = env.action_space.low, env.action_space.high
        self._low, self._half_range = low, 0.5 * (high - low)
        self.gate_threshold = 0.5 * low.size if gate_threshold is None else gate_threshold
        self.gate_epsilon, self.gate_decay = gate_epsilon, gate_decay
        self.takeover_steps, self.expert_noise, self.grace_steps = takeover_steps, expert_noise, grace_steps
        self.rng = np.random.default_rng(seed)
        self.remaining = 0  # takeover steps the expert still has
        self.grace = 0  # agent steps left before the expert may take over again
        self.episodes = -1  # index of the current episode (HG-DAgger's epsilon decays with it)
        self.obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.obs, info = self.env.reset(seed=seed, options=options)
        self.remaining, self.grace, self.episodes = 0, 0, self.episodes + 1
        return self.obs, info

    def expert_action(self, obs: np.ndarray) -> np.ndarray | None:
        if self.expert is None:
            return None
        action = np.asarray(self.expert(obs), dtype=np.float64)
        if self.expert_noise > 0.0:
            action = action + self.expert_noise * self._half_range * self.rng.standard_normal(action.shape)
        return np.clip(action, self.action_space.low, self.action_space.high).astype(self.action_space.dtype)

    def wants_takeover(self, obs: np.ndarray, action: np.ndarray, expert_action: np.ndarray | None) -> bool:
        """The intervention test at `obs` for the agent's proposed `action` (one random draw)."""
        if self.mode == "none":
            return False
        if self.mode == "random":
            return bool(self.rng.random() < self.probability)
        if self.mode == "value":
            reference = expert_action if self.compare is None else self.compare(obs)
            q_agent, q_ref = np.asarray(self.q_value(obs, np.stack([action, reference])), dtype=np.float64)
            margin = self.delta * abs(q_ref) if self.relative else self.delta
            unhappy, p = q_agent < q_ref - margin, self.beta
        else:
            distance = np.abs((expert_action - action) / self._half_range).sum()
            unhappy, p = (
                distance >= self.gate_threshold,
                1.0 - self.gate_epsilon * np.exp(-self.gate_decay * self.episodes),
            )
        return bool(self.rng.random() < (p if unhappy else 1.0 - p))

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=self.action_space.dtype)
        expert_action = self.expert_action(self.obs)
        start = self.remaining == 0 and self.grace == 0 and self.wants_takeover(self.obs, action, expert_action)
        if start:
            self.remaining = self.takeover_steps
        intervened = self.remaining > 0
        executed = expert_action if intervened else action
        self.obs, task_reward, terminated, truncated, info = self.env.step(executed)
        if intervened:
            self.remaining -= 1
            self.grace = self.grace_steps if self.remaining == 0 else 0  # untested agent steps after the hand-back
        else:
            self.grace = max(self.grace - 1, 0)
        info = {
            **info,
            "task_reward": float(task_reward),
            "intervened": intervened,
            "takeover_start": start,
            "expert_action": expert_action if expert_action is not None else np.full_like(action, np.nan),
            "action": executed,
        }
        return self.obs, -1.0 if start else 0.0, terminated, truncated, info


def vector_info(info: dict[str, Any], key: str) -> np.ndarray:
    """The per-env values of `key` in a Gymnasium vector env's step info (same-step autoreset): sub-envs that
    ended this step report their step's info under "final_info", the others directly."""
    final = info.get("final_info", {})
    ended = info.get("_final_info", np.zeros(0, bool))
    values = np.array(info[key]) if key in info else np.zeros_like(final[key])
    if ended.any():
        values[ended] = final[key][ended]
    return values


def unit_actions(info: dict[str, Any], key: str, space: gym.spaces.Box) -> np.ndarray:
    """The per-env actions `key` of a vector env's step info (in the env's Box `space`), rescaled to the agents'
    [-1, 1] and clipped there: the inverse of the vector env's `to_env_action`."""
    values = vector_info(info, key).astype(np.float32)
    return np.clip(2.0 * (values - space.low) / (space.high - space.low) - 1.0, -1.0, 1.0)


class InterventionLabeller:
    """RLIF's transitions from a vector env of InterventionWrappers (torch tensors, one row per env).

    `step` takes what the env just did and returns the transitions to store now, (obs, actions, rewards,
    next_obs, terminated) with a leading axis of rows: the agent's previous transition once the signal at its next
    state is known (r = -1 if a takeover started there), and this step's transition if the expert made it.
    The agent's own transition waits one step for its label (see the module docstring for the episode ends).
    terminal_reward: None drops a transition that ends the episode by termination (RLIF); a number stores it as
    terminal with that reward. `counts` holds the episodes ended by termination so far, those of them in which no
    -1 had been stored (with None, episodes that cost nothing at all) and the -1s stored (takeovers that charged an
    agent step).
    """

    STATE = ("obs", "actions", "next_obs", "pending", "penalised", "counts")

    def __init__(
        self,
        num_envs: int,
        obs_dim: int,
        action_dim: int,
        device: str | torch.device = "cpu",
        terminal_reward: float | None = None,
    ):
        self.terminal_reward = terminal_reward  # None: terminal transitions are dropped (RLIF), else stored with it
        self.obs = torch.zeros(num_envs, obs_dim, device=device)
        self.actions = torch.zeros(num_envs, action_dim, device=device)
        self.next_obs = torch.zeros(num_envs, obs_dim, device=device)
        self.pending = torch.zeros(num_envs, dtype=torch.bool, device=device)
        self.penalised = torch.zeros(num_envs, dtype=torch.bool, device=device)  # a -1 stored in the running episode
        # episodes ended by termination so far, those of them in which no -1 had been stored before the end, -1s stored
        self.counts = torch.zeros(3, dtype=torch.long, device=device)

    def step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        takeover_start: torch.Tensor,
        intervened: torch.Tensor,
        final_obs: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """obs s_t, executed actions a_t, takeover_start (the expert took over at s_t), intervened (the expert
        chose a_t), final_obs s_{t+1} (the true last observation where an episode ended), terminated, truncated."""
        labelled = self.pending  # previous agent transitions, now labelled by the signal at s_t
        ended = terminated | truncated
        if self.terminal_reward is None:
            expert_rows = intervened & ~terminated  # takeover transitions, r = 0; terminating ones are dropped
            truncated_agent = ~intervened & truncated & ~terminated  # the agent's last step of a time-limited episode
            store_now = expert_rows | truncated_agent
            now_rewards = torch.zeros_like(obs[:, 0])
        else:  # every transition that ends an episode is stored now, a terminating one with the terminal reward
            store_now = intervened | ended
            now_rewards = terminated.float() * self.terminal_reward
        # The labelled rows, then this step's stored rows, each in env order: candidates of both kinds stacked and
        # picked with one index (one host synchronisation on a GPU, for the number of rows).
        rows = torch.cat([labelled, store_now]).nonzero().squeeze(1)
        rewards = torch.cat([-takeover_start.float(), now_rewards])  # -1 for a takeover at s_t
        obs_rows = torch.cat([self.obs, obs]).index_select(0, rows)
        action_rows = torch.cat([self.actions, actions]).index_select(0, rows)
        next_rows = torch.cat([self.next_obs, final_obs]).index_select(0, rows)
        reward_rows = rewards.index_select(0, rows)
        if self.terminal_reward is None:
            terminal_rows = torch.zeros_like(reward_rows)
        else:
            terminal_rows = torch.cat([torch.zeros_like(now_rewards), terminated.float()]).index_select(0, rows)
        charged = labelled & takeover_start
        self.penalised |= charged
        self.counts += torch.stack([terminated.sum(), (terminated & ~self.penalised).sum(), charged.sum()])
        self.penalised &= ~ended
        wait = ~intervened & ~ended  # the agent's transitions that wait for the next step's signal: masked writes
        self.obs.copy_(torch.where(wait[:, None], obs, self.obs))
        self.actions.copy_(torch.where(wait[:, None], actions, self.actions))
        self.next_obs.copy_(torch.where(wait[:, None], final_obs, self.next_obs))
        self.pending = wait
        return obs_rows, action_rows, reward_rows, next_rows, terminal_rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.STATE}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.STATE:
            if name in state:  # older checkpoints lack the counters, or the last ones: those start from 0
                getattr(self, name)[: len(state[name])].copy_(state[name])
