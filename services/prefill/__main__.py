"""`python -m services.prefill`: run a prefill worker."""

from __future__ import annotations

import logging

import uvloop

from prfaas.service.grpc_server import serve_until_signal
from prfaas.service.settings import parse_settings
from services.prefill.server import build_server
from services.prefill.settings import PrefillSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_settings(PrefillSettings, prog="python -m services.prefill")
    uvloop.run(serve_until_signal(lambda: build_server(settings), "prefill worker"))


if __name__ == "__main__":
    main()
