"""Uploading a run's predictions and per-row metrics to the labeling platform, in recorded chunks.

Each chunk is one prediction import named from the run, its restarts and the chunk's index, and is
recorded in the run record as soon as the platform has taken it; a re-run (after a crash, or forced)
skips every chunk recorded, so nothing is uploaded twice.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.domain.run_record import RunRecord
from shared.evaluation import Evaluated, chunk_by_rows
from shared.platform.port import UploadResult
from shared.stages.runner import StageContext

UPLOAD_ROWS_PER_CHUNK = 2_000  # data rows per import; each row carries its predictions and metrics
MAX_ERROR_SAMPLES = 20


def upload_predictions(ctx: StageContext, record: RunRecord, evaluated: Evaluated) -> dict[str, Any]:
    """Uploads chunk by chunk; returns what the platform accepted and refused, over every call so far."""
    services = ctx.services
    chunks = chunk_by_rows(evaluated.upload_rows, UPLOAD_ROWS_PER_CHUNK)
    uploaded = set(ctx.record().uploads.get("chunks", {}))
    for index, rows in enumerate(chunks):
        name = f"lbchain-{ctx.run_id}-r{record.restarts}-{index:05d}"
        if name in uploaded:
            continue
        result = services.platform.upload_predictions(record.model_run_id, name, rows)

        def done(r: RunRecord, name: str = name, result: UploadResult = result) -> None:
            r.uploads.setdefault("chunks", {})[name] = {"accepted": result.accepted, "rejected": len(result.errors)}
            samples = r.uploads.setdefault("error_samples", [])
            for error in result.errors[: max(0, MAX_ERROR_SAMPLES - len(samples))]:
                samples.append(error)

        ctx.update(done)
        ctx.heartbeat(uploaded_chunks=index + 1, chunks=len(chunks))
    uploads = ctx.record().uploads
    recorded = uploads.get("chunks", {})
    reasons: Counter[str] = Counter()
    for error in uploads.get("error_samples", []):
        for e in error.get("errors", []) or [{}]:
            reasons[str(e.get("message", "unknown"))[:120]] += 1
    return {
        "chunks": recorded,
        "accepted": sum(c["accepted"] for c in recorded.values()),
        "rejected": sum(c["rejected"] for c in recorded.values()),
        "error_reasons": dict(reasons),
    }
