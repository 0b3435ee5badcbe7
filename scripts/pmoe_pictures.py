"""Pictures of a PMOE-SAC policy: what each expert does on MultiGoal, and which expert leads along an episode.

    python scripts/pmoe_pictures.py                        # trains PMOE-SAC on mixrl/MultiGoal-v0 first
    python scripts/pmoe_pictures.py --run runs/mixrl-MultiGoal-v0__pmoe_sac__1__<time>
    python scripts/pmoe_pictures.py --run <MultiGoal run> --timeline-run runs/bench/HalfCheetah-v5__pmoe_sac__1__<time>

Writes results/pmoe_experts_multigoal.png (each expert's mean action followed from the start state, goals
drawn), results/pmoe_expert_timeline.png (the mixing weights w_k(s_t) and argmax_k w_k(s_t) along one
deterministic episode of the --timeline-run, by default the MultiGoal run) and results/pmoe_pictures.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent.parent / "results"


def train_multigoal(seed: int, steps: int) -> Path:
    """PMOE-SAC on MultiGoal with the settings of the multimodality test (mixrl.envs.multigoal.PMOE_SAC_SETTINGS)."""
    from mixrl.agents import sac
    from mixrl.envs.multigoal import PMOE_SAC_SETTINGS

    args = sac.Args(
        env_id="mixrl/MultiGoal-v0",
        **PMOE_SAC_SETTINGS,
        total_timesteps=steps,
        eval_every=0,
        eval_episodes=5,
        checkpoint_every=0,
        seed=seed,
        run_root=str(RESULTS.parent / "runs"),
    )
    return sac.main(args)


def mixture_policy(run: Path, ckpt: dict):
    """The deterministic policy of the checkpoint `ckpt` of the PMOE-SAC run `run` (its head is `policy.actor`)."""
    from mixrl.evaluation import policy_from_checkpoint
    from mixrl.policies.mixture import GaussianMixtureHead

    policy = policy_from_checkpoint(ckpt)
    if not isinstance(policy.actor, GaussianMixtureHead):
        raise ValueError(f"{run} holds a {type(policy.actor).__name__}, not a mixture: train with --policy gmm.")
    return policy


def plot_experts(run: Path, ckpt: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from mixrl.envs.multigoal import BOUND, GOAL_RADIUS, GOALS, follow_policy

    policy = mixture_policy(run, ckpt)
    head = policy.actor
    if ckpt["env_id"] != "mixrl/MultiGoal-v0" or ckpt["obs_normalizer"] is not None:
        raise ValueError(f"{run}: expert trajectories need a mixrl/MultiGoal-v0 run without --normalize-obs.")
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for goal in GOALS:
        ax.add_patch(plt.Circle(goal, GOAL_RADIUS, color="tab:green", alpha=0.3))
    for k in range(head.num_experts):

        def expert_mean(obs: np.ndarray, k: int = k) -> np.ndarray:
            with torch.no_grad():
                return torch.tanh(head.expert_params(torch.as_tensor(obs))[0][k]).numpy()

        trajectory, goal = follow_policy(expert_mean)
        label = f"expert {k}: " + ("no goal" if goal is None else "goal ({:g}, {:g})".format(*GOALS[goal]))
        ax.plot(trajectory[:, 0], trajectory[:, 1], "o-", ms=3, color=f"C{k}", label=label)
    ax.plot(0.0, 0.0, "k*", ms=12, label="start")
    ax.set(xlim=(-BOUND, BOUND), ylim=(-BOUND, BOUND), aspect="equal", xlabel="x", ylabel="y")
    ax.set_title(f"PMOE-SAC experts on MultiGoal (K = {head.num_experts}, {ckpt['global_step']} steps)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_timeline(run: Path, ckpt: dict, path: Path, seed: int) -> None:
    """w(s_t) of one deterministic episode; the mixing layer's outputs are recorded with a forward hook."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from mixrl.envs.factory import make_env

    policy = mixture_policy(run, ckpt)
    head = policy.actor
    logits: list[torch.Tensor] = []
    head.mixing.register_forward_hook(lambda module, inputs, output: logits.append(output))
    env = make_env(ckpt["env_id"], **(ckpt.get("env_kwargs") or {}))
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        done = terminated or truncated
    weights = torch.cat(logits).softmax(-1).numpy()  # (T, K)
    steps = np.arange(len(weights))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True, height_ratios=(3, 1))
    top.stackplot(
        steps,
        weights.T,
        colors=[f"C{k}" for k in range(head.num_experts)],
        labels=[f"expert {k}" for k in range(head.num_experts)],
        step="post",
    )
    top.set(ylabel="w_k(s_t)", ylim=(0, 1))
    top.legend(loc="upper right", fontsize=8, ncols=min(head.num_experts, 4))
    top.set_title(
        f"{ckpt['env_id']}: mixing weights along one deterministic episode\n"
        f"(reset seed {seed}, rule {head.eval_rule}, return {total:.1f}, {ckpt['global_step']} training steps)"
    )
    leader = weights.argmax(-1)
    bottom.scatter(steps, leader, c=[f"C{k}" for k in leader], s=8, marker="s")
    bottom.set(xlabel="step t", ylabel="argmax w", yticks=range(head.num_experts))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def shown(path: Path) -> str:
    """A path relative to the repository root when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(RESULTS.parent)) if path.is_relative_to(RESULTS.parent) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="MultiGoal PMOE-SAC run (default: train one)")
    parser.add_argument("--timeline-run", type=Path, default=None, help="run for the timeline (default: --run)")
    parser.add_argument("--seed", type=int, default=1, help="training seed when no --run is given")
    parser.add_argument("--steps", type=int, default=6000, help="training steps when no --run is given")
    parser.add_argument("--episode-seed", type=int, default=0, help="reset seed of the timeline episode")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load runs whose checkpoints need pickle (older runs of your own): unpickling can "
        "run the author's code",
    )
    opts = parser.parse_args()
    from mixrl.checkpoints import load_checkpoint
    from mixrl.cli import training_command

    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")

    run = opts.run if opts.run is not None else train_multigoal(opts.seed, opts.steps)
    timeline_run = opts.timeline_run if opts.timeline_run is not None else run
    ckpt = load_checkpoint(run, trusted=opts.trust_pickle)
    timeline_ckpt = ckpt if timeline_run == run else load_checkpoint(timeline_run, trusted=opts.trust_pickle)
    RESULTS.mkdir(exist_ok=True)
    plot_experts(run, ckpt, RESULTS / "pmoe_experts_multigoal.png")
    plot_timeline(timeline_run, timeline_ckpt, RESULTS / "pmoe_expert_timeline.png", opts.episode_seed)
    command = " ".join(map(shlex.quote, ["python", "scripts/pmoe_pictures.py", *sys.argv[1:]]))
    trained = "" if opts.run is not None else " (it trains the MultiGoal run first)"
    lines = [
        "# PMOE-SAC pictures",
        "",
        f"Both pictures were made with `{command}`{trained}.",
        "",
        "![experts](pmoe_experts_multigoal.png)",
        "",
        "`pmoe_experts_multigoal.png`: each expert's mean action tanh(mu_k(s)) followed from the start state "
        f"(0, 0) of mixrl/MultiGoal-v0. Run `{shown(run)}`, trained with `{training_command(ckpt)}`.",
        "",
        "![timeline](pmoe_expert_timeline.png)",
        "",
        "`pmoe_expert_timeline.png`: mixing weights w_k(s_t) (stacked) and the expert with the highest weight "
        f"along one deterministic episode (reset seed {opts.episode_seed}). Run `{shown(timeline_run)}`, "
        f"trained with `{training_command(timeline_ckpt)}`.",
        "",
    ]
    (RESULTS / "pmoe_pictures.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
