"""The local mode's "call this stage later": a schedule kept in a folder, as Cloud Tasks keeps a queue.

Each scheduled call is a file named from its (run, stage, attempt), written atomically before
`schedule` returns, so a scheduled look outlives the process that scheduled it. Every function
process runs one delivery thread over the same folder: it wakes for the earliest due call (and at
least every `sweep_s`, to see calls other processes wrote), claims a due call by renaming its file
(only one process can win a rename) and POSTs it. So if the process that scheduled a look is killed,
any other process, or the same function restarted, delivers it on time.

Like a Cloud Tasks queue: the same name is scheduled once (the file, then its `.done` tombstone,
remember it); a delivery that fails is retried later with backoff, then given up and logged; and a
call claimed by a process that died before delivering it is taken back and delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shared.atomic_file import write_json_atomically
from shared.chain.port import HandOffFailed, stage_body

log = logging.getLogger(__name__)

PENDING, CLAIMED, DONE, GAVE_UP = ".json", ".claimed", ".done", ".failed"
TOMBSTONE_S = 86_400.0


def _name(run_id: str, stage: str, attempt: int) -> str:
    digest = hashlib.sha256(json.dumps([run_id, stage, attempt]).encode()).hexdigest()[:32]
    return f"{digest}-{stage}-{attempt}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TimerScheduler:
    def __init__(
        self,
        deliver: Callable[[str, Mapping[str, object]], None],
        directory: Path,
        *,
        redeliveries: int = 5,
        redelivery_delay_s: float = 10.0,
        sweep_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`deliver(stage, body)` makes the call; the body is `{"run_id": ..., "look": attempt}`."""
        self._deliver = deliver
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._redeliveries = redeliveries
        self._redelivery_delay_s = redelivery_delay_s
        self._sweep_s = sweep_s
        self._clock = clock
        self._wake = threading.Condition()
        self._stopped = False
        self._workers: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._run, name="scheduled-calls", daemon=True)
        self._thread.start()

    # -- scheduling ---------------------------------------------------------------------------------

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Returns False when this (run, stage, attempt) was already scheduled (or already delivered)."""
        name = _name(run_id, stage, attempt)
        if self._known(name):
            return False
        entry = {
            "stage": stage,
            "body": stage_body(run_id, look=attempt),
            "due_at": self._clock() + max(0.0, delay_s),
            "failures": 0,
        }
        if not self._write(name, entry, exclusive=True):
            return False
        self._notify()
        return True

    def _known(self, name: str) -> bool:
        """Scheduled before: pending, being delivered, delivered or given up."""
        if any((self.directory / f"{name}{suffix}").exists() for suffix in (PENDING, DONE, GAVE_UP)):
            return True
        return any(self.directory.glob(f"{name}.*{CLAIMED}"))

    def _write(self, name: str, entry: Mapping[str, object], *, exclusive: bool) -> bool:
        """Writes `<name>.json` atomically; with `exclusive`, only if no such entry exists yet."""
        target = self.directory / f"{name}{PENDING}"
        if not exclusive:
            write_json_atomically(target, entry, indent=None)
            return True
        tmp = self.directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        write_json_atomically(tmp, entry, indent=None)
        try:
            os.link(tmp, target)  # unlike a rename, fails if the name exists: the schedule is made once
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    # -- delivery -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopped:
                    return
            next_due = self._deliver_due()
            wait = self._sweep_s if next_due is None else min(self._sweep_s, max(0.0, next_due - self._clock()))
            with self._wake:
                if self._stopped:
                    return
                self._wake.wait(timeout=max(0.01, wait))

    def _deliver_due(self) -> float | None:
        """Delivers every due call this process can claim; returns the earliest time still to come."""
        now = self._clock()
        earliest: float | None = None
        for path in sorted(self.directory.iterdir()):
            if path.suffix == CLAIMED:
                self._recover(path)
                continue
            if path.suffix == DONE:
                self._forget_if_old(path, now)
                continue
            if path.suffix != PENDING or path.name.startswith("."):
                continue
            try:
                entry = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # claimed by another process meanwhile (or being replaced)
            due = float(entry["due_at"])
            if due > now:
                earliest = due if earliest is None else min(earliest, due)
                continue
            self._claim_and_deliver(path, entry)
        return earliest

    def _claim_and_deliver(self, path: Path, entry: dict[str, object]) -> None:
        """Claims the due call by renaming its file, then delivers it."""
        name = path.name.removesuffix(PENDING)
        claimed = self.directory / f"{name}.{os.getpid()}{CLAIMED}"
        try:
            os.rename(path, claimed)  # one process wins; the others find the file gone
        except FileNotFoundError:
            return
        # delivered on its own thread: a slow or retried POST never holds back the calls due after it
        worker = threading.Thread(target=self._deliver_claimed, args=(claimed, name, entry), daemon=True)
        with self._wake:
            self._workers = {w for w in self._workers if w.is_alive()} | {worker}
        worker.start()

    def _deliver_claimed(self, claimed: Path, name: str, entry: dict[str, object]) -> None:
        stage, body = str(entry["stage"]), entry["body"]
        assert isinstance(body, dict)
        try:
            self._deliver(stage, body)
        except HandOffFailed as exc:
            failures = int(entry.get("failures", 0))  # type: ignore[call-overload]
            if failures >= self._redeliveries:
                log.error("scheduled call failed for good after %d redeliveries: %s", failures, exc)
                os.replace(claimed, self.directory / f"{name}{GAVE_UP}")
                return
            delay = self._redelivery_delay_s * 2**failures
            log.warning("scheduled call failed (%s); delivering again in %.0f s", exc, delay)
            retry = {**entry, "due_at": self._clock() + delay, "failures": failures + 1}
            self._write(name, retry, exclusive=False)
            claimed.unlink(missing_ok=True)
            self._notify()
            return
        except Exception:  # a bug in delivery must not kill the thread that delivers every later call
            log.exception("scheduled call of %s crashed; it is kept to be delivered again", stage)
            self._write(name, {**entry, "due_at": self._clock() + self._redelivery_delay_s}, exclusive=False)
            claimed.unlink(missing_ok=True)
            self._notify()
            return
        os.replace(claimed, self.directory / f"{name}{DONE}")

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _recover(self, claimed: Path) -> None:
        """A call claimed by a process that died before delivering it goes back to pending."""
        name, _, pid = claimed.name.removesuffix(CLAIMED).rpartition(".")
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            return
        with contextlib.suppress(FileNotFoundError):
            os.rename(claimed, self.directory / f"{name}{PENDING}")
            log.warning("took back a scheduled call whose process (pid %s) died before delivering it", pid)

    def _forget_if_old(self, done: Path, now: float) -> None:
        """Tombstones are kept a day, as Cloud Tasks keeps an executed task's name (then it may be reused)."""
        with contextlib.suppress(FileNotFoundError):
            if now - done.stat().st_mtime > TOMBSTONE_S:
                done.unlink()

    def pending(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.suffix == PENDING)

    def stop(self) -> None:
        """Stops this process's delivery thread; scheduled calls stay for any other process."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(10)
        with self._wake:
            workers = list(self._workers)
        for worker in workers:  # deliveries under way finish (and record their outcome)
            worker.join(10)

    cancel_all = stop
