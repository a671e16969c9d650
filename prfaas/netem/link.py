"""Two datacenters on one machine: two network namespaces joined by one shaped link.

`EmulatedLink` creates `prfaas-<pid>-dc1` and `prfaas-<pid>-dc2` (the pid is the owner's, so a crashed
owner's namespaces are recognisable), joins them point to point with 10.213.0.1/30 in dc1 and 10.213.0.2/30
in dc2 (addresses that exist only inside these namespaces, so every link may reuse them) and shapes both
directions. A service listening on 10.213.0.2:PORT in dc2 is reached from dc1 across the link.

The link's namespaces and spec are recorded in `/tmp/prfaas-link-<pid>.json`, so `prfaas link set` (another
process) can find the link and change it while it runs.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from prfaas.netem import LinkSpec, parse_link_spec, shaper
from prfaas.netem.shaper import DELAYLINE, NETEM, LinkError, LinkUnavailable, run_command

__all__ = ["EmulatedLink", "LinkError", "LinkState", "LinkUnavailable", "apply_spec", "cleanup_stale", "run_in"]

logger = logging.getLogger(__name__)

NS_PREFIX = "prfaas-"
ADDRESSES = ("10.213.0.1", "10.213.0.2")
PREFIX_LEN = 30
MTU_BYTES = 9000  # jumbo frames: <1% header overhead, and few enough packets for the delay line
DEFAULT_STATE_DIR = Path("/tmp")
# Hosts at the ends of a long fat link are tuned for it: TCP buffers (per namespace) well above its BDP.
TCP_BUFFERS = {"net.ipv4.tcp_rmem": "4096 131072 67108864", "net.ipv4.tcp_wmem": "4096 16384 67108864"}

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@dataclasses.dataclass(frozen=True, slots=True)
class LinkState:
    """A running link as other processes see it: the content of its state file."""

    pid: int
    backend: str  # NETEM (veth, netem + tbf) or DELAYLINE (tun, tbf + the owner's userspace delay line)
    namespaces: tuple[str, str]  # (dc1, dc2)
    devices: tuple[str, str]  # the link's end in each namespace
    addresses: tuple[str, str]
    spec: LinkSpec

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "spec": str(self.spec)})

    @classmethod
    def from_json(cls, text: str) -> LinkState:
        raw = json.loads(text)
        pairs = {key: tuple(raw[key]) for key in ("namespaces", "devices", "addresses")}
        return cls(pid=int(raw["pid"]), backend=raw["backend"], spec=parse_link_spec(raw["spec"]), **pairs)


def state_path(pid: int, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    return state_dir / f"prfaas-link-{pid}.json"


def read_state(pid: int, state_dir: Path = DEFAULT_STATE_DIR) -> LinkState:
    return LinkState.from_json(state_path(pid, state_dir).read_text())


def active_links(state_dir: Path = DEFAULT_STATE_DIR) -> list[LinkState]:
    """The links whose owning process is alive, by pid."""
    states = []
    for path in sorted(state_dir.glob("prfaas-link-*.json")):
        try:
            state = LinkState.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(state.pid):
            states.append(state)
    return sorted(states, key=lambda s: s.pid)


def apply_spec(state: LinkState, spec: LinkSpec, state_dir: Path = DEFAULT_STATE_DIR) -> LinkState:
    """Shape both directions of `state`'s link as `spec` says and record it; any root process may call this.

    On the DELAYLINE backend the delay and loss live in the owner's delay line, which rereads the state file.
    """
    shaper.shape(state.backend, state.namespaces, state.devices, spec)
    new = dataclasses.replace(state, spec=spec)
    tmp = state_path(state.pid, state_dir).with_suffix(".tmp")
    tmp.write_text(new.to_json())
    os.replace(tmp, state_path(state.pid, state_dir))
    return new


def run_in(ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start `argv` inside network namespace `ns` (`ip netns exec NS ...`); keyword arguments go to Popen."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)


def cleanup_stale(prefix: str = NS_PREFIX, state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Delete the namespaces and state files of links whose owning process is dead; return the namespaces."""
    removed = stale_namespaces(prefix)
    for name in removed:
        _delete_namespace(name)
    for path in state_dir.glob("prfaas-link-*.json"):
        pid = path.stem.removeprefix("prfaas-link-")
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
    return removed


def stale_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Namespaces `<prefix><pid>-dc1|dc2` whose pid is dead: left behind by a crash."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-dc[12]")
    matches = [(name, pattern.fullmatch(name)) for name in list_namespaces()]
    return [name for name, match in matches if match and not _alive(int(match.group(1)))]


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in run_command(["ip", "netns", "list"]).splitlines() if line.strip()]


class EmulatedLink:
    """Two namespaces joined by one shaped link; torn down on exit, on SIGTERM/SIGINT and at interpreter exit.

    One link per process (the namespaces are named by pid). `backend` None picks NETEM where the kernel has
    sch_netem, else DELAYLINE.
    """

    def __init__(
        self,
        spec: LinkSpec,
        *,
        backend: str | None = None,
        prefix: str = NS_PREFIX,
        state_dir: Path = DEFAULT_STATE_DIR,
    ) -> None:
        if backend not in (None, NETEM, DELAYLINE):
            raise ValueError(f"backend must be {NETEM!r}, {DELAYLINE!r} or None (pick one), got {backend!r}")
        pid = os.getpid()
        namespaces = (f"{prefix}{pid}-dc1", f"{prefix}{pid}-dc2")
        self._state = LinkState(pid, backend or "", namespaces, (f"pf{pid}-dc1", f"pf{pid}-dc2"), ADDRESSES, spec)
        self._prefix, self._state_dir = prefix, state_dir
        self.dc1, self.dc2 = namespaces  # a service in dc2 listens on dc2_addr, reached from dc1 across the link
        self.dc1_addr, self.dc2_addr = ADDRESSES
        self._delay_line: shaper.DelayLine | None = None
        self._state_mtime_ns = 0
        self._started = self._torn_down = False
        self._previous: dict[int, _Handler] = {}
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> LinkState:
        """The current state, including changes made by `prfaas link set` from another process."""
        try:
            return read_state(self._state.pid, self._state_dir)
        except (OSError, ValueError, KeyError):
            return self._state

    def __enter__(self) -> EmulatedLink:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def start(self) -> None:
        if self._started:
            raise LinkError("this EmulatedLink was already started; create a new one")
        self._started = True
        cleanup_stale(self._prefix, self._state_dir)
        taken = set(self._state.namespaces) & set(list_namespaces())
        if taken:
            raise LinkError(f"{sorted(taken)} exist: this process already runs a link (one per process)")
        self._install_cleanup()
        self._reaper = _start_reaper(self._state.pid, self._prefix, self._state_dir)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def set(self, spec: LinkSpec) -> None:
        """Change rate, delay and loss while the link runs (`tc qdisc replace` changes qdiscs in place)."""
        self._state = apply_spec(self.state, spec, self._state_dir)
        if self._delay_line is not None:
            self._delay_line.set(spec)

    def teardown(self) -> None:
        """Delete both namespaces, which removes the link and its qdiscs. Idempotent."""
        if not self._started or self._torn_down:
            return
        self._torn_down = True
        if self._delay_line is not None:
            self._delay_line.close()
        for ns in self._state.namespaces:
            _delete_namespace(ns)
        state_path(self._state.pid, self._state_dir).unlink(missing_ok=True)
        self._uninstall_cleanup()
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait()

    def _build(self) -> None:
        for ns in self._state.namespaces:
            _add_namespace(ns)
        backend = self._state.backend or (NETEM if shaper.netem_available(self.dc1) else DELAYLINE)
        self._state = dataclasses.replace(self._state, backend=backend)
        self._join(backend)
        for ns, dev, address in zip(self._state.namespaces, self._state.devices, self._state.addresses, strict=True):
            run_command(["ip", "-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", dev])
            run_command(["ip", "-n", ns, "link", "set", dev, "mtu", str(MTU_BYTES), "up"])
        self._state = apply_spec(self._state, self._state.spec, self._state_dir)
        if self._delay_line is not None:
            self._delay_line.start()
        logger.info("emulated link %s <-> %s (%s): %s", self.dc1, self.dc2, backend, self._state.spec)

    def _join(self, backend: str) -> None:
        (ns1, ns2), (dev1, dev2) = self._state.namespaces, self._state.devices
        if backend == NETEM:
            run_command(["ip", "link", "add", dev1, "netns", ns1, "type", "veth", "peer", "name", dev2, "netns", ns2])
        else:
            fds = shaper.open_tun_pair(self._state.namespaces, self._state.devices)
            self._delay_line = shaper.DelayLine(fds, self._state.spec, self._reload)

    def _reload(self) -> LinkSpec | None:
        """For the delay line: the spec in the state file when another process (`prfaas link set`) changed it."""
        mtime_ns = state_path(self._state.pid, self._state_dir).stat().st_mtime_ns
        if mtime_ns == self._state_mtime_ns:
            return None
        self._state_mtime_ns = mtime_ns
        return self.state.spec

    def _install_cleanup(self) -> None:
        atexit.register(self.teardown)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self._previous[signum] = previous
                signal.signal(signum, self._on_signal)

    def _uninstall_cleanup(self) -> None:
        atexit.unregister(self.teardown)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """A handler installed before the link keeps its meaning (e.g. `prfaas up` stops its services, then exits
        through `__exit__` or atexit, which tear the link down after them); otherwise tear down, then die of it."""
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
            return
        self.teardown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _start_reaper(pid: int, prefix: str, state_dir: Path) -> subprocess.Popen[bytes]:
    """A watcher that tears the link down if this process is killed outright (`prfaas.netem.reaper`)."""
    argv = [sys.executable, "-m", "prfaas.netem.reaper", str(pid), prefix, str(state_dir)]
    return subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)


def _add_namespace(name: str) -> None:
    try:
        run_command(["ip", "netns", "add", name])
    except LinkError as exc:
        raise LinkUnavailable(
            f"cannot create network namespace {name} ({exc}); the emulated link needs root (CAP_NET_ADMIN) "
            "and `ip netns` support"
        ) from exc
    run_command(["ip", "-n", name, "link", "set", "lo", "up"])
    for key, value in TCP_BUFFERS.items():
        run_command(["ip", "netns", "exec", name, "sysctl", "-q", "-w", f"{key}={value}"])


def _delete_namespace(name: str) -> None:
    try:
        run_command(["ip", "netns", "delete", name])
    except LinkError as exc:
        if name in list_namespaces():
            logger.warning("cannot delete network namespace %s: %s", name, exc)


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
