"""GPU-batched MuJoCo Warp versions of Gymnasium's v5 locomotion tasks (optional extra: pip install mixrl[warp]).

`make_vec_env(..., backend="warp")` builds a `vec_env.WarpVecEnv`; importing this package does not import warp.
"""

from mixrl.envs.warp.tasks import SUPPORTED_IDS, check_warp_env_id

__all__ = ["SUPPORTED_IDS", "check_warp_env_id"]
