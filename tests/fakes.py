"""The fakes of the chain's ports that several test files share, in one place.

- `ScriptedBackend`: a training backend (our own port) whose jobs are in whatever state a test sets;
- `RecordingChain`: a chain that records every hand-off and scheduled look instead of calling anyone;
- `RecordingModelRuns`: the real file-backed local platform, recording what it was asked (media opened,
  exports started, predictions uploaded) and optionally answering with a scripted export state;
- `StageSink`: a real HTTP server on 127.0.0.1 standing in for a downstream stage: it answers each POST
  with the next scripted status and records what it got.

The big fakes that are servers of their own (the fake Labelbox, the Google stand-ins, the GCS emulator)
live with their own modules: `tests/platform/fake_labelbox.py`, `tests/cloud/`, `tests/store/gcs_emulator.py`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.domain.model_types import Task
from shared.platform.local_model_run import LocalModelRuns
from shared.platform.port import ExportState, ExportStatus, SendResult, UploadResult
from shared.training.port import (
    DatasetRequest,
    JobRef,
    JobState,
    JobStatus,
    PredictionRequest,
    RequestRefused,
    TrainingRequest,
)

# -- the training backend -----------------------------------------------------------------------------------


class ScriptedBackend:
    """Starts are idempotent by job key, as the real backends are: the same key gives the same job.

    Every call is recorded in `calls`; each kind of job reports the state its attribute holds."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.import_state = JobState.SUCCEEDED
        self.training_state = JobState.RUNNING
        self.prediction_state = JobState.RUNNING
        self.error: str | None = None
        self.deadline_s: float | None = None
        self.deadline_settings: list[dict[str, object]] = []  # the run settings each deadline was asked with
        self.trainings: dict[str, str] = {}  # job key -> pipeline
        self.predictions: dict[str, str] = {}  # job key -> batch prediction job
        self.prediction_requests: list[PredictionRequest] = []
        self.training_requests: list[TrainingRequest] = []
        self.refuse_training: str | None = None  # a start the backend refuses (RequestRefused), with this reason

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        self.calls.append("start_dataset_import")
        return JobRef("datasets/1/operations/7")

    def dataset_status(self, ref: str) -> JobStatus:
        self.calls.append(f"dataset_status {ref}")
        return JobStatus(self.import_state, result="datasets/1" if self.import_state is JobState.SUCCEEDED else None)

    def start_training(self, request: TrainingRequest) -> JobRef:
        self.calls.append(f"start_training {request.dataset}")
        self.training_requests.append(request)
        if self.refuse_training:
            raise RequestRefused(self.refuse_training)
        ref = self.trainings.setdefault(request.job_key, f"pipelines/{41 + len(self.trainings) + 1}")
        return JobRef(ref, link=f"https://console.example/{ref}")

    def training_status(self, ref: str) -> JobStatus:
        self.calls.append(f"training_status {ref}")
        result = "models/9" if self.training_state is JobState.SUCCEEDED else None
        return JobStatus(
            self.training_state,
            error=self.error,
            result=result,
            progress={"step": 3},
            link="https://console.example/pipelines/42",
        )

    def cancel_training(self, ref: str) -> None:
        self.calls.append(f"cancel_training {ref}")

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        self.deadline_settings.append(dict(settings))
        return self.deadline_s

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef:
        self.calls.append(f"start_batch_prediction {request.model}")
        self.prediction_requests.append(request)
        ref = self.predictions.setdefault(request.job_key, f"batchPredictionJobs/{len(self.predictions) + 1}")
        return JobRef(ref, link=f"https://console.example/{ref}")

    def batch_prediction_status(self, ref: str) -> JobStatus:
        self.calls.append(f"batch_prediction_status {ref}")
        succeeded = self.prediction_state is JobState.SUCCEEDED
        return JobStatus(self.prediction_state, error=self.error, result=self.output_dir(ref) if succeeded else None)

    def output_dir(self, ref: str) -> str:
        """Where the job `ref` "wrote" its files: a folder under its request's prefix, as Vertex names it."""
        request = next(r for r in self.prediction_requests if self.predictions[r.job_key] == ref)
        return f"{request.output_uri_prefix.rstrip('/')}/prediction-scripted-{ref.rsplit('/', 1)[-1]}"


# -- the chain ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandedOff:
    stage: str
    run_id: str
    key: str
    shard: int | None = None

    @property
    def internal(self) -> bool:
        """A call of a stage's own fan-out or fan-in, which the stage tests' world delivers itself."""
        return self.shard is not None or ":fan-in:" in self.key


class RecordingChain:
    """Hand-offs and scheduled looks, recorded; a repeat of the same (stage, run, attempt) look is refused.

    `handoffs` and `keys` list the hand-offs from one stage to another; a stage's calls of its own
    shards and fan-in wait in `calls` until `take` delivers them (as a queue would)."""

    def __init__(self) -> None:
        self.calls: list[HandedOff] = []
        self.schedules: list[tuple[str, str, int]] = []
        self.delays: list[float] = []
        self._named: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    @property
    def handoffs(self) -> list[tuple[str, str]]:
        return [(c.stage, c.run_id) for c in self.calls if not c.internal]

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.calls if not c.internal]

    def hand_off(self, stage: str, run_id: str, *, key: str, shard: int | None = None) -> None:
        with self._lock:
            self.calls.append(HandedOff(stage, run_id, key, shard))

    def take_internal(self) -> list[HandedOff]:
        """Removes and returns the shard and fan-in calls made so far, in order."""
        with self._lock:
            taken = [c for c in self.calls if c.internal]
            self.calls = [c for c in self.calls if not c.internal]
            return taken

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        with self._lock:
            self.schedules.append((stage, run_id, attempt))
            self.delays.append(delay_s)
            if (stage, run_id, attempt) in self._named:
                return False
            self._named.add((stage, run_id, attempt))
            return True


# -- the labeling platform -----------------------------------------------------------------------------------------


class RecordingModelRuns(LocalModelRuns):
    """The real local platform (a model-run folder, its labeling projects), recording what it is asked.

    With `export_state` set, every look at an export answers that state (and `export_error`) instead of
    the folder's own COMPLETE, so a test can keep an export running or make it fail."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[str] = []  # row_data of every media opened
        self.exports_started: list[str] = []  # model run ids
        self.uploads: list[tuple[str, int]] = []  # (import name, rows) of every prediction import
        self.sends: list[tuple[str, str, list[str]]] = []  # (project, batch name, data row ids) of every send
        self.export_state: ExportState | None = None
        self.export_error: str | None = None

    def open_media(self, row_data: str, *, model_run_id: str | None = None) -> Iterator[bytes]:
        self.opened.append(row_data)
        return super().open_media(row_data, model_run_id=model_run_id)

    def start_export(self, model_run_id: str) -> str:
        self.exports_started.append(model_run_id)
        return super().start_export(model_run_id)

    def export_status(self, task_id: str) -> ExportStatus:
        if self.export_state is None:
            return super().export_status(task_id)
        return ExportStatus(self.export_state, error=self.export_error)

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> UploadResult:
        self.uploads.append((name, len(rows)))
        return super().upload_predictions(model_run_id, name, rows)

    def send_to_project(
        self,
        model_run_id: str,
        project_id: str,
        data_row_ids: Sequence[str],
        *,
        batch_name: str,
        priority: int,
        features: Collection[str] = (),
    ) -> SendResult:
        self.sends.append((project_id, batch_name, list(data_row_ids)))
        return super().send_to_project(
            model_run_id, project_id, data_row_ids, batch_name=batch_name, priority=priority, features=features
        )


# -- a downstream stage over HTTP -----------------------------------------------------------------------------------

HANG = -1  # a scripted "status" that never answers (until the sink closes)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class StageSink:
    """A stand-in for a downstream stage on 127.0.0.1: answers each POST with the next scripted status
    (200 once the script is used up, `HANG` for no answer) and remembers every request."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[Received] = []
        self.got_request = threading.Event()
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.received.append(Received(self.path, dict(self.headers.items()), body))
                status = sink.script.pop(0) if sink.script else 200
                sink.got_request.set()
                if status == HANG:
                    sink.release.wait(10)
                    return
                payload = json.dumps({"status": status, "note": "scripted"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def calls(self) -> list[Any]:
        """The JSON bodies received, in order."""
        return [json.loads(r.body) for r in self.received]

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StageSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
