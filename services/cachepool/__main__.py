"""`python -m services.cachepool`: run a hybrid prefix cache pool."""

from prfaas.service.grpc_server import run_service
from services.cachepool.server import build_server
from services.cachepool.settings import CachePoolSettings

if __name__ == "__main__":
    run_service(CachePoolSettings, build_server, "cachepool", "python -m services.cachepool")
