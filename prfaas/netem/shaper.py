"""How the link shapes packets: the tc qdisc tree on each end and, where the kernel has no sch_netem, a
userspace delay line between two TUN devices.

Some kernels (e.g. minimal VM kernels) ship `tbf` but not `sch_netem`. There the link is two TUN devices,
one per namespace, and the delay line is the wire between them: it reads each packet that leaves one device,
drops it with probability `loss`, and writes it into the other device `delay_s` later, in order. The rate is
still the kernel's `tbf` on each TUN device, so a packet is first serialized at the link rate, then
propagated: the same model as netem root + tbf child. One thread serves both directions: `select` waits for
a packet or the next due time (microsecond timeouts), so the delay is within ~0.3 ms of the requested one;
the Python loop forwards about 2 Gbit/s of 9000-byte frames, faster links need netem.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import random
import select
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from prfaas.netem import LinkSpec

logger = logging.getLogger(__name__)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_MAX_FRAME_BYTES = 65536
_READS_PER_WAKEUP = 64  # per device, so one busy direction cannot starve the other
_RELOAD_EVERY_S = 0.1
_TIMEOUT_S = 10.0

NETEM, DELAYLINE = "netem", "delayline"

Reload = Callable[[], LinkSpec | None]


class LinkError(RuntimeError):
    """An `ip` or `tc` command failed while building or changing the link."""


class LinkUnavailable(LinkError):
    """This machine cannot emulate the link: it needs root (CAP_NET_ADMIN), `ip netns` and a shaper."""


def run_command(argv: list[str]) -> str:
    """Run an `ip`/`tc` command; its stdout, or LinkError with its stderr."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise LinkUnavailable(
            f"{argv[0]} not found: the emulated link needs root and iproute2 (ip, tc) and sysctl"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise LinkError(f"`{' '.join(argv)}` did not finish within {_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        raise LinkError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def shape(backend: str, namespaces: tuple[str, str], devices: tuple[str, str], spec: LinkSpec) -> None:
    """Apply `spec` to both ends (`replace` creates the qdiscs or changes them in place)."""
    for ns, dev in zip(namespaces, devices, strict=True):
        for argv in qdisc_tree(backend, spec, dev):
            run_command(["tc", "-n", ns, *argv])


def netem_available(ns: str) -> bool:
    """Probe on the namespace's loopback; kernels without sch_netem answer 'qdisc kind is unknown'."""
    try:
        run_command(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"])
    except LinkError:
        return False
    run_command(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"])
    return True


def qdisc_tree(backend: str, spec: LinkSpec, dev: str) -> list[list[str]]:
    """`tc` commands (without `tc -n NS`) for the egress of one link end, i.e. for one direction.

    NETEM backend (veth pair), the Linux netem docs' "rate control" recipe, as in deploy/link-shaper:
        root 1: netem delay D loss L limit N       propagation delay and random loss
              └─ 10: tbf rate R burst B latency Q  the link's capacity and its bottleneck queue
    DELAYLINE backend (one TUN device per namespace, for kernels without sch_netem):
        root 10: tbf rate R burst B latency Q  ->  userspace delay line (delay D, loss L)  ->  peer
    Both serialize at R, then propagate for D, so RTT = 2D plus queueing. Sizing, so that one bulk TCP flow
    past slow start gets >= 90% of R (tests/integration/test_netem.py; 99% measured from 50 Mbit/s to
    1 Gbit/s at RTTs of 10-40 ms; the namespaces' TCP buffers are raised to 64 MiB for long fat links):
      - tbf burst B = max(64 KiB, 4 ms at R): at least one GSO super-packet, and bursts at the kernel's
        timer granularity pass without starving the bucket; over a second it adds < 1% above R.
      - tbf queue Q = max(50 ms, RTT) of traffic: at least one bandwidth-delay product, so one TCP flow
        keeps the link busy through a congestion back-off (buffer = R x RTT rule), and never less than a
        shallow WAN router's 50 ms. tbf is the only place where the link drops for lack of room.
      - netem (or delay line) limit N = max(1000, 2 x R x D / 1500 B) packets: everything in flight during
        one delay at up to twice the rate (slow start), so the delay stage itself never drops.
    The rate is always tbf's, so both backends shape identically; `replace` creates or changes in place.
    """
    rate_bytes_per_s = spec.rate_bps / 8
    burst_bytes = max(64 * 1024, int(rate_bytes_per_s * 0.004))
    queue_ms = max(50.0, 2 * spec.delay_s * 1000)
    tbf = ["tbf", "rate", f"{spec.rate_bps:.0f}bit", "burst", str(burst_bytes), "latency", f"{queue_ms:g}ms"]
    if backend == DELAYLINE:
        return [["qdisc", "replace", "dev", dev, "root", "handle", "10:", *tbf]]
    delay, loss = f"{spec.delay_s * 1e6:.0f}us", f"{spec.loss_fraction * 100:g}%"
    netem = ["netem", "delay", delay, "loss", loss, "limit", str(delay_limit_pkts(spec))]
    return [
        ["qdisc", "replace", "dev", dev, "root", "handle", "1:", *netem],
        ["qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *tbf],
    ]


def delay_limit_pkts(spec: LinkSpec) -> int:
    return max(1000, int(2 * spec.rate_bps / 8 * spec.delay_s / 1500))


def open_tun_pair(namespaces: tuple[str, str], devices: tuple[str, str]) -> tuple[int, int]:
    """One TUN device per namespace (created here, then moved there); their fds, which keep them alive."""
    fds: list[int] = []
    try:
        for ns, dev in zip(namespaces, devices, strict=True):
            fds.append(open_tun(dev))
            run_command(["ip", "link", "set", dev, "netns", ns])
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, OSError):
            raise LinkUnavailable(f"this kernel has no sch_netem, and TUN devices fail too ({exc})") from exc
        raise
    return fds[0], fds[1]


def open_tun(name: str) -> int:
    """Create a TUN device `name` (layer 3, no packet info) in this process's namespace; return its fd.

    The device lives as long as the fd: closing it (or this process dying) removes the device.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """Forwards packets between two TUN fds with a fixed one-way delay and random loss, both changeable."""

    def __init__(self, fds: tuple[int, int], spec: LinkSpec, reload: Reload) -> None:
        """`reload` is called every 0.1 s and returns a new spec when another process changed the link."""
        self._fds, self._reload = fds, reload
        self.set(spec)
        self._queues: dict[int, collections.deque[tuple[float, bytes]]] = {fd: collections.deque() for fd in fds}
        self._peer = {fds[0]: fds[1], fds[1]: fds[0]}
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="prfaas-delay-line", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set(self, spec: LinkSpec) -> None:
        self._delay_s, self._loss, self._limit_pkts = spec.delay_s, spec.loss_fraction, delay_limit_pkts(spec)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop forwarding and close both TUN fds (which removes the devices). Idempotent."""
        if self._stop:
            return
        self._stop = True
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(timeout_s)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            os.close(fd)

    def _run(self) -> None:
        next_reload = time.monotonic() + _RELOAD_EVERY_S
        while not self._stop:
            now = time.monotonic()
            if now >= next_reload:
                self._apply_reload()
                next_reload = now + _RELOAD_EVERY_S
            readable, _, _ = select.select([*self._fds, self._wake_r], [], [], self._timeout_s(now, next_reload))
            for fd in readable:
                if fd != self._wake_r:
                    self._receive(fd)
            self._deliver_due()

    def _apply_reload(self) -> None:
        try:
            spec = self._reload()
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("delay line: cannot reload the link spec: %s", exc)
            return
        if spec is not None:
            self.set(spec)

    def _timeout_s(self, now: float, next_reload: float) -> float:
        due = [queue[0][0] for queue in self._queues.values() if queue]
        return max(0.0, min([next_reload, *due]) - now)

    def _receive(self, fd: int) -> None:
        queue = self._queues[fd]
        for _ in range(_READS_PER_WAKEUP):
            try:
                packet = os.read(fd, _MAX_FRAME_BYTES)
            except OSError:  # BlockingIOError: nothing more to read
                return
            if random.random() < self._loss or len(queue) >= self._limit_pkts:
                continue
            due = time.monotonic() + self._delay_s
            queue.append((max(due, queue[-1][0]) if queue else due, packet))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        for fd, queue in self._queues.items():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                with contextlib.suppress(OSError):  # the receiver is gone or its backlog full: packet lost
                    os.write(self._peer[fd], packet)
