"""Launching a whole PrfaaS-PD topology on this machine as separate processes.

Each service is started as `python -m services.<name> --port 0 ...`; its "listening on port N" line
tells where it is. The stack is up once every service answers `grpc.health.v1` with SERVING. On exit
every process gets SIGTERM (graceful drain), then SIGKILL after a grace period; a child whose launcher
dies gets SIGTERM from the kernel (`PR_SET_PDEATHSIG`), so a crash leaves no services behind.

By default everything listens on loopback. With an emulated link (`LocalStack(..., link=LinkSpec)`) the
PrfaaS cluster (its prefill workers and cache pool) runs in namespace dc1 and the local PD cluster with the
router in dc2: every PrfaaS <-> PD byte crosses the shaped link. Services there are reached from this
namespace through `PortForward`s on 127.0.0.1 (`Service.address`); among themselves they use the link
addresses (`Service.internal`).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.netem import LinkSpec
from prfaas.netem.forward import PortForward
from prfaas.netem.link import EmulatedLink

_LISTENING = re.compile(r"listening on port (\d+)")
_METRICS = re.compile(r"metrics on port (\d+)")


@dataclass(frozen=True, slots=True)
class Topology:
    """How many workers of each kind, and how they run. Also readable from a JSON file (`--config`)."""

    engine: str = "real"
    model: str = "kimi-linear-tiny"
    prfaas_prefill: int = 1
    pd_prefill: int = 1
    decode: int = 1
    pd_workers: int = 0  # dual-role PD workers (the router converts them between prefill and decode)
    pd_prefill_workers: int = 0  # how many of them start as prefill workers
    policy: str = "prfaas"
    link_gbps: float = 100.0
    replan_period_s: float = 30.0
    threshold_tokens: int = 256
    block_size: int = 64
    router_port: int = 0
    time_scale: float = 0.01
    bytes_scale: float = 0.01
    decode_step_scale: float = 1.0  # mock engines: decode steps take this much longer (fewer, longer tokens)
    token_scale: int = 1  # mock engines: paper tokens per mock token (thresholds and lengths are in mock tokens)
    num_blocks: int = 2048  # KV blocks per engine
    max_seqs: int = 32  # sequences per engine (the decode batch limit)
    max_prefill_tokens: int = 2048  # prefill chunk per engine step
    snapshot_every_blocks: int = 1
    max_model_len: int = 0  # router-side prompt limit; 0 = the model's own
    pool_backend: str = "memory://?capacity_bytes=268435456"

    def __post_init__(self) -> None:
        decoders = self.decode + self.pd_workers - self.pd_prefill_workers
        if decoders < 1 or self.prfaas_prefill + self.pd_prefill + self.pd_prefill_workers < 1:
            raise ValueError("a topology needs at least one decode worker and one prefill worker")

    @classmethod
    def from_file(cls, path: Path, **overrides: object) -> Topology:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read topology ({exc})") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})


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
        for forward in old.forwards:
            forward.close()
        self.services.remove(old)
        module, args, cluster = old.command
        outer = int(old.address.rsplit(":", 1)[1])
        try:
            new = self._start(name, module, *args, cluster=cluster, port=outer, inner_port=old.port)
        except RuntimeError:  # died while starting: a supervisor tries once more
            self.services.remove(self.service(name))
            new = self._start(name, module, *args, cluster=cluster, port=outer, inner_port=old.port)
        wait_healthy(new.address, timeout_s)
        return new

    def _start(
        self, name: str, module: str, *args: str, cluster: str = "pd", port: int = 0, inner_port: int = 0
    ) -> Service:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OTEL_SERVICE_NAME": f"prfaas-{name}"}
        site = self._site(cluster)
        inner_port = inner_port if site.ns else port
        cmd = [sys.executable, "-m", f"services.{module}", "--host", site.host, "--port", str(inner_port)]
        cmd += ["--metrics-port", "0", *args]
        if site.ns is not None:
            cmd = ["ip", "netns", "exec", site.ns, *cmd]
        # setpriv sets the parent-death signal after the fork; a Python preexec_fn in a child forked from a
        # parent with gRPC threads running (a restart under load) can crash before exec.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        with open(self.log_dir / f"{name}.log", "a") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=_repo_root(),
                preexec_fn=None if setpriv else _die_with_us,
            )
        service = Service(name, proc, site, command=(module, args, cluster))
        self.services.append(service)
        service.port, service.metrics_port = _read_ports(service)
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        if site.ns is not None:
            service.forwards.append(PortForward(site.ns, site.host, service.port, port))
            if service.metrics_port is not None:
                metrics = PortForward(site.ns, "127.0.0.1", service.metrics_port)  # /metrics listens on loopback
                service.forwards.append(metrics)
        return service

    def _engine_args(self) -> list[str]:
        t = self.topology
        return [
            "--engine",
            t.engine,
            "--model",
            t.model,
            "--block-size",
            str(t.block_size),
            "--time-scale",
            str(t.time_scale),
            "--bytes-scale",
            str(t.bytes_scale),
            "--decode-step-scale",
            str(t.decode_step_scale),
            "--token-scale",
            str(t.token_scale),
            "--num-blocks",
            str(t.num_blocks),
            "--max-seqs",
            str(t.max_seqs),
            "--max-prefill-tokens",
            str(t.max_prefill_tokens),
            "--snapshot-every-blocks",
            str(t.snapshot_every_blocks),
        ]

    def _launch(self) -> None:
        t = self.topology
        pools = {
            c: self._start(f"cachepool-{c}", "cachepool", "--backend", t.pool_backend, cluster=c)
            for c in ("prfaas", "pd")
        }
        decode = [self._start(f"decode-{i}", "decode", *self._engine_args()) for i in range(t.decode)]
        prefill: dict[str, list[Service]] = {"prfaas": [], "pd": []}
        for cluster, count in (("prfaas", t.prfaas_prefill), ("pd", t.pd_prefill)):
            role = ["--cluster", cluster, "--mock-role", cluster, "--pool", pools[cluster].internal]
            prefill[cluster] = [
                self._start(f"prefill-{cluster}-{i}", "prefill", *self._engine_args(), *role, cluster=cluster)
                for i in range(count)
            ]
        dual = [
            self._start(f"pd-{i}", "pd", *self._engine_args(), "--mock-role", "pd", "--pool", pools["pd"].internal)
            for i in range(t.pd_workers)
        ]
        self._start(
            "router",
            "router",
            "--pd-workers",
            _join(dual),
            "--pd-prefill-workers",
            str(t.pd_prefill_workers),
            "--policy",
            t.policy,
            "--link-gbps",
            str(t.link_gbps if self.link is None else self.link.rate_bps / 1e9),
            "--replan-period-s",
            str(t.replan_period_s),
            "--model",
            t.model,
            "--threshold-tokens",
            str(t.threshold_tokens),
            "--block-size",
            str(t.block_size),
            "--max-model-len",
            str(t.max_model_len),
            "--decode",
            _join(decode),
            "--prfaas-prefill",
            _join(prefill["prfaas"]),
            "--pd-prefill",
            _join(prefill["pd"]),
            "--prfaas-pool",
            pools["prfaas"].internal,
            "--pd-pool",
            pools["pd"].internal,
            port=t.router_port,
        )
        for s in self.services:
            wait_healthy(s.address, 180.0)  # 15 processes importing torch on 2 busy cores take a while

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
            for forward in s.forwards:
                forward.close()
        self.services.clear()
        if self.emulated is not None:
            self.emulated.teardown()


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading a child's stdout so it can never block on a full pipe."""
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def _join(services: list[Service]) -> str:
    return ",".join(s.internal for s in services)


PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None).prctl  # looked up here: no dlopen in a child forked from a threaded parent


def _die_with_us() -> None:
    """In the child before exec: the kernel sends SIGTERM if the launching thread dies (even by SIGKILL)."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _read_ports(service: Service, timeout_s: float = 120.0) -> tuple[int, int | None]:
    """The gRPC port from the "listening on port N" line (and the metrics port printed before it)."""
    assert service.proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    metrics_port = None
    while time.monotonic() < deadline:
        line = service.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{service.name} exited with {service.proc.wait()} before listening (see its log)")
        if m := _METRICS.search(line):
            metrics_port = int(m.group(1))
        if match := _LISTENING.search(line):
            return int(match.group(1)), metrics_port
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
