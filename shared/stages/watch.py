"""Long jobs and the monitor's schedule: start watching a job, and look again later with backoff.

A watch lives in the run record, so whichever function looks next knows what to look at. Each look is
named by its attempt number: the scheduler refuses a second schedule of the same attempt (Cloud Tasks
by task name, locally the timer), and the attempt only advances through a conditional write.
"""

from __future__ import annotations

from shared.domain import run_record as rr
from shared.domain.run_record import JobKind, RunRecord, Stage, Watch
from shared.services import Services


def backoff_delay(services: Services, attempt: int) -> float:
    s = services.settings
    return min(s.monitor.max_delay_s, s.monitor.initial_delay_s * 2 ** min(attempt, 30))


def watch_job(
    record: RunRecord, *, kind: JobKind, ref: str, next_stage: Stage, now: float, delay_s: float, started_by: str
) -> Watch:
    """Sets the run's watch (mutates the record; call inside a conditional update)."""
    record.watch = Watch(kind=kind, ref=ref, next_stage=next_stage, since=now, started_by=started_by)
    record.log(now, Stage.MONITOR, "watching", kind=kind, ref=ref)
    return rr.next_look(record, now, delay_s)


def schedule_look(services: Services, run_id: str, watch: Watch) -> bool:
    """Asks the scheduler for the watch's numbered look; a repeat of the same look is refused."""
    delay = max(0.0, (watch.next_look_at or services.clock()) - services.clock())
    return services.chain.schedule(Stage.MONITOR, run_id, delay_s=delay, attempt=watch.look)


def look_is_overdue(services: Services, watch: Watch) -> bool:
    """True when the scheduled look is long past due, i.e. it was lost (a process died); not just late."""
    if watch.next_look_at is None:
        return True
    grace = 2 * services.settings.monitor.max_delay_s + 60
    return services.clock() > watch.next_look_at + grace


def ensure_monitor(services: Services, record: RunRecord, *, lost_only: bool = True) -> bool:
    """Schedules a monitor look now when the run waits on a job; True if it scheduled one.

    With `lost_only`, only when the scheduled look is long overdue (it was lost); otherwise at once: a
    re-run means someone wants the job looked at, and the look that was scheduled (if it still comes)
    finds itself stale and does nothing, so looks never fork."""
    watch = record.watch
    if watch is None or (lost_only and not look_is_overdue(services, watch)):
        return False
    now = services.clock()

    def advance(r: RunRecord) -> rr.Watch | None:
        if r.watch is None or r.watch.look != watch.look:
            return None  # somebody else moved it on
        r.log(now, Stage.MONITOR, "rescheduled", reason="a re-run asked for a look", look=r.looks + 1)
        return rr.next_look(r, now, 0.0)

    _record, advanced = services.runs.update(record.run_id, advance)
    return advanced is not None and schedule_look(services, record.run_id, advanced)
