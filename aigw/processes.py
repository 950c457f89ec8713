"""Child-process helpers shared by the supervisor and the embedded services."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for Popen: the kernel sends SIGTERM to the child when its parent dies, so
    no child outlives a supervisor that was killed."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
