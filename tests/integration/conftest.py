"""Shared fixtures of the integration tests."""

from __future__ import annotations

import pytest

from prfaas.netem import parse_link_spec
from prfaas.netem.link import EmulatedLink, LinkUnavailable


@pytest.fixture(scope="session")
def linkable() -> None:
    """Skips a test that needs the emulated link where namespaces cannot be created (not root, no `ip netns`)."""
    try:
        with EmulatedLink(parse_link_spec("rate=10mbit")):
            pass
    except LinkUnavailable as exc:
        pytest.skip(f"cannot emulate the link on this machine: {exc}")
