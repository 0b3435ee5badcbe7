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

from mixrl.datasets.collect import (
    SCRIPTED,
    CollectArgs,
    collect,
    episode_buffer,
    noisy_policy,
    reference_scores,
    replay_episodes,
    rollout_episodes,
    uniform_policy,
)
from mixrl.datasets.loading import OfflineDataset, load_dataset
from mixrl.datasets.storage import (
    KINDS,
    collect_command,
    dataset_info,
    datasets_root,
    default_dataset_id,
    env_of,
    list_datasets,
    normalized_score,
    open_dataset,
    read_episodes,
    write_dataset,
)

__all__ = [
    "KINDS",
    "SCRIPTED",
    "CollectArgs",
    "OfflineDataset",
    "collect",
    "collect_command",
    "dataset_info",
    "datasets_root",
    "default_dataset_id",
    "env_of",
    "episode_buffer",
    "list_datasets",
    "load_dataset",
    "noisy_policy",
    "normalized_score",
    "open_dataset",
    "read_episodes",
    "reference_scores",
    "replay_episodes",
    "rollout_episodes",
    "uniform_policy",
    "write_dataset",
]
