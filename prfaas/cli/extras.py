"""Optional dependencies (the package's extras), checked when a command reads its arguments: a missing one
is one clear line and exit status 2 before any work, never a traceback after it."""

from __future__ import annotations

import importlib.util


class MissingExtra(ValueError):
    """A flag needs a package that is not installed; the message says how to get it."""


def require_extra(module: str, extra: str, flag: str) -> None:
    """Raise `MissingExtra` unless `module` (from `pip install 'prfaas[extra]'`) can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(
            f"{flag} needs {module}; install it with `pip install 'prfaas[{extra}]'`, or run without {flag}"
        )


def require_plotting(flag: str) -> None:
    require_extra("matplotlib", "plot", flag)
