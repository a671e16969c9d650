"""Launching a whole PrfaaS-PD topology on this machine as separate processes.

Each service is started as `python -m services.<name> --port 0 ...` with the flags that reproduce its
settings dataclass (built by the `Topology`); its "listening on port N" line tells where it is. The stack
is up once every service answers `grpc.health.v1` with SERVING. On exit every process gets SIGTERM
(graceful drain), then SIGKILL after a grace period; a child whose launcher dies gets SIGTERM from the
kernel (`PR_SET_PDEATHSIG`), so a crash leaves no services behind.

By default everything listens on loopback. With an emulated link (`LocalStack(..., link=LinkSpec)`) the
PrfaaS cluster (its prefill workers and cache pool) runs in namespace dc1 and the local PD cluster with the
router in dc2: every PrfaaS <-> PD byte crosses the shaped link. Services there are reached from this
namespace through `PortForward`s on 127.0.0.1 (`Service.address`); among themselves they use the link
addresses (`Service.internal`).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.netem import LinkSpec
from prfaas.netem.forward import PortForward
from prfaas.netem.link import EmulatedLink
from prfaas.sched.routing import PD, PRFAAS
from prfaas.service.settings import settings_flags
from prfaas.stack.topology import CLUSTERS, RouterBackends, Topology

_LISTENING = re.compile(r"listening on port (\d+)")
_METRICS = re.compile(r"metrics on port (\d+)")
_HTTP = re.compile(r"openai api on port (\d+)")
_PLACED = ("host", "port", "metrics_port")  # where a service listens: chosen by the launcher, not the topology


@dataclass(frozen=True, slots=True)
class Site:
    """Where a service runs: a network namespace (None: this one) and the address it listens on there."""

    ns: str | None = None
    host: str = "127.0.0.1"


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[str]
    site: Site = field(default_factory=Site)
    port: int = 0
    metrics_port: int | None = None
    forwards: list[PortForward] = field(default_factory=list)
    command: tuple[str, tuple[str, ...], str] = ("", (), "pd")  # module, arguments, cluster: to start it again
    http_port: int | None = None  # the router's OpenAI HTTP API
    http_forward: PortForward | None = None

    @property
    def internal(self) -> str:
        """Where other services reach it."""
        return f"{self.site.host}:{self.port}"

    @property
    def address(self) -> str:
        """Where this machine's namespace (clients, health checks) reaches it."""
        return self.forwards[0].address if self.forwards else self.internal

    @property
    def metrics_address(self) -> str | None:
        if self.metrics_port is None:
            return None
        return self.forwards[1].address if len(self.forwards) > 1 else f"{self.site.host}:{self.metrics_port}"

    @property
    def all_forwards(self) -> list[PortForward]:
        return [*self.forwards, *([self.http_forward] if self.http_forward else [])]

    @property
    def http_address(self) -> str | None:
        """Where this machine's namespace reaches the router's OpenAI HTTP API (None: not served)."""
        if self.http_port is None:
            return None
        return self.http_forward.address if self.http_forward else f"{self.site.host}:{self.http_port}"


@dataclass
class LocalStack:
    topology: Topology
    link: LinkSpec | None = None  # emulate the PrfaaS -> PD link: the two clusters in their own namespaces
    services: list[Service] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prfaas-stack-")))
    emulated: EmulatedLink | None = None

    @property
    def router(self) -> str:
        return next(s.address for s in self.services if s.name == "router")

    @property
    def openai_url(self) -> str | None:
        """The base URL of the router's OpenAI-compatible HTTP API (None when the topology turns it off)."""
        address = self.service("router").http_address
        return None if address is None else f"http://{address}/v1"

    def __enter__(self) -> LocalStack:
        try:
            if self.link is not None:
                self.emulated = EmulatedLink(self.link)
                self.emulated.start()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _site(self, cluster: str) -> Site:
        """The PrfaaS cluster sits in dc1, the PD cluster (and the router) in dc2."""
        if self.emulated is None:
            return Site()
        if cluster == "prfaas":
            return Site(self.emulated.dc1, self.emulated.dc1_addr)
        return Site(self.emulated.dc2, self.emulated.dc2_addr)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def restart(self, name: str, timeout_s: float = 60.0) -> Service:
        """Start a service again (killing it first if it still runs) with the same command on the same port,
        as a supervisor would; returns once it reports SERVING."""
        old = self.service(name)
        if old.proc.poll() is None:
            old.proc.kill()
        old.proc.wait()
        for forward in old.all_forwards:
            forward.close()
        self.services.remove(old)
        module, args, cluster = old.command
        outer = int(old.address.rsplit(":", 1)[1])
        try:
            new = self._spawn(name, module, args, cluster=cluster, port=outer, inner_port=old.port)
        except RuntimeError:  # died while starting: a supervisor tries once more
            self.services.remove(self.service(name))
            new = self._spawn(name, module, args, cluster=cluster, port=outer, inner_port=old.port)
        wait_healthy(new.address, timeout_s)
        return new

    def _start(self, name: str, module: str, settings: object, cluster: str = "pd", port: int = 0) -> Service:
        """Start `python -m services.<module>` with the flags that reproduce `settings` (where it listens
        aside: that depends on the cluster's site)."""
        return self._spawn(name, module, tuple(settings_flags(settings, skip=_PLACED)), cluster=cluster, port=port)

    def _spawn(
        self, name: str, module: str, args: tuple[str, ...], cluster: str = "pd", port: int = 0, inner_port: int = 0
    ) -> Service:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OTEL_SERVICE_NAME": f"prfaas-{name}"}
        site = self._site(cluster)
        setpriv = shutil.which("setpriv")
        with open(self.log_dir / f"{name}.log", "a") as log:
            proc = subprocess.Popen(
                _command(site, module, args, inner_port if site.ns else port, setpriv),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=_repo_root(),
                preexec_fn=None if setpriv else _die_with_us,
            )
        service = Service(name, proc, site, command=(module, args, cluster))
        self.services.append(service)
        service.port, service.metrics_port, service.http_port = _read_ports(service)
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        if site.ns is not None:
            service.forwards.append(PortForward(site.ns, site.host, service.port, port))
            if service.metrics_port is not None:
                metrics = PortForward(site.ns, "127.0.0.1", service.metrics_port)  # /metrics listens on loopback
                service.forwards.append(metrics)
            if service.http_port is not None:
                service.http_forward = PortForward(site.ns, site.host, service.http_port)
        return service

    def _launch(self) -> None:
        t = self.topology
        pools = {c: self._start(f"cachepool-{c}", "cachepool", t.cachepool_settings(), cluster=c) for c in CLUSTERS}
        backends = self._start_workers({c: pool.internal for c, pool in pools.items()})
        link_gbps = t.link_gbps if self.link is None else self.link.rate_bps / 1e9
        self._start("router", "router", t.router_settings(link_gbps, backends), port=t.router_port)
        for s in self.services:
            wait_healthy(s.address, 180.0)  # 15 processes importing torch on 2 busy cores take a while

    def _start_workers(self, pools: dict[str, str]) -> RouterBackends:
        """Decode, prefill (per cluster) and dual-role PD workers, in that order; where the router finds them."""
        t = self.topology
        decode = t.decode_settings()
        decoders = [self._start(f"decode-{i}", "decode", decode) for i in range(t.decode)]
        prefill: dict[str, list[Service]] = {}
        for cluster, count in ((PRFAAS, t.prfaas_prefill), (PD, t.pd_prefill)):
            settings = t.prefill_settings(cluster, pools[cluster])
            prefill[cluster] = [
                self._start(f"prefill-{cluster}-{i}", "prefill", settings, cluster=cluster) for i in range(count)
            ]
        dual = [self._start(f"pd-{i}", "pd", t.pd_settings(pools[PD])) for i in range(t.pd_workers)]
        return RouterBackends(
            _join(decoders), _join(prefill[PRFAAS]), _join(prefill[PD]), _join(dual), pools[PRFAAS], pools[PD]
        )

    def top_command(self) -> str:
        """A `prfaas top` invocation watching this stack."""
        targets = ",".join(f"{s.name}={s.metrics_address}" for s in self.services if s.metrics_address)
        return f"prfaas top --targets {targets} --grpc " + ",".join(f"{s.name}={s.address}" for s in self.services)

    def stop(self, grace_s: float = 10.0) -> None:
        for s in reversed(self.services):
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for s in self.services:
            try:
                s.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
            for forward in s.all_forwards:
                forward.close()
        self.services.clear()
        if self.emulated is not None:
            self.emulated.teardown()


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading a child's stdout so it can never block on a full pipe."""
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def _command(site: Site, module: str, args: tuple[str, ...], port: int, setpriv: str | None) -> list[str]:
    cmd = [sys.executable, "-m", f"services.{module}", "--host", site.host, "--port", str(port)]
    cmd += ["--metrics-port", "0", *args]
    if site.ns is not None:
        cmd = ["ip", "netns", "exec", site.ns, *cmd]
    # setpriv sets the parent-death signal after the fork; a Python preexec_fn in a child forked from a
    # parent with gRPC threads running (a restart under load) can crash before exec.
    return cmd if setpriv is None else [setpriv, "--pdeathsig", "TERM", *cmd]


def _join(services: list[Service]) -> str:
    return ",".join(s.internal for s in services)


PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None).prctl  # looked up here: no dlopen in a child forked from a threaded parent


def _die_with_us() -> None:
    """In the child before exec: the kernel sends SIGTERM if the launching thread dies (even by SIGKILL)."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _read_ports(service: Service, timeout_s: float = 120.0) -> tuple[int, int | None, int | None]:
    """The gRPC port from the "listening on port N" line (and the metrics and HTTP ports printed before it)."""
    assert service.proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    metrics_port = http_port = None
    while time.monotonic() < deadline:
        line = service.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{service.name} exited with {service.proc.wait()} before listening (see its log)")
        if m := _METRICS.search(line):
            metrics_port = int(m.group(1))
        if m := _HTTP.search(line):
            http_port = int(m.group(1))
        if match := _LISTENING.search(line):
            return int(match.group(1)), metrics_port, http_port
    raise TimeoutError(f"{service.name} did not start within {timeout_s:.0f}s")


def wait_healthy(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not report SERVING within {timeout_s:.0f}s")
