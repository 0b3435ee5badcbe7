"""mixrl: single-file RL agents on shared policy heads, replay buffers and Gymnasium/MuJoCo environments.

import mixrl
policy = mixrl.load_policy("runs/HalfCheetah-v5__sac__1__<time>")   # run directory, policy/ folder or checkpoint
action = policy(obs)                                                  # numpy in, env action out
"""

import mixrl.envs  # noqa: F401  (registers the mixrl/* environment ids with Gymnasium)
from mixrl.evaluation import load_policy

__version__ = "0.1.0"
__all__ = ["load_policy", "__version__"]
