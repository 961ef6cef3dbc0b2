"""`python -m bench [options]` from the repository root (or `make bench`): the benchmark suite of bench/run.py.

bench/ is part of the repository, not of the installed package: it benchmarks whichever fastsample Python
imports (the editable install of `make install`, or an installed wheel).
"""
import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
