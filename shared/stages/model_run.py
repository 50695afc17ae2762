"""The webhook's stage: open the run record, tell Labelbox we are exporting, hand off to `etl`.

It answers at once whatever the run's size: all it does is one conditional create, one status update
and one hand-off. Labelbox (and any proxy in between) may deliver a webhook more than once; the
conditional create makes exactly one delivery the run's creator, and only the creator hands off.
"""

from __future__ import annotations

from shared import run_record as rr
from shared.bootstrap import Services
from shared.chain.port import HandOffFailed
from shared.platform.port import ModelRunStatus
from shared.run_record import RunRecord, RunStatus
from shared.stages.runner import StageAnswer, fail
from shared.webhook import TrainingRequest


def _summary(record: RunRecord, services: Services) -> dict[str, object]:
    return {
        "run_id": record.run_id,
        "status": record.status.value,
        "model_type": record.model_type,
        "stages": {name: s.state.value for name, s in record.stages.items()},
        "run_record": services.runs.uri(record.run_id),
        "error": record.error,
    }


def start_training_run(services: Services, request: TrainingRequest) -> StageAnswer:
    now = services.clock()
    run_id = request.model_run_id
    record = rr.new_run(
        run_id=run_id,
        model_run_id=request.model_run_id,
        model_type=request.model_type.name,
        task=request.model_type.task.value,
        backend=services.settings.backend.value,
        model_id=request.model_id,
        now=now,
    )
    if not services.runs.create(record):
        existing = services.runs.get(run_id)
        assert existing is not None
        if not request.force or existing.status is RunStatus.RUNNING:
            note = (
                "run already in progress; nothing started"
                if existing.status is RunStatus.RUNNING
                else (f'run already {existing.status.value}; send "force": true to restart it')
            )
            return StageAnswer(200, {**_summary(existing, services), "duplicate": True, "message": note})

        def restart(r: RunRecord) -> bool:
            if r.status is RunStatus.RUNNING:  # somebody restarted it between our read and write
                return False
            rr.restart(r, now)
            r.model_type, r.task, r.model_id = record.model_type, record.task, request.model_id or r.model_id
            return True

        record, restarted = services.runs.update(run_id, restart)
        if not restarted:
            return StageAnswer(200, {**_summary(record, services), "duplicate": True, "message": "already restarted"})

    try:
        services.platform.update_status(
            request.model_run_id,
            ModelRunStatus.EXPORTING_DATA,
            metadata={"run_record": services.runs.uri(run_id), "model_type": request.model_type.name},
        )
        key = f"etl:from:model_run:{record.restarts}"
        _r, first = services.runs.update(run_id, lambda r: rr.mark_handoff(r, key, services.clock()))
        if first:
            services.chain.hand_off("etl", run_id)
    except HandOffFailed as exc:
        message = services.scrub(f"{exc}; once it is reachable, re-run {exc.stage} with curl")
        fail(services, run_id, exc.stage, message)
        return StageAnswer(502, {"run_id": run_id, "error": message})
    except Exception as exc:
        message = services.scrub(f"could not start the run: {type(exc).__name__}: {exc}")
        fail(services, run_id, "model_run", message)
        return StageAnswer(502, {"run_id": run_id, "error": message})
    return StageAnswer(202, {**_summary(record, services), "duplicate": False, "message": "run started"})
