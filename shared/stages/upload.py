"""Uploading a run's predictions and per-row metrics to the labeling platform, in marked chunks.

Each delivery shard cuts its rows into chunks, each one prediction import named from the run, its
restarts, the shard and the chunk's index. As soon as the platform has taken a chunk, a marker object
records it (with its counts); a re-delivery of the shard, or a forced re-run, skips every chunk marked,
so nothing is uploaded twice. The fan-in adds the shards' chunks to the run record's `uploads`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.domain.run_paths import RunPaths
from shared.evaluation import Evaluated, chunk_by_rows
from shared.services import Services
from shared.store.port import NotFound

UPLOAD_ROWS_PER_CHUNK = 2_000  # data rows per import; each row carries its predictions and metrics
MAX_ERROR_SAMPLES = 20


def chunk_name(run_id: str, restarts: int, shard: int, chunk: int) -> str:
    """The import's name: the same chunk of the same run (and restart) is always the same name."""
    return f"lbchain-{run_id}-r{restarts}-s{shard:05d}-{chunk:03d}"


@dataclass
class ChunkUpload:
    """What the platform made of one import: rows accepted, rows refused, a few of its errors."""

    accepted: int
    rejected: int
    error_samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "error_samples": self.error_samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkUpload:
        return cls(int(data["accepted"]), int(data["rejected"]), list(data.get("error_samples", [])))


def upload_chunks(
    services: Services,
    run_id: str,
    model_run_id: str,
    evaluated: Evaluated,
    *,
    name_of: Callable[[int], str],
    before_upload: Callable[[], None] = lambda: None,
) -> dict[str, ChunkUpload]:
    """Uploads every chunk not marked yet, marking each as the platform takes it; returns every chunk's
    outcome by name, in chunk order (marked ones as their marker says). `before_upload` runs before each
    upload: a shard checks there that it still owns its work, so a shard taken over stops uploading."""
    store, paths = services.store, RunPaths(run_id)
    out: dict[str, ChunkUpload] = {}
    for index, rows in enumerate(chunk_by_rows(evaluated.upload_rows, UPLOAD_ROWS_PER_CHUNK)):
        name = name_of(index)
        marker = paths.upload_marker(name)
        try:
            out[name] = ChunkUpload.from_json(json.loads(store.read(marker)))
            continue
        except NotFound:
            pass
        before_upload()
        result = services.platform.upload_predictions(model_run_id, name, rows)
        done = ChunkUpload(result.accepted, len(result.errors), list(result.errors[:MAX_ERROR_SAMPLES]))
        store.write(marker, json.dumps(done.to_json()).encode(), content_type="application/json")
        out[name] = done
    return out


def recorded_uploads(recorded: Mapping[str, Any], uploads: Iterable[tuple[str, ChunkUpload]]) -> dict[str, Any]:
    """The run record's `uploads` with the chunks of this delivery added: `chunks` (every import ever
    made for the run, by name: accepted and rejected rows), `accepted` and `rejected` over them,
    `error_samples` (the first MAX_ERROR_SAMPLES errors, a chunk's only the first time it is recorded)
    and `error_reasons` (those samples counted by message)."""
    chunks = dict(recorded.get("chunks", {}))
    samples: list[dict[str, Any]] = list(recorded.get("error_samples", []))
    for name, upload in uploads:
        if name not in chunks:
            samples.extend(upload.error_samples[: max(0, MAX_ERROR_SAMPLES - len(samples))])
        chunks[name] = {"accepted": upload.accepted, "rejected": upload.rejected}
    return {
        "chunks": chunks,
        "error_samples": samples,
        "accepted": sum(c["accepted"] for c in chunks.values()),
        "rejected": sum(c["rejected"] for c in chunks.values()),
        "error_reasons": error_reasons(samples),
    }


def error_reasons(samples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Upload errors counted by their message (cut to 120 characters)."""
    reasons: Counter[str] = Counter()
    for error in samples:
        for e in error.get("errors", []) or [{}]:
            reasons[str(e.get("message", "unknown"))[:120]] += 1
    return dict(reasons)
