"""`python -m services.pd`: run a dual-role (prefill + decode) PD worker."""

from prfaas.service.grpc_server import run_service
from services.pd.server import build_server
from services.pd.settings import PdSettings

if __name__ == "__main__":
    run_service(PdSettings, build_server, "pd worker", "python -m services.pd")
