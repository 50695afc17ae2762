"""Model-assisted labeling: the rows to label next go to a labeling project, with the model's pre-labels.

Opt-in: only a run whose settings name a project (`LABEL_NEXT_PROJECT_ID`, or the run's
`train.label_next_project`) sends, and only when it ranked rows. The fan-in calls it last, once the
results, the report and COMPLETE are written, so a failure here loses nothing: the run stays COMPLETE
and the outcome (rows sent, rows the project had already, or why it failed and what to change) is in
the run record (`metrics.label_next.sent`) and the model run's status (`label_next_sent`).

Idempotent: the batch is named after the run and its restarts (`label_next_batch_name`), the platform
sends nothing when the project already has a batch of that name, and a send the record holds as done
is not asked again. A failed send is retried by the next fan-in (re-run inference with force).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from shared.domain.label_next import label_next_batch_name
from shared.domain.model_types import Task
from shared.domain.run_record import RunRecord
from shared.platform.port import ModelRunStatus, PlatformError, SendResult, cut_message
from shared.report.assemble import LabelNextCandidate
from shared.run_settings import RunSettings
from shared.services import Services

log = logging.getLogger(__name__)

RETRY_HINT = "the run's results are intact; re-run inference with force to send again"
SHOWN_CHARS = 500  # a status metadata value (only the error message has Labelbox's 255-character limit)


def features_of_run(record: RunRecord, label_next: Sequence[LabelNextCandidate]) -> list[str]:
    """The features the run's pre-labels use: the question of a classification run, the feature names a
    detection run trained on (its label map), else those its predictions on these rows name."""
    if Task(record.task).is_classification:
        question = record.artifacts.get("classification_question")
        return [question] if question else []
    trained = json.loads(record.artifacts.get("label_map") or "{}")
    if trained:
        return sorted(set(trained.values()))
    return sorted({item.label for candidate in label_next for item in candidate.predictions})


def _outcome(result: SendResult) -> dict[str, Any]:
    return {
        "project": result.project_id,
        "batch": result.batch_name,
        "batch_id": result.batch_id,
        "import_id": result.import_id,
        "sent": result.sent,
        "skipped": result.skipped_in_project,
        "already_sent": result.already_sent,
        "unmatched_features": list(result.unmatched_features),
    }


def shown(outcome: dict[str, Any]) -> str:
    """The status line: what went where, or why nothing did."""
    project = outcome["project"]
    if outcome.get("error"):
        return cut_message(f"failed: {outcome['error']}; {RETRY_HINT}", SHOWN_CHARS)
    skipped = int(outcome.get("skipped", 0))
    if not outcome.get("sent"):
        text = f"no rows sent to project {project}: all {skipped} are there already"
    else:
        there = f", {skipped} already there" if skipped else ""
        before = ", sent before" if outcome.get("already_sent") else ""
        text = f"{outcome['sent']} rows to project {project} (batch {outcome['batch']}{there}{before})"
    if outcome.get("unmatched_features"):
        text += f"; not pre-labeled, the project's ontology lacks: {', '.join(outcome['unmatched_features'])}"
    return cut_message(text, SHOWN_CHARS)


def send_label_next(
    services: Services,
    before: RunRecord,
    settings: RunSettings,
    label_next: Sequence[LabelNextCandidate],
) -> dict[str, Any] | None:
    """Sends the rows, records the outcome and shows it in the status; never raises, and returns the
    outcome (None when there was nothing to send). `before` is the record as the fan-in found it, so a
    send it already holds as done is not asked again."""
    project = settings.label_next_project
    if not project or not label_next:
        return None
    run_id, batch = before.run_id, label_next_batch_name(before.run_id, before.restarts)
    done = (before.metrics.get("label_next") or {}).get("sent")
    if (
        isinstance(done, dict)
        and (done.get("project"), done.get("batch")) == (project, batch)
        and not done.get("error")
    ):
        outcome: dict[str, Any] = done
    else:
        outcome = _send(services, before, settings, label_next, batch)

    def record(r: RunRecord) -> None:
        r.metrics.setdefault("label_next", {})["sent"] = outcome

    try:
        services.runs.update(run_id, record)
        services.platform.update_status(
            before.model_run_id, ModelRunStatus.COMPLETE, metadata={"label_next_sent": shown(outcome)}
        )
    except Exception as exc:  # the run is complete already; its results stand
        log.error("recording the label-next send of run %s failed: %s", run_id, services.scrub(repr(exc)))
    return outcome


def _send(
    services: Services,
    record: RunRecord,
    settings: RunSettings,
    label_next: Sequence[LabelNextCandidate],
    batch: str,
) -> dict[str, Any]:
    project = settings.label_next_project
    try:
        result = services.platform.send_to_project(
            record.model_run_id,
            project,
            [candidate.row.data_row_id for candidate in label_next],
            batch_name=batch,
            priority=settings.label_next_priority,
            features=features_of_run(record, label_next),
        )
    except PlatformError as exc:
        error = services.scrub(str(exc))
    except Exception as exc:  # a bug here must not fail a run whose results are written
        log.exception("sending the rows to label next of run %s crashed", record.run_id)
        error = services.scrub(f"internal error: {type(exc).__name__}: {exc}")
    else:
        return _outcome(result)
    return {"project": project, "batch": batch, "sent": 0, "skipped": 0, "error": cut_message(error, 500)}
