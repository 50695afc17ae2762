"""The local mode's queue: stage calls kept in a folder, as Cloud Tasks keeps a queue's tasks.

Every hand-off and every "call this stage later" is a scheduled call: a file named from its (run,
stage, key), written atomically before `schedule_call` returns, so a call outlives the process that
made it. Every function
process runs one delivery thread over the same folder: it wakes for the earliest due call (and at
least every `sweep_s`, to see calls other processes wrote), claims a due call by renaming its file
(only one process can win a rename) and POSTs it. So if the process that scheduled a look is killed,
any other process, or the same function restarted, delivers it on time.

Like a Cloud Tasks queue: the same name is scheduled once (the file, then its `.done` tombstone,
remember it); a delivery that fails (no answer, a 5xx, a 409 from a stage another invocation holds)
is retried later with backoff, then given up and logged; a call claimed by a process that died before
delivering it is taken back and delivered; and each process delivers at most `max_concurrent` calls
at once (the queue's max concurrent dispatches), leaving the rest for later or for other processes.
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
GiveUp = Callable[[str, Mapping[str, object], str], None]  # (stage, body, why): told of a call given up
TOMBSTONE_S = 86_400.0


def _name(run_id: str, stage: str, key: str | int) -> str:
    digest = hashlib.sha256(json.dumps([run_id, stage, key]).encode()).hexdigest()[:32]
    return f"{digest}-{stage}"


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
        redeliveries: int = 8,
        first_retry_s: float = 1.0,
        max_retry_s: float = 60.0,
        on_give_up: GiveUp | None = None,
        sweep_s: float = 1.0,
        max_concurrent: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`deliver(stage, body)` makes the call and raises HandOffFailed when it was not taken."""
        self._deliver = deliver
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._redeliveries = redeliveries
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s
        self._on_give_up = on_give_up
        self._sweep_s = sweep_s
        self._max_concurrent = max_concurrent
        self._clock = clock
        self._wake = threading.Condition()
        self._stopped = False
        self._workers: set[threading.Thread] = set()
        self._active = 0  # deliveries under way in this process
        self._thread = threading.Thread(target=self._run, name="scheduled-calls", daemon=True)
        self._thread.start()

    # -- scheduling ---------------------------------------------------------------------------------

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """A numbered monitor look; False when this (run, stage, attempt) was already scheduled."""
        return self.schedule_call(stage, stage_body(run_id, look=attempt), key=attempt, delay_s=delay_s)

    def schedule_call(self, stage: str, body: Mapping[str, object], *, key: str | int, delay_s: float) -> bool:
        """Calls `stage` with `body` after `delay_s`; (run, stage, key) names the call, and a name seen
        before (pending, being delivered, delivered or given up) is not scheduled again: False."""
        name = _name(str(body["run_id"]), stage, key)
        if self._known(name):
            return False
        entry = {
            "stage": stage,
            "body": dict(body),
            "due_at": self._clock() + max(0.0, delay_s),
            "failures": 0,
        }
        if not self._write(name, entry, exclusive=True):
            return False
        self._notify()
        return True

    def _known(self, name: str) -> bool:
        """Scheduled before: pending, being delivered, delivered or given up. Looked for in the order a
        call moves through them, so a call moving on meanwhile is still seen at its next place."""
        if (self.directory / f"{name}{PENDING}").exists() or any(self.directory.glob(f"{name}.*{CLAIMED}")):
            return True
        return any((self.directory / f"{name}{suffix}").exists() for suffix in (DONE, GAVE_UP))

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
            if self._busy():  # at the cap: left for another process, or for the next sweep
                earliest = now + self._sweep_s if earliest is None else min(earliest, now + self._sweep_s)
                continue
            self._claim_and_deliver(path, entry)
        return earliest

    def _busy(self) -> bool:
        with self._wake:
            return self._active >= self._max_concurrent

    def _claim_and_deliver(self, path: Path, entry: dict[str, object]) -> None:
        """Claims the due call by renaming its file, then delivers it."""
        name = path.name.removesuffix(PENDING)
        claimed = self.directory / f"{name}.{os.getpid()}{CLAIMED}"
        try:
            os.rename(path, claimed)  # one process wins; the others find the file gone
        except FileNotFoundError:
            return
        # delivered on its own thread: a slow or retried POST never holds back the calls due after it
        worker = threading.Thread(target=self._delivery, args=(claimed, name, entry), daemon=True)
        with self._wake:
            self._workers = {w for w in self._workers if w.is_alive()} | {worker}
            self._active += 1
        worker.start()

    def _delivery(self, claimed: Path, name: str, entry: dict[str, object]) -> None:
        try:
            self._deliver_claimed(claimed, name, entry)
        finally:
            with self._wake:
                self._active -= 1
                self._wake.notify_all()  # a delivery slot is free

    def _deliver_claimed(self, claimed: Path, name: str, entry: dict[str, object]) -> None:
        stage, body = str(entry["stage"]), entry["body"]
        assert isinstance(body, dict)
        try:
            self._deliver(stage, body)
        except HandOffFailed as exc:
            failures = int(entry.get("failures", 0))  # type: ignore[call-overload]
            if exc.final or failures >= self._redeliveries:
                self._give_up(claimed, name, stage, body, exc, deliveries=failures + 1)
                return
            delay = min(self._max_retry_s, self._first_retry_s * 2**failures)
            log.warning("scheduled call failed (%s); delivering again in %.0f s", exc, delay)
            retry = {**entry, "due_at": self._clock() + delay, "failures": failures + 1}
            self._write(name, retry, exclusive=False)
            claimed.unlink(missing_ok=True)
            self._notify()
            return
        except Exception:  # a bug in delivery must not kill the thread that delivers every later call
            log.exception("scheduled call of %s crashed; it is kept to be delivered again", stage)
            self._write(name, {**entry, "due_at": self._clock() + self._max_retry_s}, exclusive=False)
            claimed.unlink(missing_ok=True)
            self._notify()
            return
        os.replace(claimed, self.directory / f"{name}{DONE}")

    def _give_up(
        self, claimed: Path, name: str, stage: str, body: dict[str, object], exc: HandOffFailed, *, deliveries: int
    ) -> None:
        """Gives the call up, as a queue drops a task past its retries. A call another invocation kept
        refusing as busy loses nothing (that invocation does the work); any other is reported."""
        os.replace(claimed, self.directory / f"{name}{GAVE_UP}")
        if exc.busy:
            log.info("gave up a call of %s after %d deliveries: the stage stayed busy (%s)", stage, deliveries, exc)
            return
        log.error("gave up a call of %s after %d deliveries: %s", stage, deliveries, exc)
        if self._on_give_up is not None:
            try:
                self._on_give_up(stage, body, f"{exc}; gave up after {deliveries} deliveries")
            except Exception:
                log.exception("reporting a call given up failed")

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
