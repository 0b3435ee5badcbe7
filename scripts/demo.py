"""The `make demo` job: train SAC on InvertedPendulum-v5, evaluate it against a random policy, record a video.

Equivalent commands:
    mixrl sac --env-id InvertedPendulum-v5 --total-timesteps 30000 --learning-starts 1000 \
        --hidden-sizes 64 64 --q-lr 1e-3 --eval-every 5000 --seed 1
    mixrl eval runs/InvertedPendulum-v5__sac__1__<time> --episodes 10 --video

It prints the run directory, the mean return of a random policy and of the trained one over 10 deterministic
episodes (1000 is the maximum), the video's path and the TensorBoard command, and exits nonzero when the trained
policy is not well above the random one. `python scripts/demo.py --seed 3` trains another seed.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from mixrl.agents import sac  # noqa: E402
from mixrl.evaluation import evaluate, evaluate_checkpoint  # noqa: E402

ENV_ID = "InvertedPendulum-v5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the training run")
    seed = parser.parse_args().seed
    space = gym.make(ENV_ID).action_space
    space.seed(0)
    random_policy = evaluate(lambda obs: space.sample(), ENV_ID, episodes=10, seed=0)

    args = sac.Args(
        env_id=ENV_ID,
        seed=seed,
        total_timesteps=30_000,
        learning_starts=1000,
        hidden_sizes=(64, 64),
        q_lr=1e-3,
        eval_every=5000,
    )
    run_dir = sac.main(args)
    result = evaluate_checkpoint(run_dir, episodes=10, seed=0, video=True, max_video_frames=300)

    print(f"\nrun directory:      {run_dir}")
    print(f"random policy:      return {random_policy['mean_return']:7.1f} +- {random_policy['std_return']:.1f}")
    print(
        f"trained SAC policy: return {result['mean_return']:7.1f} +- {result['std_return']:.1f} "
        f"(10 deterministic episodes; 1000 is the maximum)"
    )
    print(f"video:              {result['videos'][0]}")
    print(f"TensorBoard:        tensorboard --logdir {run_dir.parent}")
    if result["mean_return"] < 10 * max(random_policy["mean_return"], 1.0) or not np.isfinite(result["mean_return"]):
        raise SystemExit("The demo agent did not learn: its return is not well above the random policy's.")


if __name__ == "__main__":
    main()
