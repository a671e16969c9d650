"""`prfaas up --emulate-link`: the two clusters in their own namespaces, KV across the shaped link, and
nothing left behind after a clean stop or after the launcher is killed outright (needs root; skips without)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prfaas.netem.link import list_namespaces
from prfaas.netem.shaper import run_command

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
LONG = "a much longer prompt that certainly exceeds the threshold of 32 tokens, and then some more text"


@pytest.fixture
def up(linkable: None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    argv = [
        sys.executable,
        "-m",
        "prfaas.cli.main",
        "up",
        "--threshold",
        "32",
        "--emulate-link",
        "rate=200mbit,delay=2ms",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"router listening on (127\.0\.0\.1:\d+)\n", line)
        assert match, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def _generate(router: str, prompt: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "prfaas.cli.main", "generate", "--router", router, "--prompt", prompt]
    argv += ["--max-new-tokens", "4", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT, env=ENV, timeout=60).stdout
    return dict(json.loads(out))


def _offline(prompt: str) -> list[int]:
    argv = [sys.executable, "-m", "prfaas.cli.main", "generate", "--prompt", prompt, "--max-new-tokens", "4", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT, env=ENV, timeout=120).stdout
    return list(json.loads(out)["token_ids"])


def _tx_bytes(ns: str) -> int:
    stats = json.loads(run_command(["ip", "-n", ns, "-s", "-j", "link", "show"]))
    return sum(int(dev["stats64"]["tx"]["bytes"]) for dev in stats if dev["ifname"] != "lo")


def _link_namespaces(pid: int) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"prfaas-{pid}-")]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _wait_gone(pids: list[int], namespaces: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        if not alive and not set(namespaces) & set(list_namespaces()):
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: processes {alive}, namespaces {set(namespaces) & set(list_namespaces())}")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def test_up_with_an_emulated_link_serves_across_it_and_stops_cleanly(up: tuple[subprocess.Popen[str], str]) -> None:
    proc, router = up
    dc1, dc2 = sorted(_link_namespaces(proc.pid))
    before = _tx_bytes(dc1)
    local, remote = _generate(router, "short one"), _generate(router, LONG)
    assert (local["route"], remote["route"]) == ("local", "prfaas")
    assert remote["token_ids"] == _offline(LONG)
    assert int(remote["kv_bytes"]) > 0 and _tx_bytes(dc1) - before >= int(remote["kv_bytes"])  # it crossed the link
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    _wait_gone(children, [dc1, dc2], 10)


def test_a_killed_launcher_leaves_no_services_or_namespaces(up: tuple[subprocess.Popen[str], str]) -> None:
    proc, _ = up
    namespaces, children = _link_namespaces(proc.pid), _children(proc.pid)
    assert len(namespaces) == 2 and len(children) >= 6
    proc.kill()
    proc.wait(10)
    _wait_gone(children, namespaces, 20)  # services get SIGTERM from the kernel, the reaper deletes the link
