"""The `prfaas` command line: one subcommand per module, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prfaas.cli import bench, demo, generate, link, plan, simulate, top, up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prfaas", description="Prefill-as-a-Service for hybrid-attention LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    bench.add_parser(sub)
    plan.add_parser(sub)
    simulate.add_parser(sub)
    top.add_parser(sub)
    link.add_parser(sub)
    up.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
