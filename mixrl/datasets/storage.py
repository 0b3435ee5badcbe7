"""Minari storage of mixrl datasets: where they live, their ids, writing one atomically, reading, listing and
describing them, and the D4RL normalised score."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mixrl.errors import MissingPathError, UsageError

KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
RUN_HINT = "RUN is a mixrl run directory or checkpoint; EXPERT_RUN that of the expert"


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


def check_new(dataset_id: str) -> None:
    if (datasets_root() / dataset_id).exists():
        raise UsageError(
            f"Dataset {dataset_id} already exists in {datasets_root()}: delete it first "
            f"(`minari delete {dataset_id}`) or choose another --dataset-id."
        )
