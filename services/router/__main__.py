"""`python -m services.router`: run the router."""

from __future__ import annotations

import logging

import uvloop

from prfaas.service.grpc_server import serve_until_signal
from prfaas.service.settings import parse_settings
from services.router.server import build_server
from services.router.settings import RouterSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_settings(RouterSettings, prog="python -m services.router")
    uvloop.run(serve_until_signal(lambda: build_server(settings), "router"))


if __name__ == "__main__":
    main()
