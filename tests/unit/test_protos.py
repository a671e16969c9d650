"""The checked-in generated code matches the .proto files, and every RPC and message is documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos" / "prfaas" / "v1").glob("*.proto"))


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, PROTOS),
        ],
        check=True,
    )
    fresh = sorted(p.name for p in (tmp_path / "prfaas" / "v1").iterdir())
    checked_in = sorted(p.name for p in (ROOT / "prfaas" / "v1").iterdir() if p.name != "__init__.py" and p.is_file())
    assert fresh == checked_in, "run scripts/gen-protos"
    for name in fresh:
        new = (tmp_path / "prfaas" / "v1" / name).read_text()
        assert new == (ROOT / "prfaas" / "v1" / name).read_text(), f"{name} is stale: run scripts/gen-protos"


def test_every_rpc_and_message_has_a_comment() -> None:
    for proto in PROTOS:
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith(("rpc ", "message ", "service ", "enum ")):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} lacks a comment: {stripped}"
