"""Offline datasets in Minari format: collect them from mixrl checkpoints, replay buffers or a random policy,
and load any local Minari dataset as tensors for the offline agents (td3_bc, a2pr).

    mixrl dataset collect random        --env-id Hopper-v5 --expert RUN      # uniform-random actions
    mixrl dataset collect medium        --policy RUN --expert EXPERT_RUN      # deterministic rollouts
    mixrl dataset collect expert        --policy EXPERT_RUN --action-noise 0.1
    mixrl dataset collect expert        --policy scripted --env-id mixrl/PegInsertion-v0 --action-noise 0.05
    mixrl dataset collect medium-replay --policy RUN --expert EXPERT_RUN      # the run's replay buffer
    mixrl dataset collect medium-expert --sources mixrl/hopper-v5/medium-v0 mixrl/hopper-v5/expert-v0
    mixrl dataset list
    mixrl dataset info mixrl/hopper-v5/medium-v0

Datasets live in $MINARI_DATASETS_PATH (default ~/.minari/datasets), one folder per id; the default id is
mixrl/<env id, lower case>/<kind>-v0. A dataset is written into a hidden staging folder beside the others and
renamed into place when complete, so an interrupted collection leaves no half-written dataset behind.

Every mixrl dataset records the D4RL reference scores that normalise returns,

    score = 100 (R - ref_min_score) / (ref_max_score - ref_min_score),

with ref_min_score the mean return of a uniform-random policy and ref_max_score the mean deterministic
return of the expert, both measured over --ref-episodes episodes unless given.

Loading follows d4rl.qlearning_dataset on Minari episodes: obs = O[:-1], next_obs = O[1:], terminated =
terminations. Minari stores the true last observation of a time-limited episode, so those transitions are kept
and bootstrap (D4RL dropped them because its files lacked that observation). Actions are rescaled from the
env's bounds to [-1, 1], where mixrl actors act.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

from mixrl.buffers import ReplayBuffer
from mixrl.envs.factory import make_env, parse_env_kwargs
from mixrl.errors import MissingPathError, UsageError
from mixrl.evaluation import evaluate, load_policy
from mixrl.runs import load_checkpoint

SCRIPTED = "scripted"  # --policy value: the env's scripted expert
KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
RUN_HINT = "RUN is a mixrl run directory or checkpoint; EXPERT_RUN that of the expert"


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


def default_dataset_id(env_id: str, kind: str) -> str:
    """mixrl/<env id, lower case, '/' as '-'>/<kind>-v0, e.g. mixrl/hopper-v5/medium-v0."""
    return f"mixrl/{env_id.lower().replace('/', '-')}/{kind}-v0"


def datasets_root() -> Path:
    """$MINARI_DATASETS_PATH, or ~/.minari/datasets, where Minari looks for local datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def collect_command(dataset_id: str) -> str:
    """The `mixrl dataset collect` command that makes `dataset_id` (placeholders RUN and EXPERT_RUN)."""
    parts = dataset_id.split("/")
    kind = parts[-1].rsplit("-v", 1)[0]
    if len(parts) != 3 or parts[0] != "mixrl" or kind not in KINDS:
        return (
            f"`minari download {dataset_id}` where a network is available, or make your own with "
            f"mixrl dataset collect KIND --policy RUN --expert EXPERT_RUN --dataset-id {dataset_id} ({RUN_HINT})"
        )
    env_id = next((name for name in gym.registry if name.lower().replace("/", "-") == parts[1]), parts[1])
    source = {
        "random": f"--env-id {env_id} --expert EXPERT_RUN",
        "medium": "--policy RUN --expert EXPERT_RUN",
        "expert": "--policy EXPERT_RUN",
        "medium-replay": "--policy RUN --expert EXPERT_RUN",
        "medium-expert": f"--sources mixrl/{parts[1]}/medium-v0 mixrl/{parts[1]}/expert-v0",
    }[kind]
    hint = "" if kind == "medium-expert" else f" ({RUN_HINT})"
    return f"mixrl dataset collect {kind} {source} --dataset-id {dataset_id}{hint}"


def normalized_score(returns: float | np.ndarray, ref_min: float, ref_max: float) -> float | np.ndarray:
    """D4RL normalised score: 100 (R - ref_min) / (ref_max - ref_min); 0 = random policy, 100 = expert."""
    return 100.0 * (returns - ref_min) / (ref_max - ref_min)


# ---------------------------------------------------------------------------------------------------------------
# Episodes: from rollouts and from replay buffers
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Writing, reading, listing
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari at another datasets folder for the duration of the block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def write_dataset(
    dataset_id: str,
    episodes: list,
    env: gym.Env,
    ref_min_score: float,
    ref_max_score: float,
    algorithm_name: str,
    description: str,
) -> Path:
    """Write a Minari dataset with `create_dataset_from_buffers` into a hidden staging folder of the datasets
    root, then rename it into place: either the whole dataset appears under `dataset_id` or nothing does."""
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    namespace = parse_dataset_id(dataset_id)[0]
    root = datasets_root()
    final = root / dataset_id
    if final.exists():
        raise UsageError(
            f"Dataset {dataset_id} already exists at {final}: delete it first (`minari delete {dataset_id}`) "
            "or choose another --dataset-id."
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mixrl-staging-", dir=root))
    try:
        with _minari_root(staging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            minari.create_dataset_from_buffers(
                dataset_id,
                episodes,
                env=env,
                eval_env=env,
                algorithm_name=algorithm_name,
                author="mixrl",
                ref_min_score=float(ref_min_score),
                ref_max_score=float(ref_max_score),
                description=description,
            )
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def open_dataset(dataset_id: str):
    """The local Minari dataset `dataset_id`, with one clear error when it is missing or unreadable."""
    import minari

    path = datasets_root() / dataset_id
    if not (path / "data").is_dir():
        raise MissingPathError(
            f"No Minari dataset {dataset_id!r} in {datasets_root()} (set MINARI_DATASETS_PATH to the folder "
            f"that holds it). Get it with: {collect_command(dataset_id)}"
        )
    try:
        return minari.MinariDataset(path / "data")
    except Exception as err:
        raise UsageError(corrupt_message(dataset_id, path, err)) from err


def corrupt_message(dataset_id: str, path: Path, err: Exception) -> str:
    return (
        f"Dataset {dataset_id} at {path} could not be read ({type(err).__name__}: {err}); it is truncated or "
        f"corrupt. Delete it (`minari delete {dataset_id}`) and make it again: {collect_command(dataset_id)}"
    )


def read_episodes(dataset) -> list[dict[str, Any]]:
    """All episodes of a Minari dataset as dicts of numpy arrays (observations has one row more than actions)."""
    path = dataset.storage.data_path.parent
    try:
        episodes = list(dataset.storage.get_episodes(dataset.episode_indices))
    except Exception as err:
        raise UsageError(corrupt_message(dataset.id, path, err)) from err
    obs_shape, action_shape = dataset.observation_space.shape, dataset.action_space.shape
    for episode in episodes:
        if not isinstance(episode.get("observations"), np.ndarray):
            raise UsageError(
                f"Dataset {dataset.id} has structured or no observations ({dataset.observation_space}); mixrl's "
                "offline agents need a flat Box observation space."
            )
        steps = len(episode["observations"]) - 1
        expected = {
            "observations": (steps + 1, *obs_shape),
            "actions": (steps, *action_shape),
            "rewards": (steps,),
            "terminations": (steps,),
            "truncations": (steps,),
        }
        for key, shape in expected.items():
            found = np.shape(episode[key]) if key in episode else "missing"
            if found != shape:
                problem = f"episode {episode.get('id')}: {key} {found}, expected shape {shape}"
                raise UsageError(corrupt_message(dataset.id, path, ValueError(problem)))
    return episodes


def env_of(dataset) -> tuple[str | None, dict[str, Any]]:
    """The env id and kwargs a dataset records for evaluation (eval_env_spec, else env_spec)."""
    metadata = dataset.storage.metadata
    spec = metadata.get("eval_env_spec") or metadata.get("env_spec")
    if spec is None:
        return None, {}
    spec = json.loads(spec)
    kwargs = {key: value for key, value in (spec.get("kwargs") or {}).items() if key != "render_mode"}
    return spec["id"], kwargs


def list_datasets() -> tuple[list[dict[str, Any]], list[str]]:
    """(summaries of the readable local datasets, messages about the unreadable ones)."""
    import minari

    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        local = minari.list_local_datasets()
    summaries = []
    for dataset_id, metadata in local.items():
        spec = metadata.get("eval_env_spec") or metadata.get("env_spec")
        summaries.append(
            {
                "dataset_id": dataset_id,
                "env_id": json.loads(spec)["id"] if spec else None,
                "episodes": metadata.get("total_episodes"),
                "steps": metadata.get("total_steps"),
                "ref_min_score": metadata.get("ref_min_score"),
                "ref_max_score": metadata.get("ref_max_score"),
            }
        )
    return summaries, [str(w.message) for w in caught if "Misconfigured" in str(w.message)]


def dataset_info(dataset_id: str) -> dict[str, Any]:
    """Metadata and return statistics of a local dataset."""
    dataset = open_dataset(dataset_id)
    metadata = dataset.storage.metadata
    returns = np.array([episode["rewards"].sum() for episode in read_episodes(dataset)])
    env_id, env_kwargs = env_of(dataset)
    info = {
        "dataset_id": dataset_id,
        "path": str(datasets_root() / dataset_id),
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "observation_space": str(dataset.observation_space),
        "action_space": str(dataset.action_space),
        "episodes": int(dataset.total_episodes),
        "steps": int(dataset.total_steps),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "ref_min_score": metadata.get("ref_min_score"),
        "ref_max_score": metadata.get("ref_max_score"),
        "algorithm_name": metadata.get("algorithm_name"),
        "description": metadata.get("description"),
    }
    if info["ref_min_score"] is not None and info["ref_max_score"] is not None:
        info["normalized_score_mean"] = float(
            normalized_score(returns.mean(), info["ref_min_score"], info["ref_max_score"])
        )
    return info


# ---------------------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------------------


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
        raise ValueError(f"--env-kwargs applies with --env-id (random or scripted datasets), not to kind {args.kind}.")
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
        ckpt = load_checkpoint(expert)
        if ckpt["env_id"] != env_id:
            raise UsageError(f"--expert {expert} was trained on {ckpt['env_id']}, not on {env_id}.")
        policy = load_policy(expert, args.device)
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


def check_new(dataset_id: str) -> None:
    if (datasets_root() / dataset_id).exists():
        raise UsageError(
            f"Dataset {dataset_id} already exists in {datasets_root()}: delete it first "
            f"(`minari delete {dataset_id}`) or choose another --dataset-id."
        )


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
        # newest: a run's latest.pt holds its replay buffer (medium-replay); final.pt does not
        ckpt = None if args.kind == "random" or scripted else load_checkpoint(args.policy, newest=True)
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
                policy, algorithm = load_policy(args.policy, args.device), f"mixrl-{ckpt['algo']} deterministic"
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


# ---------------------------------------------------------------------------------------------------------------
# Loading for offline agents
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class OfflineDataset:
    """A dataset's transitions in a ReplayBuffer on one device, with what an offline agent needs around them.

    Observations are z-scored with the dataset's statistics when loaded with normalize_obs (the same transform,
    stored as `obs_normalizer`, is applied by `mixrl.evaluation.Policy` at evaluation); actions are in [-1, 1].
    """

    dataset_id: str
    env_id: str | None
    env_kwargs: dict[str, Any]
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box
    buffer: ReplayBuffer
    obs_normalizer: dict[str, Any] | None
    ref_min_score: float | None
    ref_max_score: float | None
    num_episodes: int

    def normalized_score(self, returns: float) -> float | None:
        """D4RL score of a mean return, or None when the dataset records no reference scores."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return float(normalized_score(returns, self.ref_min_score, self.ref_max_score))

    def check_env(self, env_id: str, env_kwargs: dict[str, Any]) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """The env's (observation, action) spaces, after checking that they match the dataset's."""
        env = make_env(env_id, **env_kwargs)
        obs_space, action_space = env.observation_space, env.action_space
        env.close()
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape != self.action_space.shape:
            raise UsageError(
                f"Dataset {self.dataset_id} has actions {self.action_space}, but {env_id} has {action_space}: "
                "evaluate on the dataset's environment (leave --env-id unset)."
            )
        if obs_space.shape != self.observation_space.shape or not (
            np.allclose(action_space.low, self.action_space.low)
            and np.allclose(action_space.high, self.action_space.high)
        ):
            raise UsageError(
                f"Dataset {self.dataset_id} (observations {self.observation_space.shape}, actions in "
                f"[{self.action_space.low}, {self.action_space.high}]) does not match {env_id} (observations "
                f"{obs_space.shape}, actions in [{action_space.low}, {action_space.high}]): evaluate on the "
                "dataset's environment (leave --env-id unset)."
            )
        return obs_space, action_space


def load_dataset(
    dataset_id: str, device: str | torch.device = "cpu", normalize_obs: bool = True, std_epsilon: float = 1e-3
) -> OfflineDataset:
    """Load any local Minari dataset with flat Box spaces as transitions on `device`.

    normalize_obs: s <- (s - mean) / (std + std_epsilon) with the mean and std of the dataset's observations
    (CORL's state normalisation); the statistics travel as `obs_normalizer` {mean, var = (std + eps)^2,
    epsilon 0, clip inf}, the format that `mixrl.evaluation.Policy` applies.
    """
    dataset = open_dataset(dataset_id)
    obs_space, action_space = dataset.observation_space, dataset.action_space
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
        raise UsageError(
            f"Dataset {dataset_id} has spaces {obs_space} / {action_space}; mixrl's offline agents need Box "
            "observations and Box actions."
        )
    if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise UsageError(f"Dataset {dataset_id} has unbounded actions {action_space}; mixrl actors need bounds.")
    episodes = read_episodes(dataset)
    if not episodes:
        raise UsageError(f"Dataset {dataset_id} holds no episodes.")

    def stack(key: str, part: slice = slice(None)) -> np.ndarray:
        return np.concatenate([np.asarray(e[key][part], np.float64).reshape(len(e["rewards"]), -1) for e in episodes])

    obs, next_obs = stack("observations", slice(None, -1)), stack("observations", slice(1, None))
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
    actions = 2.0 * (stack("actions") - low) / (high - low) - 1.0
    rewards, terminated = stack("rewards")[:, 0], stack("terminations")[:, 0]
    if obs.shape[1] != int(np.prod(obs_space.shape)) or actions.shape[1] != int(np.prod(action_space.shape)):
        raise UsageError(
            corrupt_message(dataset_id, datasets_root() / dataset_id, ValueError("shapes differ from spaces"))
        )
    if not all(np.isfinite(x).all() for x in (obs, next_obs, actions, rewards)):
        raise UsageError(corrupt_message(dataset_id, datasets_root() / dataset_id, ValueError("non-finite values")))

    obs_normalizer = None
    if normalize_obs:
        mean, std = obs.mean(0), obs.std(0) + std_epsilon
        obs, next_obs = (obs - mean) / std, (next_obs - mean) / std
        obs_normalizer = {"mean": mean, "var": std**2, "epsilon": 0.0, "clip": np.inf, "count": len(obs)}
    buffer = ReplayBuffer(len(obs), obs.shape[1], actions.shape[1], device)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=buffer.device)

    buffer.add(tensor(obs), tensor(actions), tensor(rewards), tensor(next_obs), tensor(terminated))
    env_id, env_kwargs = env_of(dataset)
    metadata = dataset.storage.metadata
    return OfflineDataset(
        dataset_id,
        env_id,
        env_kwargs,
        obs_space,
        action_space,
        buffer,
        obs_normalizer,
        metadata.get("ref_min_score"),
        metadata.get("ref_max_score"),
        len(episodes),
    )
