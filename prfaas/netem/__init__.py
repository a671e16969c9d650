"""The emulated cross-datacenter link: two network namespaces on one machine, joined by a shaped link.

This module holds the link's spec, the value every user of the package passes around. The link itself
(namespaces, lifecycle, state file) is `prfaas.netem.link.EmulatedLink`; how it shapes packets (the tc qdisc
tree, and a userspace delay line for kernels without sch_netem) is `prfaas.netem.shaper`.
"""

from __future__ import annotations

import dataclasses
import re

_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_RATE_UNITS |= {"bps": 8.0, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}  # tc's bytes per second
_DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_LOSS_UNITS = {"%": 0.01}
_QUANTITY = re.compile(r"([+-]?\d+(?:\.\d+)?)([a-z%]*)")
_KEYS = ("rate", "delay", "loss")
_EXAMPLE = "rate=1gbit,delay=5ms,loss=0.1%"


def _quantity(key: str, text: str, units: dict[str, float], example: str) -> float:
    match = _QUANTITY.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in units:
        raise ValueError(f"{key}={text!r}: expected a number with a unit ({', '.join(units)}), e.g. {key}={example}")
    value = float(match.group(1))
    if value < 0:
        raise ValueError(f"{key}={text!r} is negative; give a value >= 0, e.g. {key}={example}")
    return value * units[match.group(2)]


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of the link (both directions are shaped alike), in tc's units: rate "1gbit", delay "5ms"
    (one way, so RTT = 2 x delay), loss "0.1%" or None."""

    rate: str
    delay: str = "0ms"
    loss: str | None = None

    def __post_init__(self) -> None:
        if self.rate_bps <= 0:
            raise ValueError(f"rate={self.rate!r} must be positive, e.g. rate=1gbit")
        if self.delay_s > 60 or self.loss_fraction > 1:
            raise ValueError(f"{self}: delay must be at most 60s and loss at most 100%")

    @property
    def rate_bps(self) -> float:
        return _quantity("rate", self.rate, _RATE_UNITS, "1gbit")

    @property
    def delay_s(self) -> float:
        return _quantity("delay", self.delay, _DELAY_UNITS, "5ms")

    @property
    def loss_fraction(self) -> float:
        return 0.0 if self.loss is None else _quantity("loss", self.loss, _LOSS_UNITS, "0.1%")

    def __str__(self) -> str:
        return f"rate={self.rate},delay={self.delay}" + (f",loss={self.loss}" if self.loss is not None else "")


def parse_link_spec(text: str, base: LinkSpec | None = None) -> LinkSpec:
    """`rate=1gbit,delay=5ms[,loss=0.1%]` -> LinkSpec. Keys left out keep `base`'s values (for `link set`);
    without a base, rate is required and delay defaults to 0ms. Errors say what to fix."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not (sep and value):
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. {_EXAMPLE}")
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} in {text!r}; known keys: {', '.join(_KEYS)} (e.g. {_EXAMPLE})")
        if key in values:
            raise ValueError(f"{key} given twice in {text!r}")
        values[key] = value.lower()
    if not values:
        raise ValueError(f"empty link spec; expected e.g. {_EXAMPLE}")
    if base is not None:
        return dataclasses.replace(base, **values)
    if "rate" not in values:
        raise ValueError(f"{text!r} has no rate; give one, e.g. {_EXAMPLE}")
    return LinkSpec(values["rate"], values.get("delay", "0ms"), values.get("loss"))
