"""Why do PMOE-PPO's mixing weights stay uniform? A probe of trained checkpoints.

The frequency loss regresses w(s) onto onehot(argmax_k Q(s, a_k)), a_k ~ N(mu_k(s), sigma_k), one sample per
expert. Its expectation over the draws is minimised by w(s) = p_win(s), the probability that expert k wins, and
its smallest value is (1 - sum_k p_win(s)_k^2) / K; with uniform wins that is (K - 1) / K^2 = 0.16 for K = 5,
the value at uniform w. So w can only specialise when (1) the experts differ and (2) argmax-Q picks the same
expert when the draws are repeated. For states visited by the trained policy (the training rule: k ~ Cat(w),
a ~ N(mu_k, sigma_k)) this script measures:

* w: entropy H(w) / log K (1 = uniform) and the mean largest weight (1 / K = uniform);
* distinguishability: the distance between two experts' means in units of their standard deviation,
  |(mu_i - mu_j) / sigma_ij| with sigma_ij^2 = (sigma_i^2 + sigma_j^2) / 2, mean over state and pair (and the
  largest pair); below about 1 the two Gaussians overlap almost entirely;
* argmax-Q consistency over `draws` repetitions of the K samples: entropy of the win distribution
  H(p_win) / log K (1 = uniform); agreement, the probability that two independent repetitions name the same
  expert (1 / K = chance, 1 = always the same); the win rate of the expert whose mean has the highest Q;
* signal and noise in Q: the spread of Q over the experts' means (std over k of Q(s, mu_k)) against the
  spread of Q over one expert's samples (std over draws of Q(s, a_k));
* the frequency loss at the current w, its floor (w = p_win), and what a mixing net could reach: the best
  constant w (the marginal win frequencies) and the best w = softmax(Linear(s)) (PMOE-PPO's mixing net, fitted
  here by Adam on these states).

    python scripts/pmoe_ppo_probe.py runs/bench/Hopper-v5__pmoe_ppo__1__*/checkpoints/final.pt

Prints a Markdown table, one row per checkpoint (results/ppo.md quotes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

from mixrl.checkpoints import load_checkpoint
from mixrl.evaluation import policy_from_checkpoint
from mixrl.policies.mixture import auxiliary_q, q_values


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[tuple[str, ...]]
    """PMOE-PPO (frequency estimator) run directories or checkpoint files"""
    states: int = 2000
    """states visited by the stochastic policy on which everything is measured"""
    draws: int = 64
    """repetitions of the K expert samples per state (the argmax-Q win distribution)"""
    seed: int = 0
    """seed of the env and of the draws"""
    trust_pickle: bool = False
    """also load checkpoints that need pickle (older runs of your own): unpickling can run the author's code"""


def visited_states(ckpt: dict, states: int, seed: int) -> torch.Tensor:
    """Normalised observations of `states` env steps taken with the training rule (k ~ Cat(w), a ~ N(mu_k, sigma_k))."""
    policy = policy_from_checkpoint(ckpt, eval_rule="sample")
    norm = policy.obs_normalizer
    env = gym.make(ckpt["env_id"], **ckpt.get("env_kwargs", {}))
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(states):
        rows.append(obs)
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    raw = np.stack(rows)
    if norm is not None:  # as Policy does
        raw = np.clip((raw - norm["mean"]) / np.sqrt(norm["var"] + norm["epsilon"]), -norm["clip"], norm["clip"])
    return torch.as_tensor(raw, dtype=torch.float32)


@torch.no_grad()
def probe(path: str, args: Args) -> dict[str, float]:
    ckpt = load_checkpoint(path, trusted=args.trust_pickle)
    if "qf" not in ckpt["state"]:
        raise SystemExit(f"{path} has no auxiliary Q network: probe a PMOE-PPO run with --gmm-grad frequency.")
    torch.manual_seed(args.seed)
    obs = visited_states(ckpt, args.states, args.seed)
    actor = policy_from_checkpoint(ckpt).actor
    action_dim = ckpt["policy"]["kwargs"]["action_dim"]
    qf = auxiliary_q(obs.shape[-1], action_dim, tuple(ckpt["args"]["q_hidden_sizes"]))
    qf.load_state_dict(ckpt["state"]["qf"])

    logits, mean, log_std = actor.distribution_params(obs)  # (N, K), (N, K, A), (N, K, A)
    n, k = logits.shape
    w = logits.softmax(-1)
    entropy_w = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(k)

    var = (2 * log_std).exp()
    i, j = torch.triu_indices(k, k, 1)
    pair_distance = ((mean[:, i] - mean[:, j]) / ((var[:, i] + var[:, j]) / 2).sqrt()).norm(dim=-1)  # (N, pairs)

    tiled = obs.unsqueeze(1).expand(n, k, obs.shape[-1])
    samples = mean + log_std.exp() * torch.randn(args.draws, *mean.shape)  # (D, N, K, A)
    q_samples = q_values(qf, tiled.expand(args.draws, n, k, -1), samples)  # (D, N, K)
    wins = torch.nn.functional.one_hot(q_samples.argmax(-1), k).sum(0).float()  # (N, K) counts over the draws
    p_win = wins / args.draws
    entropy_win = -(p_win * p_win.clamp_min(1e-12).log()).sum(-1) / math.log(k)
    agreement = ((wins.square().sum(-1) - args.draws) / (args.draws * (args.draws - 1))).mean()  # unbiased sum p^2
    q_means = q_values(qf, tiled, mean)  # (N, K)

    def freq_loss(weights: torch.Tensor) -> float:  # expected L_freq of w against the win distribution
        return ((weights.square().sum(-1) - 2 * (weights * p_win).sum(-1) + 1) / k).mean().item()

    with torch.enable_grad():  # the best linear mixing net on these states
        linear = torch.nn.Linear(obs.shape[-1], k)
        fit = torch.optim.Adam(linear.parameters(), lr=1e-2)
        for _ in range(1000):
            fit.zero_grad()
            loss = ((linear(obs).softmax(-1) - p_win).square().sum(-1)).mean()
            loss.backward()
            fit.step()
    best_mean_expert = q_means.argmax(-1)
    return {
        "step": ckpt["global_step"],
        "H(w)/log K": entropy_w.mean().item(),
        "max w": w.max(-1).values.mean().item(),
        "mean-distance/sigma": pair_distance.mean().item(),
        "largest pair": pair_distance.mean(0).max().item(),
        "H(p_win)/log K": entropy_win.mean().item(),
        "agreement": agreement.item(),
        "best-mean expert wins": p_win.gather(-1, best_mean_expert[:, None]).mean().item(),
        "std_k Q(mu_k)": q_means.std(-1).mean().item(),
        "std_draws Q(a_k)": q_samples.std(0).mean().item(),
        "L_freq": freq_loss(w),
        "L_freq floor": ((1 - p_win.square().sum(-1)) / k).mean().item(),
        "L_freq best constant w": freq_loss(p_win.mean(0).expand_as(p_win)),
        "L_freq best linear w": freq_loss(linear(obs).softmax(-1)),
    }


def main(args: Args) -> None:
    rows = [(path, probe(path, args)) for path in args.checkpoints]
    columns = list(rows[0][1])
    print("| checkpoint | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for path, row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        print(f"| {path} | " + " | ".join(cells) + " |")
    print(
        f"\nUniform reference (K experts): H = 1, max w = 1/K, agreement = 1/K, L_freq floor = (K - 1)/K^2. "
        f"{args.states} states, {args.draws} draws, seed {args.seed}."
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
