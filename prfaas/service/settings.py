"""Service settings: frozen dataclasses parsed once at the edge from flags and `PRFAAS_*` variables.

Every field `foo_bar` is settable as `--foo-bar` or `PRFAAS_FOO_BAR`; flags win over the environment,
the environment over the dataclass default. Validation lives in each dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from prfaas.service.tls import TlsSettings, service_tls

S = TypeVar("S")


@dataclass(frozen=True)
class ServerSettings:
    """What every service has: where it listens, where it serves metrics, and its TLS identity."""

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None  # serve Prometheus /metrics here (0 = any free port)
    tls_cert: str = ""  # PEM certificate chain: serves this port and is presented to the services it calls
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA that signs the other services' (and, with tls_client_auth, the clients') certificates
    tls_client_auth: bool = False  # mutual TLS: refuse clients without a certificate signed by tls_ca

    def __post_init__(self) -> None:
        service_tls(self)

    @property
    def tls(self) -> TlsSettings | None:
        """The validated TLS settings, None when no TLS field is set."""
        return service_tls(self)


class SettingsError(ValueError):
    """A flag or environment variable has a bad value."""


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc


def _base_type(hint: Any) -> Any:
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if args else hint


def parse_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> S:
    env = os.environ if env is None else env
    hints = get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _base_type(hints[field.name])
        var = f"PRFAAS_{field.name.upper()}"
        if var in env:
            values[field.name] = _convert(var, env[var], kind)
        flag = "--" + field.name.replace("_", "-")
        help_text = f"(env {var})"
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=str, help=help_text)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for name, raw in vars(args).items():
        if raw is not None:
            values[name] = (
                raw if isinstance(raw, bool) else _convert("--" + name.replace("_", "-"), raw, _base_type(hints[name]))
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from exc


def settings_flags(settings: object, skip: Sequence[str] = ()) -> list[str]:
    """The command-line flags that reproduce `settings` (the inverse of `parse_settings`): one per field
    whose value differs from the dataclass default, except the fields named in `skip`."""
    flags: list[str] = []
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if field.name in skip or value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags
