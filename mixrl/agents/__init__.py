"""Single-file agents: each module holds one algorithm, its `Args` and `main(args) -> run_dir`.

`AGENTS` is the table of them (the `mixrl` subcommand -> its module), read by the CLI and by sweeps; importing
this package imports none of the agents.
"""

AGENTS = {
    "sac": "mixrl.agents.sac",
    "ppo": "mixrl.agents.ppo",
    "dqn": "mixrl.agents.dqn",
    "td3_bc": "mixrl.agents.td3_bc",
    "a2pr": "mixrl.agents.a2pr",
    "bc": "mixrl.agents.bc",
    "rlif": "mixrl.agents.rlif",
    "dagger": "mixrl.agents.dagger",
}
