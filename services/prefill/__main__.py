"""`python -m services.prefill`: run a prefill worker."""

from prfaas.service.grpc_server import run_service
from services.prefill.server import build_server
from services.prefill.settings import PrefillSettings

if __name__ == "__main__":
    run_service(PrefillSettings, build_server, "prefill worker", "python -m services.prefill")
