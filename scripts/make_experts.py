"""Reference agents, intervening experts of several levels and demonstrations for RLIF (results/raw/rlif/).

    python scripts/make_experts.py train  --env-id Hopper-v5 --total-timesteps 120000 --snapshot-every 10000
    python scripts/make_experts.py levels --env-id Hopper-v5 --reference RUN [--snapshots RUN/snapshots]
    python scripts/make_experts.py demos  --env-id Hopper-v5 --reference RUN --steps 10000

train: a reference SAC run (its critics are the reference Q of value-based interventions), trained in chunks
of --snapshot-every steps with exact --resume, each chunk's checkpoint copied to RUN/snapshots/step_<N>.pt.

levels: the reference's own deterministic return R_ref, then candidate experts, each a snapshot (an earlier
checkpoint) with Gaussian action noise of std sigma (in half action ranges) from --noises, screened over
--screen-episodes; for each target fraction (--fractions, default 0.15 0.4 0.8 of R_ref) the candidate closest to
it is measured again over --episodes (50) and recorded in results/raw/rlif/experts_<env>.json, the file that
scripts/bench_rlif.py reads. An expert is (checkpoint, noise): `mixrl rlif --expert CKPT --expert-noise SIGMA`.

demos: --steps transitions of the reference's deterministic rollouts as the Minari dataset
mixrl/<env>/rlif-demos-v0 (whole episodes; the last one is cut there).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from mixrl.datasets import CollectArgs, collect, noisy_policy, uniform_policy
from mixrl.envs.factory import make_env
from mixrl.evaluation import evaluate, load_policy
from mixrl.runs import find_checkpoint, load_checkpoint

RAW = Path("results/raw/rlif")


def experts_file(env_id: str) -> Path:
    return RAW / f"experts_{env_id.replace('/', '-')}.json"


def demos_id(env_id: str) -> str:
    return f"mixrl/{env_id.lower().replace('/', '-')}/rlif-demos-v0"


def train(opts: argparse.Namespace) -> Path:
    """SAC in chunks of --snapshot-every steps (resume is exact), keeping each chunk's checkpoint."""
    from mixrl.agents import sac

    run = None
    for milestone in range(opts.snapshot_every, opts.total_timesteps + 1, opts.snapshot_every):
        if run is None:
            args = sac.Args(env_id=opts.env_id, seed=opts.seed, total_timesteps=milestone, run_root=opts.run_root,
                            compile=True, matmul_precision="medium", eval_every=opts.snapshot_every)  # fmt: skip
        else:
            args = sac.Args(resume=str(run), total_timesteps=milestone)
        run = sac.main(args)
        (run / "snapshots").mkdir(exist_ok=True)
        shutil.copy(run / "checkpoints" / "latest.pt", run / "snapshots" / f"step_{milestone}.pt")
    print(f"reference: {run}")
    return run


def measure(policy, env_id: str, episodes: int, seed: int) -> dict:
    result = evaluate(policy, env_id, episodes, seed=seed)
    return {"mean": result["mean_return"], "std": result["std_return"], "episodes": episodes}


def snapshots(opts: argparse.Namespace) -> list[tuple[int, Path]]:
    """(global step, file) of the snapshots, named by their step (files of any name are read for it)."""
    folder = Path(opts.snapshots or Path(opts.reference) / "snapshots")
    found = []
    for file in sorted(folder.glob("*.pt")):
        step = int(torch.load(file, map_location="cpu", weights_only=False)["global_step"])
        found.append((step, file))
    return sorted(found)


def levels(opts: argparse.Namespace) -> None:
    reference = find_checkpoint(opts.reference)
    space = load_checkpoint(reference)["action_space"]
    ref = measure(load_policy(reference), opts.env_id, opts.episodes, opts.seed)
    random = measure(uniform_policy(make_env(opts.env_id).action_space, opts.seed), opts.env_id, 10, opts.seed)
    print(f"reference {reference}: {ref['mean']:.1f} +- {ref['std']:.1f} ({opts.episodes} episodes)", flush=True)
    candidates = []
    for step, file in [s for s in snapshots(opts) if s[1].resolve() != reference.resolve()] + [(None, reference)]:
        policy = load_policy(file)
        for noise in opts.noises:
            act = noisy_policy(policy, space, noise, opts.seed) if noise > 0 else policy
            screen = measure(act, opts.env_id, opts.screen_episodes, opts.seed + 1000)
            candidates.append({"checkpoint": str(file), "step": step, "noise": noise, "screen": screen})
            print(f"  candidate step {step} noise {noise}: {screen['mean']:.1f}", flush=True)
    chosen = []
    for fraction in opts.fractions:
        best = min(candidates, key=lambda c: abs(c["screen"]["mean"] - fraction * ref["mean"]))
        policy = load_policy(best["checkpoint"])
        act = noisy_policy(policy, space, best["noise"], opts.seed) if best["noise"] > 0 else policy
        level = {"target_fraction": fraction, **best, **measure(act, opts.env_id, opts.episodes, opts.seed)}
        level["fraction"] = level["mean"] / ref["mean"]
        chosen.append(level)
        print(f"level {fraction:.2f}: {level['mean']:.1f} +- {level['std']:.1f} = {level['fraction']:.2f} R_ref "
              f"(step {best['step']}, noise {best['noise']})", flush=True)  # fmt: skip
    RAW.mkdir(parents=True, exist_ok=True)
    record = {
        "env_id": opts.env_id,
        "reference": str(reference),
        "reference_return": ref,
        "random_return": random,
        "levels": chosen,
        "candidates": candidates,
        "command": "python " + shlex.join(sys.argv),
    }
    experts_file(opts.env_id).write_text(json.dumps(record, indent=2))
    print(f"wrote {experts_file(opts.env_id)}")


def demos(opts: argparse.Namespace) -> None:
    record = json.loads(experts_file(opts.env_id).read_text())
    collect(
        CollectArgs(
            kind="expert", policy=opts.reference or record["reference"], dataset_id=demos_id(opts.env_id),
            steps=opts.steps, ref_min_score=record["random_return"]["mean"],
            ref_max_score=record["reference_return"]["mean"], seed=opts.seed,
        )
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "levels", "demos"])
    parser.add_argument("--env-id", default="Hopper-v5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=120_000, help="train: SAC steps of the reference")
    parser.add_argument("--snapshot-every", type=int, default=10_000, help="train: steps between kept checkpoints")
    parser.add_argument("--run-root", default="runs/experts", help="train: parent folder of the reference run")
    parser.add_argument("--reference", default=None, help="levels, demos: the reference run or checkpoint")
    parser.add_argument("--snapshots", default=None, help="levels: folder of earlier checkpoints (RUN/snapshots)")
    parser.add_argument("--noises", type=float, nargs="+", default=[0.0, 0.3, 0.6, 1.0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.15, 0.4, 0.8])
    parser.add_argument("--screen-episodes", type=int, default=5, help="levels: episodes per candidate")
    parser.add_argument("--episodes", type=int, default=50, help="levels: episodes measuring each chosen level")
    parser.add_argument("--steps", type=int, default=10_000, help="demos: transitions of reference rollouts")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    np.set_printoptions(precision=3)
    {"train": train, "levels": levels, "demos": demos}[opts.stage](opts)


if __name__ == "__main__":
    main()
