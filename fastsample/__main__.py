"""CLI: `python -m fastsample bench [...]` (benchmarks, run from the repository root) or
`python -m fastsample generate [...]` (text generation with a local Hugging Face checkpoint)."""
from __future__ import annotations

import sys

USAGE = "usage: python -m fastsample {bench,generate} [options]   (add --help after the command for its options)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        try:
            from bench.run import main as bench_main
        except ModuleNotFoundError as exc:
            print(f"fastsample bench: {exc}; run it from the repository root (the bench/ folder)", file=sys.stderr)
            return 2
        return bench_main(rest)
    if command == "generate":
        from .decoding.cli import main as generate_main

        return generate_main(rest)
    print(f"fastsample: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
