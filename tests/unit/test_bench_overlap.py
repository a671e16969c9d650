"""`prfaas bench overlap`: the command starts a real prefill and decode worker in-process, streams one
prompt's state between them and reports the tail against its budget."""

from __future__ import annotations

import json

import pytest

from prfaas.bench.overlap import SLACK_S
from prfaas.cli.main import main


def test_overlap_streams_a_prompt_between_real_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "overlap", "--prompt-tokens", "256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt_tokens"] == 256
    assert 0 < result["last_layer_bytes"] < result["kv_bytes"]
    assert result["tail_s"] >= 0 and result["prefill_s"] > 0
    assert result["budget_s"] == pytest.approx(result["last_layer_send_s"] + SLACK_S)
    assert result["within_budget"] == (result["tail_s"] <= result["budget_s"])
