"""`python -m services.cachepool`: run a hybrid prefix cache pool."""

from __future__ import annotations

import logging

import uvloop

from prfaas.service.grpc_server import serve_until_signal
from prfaas.service.settings import parse_settings
from services.cachepool.server import build_server
from services.cachepool.settings import CachePoolSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_settings(CachePoolSettings, prog="python -m services.cachepool")
    uvloop.run(serve_until_signal(lambda: build_server(settings), "cachepool"))


if __name__ == "__main__":
    main()
