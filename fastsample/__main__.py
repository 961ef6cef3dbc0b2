"""CLI: `python -m fastsample generate [...]` (text generation with a local Hugging Face checkpoint).

The benchmarks are not part of the installed package: they live in the repository's bench/ folder and run as
`python -m bench` from the repository root (or `make bench`). The package never imports bench/, so
`python -m fastsample bench` only says where to look.
"""
from __future__ import annotations

import sys

USAGE = "usage: python -m fastsample generate [options]   (add --help after the command for its options)"
BENCH_MOVED = ("fastsample bench: the benchmarks are not part of the installed package; from a clone of the "
               "repository run `python -m bench [options]` at its root (or `make bench`)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        print(BENCH_MOVED, file=sys.stderr)
        return 2
    if command == "generate":
        from .decoding.cli import main as generate_main

        return generate_main(rest)
    print(f"fastsample: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
