"""Collecting datasets: episodes from policy rollouts, a run's replay buffer or other datasets, the reference
scores, and `mixrl dataset collect`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

from mixrl.checkpoints import load_checkpoint
from mixrl.datasets.storage import (
    check_new,
    default_dataset_id,
    env_of,
    open_dataset,
    read_episodes,
    write_dataset,
)
from mixrl.envs.factory import make_env, parse_env_kwargs
from mixrl.errors import UsageError
from mixrl.evaluation import evaluate, load_policy, policy_from_checkpoint
from mixrl.policies.files import read_policy

SCRIPTED = "scripted"  # --policy value: the env's scripted expert


@dataclass
class CollectArgs:
    """Make a D4RL-style Minari dataset from a mixrl checkpoint, its replay buffer, a random policy or datasets."""

    kind: Annotated[Literal["random", "medium", "expert", "medium-replay", "medium-expert"], tyro.conf.Positional]
    """D4RL kind: random, medium, expert (rollouts), medium-replay (a run's replay buffer), medium-expert (both)"""
    policy: str | None = None
    """run directory or checkpoint that acts (medium, expert) or whose replay buffer is read (medium-replay);
    `scripted`: the scripted expert of the env that --env-id names (e.g. mixrl/PegInsertion-v0)"""
    env_id: str | None = None
    """environment of a random or scripted dataset (the other kinds take it from their checkpoint or sources)"""
    env_kwargs: tuple[str, ...] = ()
    """keyword arguments of that environment (random, scripted): one JSON object, or key=value pairs"""
    expert: str | None = None
    """run directory or checkpoint of the expert, whose mean return is ref_max_score (kind expert: --policy)"""
    sources: tuple[str, ...] = ()
    """medium-expert: ids of the datasets to concatenate, e.g. the medium and the expert one"""
    dataset_id: str | None = None
    """id of the new dataset (default mixrl/<env id, lower case>/<kind>-v0)"""
    steps: int = 1_000_000
    """transitions to collect by rollouts; the last episode is cut (truncated) there"""
    action_noise: float = 0.0
    """std of Gaussian noise added to the policy's action, in units of half the action range, then clipped"""
    ref_min_score: float | None = None
    """reference return of a random policy (default: measured over --ref-episodes episodes)"""
    ref_max_score: float | None = None
    """reference return of the expert (default: the expert's mean deterministic return over --ref-episodes)"""
    ref_episodes: int = 10
    """episodes that measure each reference score"""
    seed: int = 0
    """seed of the first episode (episode i uses seed + i), of the random actions and of the action noise"""
    device: str = "cpu"
    """torch device of the policy"""
    trust_pickle: bool = False
    """read --policy and --expert files that need pickle (checkpoints from before plain-data checkpoints): this runs
    code the file names, so only for files whose author you trust"""


def episode_buffer(observations, actions, rewards, terminations, truncations, seed: int | None = None):
    """One Minari EpisodeBuffer: T actions and rewards, T + 1 observations (the last one after the last action)."""
    from minari.data_collector import EpisodeBuffer

    return EpisodeBuffer(
        seed=seed,
        observations=np.asarray(observations),
        actions=np.asarray(actions),
        rewards=np.asarray(rewards, np.float64),
        terminations=np.asarray(terminations, bool),
        truncations=np.asarray(truncations, bool),
        infos={},
    )


def uniform_policy(action_space: gym.spaces.Box, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> a ~ U(low, high), seeded."""
    action_space.seed(seed)
    return lambda obs: action_space.sample()


def scripted_policy(env: gym.Env, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> action of the env's own scripted expert, `env.unwrapped.scripted_expert(seed=seed)`."""
    make = getattr(env.unwrapped, "scripted_expert", None)
    if make is None:
        raise UsageError(f"{env.spec.id} has no scripted expert: pass --policy RUN, a trained policy.")
    return make(seed=seed)


def noisy_policy(policy: Callable, action_space: gym.spaces.Box, std: float, seed: int) -> Callable:
    """a = clip(policy(obs) + std (high - low) / 2 N(0, I), low, high)."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def act(obs: np.ndarray) -> np.ndarray:
        action = policy(obs) + std * 0.5 * (high - low) * rng.standard_normal(action_space.shape)
        return np.clip(action, low, high).astype(action_space.dtype)

    return act


def rollout_episodes(
    policy: Callable[[np.ndarray], np.ndarray], env: gym.Env, steps: int, seed: int, desc: str
) -> list:
    """Whole episodes of `policy` until `steps` transitions; episode i is reset with seed + i and the last one is
    cut (truncated) at exactly `steps`."""
    episodes, total = [], 0
    with tqdm(total=steps, unit="step", desc=desc, dynamic_ncols=True, disable=None) as bar:
        while total < steps:
            episode_seed = seed + len(episodes)
            obs, _ = env.reset(seed=episode_seed)
            observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
            done = False
            while not done:
                action = policy(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += 1
                truncated = truncated or total == steps
                observations.append(obs)
                actions.append(action)
                rewards.append(reward)
                terminations.append(terminated)
                truncations.append(truncated and not terminated)
                done = terminated or truncated
            bar.update(len(rewards))
            episodes.append(episode_buffer(observations, actions, rewards, terminations, truncations, episode_seed))
    return episodes


def replay_episodes(ckpt: dict[str, Any], source: str) -> list:
    """Split the replay buffer saved in a checkpoint (`--save-buffer`) into Minari episodes.

    The buffer holds rows [obs, action in [-1, 1], reward, next_obs, terminated], `num_envs` rows per env step
    (env 0 first), in a ring whose oldest row sits at `pos` once it is full. Rows are put back in time order,
    row j of that order coming from env (global_step - size + j) mod num_envs. Within one env's rows,
    an episode ends at row k when it terminated, or when the next row does not start where this one ended
    (next_obs[k] != obs[k + 1]: the time limit reset the env, as SAC stores the true final observation).
    The last row of each env closes a truncated episode; a full ring's first episode may lack its start.
    """
    if "buffer" not in ckpt:
        raise UsageError(
            f"{source} was saved without its replay buffer: train the run with --save-buffer to make a "
            "medium-replay dataset from it."
        )
    if not isinstance(ckpt["action_space"], gym.spaces.Box):
        raise UsageError(f"{source} acts in {ckpt['action_space']}; medium-replay needs a continuous-action run (SAC).")
    if ckpt["args"].get("normalize_obs"):
        raise UsageError(
            f"{source} was trained with --normalize-obs, so its replay buffer holds running-normalised "
            "observations that cannot be mapped back to the env's: use a run without --normalize-obs."
        )
    obs_space, action_space = ckpt["observation_space"], ckpt["action_space"]
    obs_dim, action_dim = int(np.prod(obs_space.shape)), int(np.prod(action_space.shape))
    state = ckpt["buffer"]
    data, pos, size = state["data"].double().cpu().numpy(), state["pos"], state["size"]
    if data.shape != (size, 2 * obs_dim + action_dim + 2):
        raise UsageError(
            f"{source}: replay buffer of shape {data.shape} does not hold (obs, action, reward, next_obs, "
            f"terminated) rows for observations of size {obs_dim} and actions of size {action_dim}."
        )
    rows = np.roll(data, -pos, axis=0) if pos != size else data
    obs, actions, rewards, next_obs, terminated = np.split(rows, np.cumsum([obs_dim, action_dim, 1, obs_dim]), axis=1)
    low, high = action_space.low, action_space.high
    actions = (low + 0.5 * (actions + 1.0) * (high - low)).astype(action_space.dtype)
    rewards, terminated = rewards[:, 0], terminated[:, 0] > 0.5
    num_envs = int(ckpt["args"].get("num_envs", 1))
    env_of_row = (ckpt["global_step"] - size + np.arange(size)) % num_envs

    starts_and_episodes = []
    for env_index in range(num_envs):
        idx = np.flatnonzero(env_of_row == env_index)
        breaks = terminated[idx[:-1]] | np.any(next_obs[idx[:-1]] != obs[idx[1:]], axis=1)
        ends = np.append(np.flatnonzero(breaks), len(idx) - 1)
        begin = 0
        for end in ends:
            rows_of_episode = idx[begin : end + 1]
            observations = np.concatenate([obs[rows_of_episode], next_obs[rows_of_episode[-1:]]])
            episode_terminated = terminated[rows_of_episode]
            truncations = np.zeros(len(rows_of_episode), bool)
            truncations[-1] = not episode_terminated[-1]
            episode = episode_buffer(
                observations.reshape(-1, *obs_space.shape).astype(obs_space.dtype),
                actions[rows_of_episode],
                rewards[rows_of_episode],
                episode_terminated,
                truncations,
            )
            starts_and_episodes.append((rows_of_episode[0], episode))
            begin = end + 1
    return [episode for _, episode in sorted(starts_and_episodes, key=lambda item: item[0])]


def check_collect_args(args: CollectArgs) -> None:
    """Refuse flags that do not fit the kind, naming the fix."""
    needs = {
        "random": ("env_id",),
        "medium": ("policy",),
        "expert": ("policy",),
        "medium-replay": ("policy",),
        "medium-expert": ("sources",),
    }[args.kind]
    if args.policy == SCRIPTED:
        needs += ("env_id",)
    for name in needs:
        if not getattr(args, name):
            raise UsageError(f"`mixrl dataset collect {args.kind}` needs --{name.replace('_', '-')}.")
    if args.env_kwargs and "env_id" not in needs:
        raise UsageError(f"--env-kwargs applies with --env-id (random or scripted datasets), not to kind {args.kind}.")
    for name in ("policy", "env_id", "sources"):
        if name not in needs and getattr(args, name):
            raise UsageError(f"--{name.replace('_', '-')} does not apply to kind {args.kind}.")
    if args.kind in ("random", "medium", "medium-replay") and args.expert is None and args.ref_max_score is None:
        raise UsageError(
            f"Kind {args.kind} needs the expert's reference score for normalised scores: pass --expert EXPERT_RUN "
            "or --ref-max-score."
        )
    if args.kind == "medium-expert" and len(args.sources) < 2:
        raise UsageError("--sources needs at least two dataset ids, e.g. the medium and the expert one.")
    if args.action_noise and args.kind not in ("medium", "expert"):
        raise UsageError(f"--action-noise applies to policy rollouts (medium, expert), not to kind {args.kind}.")
    if args.action_noise < 0 or args.steps < 1 or args.ref_episodes < 1:
        raise UsageError("--action-noise must be >= 0, --steps and --ref-episodes >= 1.")


def reference_scores(
    args: CollectArgs, env: gym.Env, env_kwargs: dict[str, Any], expert: str | None
) -> tuple[float, float]:
    """(ref_min_score, ref_max_score): given ones, else the mean return of a random policy and of the expert's
    deterministic policy, over --ref-episodes episodes seeded apart from the collected ones."""
    ref_min, ref_max = args.ref_min_score, args.ref_max_score
    env_id, seed = env.spec.id, 1_000_000 + args.seed
    if ref_min is None:
        random_policy = uniform_policy(env.action_space, seed)
        ref_min = evaluate(random_policy, env_id, args.ref_episodes, seed, env_kwargs)["mean_return"]
    if ref_max is None and expert == SCRIPTED:
        ref_max = evaluate(scripted_policy(env, seed), env_id, args.ref_episodes, seed, env_kwargs)["mean_return"]
    if ref_max is None:
        ckpt = read_policy(expert, args.trust_pickle)  # on the CPU: the actor alone moves
        if ckpt["env_id"] != env_id:
            raise UsageError(f"--expert {expert} was trained on {ckpt['env_id']}, not on {env_id}.")
        policy = policy_from_checkpoint(ckpt, args.device)
        ref_max = evaluate(policy, env_id, args.ref_episodes, seed, env_kwargs)["mean_return"]
    if ref_max <= ref_min:
        raise UsageError(
            f"ref_max_score {ref_max:.1f} is not above ref_min_score {ref_min:.1f}: the expert must beat a "
            "random policy."
        )
    return ref_min, ref_max


def combined_episodes(args: CollectArgs) -> tuple[list, str, dict[str, Any], float, float]:
    """The episodes of the --sources datasets, their common env, and the reference scores: --ref-min-score and
    --ref-max-score where given, else those that all the sources record."""
    episodes, envs, spaces, refs = [], set(), set(), set()
    for source in args.sources:
        dataset = open_dataset(source)
        env_id, env_kwargs = env_of(dataset)
        metadata = dataset.storage.metadata
        envs.add((env_id, json.dumps(env_kwargs, sort_keys=True)))
        spaces.add((str(dataset.observation_space), str(dataset.action_space)))
        refs.add((metadata.get("ref_min_score"), metadata.get("ref_max_score")))
        for e in read_episodes(dataset):
            episodes.append(
                episode_buffer(e["observations"], e["actions"], e["rewards"], e["terminations"], e["truncations"])
            )
    if len(envs) != 1 or len(spaces) != 1 or env_id is None:
        raise UsageError(f"--sources {' '.join(args.sources)} do not share one recorded environment and spaces.")
    ref_min, ref_max = refs.pop() if len(refs) == 1 else (None, None)
    ref_min = args.ref_min_score if args.ref_min_score is not None else ref_min
    ref_max = args.ref_max_score if args.ref_max_score is not None else ref_max
    if ref_min is None or ref_max is None:
        raise UsageError(
            f"--sources {' '.join(args.sources)} do not record one pair of reference scores: pass --ref-min-score "
            "and --ref-max-score."
        )
    return episodes, env_id, env_kwargs, ref_min, ref_max


def collect(args: CollectArgs) -> str:
    """Make the dataset that `args` describes; returns its id."""
    check_collect_args(args)
    if args.kind == "medium-expert":
        episodes, env_id, env_kwargs, ref_min, ref_max = combined_episodes(args)
        dataset_id = args.dataset_id or default_dataset_id(env_id, args.kind)
        check_new(dataset_id)
        algorithm, description = "concatenation", f"the episodes of {', '.join(args.sources)}"
        env = make_env(env_id, **env_kwargs)
    else:
        scripted = args.policy == SCRIPTED
        if args.kind == "random" or scripted:
            ckpt = None
        elif args.kind == "medium-replay":  # newest: a run's latest.pt holds its replay buffer; final.pt does not
            ckpt = load_checkpoint(args.policy, newest=True, trusted=args.trust_pickle)
        else:  # a policy folder, run directory or checkpoint
            ckpt = read_policy(args.policy, args.trust_pickle)
        env_id = args.env_id if ckpt is None else ckpt["env_id"]
        env_kwargs = parse_env_kwargs(args.env_kwargs) if ckpt is None else dict(ckpt.get("env_kwargs") or {})
        dataset_id = args.dataset_id or default_dataset_id(env_id, args.kind)
        check_new(dataset_id)
        env = make_env(env_id, **env_kwargs)
        expert = args.policy if args.kind == "expert" and args.expert is None else args.expert
        ref_min, ref_max = reference_scores(args, env, env_kwargs, expert)
        if args.kind == "medium-replay":
            episodes = replay_episodes(ckpt, args.policy)
            algorithm = f"mixrl-{ckpt['algo']} replay buffer"
            description = f"the replay buffer of {args.policy} after {ckpt['global_step']} env steps"
        else:
            if args.kind == "random":
                policy, algorithm = uniform_policy(env.action_space, args.seed), "a uniform-random policy"
            elif scripted:
                policy, algorithm = scripted_policy(env, args.seed), "the scripted expert"
            else:
                policy = load_policy(args.policy, args.device, trusted=args.trust_pickle)
                algorithm = f"mixrl-{ckpt['algo']} deterministic"
            if args.action_noise:
                policy = noisy_policy(policy, env.action_space, args.action_noise, args.seed)
                algorithm += f" + N(0, {args.action_noise}^2) action noise"
            description = f"{args.steps} steps of " + (f"{args.policy} ({algorithm})" if args.policy else algorithm)
            episodes = rollout_episodes(policy, env, args.steps, args.seed, desc=dataset_id)
    path = write_dataset(dataset_id, episodes, env, ref_min, ref_max, algorithm, description)
    env.close()
    steps = sum(len(episode.rewards) for episode in episodes)
    print(
        f"wrote {dataset_id}: {len(episodes)} episodes, {steps} steps, ref scores {ref_min:.1f} / {ref_max:.1f} "
        f"-> {path}"
    )
    return dataset_id
