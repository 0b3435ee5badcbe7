"""Gymnasium registration of the mixrl/* environment ids (importing mixrl does this)."""

import gymnasium

gymnasium.register(
    id="mixrl/ThreeBodyTimestep-v0",
    entry_point="mixrl.envs.three_body:ThreeBodyTimestepEnv",
)
gymnasium.register(
    id="mixrl/ThreeBodyTimestepMonotone-v0",
    entry_point="mixrl.envs.three_body:ThreeBodyTimestepEnv",
    kwargs={"terminal_reward": -15_000.0},  # MONOTONE_TERMINAL_REWARD: one fixed penalty for every blow-up
)
gymnasium.register(
    id="mixrl/ThreeBodyTimestepContinuous-v0",
    entry_point="mixrl.envs.three_body:ThreeBodyTimestepContinuousEnv",
)
gymnasium.register(
    id="mixrl/MultiGoal-v0",
    entry_point="mixrl.envs.multigoal:MultiGoalEnv",
    max_episode_steps=30,
)
gymnasium.register(
    id="mixrl/PegInsertion-v0",
    entry_point="mixrl.envs.insertion:PegInsertionEnv",
    max_episode_steps=100,
)
