"""Gradient steps per second of TD3+BC and A2PR, eager or compiled, float32 or bfloat16 products, alternating in
one run.

    python scripts/ablate_offline_update.py [--rounds 3] [--steps 40]

HalfCheetah-sized inputs (17-dim observations, 6-dim actions), batch 256, one torch thread, the agents' default
networks (TD3+BC: 2 x 256 actor and critics; A2PR: 3 x 256 actor, 4 x 256 critics and V, 2 x 750 VAE). Each
variant builds the agent's `make_update` (flat parameters and FlatAdam). Prints the median steps/s per variant
and its ratio to the agent's eager float32 step. Compiling takes a minute or two before the measurement starts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch._dynamo

from mixrl.agents import a2pr, td3_bc
from mixrl.buffers import ReplayBuffer

OBS_DIM, ACTION_DIM = 17, 6


def build(algo: str, **overrides):
    """The update of one agent with `overrides` of its Args, on freshly seeded networks."""
    torch.manual_seed(0)
    if algo == "td3_bc":
        args = td3_bc.Args(**overrides)
        networks = td3_bc.make_networks(args, OBS_DIM, ACTION_DIM, "cpu", args.hidden_sizes, args.hidden_sizes)
        return td3_bc.make_update(args, *networks)
    args = a2pr.Args(**overrides)
    return a2pr.make_update(args, *a2pr.make_networks(args, OBS_DIM, ACTION_DIM, "cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds")
    parser.add_argument("--steps", type=int, default=40, help="A2PR steps per variant per round (TD3+BC: 5x as many)")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    # The 12 compiled losses of this script share one code object: lift torch.compile's recompile limit (8).
    torch._dynamo.config.recompile_limit = 32
    buffer = ReplayBuffer(10_000, OBS_DIM, ACTION_DIM)
    buffer.add(
        torch.randn(10_000, OBS_DIM), torch.rand(10_000, ACTION_DIM) * 2 - 1, torch.randn(10_000),
        torch.randn(10_000, OBS_DIM), torch.zeros(10_000),
    )  # fmt: skip
    settings = {
        "eager, float32": {},
        "eager, bfloat16 products": {"matmul_precision": "medium"},
        "compiled, float32": {"compile": True},
        "compiled, bfloat16 products": {"compile": True, "matmul_precision": "medium"},
    }
    variants = {(algo, name): build(algo, **kw) for algo in ("td3_bc", "a2pr") for name, kw in settings.items()}
    for update in variants.values():
        for _ in range(6):
            update(buffer.sample(256))
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(opts.rounds):
        for (algo, name), update in variants.items():
            steps = opts.steps * (5 if algo == "td3_bc" else 1)
            start = time.perf_counter()
            for _ in range(steps):
                update(buffer.sample(256))
            rates[algo, name].append(steps / (time.perf_counter() - start))
    print("| agent | variant | gradient steps/s (median) | relative to eager float32 |\n|---|---|---|---|")
    for (algo, name), values in rates.items():
        base = np.median(rates[algo, "eager, float32"])
        print(f"| {algo} | {name} | {np.median(values):.1f} | {np.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
