"""The webhook's stage: open the run record, tell Labelbox we are exporting, hand off to `etl`.

It answers at once whatever the run's size: one platform lookup, one conditional create, one status
update and one hand-off. Labelbox (and any proxy in between) may deliver a webhook more than once; the
conditional create makes exactly one delivery the run's creator, and only the creator hands off.

"Train model" clicked again on a run that exists (Labelbox sends no `force`):
- FAILED: the run resumes from the stage that failed, keeping everything done before it;
- RUNNING: nothing starts, unless nothing is working on it: a stage whose invocation died is handed
  to a new one (which takes it over), a stage whose shards have all been silent past a lease fans
  out again to the unfinished ones, and a lost monitor look is scheduled again;
- COMPLETE: nothing starts; the answer says how to train again (a new model run, or `"force": true`).
`"force": true` restarts a finished run from the beginning.
"""

from __future__ import annotations

from shared.chain.port import HandOffFailed
from shared.domain import run_record as rr
from shared.domain.run_record import RunRecord, RunStatus, Stage
from shared.domain.shards import stalled_shards
from shared.platform.port import ModelRunNotFound, ModelRunStatus, PlatformError
from shared.services import Services
from shared.stages.runner import StageAnswer, fail
from shared.stages.watch import ensure_monitor
from shared.webhook import TrainingRequest, parse_training_request

FIRST_STAGE = Stage.ETL


def _summary(record: RunRecord, services: Services) -> dict[str, object]:
    return {
        "run_id": record.run_id,
        "status": record.status.value,
        "model_type": record.model_type,
        "stages": {name: s.state.value for name, s in record.stages.items()},
        "run_record": services.runs.uri(record.run_id),
        "error": record.error,
    }


def on_train_model(services: Services, body: bytes) -> StageAnswer:
    """Labelbox's "Train model" webhook, signature already checked: parse it (Rejected if malformed)
    and open or resume the run."""
    return start_training_run(services, parse_training_request(body, services.settings.model_types()))


def list_model_types(services: Services, body: bytes) -> StageAnswer:
    """`GET /models`: the model types this deployment can train, as Labelbox expects (`{name: {}}`)."""
    return StageAnswer(200, {name: {} for name in services.settings.model_types()})


def start_training_run(services: Services, request: TrainingRequest) -> StageAnswer:
    now = services.clock()
    run_id = request.model_run_id
    existing = services.runs.get(run_id)
    if existing is None:
        try:
            services.platform.get_model_run(request.model_run_id)
        except ModelRunNotFound as exc:  # nothing is written for a model run that does not exist
            return StageAnswer(404, {"run_id": run_id, "error": services.scrub(str(exc))})
        except PlatformError as exc:
            return StageAnswer(
                502, {"run_id": run_id, "error": services.scrub(f"could not look up the model run: {exc}")}
            )
        record = rr.new_run(
            run_id=run_id,
            model_run_id=request.model_run_id,
            model_type=request.model_type.name,
            task=request.model_type.task.value,
            backend=request.model_type.trainer(services.settings.backend).value,
            model_id=request.model_id,
            now=now,
        )
        if services.runs.create(record):
            return _hand_off(services, record, FIRST_STAGE, key=f"etl:from:model_run:{record.restarts}")
        existing = services.runs.get(run_id)
        assert existing is not None
    return _again(services, request, existing)


def _again(services: Services, request: TrainingRequest, existing: RunRecord) -> StageAnswer:
    """A webhook for a run that already has a record."""
    now = services.clock()
    summary = {**_summary(existing, services), "duplicate": True}
    if existing.status is RunStatus.RUNNING:
        stalled = rr.stalled_stage(
            existing, now, lease_s=services.settings.stage_lease_seconds, owner_alive=services.owner_alive
        )
        if stalled:  # the stage's invocation died: the click hands it to a new one, which takes it over
            key = f"{stalled}:nudge:{existing.restarts}:{len(existing.events)}"
            return _hand_off(services, existing, stalled, key=key, resumed=True)
        sharded = stalled_shards(existing, now, lease_s=services.settings.stage_lease_seconds)
        if sharded:  # shards silent past a lease: the stage fans out again, to its unfinished shards
            key = f"{sharded}:nudge-shards:{existing.restarts}:{len(existing.events)}"
            return _hand_off(services, existing, sharded, key=key, resumed=True)
        if ensure_monitor(services, existing):  # the scheduled look was lost: look now
            return StageAnswer(200, {**summary, "message": "run in progress; its lost monitor look was rescheduled"})
        working = [name for name, s in existing.stages.items() if s.state.value == "running"]
        waiting = f"; waiting on {existing.watch.kind.replace('_', ' ')}" if existing.watch else ""
        note = f"run already in progress ({', '.join(working) or 'between stages'}{waiting}); nothing started"
        return StageAnswer(200, {**summary, "message": note})
    if request.force:

        def restart(r: RunRecord) -> bool:
            if r.status is RunStatus.RUNNING:  # somebody restarted it between our read and write
                return False
            rr.restart(r, now)
            r.model_type, r.task = request.model_type.name, request.model_type.task.value
            r.backend = request.model_type.trainer(services.settings.backend).value
            r.model_id = request.model_id or r.model_id
            return True

        record, restarted = services.runs.update(existing.run_id, restart)
        if not restarted:
            return StageAnswer(200, {**_summary(record, services), "duplicate": True, "message": "already restarted"})
        return _hand_off(services, record, FIRST_STAGE, key=f"etl:from:model_run:{record.restarts}")
    if existing.status is RunStatus.COMPLETE:
        report = existing.artifacts.get("report")
        note = (
            "run already complete" + (f" (report: {report})" if report else "") + "; nothing started. To train "
            'again, create a new model run and click Train model there, or POST this webhook with "force": true'
        )
        return StageAnswer(200, {**summary, "message": note})

    def resume(r: RunRecord) -> str | None:
        if r.status is not RunStatus.FAILED:  # another click resumed it between our read and write
            return None
        stage = rr.failed_stage(r) or FIRST_STAGE
        r.resumes += 1
        r.status, r.error = RunStatus.RUNNING, None
        r.log(now, Stage.MODEL_RUN, "run_resumed", from_stage=stage, resumes=r.resumes)
        return stage

    record, stage = services.runs.update(existing.run_id, resume)
    if stage is None:
        return StageAnswer(200, {**_summary(record, services), "duplicate": True, "message": "already resumed"})
    return _hand_off(services, record, stage, key=f"{stage}:resume:{record.restarts}:{record.resumes}", resumed=True)


def _hand_off(services: Services, record: RunRecord, stage: str, *, key: str, resumed: bool = False) -> StageAnswer:
    run_id = record.run_id
    status = ModelRunStatus.EXPORTING_DATA if stage == FIRST_STAGE else ModelRunStatus.TRAINING_MODEL
    try:
        services.platform.update_status(
            record.model_run_id,
            status,
            metadata={"run_record": services.runs.uri(run_id), "model_type": record.model_type},
        )
        _r, first = services.runs.update(run_id, lambda r: rr.mark_handoff(r, key, services.clock()))
        if first:
            services.chain.hand_off(stage, run_id, key=key)
    except HandOffFailed as exc:
        message = services.scrub(f"{exc}; once it is reachable, re-run {exc.stage} with curl")
        fail(services, run_id, exc.stage, message)
        return StageAnswer(502, {"run_id": run_id, "error": message})
    except Exception as exc:
        message = services.scrub(f"could not start the run: {type(exc).__name__}: {exc}")
        fail(services, run_id, stage, message)
        return StageAnswer(502, {"run_id": run_id, "error": message})
    message = f"run resumed from {stage}" if resumed else "run started"
    return StageAnswer(202, {**_summary(record, services), "duplicate": False, "message": message})
