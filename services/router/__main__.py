"""`python -m services.router`: run the router."""

from prfaas.service.grpc_server import run_service
from services.router.server import build_server
from services.router.settings import RouterSettings

if __name__ == "__main__":
    run_service(RouterSettings, build_server, "router", "python -m services.router")
