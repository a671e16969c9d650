"""`python -m prfaas.netem.reaper PID PREFIX STATE_DIR`: removes a link once its owner is gone.

`EmulatedLink` starts one per link in its own session. A link owner that exits normally or on a signal tears
its link down itself; one killed outright (SIGKILL, OOM killer) cannot, so this watcher does: it polls the
owner and, once it is dead, deletes the namespaces and state files of dead owners (`cleanup_stale`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prfaas.netem.link import _alive, cleanup_stale

POLL_S = 0.2


def main(argv: list[str]) -> int:
    pid, prefix, state_dir = int(argv[0]), argv[1], Path(argv[2])
    while _alive(pid):
        time.sleep(POLL_S)
    cleanup_stale(prefix, state_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
