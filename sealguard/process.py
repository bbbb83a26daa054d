"""Process helpers shared by the broker manager and `up`'s supervisor."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for children: the kernel sends them SIGTERM when their parent dies, so even a
    `kill -9` of the parent leaves no orphan behind (Linux only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
