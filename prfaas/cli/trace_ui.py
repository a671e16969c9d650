"""A trace viewer without Docker: Arize Phoenix (optional extra `trace-ui`) as the OTLP receiver.

Phoenix runs as its own process: OTLP/gRPC on one port (the services export there), its web UI on
another. The stack's services find it through the standard `OTEL_EXPORTER_OTLP_ENDPOINT`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass


class TraceUiUnavailable(RuntimeError):
    """Phoenix is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TraceUi:
    proc: subprocess.Popen[bytes]
    ui_port: int
    otlp_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def export_env(self) -> dict[str, str]:
        """What the services need to send their spans here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.otlp_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_trace_ui(ui_port: int = 6006, timeout_s: float = 120.0) -> TraceUi:
    if importlib.util.find_spec("phoenix") is None:
        raise TraceUiUnavailable("the trace UI needs Arize Phoenix: pip install '.[trace-ui]'")
    otlp_port = free_port()
    env = {
        **os.environ,
        "PHOENIX_PORT": str(ui_port),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_GRPC_PORT": str(otlp_port),
        "PHOENIX_WORKING_DIR": tempfile.mkdtemp(prefix="prfaas-phoenix-"),
    }
    cmd = [sys.executable, "-m", "phoenix.server.main", "serve"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ui = TraceUi(proc, ui_port, otlp_port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Phoenix exited with {proc.returncode} during start-up")
        try:
            urllib.request.urlopen(ui.url, timeout=1).close()
            return ui
        except OSError:
            time.sleep(0.5)
    ui.stop()
    raise TimeoutError(f"Phoenix did not answer on {ui.url} within {timeout_s:.0f}s")
