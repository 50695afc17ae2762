"""Long jobs and the monitor's schedule: start watching a job, and look again later with backoff.

A watch lives in the run record, so whichever function looks next knows what to look at. Each look is
named by its attempt number: the scheduler refuses a second schedule of the same attempt (Cloud Tasks
by task name, locally the timer), and the attempt only advances through a conditional write.
"""

from __future__ import annotations

from shared import run_record as rr
from shared.bootstrap import Services
from shared.run_record import RunRecord, Watch


def backoff_delay(services: Services, attempt: int) -> float:
    s = services.settings
    return min(s.monitor_max_delay_s, s.monitor_initial_delay_s * 2 ** min(attempt, 30))


def watch_job(
    record: RunRecord, *, kind: str, ref: str, next_stage: str, now: float, delay_s: float, started_by: str
) -> Watch:
    """Sets the run's watch (mutates the record; call inside a conditional update)."""
    record.watch = Watch(kind=kind, ref=ref, next_stage=next_stage, since=now, started_by=started_by)
    record.log(now, "monitor", "watching", kind=kind, ref=ref)
    return rr.next_look(record, now, delay_s)


def schedule_look(services: Services, run_id: str, watch: Watch) -> bool:
    """Asks the scheduler for the watch's numbered look; a repeat of the same look is refused."""
    delay = max(0.0, (watch.next_look_at or services.clock()) - services.clock())
    return services.chain.schedule("monitor", run_id, delay_s=delay, attempt=watch.look)


def look_is_overdue(services: Services, watch: Watch) -> bool:
    """True when the scheduled look is long past due, i.e. it was lost (a process died); not just late."""
    if watch.next_look_at is None:
        return True
    grace = 2 * services.settings.monitor_max_delay_s + 60
    return services.clock() > watch.next_look_at + grace
