"""Settings: one declaration per knob, flags and environment parsed once, and the inverse (settings -> flags)
that the local stack launches services with."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from prfaas.service.settings import ServerSettings, SettingsError, parse_settings, settings_flags
from services.cachepool.settings import CachePoolSettings
from services.decode.settings import DecodeSettings
from services.pd.settings import PdSettings
from services.prefill.settings import PrefillSettings
from services.router.settings import RouterSettings


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_a_pd_worker_has_every_prefill_and_decode_knob() -> None:
    assert _names(DecodeSettings) | _names(PrefillSettings) == _names(PdSettings)
    pd = parse_settings(PdSettings, ["--kv-lease-s", "7", "--cluster", "pd", "--import-wait-s", "0"], {})
    assert isinstance(pd, DecodeSettings) and isinstance(pd, PrefillSettings)
    assert (pd.kv_lease_s, pd.import_wait_s) == (7.0, 0.0)
    with pytest.raises(SettingsError, match="kv_lease_s must be positive"):
        parse_settings(PdSettings, ["--kv-lease-s", "0"], {})


@pytest.mark.parametrize("cls", [CachePoolSettings, DecodeSettings, PrefillSettings, PdSettings, RouterSettings])
def test_every_service_declares_the_server_fields_once_through_server_settings(cls: type) -> None:
    assert issubclass(cls, ServerSettings)
    server_fields = _names(ServerSettings)
    own = {name for name in inspect.get_annotations(cls) if name in server_fields}
    assert own == set()  # not redeclared: a new TLS or metrics knob reaches every service


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (PdSettings, dict(kv_lease_s=3.5, block_size=32, max_prefill_tokens=128, cluster="pd", tls_client_auth=False)),
        (PrefillSettings, dict(engine="mock", cluster="prfaas", pool="10.0.0.1:5", transfer_streams=3)),
        (RouterSettings, dict(decode="a:1", pd_prefill="b:2", threshold_tokens=0, replan_period_s=0.0)),
        (CachePoolSettings, dict(backend="redis://127.0.0.1:6379/0", metrics_port=0)),
    ],
)
def test_settings_flags_round_trip(cls: type, values: dict[str, object]) -> None:
    settings = cls(**values)
    flags = settings_flags(settings)
    assert parse_settings(cls, flags, {}) == settings
    assert "--host" not in settings_flags(settings, skip=("host",))


def test_settings_flags_emit_only_what_differs_from_the_default() -> None:
    assert settings_flags(DecodeSettings()) == []
    flags = settings_flags(DecodeSettings(block_size=16, kv_lease_s=2.0))
    assert flags == ["--block-size", "16", "--kv-lease-s", "2.0"]


def test_the_router_does_not_show_its_bearer_token() -> None:
    assert "s3cret" not in repr(RouterSettings(decode="a:1", pd_prefill="b:2", auth_token="s3cret"))
