"""Job folders: how a detached engine process is started, watched, cancelled and found again.

A job is a folder `<engine_dir>/jobs/<job_id>/` holding `spec.json` (what to do), `state.json` (where
it is), `job.log` (the process's stdout and stderr), `process.json` (pid and start time) and its
outputs (`model.pt` and `model.onnx` for training). No torch here: the chain's stages import this module, only the
job process imports the engine.

Liveness does not trust pids alone. Before starting the process the launcher takes an exclusive
`flock` on `lock` and hands that open file to the child, which keeps it for its whole life; the
kernel drops the lock when the process dies however it dies (SIGKILL, OOM, crash). So a job whose
state still says queued/running while nobody holds the lock is dead, and is reported FAILED with
the log's path, never left running. The pid, with its start time to rule out a recycled pid, is only
used to signal the process on cancel.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from shared.atomic_file import write_json_atomically

SPEC = "spec.json"
STATE = "state.json"
LOG = "job.log"
LOCK = "lock"
PROCESS = "process.json"
CANCEL = "cancel-requested"
CHECKPOINT = "model.pt"
ONNX_MODEL = "model.onnx"  # the checkpoint exported for onnxruntime, beside it (shared.engine.onnx_model)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")  # whole: fullmatch
_SECRET_ENV = re.compile(r"(SECRET|API_KEY|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """A reader sees the old or the new file, never half of one."""
    write_json_atomically(path, data)


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def job_id_for(kind: str, run_id: str, job_key: str) -> str:
    """The same launch always gets the same folder, so a repeated start finds the job it made."""
    run = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:48] or "run"
    key = re.sub(r"[^A-Za-z0-9_-]", "-", job_key)[:64]
    return f"{kind}-{run}-{key}"


def job_folder(engine_dir: Path, job_id: str) -> Path:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return Path(engine_dir) / "jobs" / job_id


def _child_env() -> dict[str, str]:
    """The job needs no secrets: anything that looks like one stays in the parent.

    OpenMP threads that sleep instead of spinning while they wait: on a few shared cores (other jobs,
    other processes) spinning threads starve each other, and training ran at half speed or worse.
    """
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k)}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def launch(folder: Path, spec: Mapping[str, Any]) -> int:
    """Writes the spec and a QUEUED state, then starts the detached job process; returns its pid."""
    folder.mkdir(parents=True, exist_ok=False)
    lock_fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held before the state exists: never seen queued and dead
        write_json_atomic(folder / SPEC, spec)
        write_json_atomic(folder / STATE, {"state": QUEUED, "created_at": now_iso(), "kind": spec.get("kind")})
        with open(folder / LOG, "ab") as log:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "shared.engine.worker", str(folder), "--lock-fd", str(lock_fd)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    env=_child_env(),
                    pass_fds=(lock_fd,),
                    start_new_session=True,
                )
            except OSError as exc:
                write_json_atomic(
                    folder / STATE,
                    {"state": FAILED, "error": f"could not start the job process: {exc}", "finished_at": now_iso()},
                )
                raise
    finally:
        os.close(lock_fd)  # the child's copy keeps the lock
    write_json_atomic(folder / PROCESS, {"pid": process.pid, "create_time": _create_time(process.pid)})
    return process.pid


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(folder: Path) -> bool:
    """True while the job process (or anything it handed the lock to) is still running."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases a lock we just took
    return False


def _log_tail(folder: Path, lines: int = 3) -> str:
    try:
        with open(folder / LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)[-300:]


def read_state(folder: Path) -> dict[str, Any]:
    """The job's state, with a dead unfinished job turned into FAILED (or CANCELLED if it was asked to stop).

    The verdict is written back, so it is reached once and every later reader agrees.
    """
    try:
        state = read_json(folder / STATE)
    except FileNotFoundError:
        raise LookupError(f"no local engine job at {folder}") from None
    if state.get("state") not in UNFINISHED or is_alive(folder):
        return state
    state = read_json(folder / STATE)  # it may have finished between the two reads
    if state.get("state") not in UNFINISHED:
        return state
    if (folder / CANCEL).exists():
        state.update(state=CANCELLED, error="cancelled by request", finished_at=now_iso())
    else:
        pid = _process(folder).get("pid")
        tail = _log_tail(folder)
        state.update(
            state=FAILED,
            error=(
                f"the job process (pid {pid}) ended without reporting a result "
                f"(killed or crashed); see {folder / LOG}" + (f": {tail}" if tail else "")
            ),
            finished_at=now_iso(),
        )
    write_json_atomic(folder / STATE, state)
    return state


def _process(folder: Path) -> dict[str, Any]:
    """pid and create_time: as the launcher recorded them, else as the job itself reported them."""
    for name in (PROCESS, STATE):
        try:
            info = read_json(folder / name)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if isinstance(info.get("pid"), int):
            return info
    return {}


def _signal(folder: Path, sig: int) -> None:
    """Signals the job's process group, only if the pid is still the process that was started."""
    info = _process(folder)
    pid, created = info.get("pid"), info.get("create_time")
    if not isinstance(pid, int):
        return
    try:
        process = psutil.Process(pid)
        if created is not None and abs(process.create_time() - created) > 0.01:
            return  # the pid now belongs to someone else
        os.killpg(pid, sig)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


def cancel(folder: Path, *, grace_s: float = 5.0) -> dict[str, Any]:
    """Stops the job (SIGTERM, then SIGKILL after `grace_s`) and marks it CANCELLED; no-op once finished."""
    state = read_state(folder)
    if state.get("state") not in UNFINISHED:
        return state
    (folder / CANCEL).touch()
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not is_alive(folder):
            break
        _signal(folder, sig)
        for _ in _until(wait):
            if not is_alive(folder):
                break
    return read_state(folder)


def _until(seconds: float) -> Iterator[None]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield
        time.sleep(0.05)


class StateWriter:
    """The job process's side: keeps state.json current, each write atomic."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = read_json(folder / STATE)

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        self.state["updated_at"] = now_iso()
        write_json_atomic(self.folder / STATE, self.state)

    def cancel_requested(self) -> bool:
        return (self.folder / CANCEL).exists()
