"""BearerTokenInterceptor.check: what a request's metadata must carry, and what the refusal says."""

from __future__ import annotations

import pytest

from prfaas.service.auth import BearerTokenInterceptor

GUARD = BearerTokenInterceptor("s3cret", ["prfaas.v1.RouterService"])


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ((("authorization", "Bearer s3cret"),), None),
        ((("authorization", "bearer s3cret"),), None),  # the scheme is case-insensitive
        ((), "missing bearer token: send the metadata `authorization: Bearer <token>` (SDK: token=...)"),
        (
            (("x-other", "Bearer s3cret"),),
            "missing bearer token: send the metadata `authorization: Bearer <token>` (SDK: token=...)",
        ),
        ((("authorization", "Basic s3cret"),), "malformed authorization metadata: expected `Bearer <token>`"),
        ((("authorization", "Bearer"),), "malformed authorization metadata: expected `Bearer <token>`"),
        ((("authorization", "Bearer s3cre"),), "invalid bearer token"),
        ((("authorization", "Bearer s3cret-and-more"),), "invalid bearer token"),
    ],
)
def test_check(metadata: tuple[tuple[str, str], ...], problem: str | None) -> None:
    assert GUARD.check(metadata) == problem


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        BearerTokenInterceptor("", ["prfaas.v1.RouterService"])
