"""Server-sent events as the OpenAI API streams them: one `data: {json}` event per chunk, `data: [DONE]` last."""

from __future__ import annotations

import json
from collections.abc import Mapping

DONE = b"data: [DONE]\n\n"


def event(payload: Mapping[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
