"""`python -m services.decode`: run a decode worker."""

from prfaas.service.grpc_server import run_service
from services.decode.server import build_server
from services.decode.settings import DecodeSettings

if __name__ == "__main__":
    run_service(DecodeSettings, build_server, "decode worker", "python -m services.decode")
