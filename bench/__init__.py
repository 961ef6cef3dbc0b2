"""fastsample benchmarks: `python -m fastsample bench --help` (run from the repository root)."""
