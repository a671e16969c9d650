"""`prfaas up` starts every service as its own process, serves requests, and stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]


def test_prfaas_up_serves_and_stops_cleanly() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "prfaas.cli.main", "up", "--threshold", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline()
        match = re.fullmatch(r"router listening on (127\.0\.0\.1:\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        router = match.group(1)
        api = re.fullmatch(r"openai api on (http://127\.0\.0\.1:\d+/v1)\n", up.stdout.readline())
        assert api, "prfaas up prints where the OpenAI API listens"
        outs = [
            json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "prfaas.cli.main",
                        "generate",
                        "--router",
                        router,
                        "--prompt",
                        text,
                        "--max-new-tokens",
                        "4",
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env=env,
                ).stdout
            )
            for text in ("short one", "a much longer prompt that certainly exceeds the threshold of 32 tokens")
        ]
        assert [o["route"] for o in outs] == ["local", "prfaas"]
        assert all(len(o["token_ids"]) == 4 and o["kv_bytes"] > 0 for o in outs)
        client = OpenAI(base_url=api.group(1), api_key="unused", max_retries=0)
        completion = client.completions.create(
            model="kimi-linear-tiny", prompt="short one", max_tokens=4, temperature=0
        )
        assert completion.usage is not None and completion.usage.completion_tokens == 4
        assert completion.model_extra is not None and completion.model_extra["prfaas"]["route"] == "local"
        children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 6  # two pools, decode, two prefill workers, router
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
    assert code == 0
    assert not [pid for pid in children if _alive(int(pid))], "service processes left behind"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
