"""`python -m services.decode`: run a decode worker."""

from __future__ import annotations

import logging

import uvloop

from prfaas.service.grpc_server import serve_until_signal
from prfaas.service.settings import parse_settings
from services.decode.server import build_server
from services.decode.settings import DecodeSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_settings(DecodeSettings, prog="python -m services.decode")
    uvloop.run(serve_until_signal(lambda: build_server(settings), "decode worker"))


if __name__ == "__main__":
    main()
