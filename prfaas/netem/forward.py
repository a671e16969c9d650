"""Reaching services inside the emulated datacenters from this machine's own network namespace.

The link's namespaces have no route to the host (their addresses exist only inside them, so nothing on the
machine can collide with them). `PortForward` listens on 127.0.0.1 in the caller's namespace and relays each
connection to an address inside one of the link's namespaces: clients, health checks and `prfaas top` use the
forwarded port, services talk to each other directly inside the namespaces (across the link where they sit in
different datacenters).

A socket belongs to the network namespace of the thread that created it, and `setns(2)` changes only the
calling thread's namespace: `socket_in(ns)` creates the socket in a short-lived thread that first enters
`ns`, so the rest of the process never leaves its own namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

from prfaas.netem.shaper import LinkError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
RELAY_BYTES = 1 << 16


def socket_in(ns: str) -> socket.socket:
    """A new TCP socket in network namespace `ns` (it stays there whichever thread uses it)."""
    result: list[socket.socket | BaseException] = []
    thread = threading.Thread(target=_create_in, args=(ns, result), name=f"setns-{ns}")
    thread.start()
    thread.join()
    made = result[0]
    if isinstance(made, BaseException):
        raise made
    return made


def _create_in(ns: str, result: list[socket.socket | BaseException]) -> None:
    try:
        fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    except OSError as exc:
        result.append(LinkError(f"network namespace {ns} not found ({exc}); is the emulated link running?"))
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            result.append(LinkError(f"setns into {ns}: {os.strerror(err)} (needs root)"))
            return
        result.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    finally:
        os.close(fd)  # the thread ends here, and its namespace with it


class PortForward:
    """127.0.0.1:`port` (any free port by default) -> `target_host:target_port` inside namespace `ns`.

    One listener thread; two relay threads per connection (gRPC keeps few, long-lived connections)."""

    def __init__(self, ns: str, target_host: str, target_port: int, port: int = 0) -> None:
        self.ns, self.target = ns, (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket_in(self.ns)
            upstream.connect(self.target)
        except (OSError, LinkError):
            _close(client)
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed.is_set():
                _close(client)
                _close(upstream)
                return
            self._conns |= {client, upstream}
        threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()
        self._relay(client, upstream)

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy until either side closes, then close both (the other relay then ends too)."""
        try:
            while data := src.recv(RELAY_BYTES):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
