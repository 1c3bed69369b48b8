"""Named fault points for the kill-matrix tests (tests/test_faults.py, `make test-faults`).

`fault_point("final-evaluation")` does nothing unless the environment variable OFFRL_FAULT names that point:
`OFFRL_FAULT=final-evaluation` kills the process with SIGKILL the first time it gets there,
`OFFRL_FAULT=checkpoint-written:3` the third time. SIGKILL cannot be caught, so what the test sees afterwards is
exactly what a power cut or an OOM kill at that line leaves behind (like etcd's gofail failpoints). The check
is one dictionary lookup at points that run a few times per run, never per update.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "fault_point"]

FAULT_ENV = "OFFRL_FAULT"
_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
