"""Conversions between protobuf messages and the library's value objects, and id validation."""

from __future__ import annotations

import re

from prfaas.engine.sampling import SamplingParams
from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS
from prfaas.v1 import common_pb2

_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_FINISH = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}


def sampling_from_pb(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Raises ValueError with a message naming the bad field."""
    return SamplingParams(
        max_new_tokens=msg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        temperature=msg.temperature,
        top_p=msg.top_p or 1.0,
        seed=msg.seed,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )


def sampling_to_pb(p: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        seed=p.seed,
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
    )


def finish_reason_pb(reason: str | None) -> common_pb2.FinishReason:
    return _FINISH.get(reason or "", common_pb2.FINISH_REASON_UNSPECIFIED)


def check_tenant(tenant_id: str) -> None:
    if tenant_id and not _TENANT.fullmatch(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} is invalid: use 1-64 characters of [A-Za-z0-9._-]")


def check_request_id(request_id: str) -> None:
    if not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"request id {request_id!r} is invalid: use 1-128 characters of [A-Za-z0-9._:-]")


def tenant_salt(tenant_id: str) -> bytes:
    """The prefix-hash namespace of a tenant (the empty tenant is the default namespace)."""
    return tenant_id.encode()
