"""Single-file agents: each module holds one algorithm, its `Args` and `main(args) -> run_dir`."""
