"""The PrfaaS SDK: generate tokens through a router, async or blocking.

async with AsyncClient("localhost:50051", token="...", tls=TlsSettings(ca_file="ca.pem")) as client:
    result = await client.generate("Hello", Sampling(max_new_tokens=16))
    print(result.text, result.route)
"""

from prfaas.client.client import AsyncClient, Client
from prfaas.client.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PrfaasError,
    RequestCancelledError,
    UnavailableError,
    from_rpc_error,
)
from prfaas.client.retry import RetryPolicy
from prfaas.client.types import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    RouteInfo,
    RouteName,
    Sampling,
)
from prfaas.service.tls import TlsError, TlsSettings

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "DeadlineExceededError",
    "FinishReason",
    "GenerationChunk",
    "GenerationResult",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "PrfaasError",
    "RequestCancelledError",
    "RetryPolicy",
    "RouteInfo",
    "RouteName",
    "Sampling",
    "TlsError",
    "TlsSettings",
    "UnavailableError",
    "from_rpc_error",
]
