"""`prfaas link`: show, change or clean up the emulated cross-datacenter link of a running stack.

The link belongs to the process that created it (`prfaas.netem.link.EmulatedLink`); these commands find it
through its state file, so they work from another shell while the stack runs. They need root, like the link.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from prfaas.netem import parse_link_spec
from prfaas.netem.link import LinkError, LinkState, active_links, apply_spec, cleanup_stale, stale_namespaces

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``link`` (with ``set``, ``show``, ``cleanup``) on a ``parser.add_subparsers()`` object."""
    parser = subparsers.add_parser("link", help="the emulated cross-datacenter link: show, set, cleanup")
    actions = parser.add_subparsers(dest="link_command", required=True)
    change = actions.add_parser("set", help="change the running link's rate, delay or loss, e.g. rate=200mbit")
    change.add_argument(
        "spec",
        help="KEY=VALUE,... with rate (e.g. 1gbit), delay (one way, e.g. 5ms), loss (e.g. 0.1%%); "
        "keys left out keep their value",
    )
    change.add_argument("--pid", type=int, help="the link's owning process, when several run (see `link show`)")
    change.set_defaults(run=run_set)
    actions.add_parser("show", help="the running links: namespaces, addresses, spec, qdiscs").set_defaults(run=run_show)
    actions.add_parser("cleanup", help="remove namespaces left behind by crashed processes").set_defaults(
        run=run_cleanup
    )


def run_set(args: argparse.Namespace) -> int:
    links = active_links()
    if not links:
        return _fail("no emulated link is running (nothing to change)", EXIT_FAILED)
    try:
        state = pick_link(links, args.pid)
        spec = parse_link_spec(args.spec, base=state.spec)
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    try:
        apply_spec(state, spec)
    except LinkError as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(f"link of pid {state.pid}: {spec} (was {state.spec})")
    return 0


def pick_link(links: Sequence[LinkState], pid: int | None) -> LinkState:
    """The link owned by `pid`, or the only one; ValueError saying how to choose otherwise."""
    pids = ", ".join(str(state.pid) for state in links)
    if pid is None:
        if len(links) > 1:
            raise ValueError(f"several links are running (pids {pids}); pick one with --pid")
        return links[0]
    for state in links:
        if state.pid == pid:
            return state
    raise ValueError(f"no running link is owned by pid {pid}; running links: pids {pids}")


def run_show(args: argparse.Namespace) -> int:
    links = active_links()
    if not links:
        print("no emulated link is running")
    for state in links:
        (ns1, ns2), (addr1, addr2) = state.namespaces, state.addresses
        print(f"pid {state.pid} ({state.backend}): {ns1} {addr1} <-> {ns2} {addr2}: {state.spec}")
        for ns in state.namespaces:
            print(_qdiscs(ns))
    try:
        stale = stale_namespaces()
    except LinkError as exc:
        return _fail(str(exc), EXIT_FAILED)
    if stale:
        print(f"left behind by crashed processes: {', '.join(stale)} (`prfaas link cleanup` removes them)")
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    try:
        removed = cleanup_stale()
    except LinkError as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(f"removed {', '.join(removed)}" if removed else "nothing to clean up")
    return 0


def _qdiscs(ns: str) -> str:
    done = subprocess.run(["tc", "-n", ns, "qdisc", "show"], capture_output=True, text=True, timeout=10, check=False)
    lines = done.stdout.splitlines() if done.returncode == 0 else [f"(tc failed: {done.stderr.strip()})"]
    return "\n".join(f"  {ns}: {line.strip()}" for line in lines if "noqueue" not in line)


def _fail(message: str, code: int) -> int:
    print(f"prfaas link: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m prfaas.cli.link ARGS` is `prfaas link ARGS`."""
    parser = argparse.ArgumentParser(prog="prfaas")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["link", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
