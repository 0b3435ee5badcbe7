"""Final return of trained mixture policies (PMOE-SAC, PMOE-PPO and the estimator variants) under each rule
that turns the mixture into one evaluation action.

    python scripts/mixture_eval_rules.py --names pmoe ppo

For every mixture-policy run recorded in results/raw/<name>/ by scripts/bench_learning.py, the final checkpoint
is evaluated with each rule of mixrl.policies.mixture.ACTOR_EVAL_RULES on the benchmark's own episodes (5, reset
seeds 10000 + seed + i; stochastic rules draw from torch seeded with 10000 + seed), so `argmax_w`, the rule the
runs were trained and evaluated with, repeats the benchmark's final figure. Writes
results/<out>.md and .json (default results/mixture_eval_rules.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from mixrl.evaluation import evaluate, load_policy
from mixrl.policies.mixture import ACTOR_EVAL_RULES

RESULTS = Path(__file__).resolve().parent.parent / "results"
EPISODES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="+", default=["pmoe", "ppo"], help="results/raw/<name>/ to read")
    parser.add_argument("--out", default="mixture_eval_rules", help="writes results/<out>.md and results/<out>.json")
    opts = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for name in opts.names:
        for path in sorted((RESULTS / "raw" / name).glob("*.json")):
            record = json.loads(path.read_text())
            if record["overrides"].get("policy") != "gmm":
                continue
            seed = record["seed"]
            returns = {}
            policy = load_policy(record["run_dir"])  # loaded once; each rule then replaces the saved one
            for rule in ACTOR_EVAL_RULES:
                torch.manual_seed(10_000 + seed)
                policy.actor.eval_rule = rule
                returns[rule] = evaluate(policy, record["env_id"], EPISODES, seed=10_000 + seed)["mean_return"]
            row = {"variant": record["variant"], "env_id": record["env_id"], "seed": seed}
            row.update(benchmark_final=record["curve"][-1][1], returns=returns)
            print(json.dumps(row), flush=True)
            rows.append(row)

    command = "python scripts/mixture_eval_rules.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    (RESULTS / f"{opts.out}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    lines = [
        "# Mixture policies under each evaluation rule",
        "",
        f"Made by `{command}` from the final checkpoints of the runs in results/raw/{{{','.join(opts.names)}}}/: "
        f"mean return of {EPISODES} episodes (reset seeds 10000 + seed + i), then mean +- std over seeds (n). "
        "Rules: `argmax_w` mean of the heaviest expert (the benchmark's rule; no rule affects training); "
        "`weighted_mean` sum_k w_k mean_k; `sampled_k_mean` mean of an expert drawn from w; `sample` an action "
        "drawn from the mixture (the last two are stochastic).",
        "",
        "| variant | env | " + " | ".join(ACTOR_EVAL_RULES) + " |",
        "|---|---|" + "---|" * len(ACTOR_EVAL_RULES),
    ]
    for variant, env_id in sorted({(r["variant"], r["env_id"]) for r in rows}):
        group = [r for r in rows if (r["variant"], r["env_id"]) == (variant, env_id)]
        cells = []
        for rule in ACTOR_EVAL_RULES:
            values = np.array([r["returns"][rule] for r in group])
            cells.append(f"{values.mean():.0f} +- {values.std():.0f} ({len(values)})")
        lines.append(f"| {variant} | {env_id} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (benchmark final = the last evaluation of the benchmark's curve):", ""]
    lines += ["| variant | env | seed | benchmark final | " + " | ".join(ACTOR_EVAL_RULES) + " |"]
    lines += ["|---|---|---|---|" + "---|" * len(ACTOR_EVAL_RULES)]
    for r in sorted(rows, key=lambda r: (r["variant"], r["env_id"], r["seed"])):
        cells = " | ".join(f"{r['returns'][rule]:.0f}" for rule in ACTOR_EVAL_RULES)
        lines.append(f"| {r['variant']} | {r['env_id']} | {r['seed']} | {r['benchmark_final']:.0f} | {cells} |")
    (RESULTS / f"{opts.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
