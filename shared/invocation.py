"""Names one invocation of a stage, and tells (where it can) whether the process behind a name lives.

An owner name is host, process, thread and a clock reading, so two invocations never share one and a
stage held by a dead process can be recognised: on the same host (the local mode) the process is
looked up; elsewhere (Cloud Functions instances) nobody can tell, and the lease decides.
"""

from __future__ import annotations

import os
import socket
import threading
import time

HOST = socket.gethostname()


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{threading.get_ident()}:{time.monotonic_ns()}"


def process_owner_alive(owner: str | None) -> bool | None:
    """Whether an owner's process still runs, when that can be known (same host); None otherwise."""
    if not owner:
        return None
    host, _, rest = owner.partition(":")
    if host != HOST:
        return None
    import psutil  # local mode only (dev dependency); a zombie counts as dead

    try:
        process = psutil.Process(int(rest.split(":", 1)[0]))
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, ValueError):
        return None


def unknowable(owner: str | None) -> bool | None:
    """Where owners run elsewhere (other instances), whether one lives cannot be known: the lease decides."""
    return None
