"""What each optimisation of the SAC update buys: update rate with one of them switched off, alternating in one run.

    python scripts/ablate_sac_update.py [--rounds 5] [--updates 50]

HalfCheetah-sized networks (17-dim observations, 6-dim actions, two 256-unit layers), batch 256, one torch
thread. Each variant builds `mixrl.agents.sac.make_update` (flat parameters and FlatAdam throughout): compiled
losses with bfloat16 or float32 products (`--compile`, `--matmul-precision medium`), the eager default, and the
eager update with one optimisation switched off: critic weights frozen in the actor step, or the ensemble
layer's in-place bias/ReLU and multiply-and-sum output layer. Prints the median updates/s per variant and the
ratio to the eager default. Compiling takes a minute before the measurement starts.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import mixrl.policies.nets as nets
from mixrl.agents.sac import Args, make_update
from mixrl.buffers import ReplayBuffer
from mixrl.optim import FlatAdam, flatten_parameters
from mixrl.policies.critics import QEnsemble
from mixrl.policies.gaussian import TanhGaussianActor

OBS_DIM, ACTION_DIM = 17, 6


class PlainEnsembleLinear(nets.EnsembleLinear):
    """The straightforward layer: baddbmm with the expanded bias (out-of-place ReLU follows in PlainEnsembleMLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PlainEnsembleMLP(nets.EnsembleMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def build(freeze_critics: bool = True, tuned_layers: bool = True, **args):
    torch.manual_seed(0)
    actor, qf = TanhGaussianActor(OBS_DIM, ACTION_DIM), QEnsemble(OBS_DIM, ACTION_DIM)
    if not tuned_layers:
        qf.net.__class__ = PlainEnsembleMLP
        for layer in qf.net.layers:
            layer.__class__ = PlainEnsembleLinear
        for module in actor.trunk:
            if isinstance(module, torch.nn.ReLU):
                module.inplace = False
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    if not freeze_critics:
        qf.requires_grad_ = lambda *_: qf  # the actor step then also computes critic weight gradients
    log_alpha = torch.zeros((), requires_grad=True)
    optimizers = tuple(FlatAdam(p, 3e-4) for p in (flatten_parameters([actor]), flatten_parameters([qf]), log_alpha))
    return make_update(Args(**args), actor, qf, qf_target, log_alpha, optimizers, -float(ACTION_DIM))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternation rounds")
    parser.add_argument("--updates", type=int, default=50, help="updates per variant per round")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    buffer = ReplayBuffer(100_000, OBS_DIM, ACTION_DIM)
    for _ in range(100):
        buffer.add(
            torch.randn(100, OBS_DIM),
            torch.rand(100, ACTION_DIM),
            torch.randn(100),
            torch.randn(100, OBS_DIM),
            torch.zeros(100),
        )
    variants = {
        "compiled, bfloat16 products": build(compile=True, matmul_precision="medium"),
        "compiled": build(compile=True),
        "eager (default)": build(),
        "eager, critic weight gradients in the actor step": build(freeze_critics=False),
        "eager, baddbmm layers, out-of-place ReLU": build(tuned_layers=False),
        "eager, neither": build(False, False),
    }
    for update in variants.values():
        for _ in range(10):
            update(buffer.sample(256))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(opts.rounds):
        for name, update in variants.items():
            start = time.perf_counter()
            for _ in range(opts.updates):
                update(buffer.sample(256))
            rates[name].append(opts.updates / (time.perf_counter() - start))
    full = np.median(rates["eager (default)"])
    print("| variant | updates/s (median) | relative |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {np.median(values):.1f} | {np.median(values) / full:.2f} |")


if __name__ == "__main__":
    main()
