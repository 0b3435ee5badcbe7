"""A user's own task package, as `mixrl <agent> --env-id byo_pkg:byo_pkg/Reach-v0` imports it: importing it
registers the id (nothing in mixrl knows it)."""

import gymnasium

gymnasium.register(id="byo_pkg/Reach-v0", entry_point="byo_pkg.reach:ReachEnv", max_episode_steps=20)
