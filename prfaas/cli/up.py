"""`prfaas up`: run a whole topology locally until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from prfaas.cli.trace_ui import TraceUiUnavailable, start_trace_ui
from prfaas.netem import LinkSpec, parse_link_spec
from prfaas.netem.shaper import LinkError
from prfaas.stack import LocalStack, Topology


def add_topology_args(p: argparse.ArgumentParser, threshold: str = "the router's") -> None:
    p.add_argument("--config", type=Path, help="topology JSON (keys of prfaas.stack.Topology)")
    p.add_argument("--engine", choices=["real", "mock"], help="engine kind for every worker (default real)")
    p.add_argument("--model", help="checkpoint folder or kimi-linear-tiny (default)")
    p.add_argument(
        "--threshold", type=int, dest="threshold_tokens", help=f"routing threshold t in tokens (default: {threshold})"
    )
    p.add_argument("--router-port", type=int, help="fixed router port (default: any free port)")


def topology_from(args: argparse.Namespace, **defaults: Any) -> Topology:
    """The `--config` file's topology (if any) with the flags on top; `defaults` fill what neither sets."""
    flags = {
        "engine": args.engine,
        "model": args.model,
        "threshold_tokens": args.threshold_tokens,
        "router_port": args.router_port,
    }
    raw = Topology.read(args.config) if args.config is not None else {}
    return Topology(**{**defaults, **raw, **{k: v for k, v in flags.items() if v is not None}})


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a PrfaaS-PD topology on this machine (one process per service)")
    add_topology_args(p)
    p.add_argument(
        "--emulate-link",
        metavar="SPEC",
        help="put the PrfaaS and PD clusters in two network namespaces joined by a link shaped as SPEC "
        "(rate=1gbit,delay=5ms[,loss=0.1%%]); needs root; change it live with `prfaas link set`",
    )
    p.add_argument("--trace-ui", action="store_true", help="start Arize Phoenix as the trace receiver and UI")
    p.add_argument("--trace-ui-port", type=int, default=6006)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        topology = topology_from(args)
        link = link_from(args.emulate_link)
    except ValueError as exc:
        print(f"prfaas up: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ui = None
    if args.trace_ui:
        try:
            ui = start_trace_ui(args.trace_ui_port)
        except (TraceUiUnavailable, RuntimeError, TimeoutError) as exc:
            print(f"prfaas up: error: {exc}", file=sys.stderr)
            return 2
        os.environ.update(ui.export_env())  # the services inherit it
        print(f"trace UI at {ui.url}", flush=True)
    try:
        return _serve(topology, link, stop)
    except LinkError as exc:
        print(f"prfaas up: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ui is not None:
            ui.stop()


def link_from(spec: str | None) -> LinkSpec | None:
    """The `--emulate-link` spec, or None; refuses early (before anything starts) without root."""
    if spec is None:
        return None
    link = parse_link_spec(spec)
    if os.geteuid() != 0:
        raise ValueError("--emulate-link needs root (it creates network namespaces and tc qdiscs); run as root")
    return link


def _serve(topology: Topology, link: LinkSpec | None, stop: threading.Event) -> int:
    print(f"starting {topology} (logs in the folder printed below)", file=sys.stderr)
    with LocalStack(topology, link) as stack:
        print(f"logs: {stack.log_dir}", file=sys.stderr)
        if stack.emulated is not None:
            e = stack.emulated
            print(
                f"emulated link {link}: PrfaaS cluster in {e.dc1} ({e.dc1_addr}), PD cluster in {e.dc2} "
                f"({e.dc2_addr}); change it with: prfaas link set rate=...",
                file=sys.stderr,
            )
        for s in stack.services:
            where = f"  (inside: {s.site.ns} {s.internal})" if s.site.ns else ""
            print(f"  {s.name:20} {s.address}{where}", file=sys.stderr)
        print(f"watch it with: {stack.top_command()}", file=sys.stderr)
        print(f"router listening on {stack.router}", flush=True)
        if stack.openai_url is not None:
            print(f"openai api on {stack.openai_url}", flush=True)
        stop.wait()
        print("stopping", file=sys.stderr)
    return 0
