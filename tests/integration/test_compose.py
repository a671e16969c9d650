"""docker-compose.yml, checked without a container engine.

Two kinds of checks:

1. Structure: the two datacenter networks and who sits on which, a grpc.health.v1 healthcheck and
   OTEL_* variables on every prfaas service, `depends_on` waiting for health, only the router and the
   Jaeger UI published, the link shaper (NET_ADMIN, forwarding, LINK_RATE/LINK_DELAY/LINK_LOSS, the
   addresses that make PrfaaS -> PD traffic cross it), one image built from this repository.
2. The same services as local processes: every service built from this repository's image is
   started with `python -m services.<name>` from the repository root, with the command and
   environment the compose file gives it (variables interpolated with their defaults). Only what
   exists inside Docker alone is rewritten: compose host names become 127.0.0.1 and each fixed port a
   free local port (a mapping built from the services' PRFAAS_PORT), `redis://` pool backends become
   `memory://`, and `OTEL_TRACES_EXPORTER=none` replaces the OTLP endpoint. Engines stay as the file
   says (real kimi-linear-tiny engines: fast enough here). Services start in `depends_on` order, each
   level once the previous one passes the compose file's own healthcheck command, run here. One request
   goes through the router with the SDK, then SIGTERM stops every process and none is left running.

Not run here: redis-prfaas, redis-pd (replaced by in-memory pools), jaeger (no exporter) and the
link-shaper (it needs NET_ADMIN; locally the PrfaaS prefill workers reach the decode worker directly).
The shaper's script runs in its dry-run mode instead, which prints the tc and iptables commands it
would issue for the compose file's settings.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.client import Client, Sampling

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SHAPER_SCRIPT = ROOT / "deploy" / "link-shaper" / "link-shaper.sh"
PRFAAS_PREFILL = ("prefill-prfaas-0", "prefill-prfaas-1")
DC_PRFAAS = {*PRFAAS_PREFILL, "cachepool-prfaas", "redis-prfaas"}
DC_PD = {"prefill-pd", "decode", "cachepool-pd", "redis-pd"}
NOT_RUN_LOCALLY = {"redis-prfaas", "redis-pd", "jaeger", "link-shaper"}
START_TIMEOUT_S = 60.0
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")
_ADDRESS = re.compile(r"\b([a-z][a-z0-9-]*):(\d+)\b")


# -- reading the compose file the way compose does --------------------------------------------------
def interpolate(value: Any) -> Any:
    """Compose's variable interpolation with every variable unset: `${X:-d}` -> d, `$$` -> `$`."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    interpolated: dict[str, Any] = interpolate(raw)
    return interpolated


def prfaas_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's image (the ones that run `python -m services.*`)."""
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def networks_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("networks") or ())


# -- 1. structure -----------------------------------------------------------------------------------
def test_two_datacenter_networks_and_who_is_on_which(compose: dict[str, Any]) -> None:
    assert set(compose["networks"]) == {"dc-prfaas", "dc-pd"}
    services = compose["services"]
    for name in DC_PRFAAS:
        assert networks_of(services[name]) == {"dc-prfaas"}, name
    for name in DC_PD:
        assert networks_of(services[name]) == {"dc-pd"}, name
    for name in ("router", "jaeger", "link-shaper"):
        assert networks_of(services[name]) == {"dc-prfaas", "dc-pd"}, name
    assert set(services) == DC_PRFAAS | DC_PD | {"router", "jaeger", "link-shaper"}


def test_one_image_for_every_prfaas_service(compose: dict[str, Any]) -> None:
    services = prfaas_services(compose)
    assert set(services) == set(compose["services"]) - NOT_RUN_LOCALLY
    assert {s["image"] for s in services.values()} == {"prfaas:local"}
    modules = {name: s["command"][:3] for name, s in services.items()}
    assert all(cmd[:2] == ["python", "-m"] for cmd in modules.values())
    assert {cmd[2] for cmd in modules.values()} == {
        "services.router",
        "services.prefill",
        "services.decode",
        "services.cachepool",
    }
    assert compose["services"]["link-shaper"]["build"] == "deploy/link-shaper"
    assert (ROOT / "deploy" / "link-shaper" / "Dockerfile").is_file()


def test_dockerfile_installs_cpu_torch_first_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    runs = re.findall(r"^RUN (.*)$", text, re.M)
    torch = runs.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch < next(i for i, run in enumerate(runs) if run.startswith("pip install . "))
    assert re.search(r"^ENV PRFAAS_CACHE_DIR=\S+", text, re.M)
    assert "ensure_tiny()" in text  # the model is written at build time, not at runtime
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_every_prfaas_service_is_healthchecked_and_traced(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    for name, service in prfaas_services(compose).items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL" and "grpc_health.v1" in check[1] and "${PRFAAS_PORT}" in check[1], name
        env = service["environment"]
        assert int(env["PRFAAS_PORT"]) > 0, name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", name
        assert env["OTEL_TRACES_EXPORTER"] == "otlp", name
        names.add(env["OTEL_SERVICE_NAME"])
    assert len(names) == len(prfaas_services(compose))  # one trace service name each
    ports = [int(s["environment"]["PRFAAS_PORT"]) for s in prfaas_services(compose).values()]
    assert len(set(ports)) == len(ports)


def test_depends_on_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            wanted = "service_started" if dep == "jaeger" else "service_healthy"
            assert spec == {"condition": wanted}, f"{name} -> {dep}"
            assert dep == "jaeger" or "healthcheck" in services[dep], dep
    assert set(services["router"]["depends_on"]) == set(prfaas_services(compose)) - {"router"} | {"jaeger"}
    assert set(services["cachepool-prfaas"]["depends_on"]) >= {"redis-prfaas"}
    assert set(services["cachepool-pd"]["depends_on"]) >= {"redis-pd"}
    for name in PRFAAS_PREFILL:
        assert set(services[name]["depends_on"]) >= {"cachepool-prfaas", "link-shaper"}
    assert start_levels(services, set(services))  # no cycle


def test_only_the_router_and_the_jaeger_ui_are_published(compose: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"router": ["50051:50051", "8000:8000"], "jaeger": ["16686:16686"]}
    assert compose["services"]["router"]["environment"]["PRFAAS_PORT"] == "50051"
    assert compose["services"]["router"]["environment"]["PRFAAS_HTTP_PORT"] == "8000"  # the OpenAI API


def test_jaeger_receives_otlp_grpc(compose: dict[str, Any]) -> None:
    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert "4317" in [str(p) for p in jaeger["expose"]]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert jaeger["environment"]["COLLECTOR_OTLP_GRPC_HOST_PORT"] == ":4317"


def test_redis_pools_per_datacenter(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for cluster in ("prfaas", "pd"):
        assert services[f"redis-{cluster}"]["image"] == "redis:7"
        assert services[f"cachepool-{cluster}"]["environment"]["PRFAAS_BACKEND"] == f"redis://redis-{cluster}:6379/0"
        assert "allkeys-lru" in services[f"redis-{cluster}"]["command"]


def test_link_shaper_sits_between_the_datacenters(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    services = compose["services"]
    shaper = services["link-shaper"]
    assert shaper["cap_add"] == ["NET_ADMIN"]
    assert shaper["sysctls"] == {"net.ipv4.ip_forward": "1"}
    raw_env = raw["services"]["link-shaper"]["environment"]
    assert raw_env["LINK_RATE"] == "${LINK_RATE:-10gbit}"
    assert raw_env["LINK_DELAY"] == "${LINK_DELAY:-5ms}"
    assert raw_env["LINK_LOSS"] == "${LINK_LOSS:-0%}"
    env = shaper["environment"]
    prfaas_ip, pd_ip = (shaper["networks"][n]["ipv4_address"] for n in ("dc-prfaas", "dc-pd"))
    assert (env["LINK_PRFAAS_IP"], env["LINK_PD_IP"]) == (prfaas_ip, pd_ip)
    # The router hands these decode addresses to every prefill worker; the shaper forwards each of them and
    # each one's KV data port (fixed in its environment), and in the PrfaaS prefill containers (only there)
    # their names point at the shaper.
    decoders = services["router"]["environment"]["PRFAAS_DECODE"].split(",")
    data_ports = [
        f"{d.split(':')[0]}:{services[d.split(':')[0]]['environment']['PRFAAS_KV_DATA_PORT']}" for d in decoders
    ]
    assert sorted(env["LINK_FORWARD"].split()) == sorted(decoders + data_ports)
    for name in PRFAAS_PREFILL:
        assert services[name]["extra_hosts"] == {d.split(":")[0]: prfaas_ip for d in decoders}
    assert not any("extra_hosts" in services[n] for n in services if n not in PRFAAS_PREFILL)
    # The router's link capacity (Gbit/s) is the shaper's rate.
    assert float(services["router"]["environment"]["PRFAAS_LINK_GBPS"]) == float(env["LINK_RATE"].removesuffix("gbit"))
    for net, ip in (("dc-prfaas", prfaas_ip), ("dc-pd", pd_ip)):  # fixed, and never handed out dynamically
        (ipam,) = compose["networks"][net]["ipam"]["config"]
        addr = ipaddress.ip_address(ip)
        assert addr in ipaddress.ip_network(ipam["subnet"]) and addr not in ipaddress.ip_network(ipam["ip_range"])


def test_link_shaper_script_shapes_both_directions(compose: dict[str, Any], tmp_path: Path) -> None:
    env = dict(compose["services"]["link-shaper"]["environment"])
    port = env["LINK_FORWARD"].split()[0].split(":")[1]
    env |= {"LINK_FORWARD": f"127.0.0.1:{port}", "LINK_DRY_RUN": "1", "LINK_PRFAAS_IF": "ethP", "LINK_PD_IF": "ethD"}
    env |= {"LINK_READY_FILE": str(tmp_path / "ready"), "PATH": os.environ["PATH"]}
    out = subprocess.run(["sh", str(SHAPER_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    commands = [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert f"iptables -t nat -A PREROUTING -i ethP -p tcp --dport {port} -j DNAT --to-destination 127.0.0.1:{port}" in (
        commands
    )
    assert f"iptables -t nat -A POSTROUTING -o ethD -d 127.0.0.1 -p tcp --dport {port} -j MASQUERADE" in commands
    for dev in ("ethD", "ethP"):
        netem = f"tc qdisc replace dev {dev} root handle 1: netem delay 5ms loss 0% limit "
        assert any(c.startswith(netem) for c in commands), commands
        tbf = f"tc qdisc replace dev {dev} parent 1:1 handle 10: tbf rate 10gbit burst "
        assert any(c.startswith(tbf) for c in commands), commands
    assert (tmp_path / "ready").is_file()


# -- 2. the same services as local processes --------------------------------------------------------
def start_levels(services: dict[str, dict[str, Any]], included: set[str]) -> list[list[str]]:
    """`depends_on` as start levels: each level only depends on earlier ones (services outside `included`
    are ignored, as if already healthy)."""
    pending = {n: set(services[n].get("depends_on") or ()) & included for n in included}
    levels: list[list[str]] = []
    while pending:
        ready = sorted(n for n, deps in pending.items() if not deps - {m for level in levels for m in level})
        assert ready, f"depends_on cycle among {sorted(pending)}"
        levels.append(ready)
        for n in ready:
            del pending[n]
    return levels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalService:
    """One compose service run as a process on this machine."""

    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: str
    port: int
    log: Path
    proc: subprocess.Popen[str] | None = None
    listening: threading.Event = field(default_factory=threading.Event)
    announced_port: int | None = None

    def start(self) -> None:
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.search(r"listening on port (\d+)", line)
            if match:
                self.announced_port = int(match.group(1))
                self.listening.set()

    def wait_healthy(self, deadline: float) -> None:
        """What `condition: service_healthy` waits for: the compose healthcheck command succeeds."""
        assert self.proc is not None
        while not self.listening.wait(0.1):
            assert self.proc.poll() is None, f"{self.name} exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{self.name} did not start: {self.log.read_text()[-2000:]}"
        assert self.announced_port == self.port
        while subprocess.run(["sh", "-c", self.healthcheck], env=self.env, capture_output=True).returncode:
            assert time.monotonic() < deadline, f"{self.name} never became healthy"
            time.sleep(0.2)


class LocalRewrite:
    """What exists only inside Docker, rewritten for processes on 127.0.0.1."""

    def __init__(self, services: dict[str, dict[str, Any]]) -> None:
        self.ports = {(n, int(s["environment"]["PRFAAS_PORT"])): free_port() for n, s in services.items()}
        self.hosts = set(services) | NOT_RUN_LOCALLY

    def value(self, text: str) -> str:
        if text.startswith("redis://"):
            return "memory://"
        return _ADDRESS.sub(lambda m: self._address(m.group(1), int(m.group(2)), m.group(0)), text)

    def _address(self, host: str, port: int, original: str) -> str:
        local = self.ports.get((host, port))
        return f"127.0.0.1:{local}" if local else original

    def service(self, name: str, service: dict[str, Any], log_dir: Path) -> LocalService:
        compose_env = {k: self.value(str(v)) for k, v in service["environment"].items()}
        compose_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
        port = self.ports[(name, int(compose_env["PRFAAS_PORT"]))]
        compose_env |= {"PRFAAS_PORT": str(port), "OTEL_TRACES_EXPORTER": "none"}
        if "PRFAAS_HTTP_PORT" in compose_env:
            compose_env["PRFAAS_HTTP_PORT"] = str(free_port())
        leftovers = [v for v in compose_env.values() for m in _ADDRESS.finditer(v) if m.group(1) in self.hosts]
        assert not leftovers, f"{name}: compose host names left in {leftovers}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PRFAAS_", "OTEL_"))}
        env = {**inherited, "PRFAAS_CACHE_DIR": os.environ["PRFAAS_CACHE_DIR"], "PYTHONUNBUFFERED": "1", **compose_env}
        command = [self.value(arg) for arg in service["command"]]
        assert command[0] == "python"
        check = service["healthcheck"]["test"][1]
        assert check.startswith("python ")
        return LocalService(
            name,
            [sys.executable, *command[1:]],
            env,
            shlex.quote(sys.executable) + check.removeprefix("python"),
            port,
            log_dir / f"{name}.log",
        )


@pytest.fixture
def local_stack(compose: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, LocalService]]:
    services = prfaas_services(compose)
    rewrite = LocalRewrite(services)
    local = {name: rewrite.service(name, s, tmp_path) for name, s in services.items()}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for level in start_levels(compose["services"], set(services)):
            for name in level:
                local[name].start()
            for name in level:
                local[name].wait_healthy(deadline)
        yield local
    finally:
        for svc in local.values():
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        for svc in local.values():
            if svc.proc is not None:
                try:
                    svc.proc.wait(30)
                except subprocess.TimeoutExpired:
                    svc.proc.kill()
                    svc.proc.wait()


def test_compose_services_run_as_local_processes(local_stack: dict[str, LocalService]) -> None:
    for svc in local_stack.values():
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, svc.name
    with Client(f"127.0.0.1:{local_stack['router'].port}", timeout_s=30) as client:
        short = client.generate("hello", Sampling(max_new_tokens=4))
        long = client.generate("a long prompt for the PrfaaS cluster " * 10, Sampling(max_new_tokens=4))
    assert len(short.token_ids) == 4 and short.route is not None and short.route.route == "local"
    assert len(long.token_ids) == 4 and long.route is not None and long.route.route == "prfaas"
    assert long.route.kv_bytes > 0
    body = {"model": "kimi-linear-tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
    http = f"http://127.0.0.1:{local_stack['router'].env['PRFAAS_HTTP_PORT']}"
    completion = httpx.post(f"{http}/v1/completions", json=body, timeout=30)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4
    for svc in local_stack.values():
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
    for svc in local_stack.values():
        assert svc.proc is not None
        assert svc.proc.wait(30) == 0, f"{svc.name}: {svc.log.read_text()[-2000:]}"
    assert all(svc.proc is not None and svc.proc.poll() is not None for svc in local_stack.values())
