"""The emulated link: real namespaces, qdiscs and TCP/UDP traffic across it (needs root; skips without it)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prfaas.netem import LinkSpec, parse_link_spec
from prfaas.netem.link import EmulatedLink, list_namespaces, run_in, state_path
from prfaas.netem.shaper import DELAYLINE, NETEM

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PORT = 5201  # inside our own namespaces, so it cannot collide with anything
WARMUP_BYTES = 1 << 20  # steady-state goodput is measured after the first MiB (slow start)

CONNECT = """
import socket, sys, time
def connect(host, port):
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
"""
SINK = """
import json, socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(10)
conn, _ = server.accept()
conn.settimeout(30)
received, first, warm = 0, None, None
while chunk := conn.recv(1 << 20):
    now = time.monotonic()
    first = first or (now, len(chunk))
    received += len(chunk)
    if warm is None and received >= int(sys.argv[3]):
        warm = (now, received)
last = time.monotonic()
print(json.dumps({"bytes": received, "bps": (received - first[1]) * 8 / (last - first[0]),
                  "steady_bps": (received - warm[1]) * 8 / (last - warm[0])}))
"""
SOURCE = CONNECT + "connect(sys.argv[1], int(sys.argv[2])).sendall(bytes(int(sys.argv[3])))\n"
ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(10)
conn, _ = server.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while byte := conn.recv(1):
    conn.sendall(byte)
"""
PING = f"""{CONNECT}
sock = connect(sys.argv[1], int(sys.argv[2]))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(10):
    start = time.monotonic()
    sock.sendall(b"p")
    sock.recv(1)
    rtts.append((time.monotonic() - start) * 1000)
print(min(rtts))
"""
UDP_SINK = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sock.settimeout(5)
count = 0
try:
    while sock.recv(2048):
        count += 1
        sock.settimeout(1)  # done after 1 s of silence
except TimeoutError:
    print(count)
"""
UDP_SOURCE = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(bytes(100), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.0002)
"""
UNPRIVILEGED = """
import os
from prfaas.netem import LinkSpec
from prfaas.netem.link import EmulatedLink, LinkUnavailable
try:
    EmulatedLink(LinkSpec("1gbit")).start()
except LinkUnavailable as exc:
    print(os.getpid(), exc)
"""
CHILD = """
import time
from prfaas.netem import LinkSpec
from prfaas.netem.link import EmulatedLink
link = EmulatedLink(LinkSpec("10mbit", "1ms")).__enter__()
print(link.dc1, link.dc2, flush=True)
time.sleep(60)
"""


@pytest.fixture
def link(linkable: None) -> Iterator[EmulatedLink]:
    with EmulatedLink(parse_link_spec("rate=100mbit,delay=5ms")) as emulated:
        yield emulated


def test_parse_link_spec_reads_units_and_says_what_is_wrong() -> None:
    spec = parse_link_spec("rate=1Gbit, delay=5ms,loss=0.1%")
    assert (spec.rate_bps, spec.delay_s, spec.loss_fraction) == (1e9, 0.005, 0.001)
    assert str(spec) == "rate=1gbit,delay=5ms,loss=0.1%"
    assert parse_link_spec("rate=200mbit", base=spec) == LinkSpec("200mbit", "5ms", "0.1%")
    assert parse_link_spec("rate=10mbps").rate_bps == 80e6  # tc's bps are bytes per second
    for text, message in [
        ("rat=1gbit", "unknown key 'rat'"),
        ("rate=1gigabit", "expected a number with a unit"),
        ("rate=1gbit,delay=-5ms", "is negative"),
        ("rate=0mbit", "must be positive"),
        ("delay=5ms", "has no rate"),
        ("rate=1gbit,loss=150%", "loss at most 100%"),
        ("rate", "expected KEY=VALUE"),
        ("rate=1gbit,rate=2gbit", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_link_spec(text)


def test_link_builds_namespaces_device_and_qdiscs_and_teardown_removes_everything(link: EmulatedLink) -> None:
    state = link.state  # read back from its state file
    assert state.namespaces == (link.dc1, link.dc2) == (f"prfaas-{os.getpid()}-dc1", f"prfaas-{os.getpid()}-dc2")
    assert {link.dc1, link.dc2} <= set(list_namespaces()) and state_path(os.getpid()).exists()
    for ns, dev, address in zip(state.namespaces, state.devices, state.addresses, strict=True):
        details = _output(["ip", "-n", ns, "-d", "addr", "show", "dev", dev])
        assert f"inet {address}/30" in details and ("veth" if state.backend == NETEM else "tun") in details
        assert "<LOOPBACK,UP," in _output(["ip", "-n", ns, "link", "show", "lo"])
        qdiscs = _output(["tc", "-n", ns, "qdisc", "show", "dev", dev])
        assert "qdisc tbf 10:" in qdiscs and "rate 100Mbit" in qdiscs
        assert ("qdisc netem 1:" in qdiscs and "delay 5ms" in qdiscs) == (state.backend == NETEM)
    link.teardown()
    link.teardown()  # idempotent
    assert not [name for name in list_namespaces() if name.startswith(f"prfaas-{os.getpid()}-")]
    assert f"pf{os.getpid()}-" not in _output(["ip", "link", "show"])
    assert not state_path(os.getpid()).exists()


def test_without_cap_net_admin_the_link_is_unavailable_and_says_why(linkable: None) -> None:
    """Root without CAP_NET_ADMIN/CAP_SYS_ADMIN (setpriv drops them): a clear LinkUnavailable, nothing created."""
    caps = "-net_admin,-sys_admin"
    argv = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-c", UNPRIVILEGED]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV, check=True)
    pid, message = done.stdout.split(" ", 1)
    assert "the emulated link needs root (CAP_NET_ADMIN)" in message, done.stdout + done.stderr
    assert not [name for name in list_namespaces() if name.startswith(f"prfaas-{pid}-")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_owner_signal_or_crash_leaves_nothing_behind(linkable: None, signum: signal.Signals) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        namespaces = _readline(child, timeout_s=15).split()
        assert len(namespaces) == 2 and set(namespaces) <= set(list_namespaces())
        child.send_signal(signum)
        child.wait(timeout=10)
    finally:
        child.kill()
        child.wait(timeout=10)
    if signum == signal.SIGKILL:  # nothing ran in the child: its reaper process cleans up
        deadline = time.monotonic() + 10
        while set(namespaces) & set(list_namespaces()) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not set(namespaces) & set(list_namespaces())
    assert not state_path(child.pid).exists()


def test_bulk_transfer_gets_the_configured_rate_and_the_rtt_is_twice_the_delay(link: EmulatedLink) -> None:
    assert 10.0 <= _rtt_ms(link) <= 12.5
    result = _transfer(link, 12_000_000)
    assert 0.9 * 100e6 <= result["steady_bps"] <= 1.1 * 100e6, result
    assert 0.9 * 100e6 <= result["bps"] <= 1.1 * 100e6, result


def test_forced_delay_line_backend_shapes_the_same(linkable: None) -> None:
    """The userspace delay line (auto-picked only without sch_netem) is exercised on every kernel."""
    with EmulatedLink(parse_link_spec("rate=100mbit,delay=5ms"), backend=DELAYLINE) as link:
        assert link.state.backend == DELAYLINE
        assert 10.0 <= _rtt_ms(link) <= 12.5
        result = _transfer(link, 12_000_000)
    assert 0.9 * 100e6 <= result["steady_bps"] <= 1.1 * 100e6, result


def test_set_changes_rate_and_delay_while_running(link: EmulatedLink) -> None:
    link.set(parse_link_spec("rate=50mbit,delay=20ms"))
    assert link.state.spec == LinkSpec("50mbit", "20ms")
    assert 40.0 <= _rtt_ms(link) <= 42.5
    result = _transfer(link, 9_000_000)
    assert 0.9 * 50e6 <= result["steady_bps"] <= 1.1 * 50e6, result


def test_loss_drops_that_share_of_packets(link: EmulatedLink) -> None:
    link.set(parse_link_spec("loss=20%", base=link.state.spec))
    sink = run_in(
        link.dc2, [sys.executable, "-c", UDP_SINK, link.dc2_addr, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert _readline(sink, timeout_s=10).strip() == "ready"
        run_in(link.dc1, [sys.executable, "-c", UDP_SOURCE, link.dc2_addr, str(PORT), "1000"]).wait(timeout=20)
        received = int(sink.communicate(timeout=20)[0])
    finally:
        sink.kill()
    assert 720 <= received <= 880  # 1000 x (1 - 20%), +- 6 standard deviations


def test_cli_changes_the_running_link_from_another_process(link: EmulatedLink) -> None:
    done = _cli("set", "delay=20ms", "--pid", str(os.getpid()))
    assert done.returncode == 0, done.stderr
    assert link.state.spec == LinkSpec("100mbit", "20ms")
    time.sleep(0.3)  # the delay line rereads the state file every 0.1 s
    assert 40.0 <= _rtt_ms(link) <= 42.5
    shown = _cli("show")
    assert f"pid {os.getpid()} " in shown.stdout and "rate=100mbit,delay=20ms" in shown.stdout
    other = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        _readline(other, timeout_s=15)  # a second link, owned by another process
        done = _cli("set", "rate=1gbit")
        assert done.returncode == 2 and "several links are running" in done.stderr, done.stderr
        assert f" {os.getpid()}" in done.stderr and f" {other.pid}" in done.stderr and "--pid" in done.stderr
        for args, message in [
            (("set", "rat=1gbit", "--pid", str(os.getpid())), "unknown key 'rat'"),
            (("set", "rate=1gbit", "--pid", "1"), "no running link is owned by pid 1"),
        ]:
            done = _cli(*args)
            assert done.returncode == 2 and message in done.stderr, done.stderr
    finally:
        other.terminate()
        other.wait(timeout=10)


def _transfer(link: EmulatedLink, num_bytes: int) -> dict[str, float]:
    """Send `num_bytes` from dc1 to a sink in dc2; the sink's goodput (whole transfer and after slow start)."""
    sink_argv = [sys.executable, "-c", SINK, link.dc2_addr, str(PORT), str(WARMUP_BYTES)]
    sink = run_in(link.dc2, sink_argv, stdout=subprocess.PIPE, text=True)
    try:
        source_argv = [sys.executable, "-c", SOURCE, link.dc2_addr, str(PORT), str(num_bytes)]
        assert run_in(link.dc1, source_argv).wait(timeout=30) == 0
        result: dict[str, float] = json.loads(sink.communicate(timeout=30)[0])
    finally:
        sink.kill()
    assert result["bytes"] == num_bytes
    return result


def _rtt_ms(link: EmulatedLink) -> float:
    """The smallest of 10 TCP round trips of one byte from dc1 to an echo server in dc2."""
    echo = run_in(link.dc2, [sys.executable, "-c", ECHO, link.dc2_addr, str(PORT)])
    try:
        ping = run_in(link.dc1, [sys.executable, "-c", PING, link.dc2_addr, str(PORT)], stdout=subprocess.PIPE)
        return float(ping.communicate(timeout=20)[0])
    finally:
        echo.kill()
        echo.wait(timeout=10)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "prfaas.cli.link", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV, check=False)


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no output within {timeout_s} s"
    return proc.stdout.readline()
