"""fastsample benchmarks (repository only, not installed): `python -m bench --help` from the repository root."""
