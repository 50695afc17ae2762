"""A stand-in for Vertex AI (aiplatform v1 REST): AutoML image datasets, training pipelines, batch prediction,
and custom jobs that really run.

The gapic `DatasetServiceClient`, `PipelineServiceClient`, `JobServiceClient` (and `ModelServiceClient.
get_model`) with `transport="rest"` and `ClientOptions(api_endpoint=standin.url)` talk to it unchanged.
It serves the paths of the installed `rest_base.py` files, including the long-running operation paths
that aiplatform 2.7.0's REST transport polls: `GET /ui/{name=projects/*/locations/*/datasets/*/operations/*}`
(the `/ui/` binding comes first in its http_options, so `create_dataset(...).result()`, `get_operation`
and `list_operations` go there, not to `/v1/`); `/v1/` is served too. Bodies are parsed strictly into the
installed protos (an unknown field is a 400) and answered from them, with integer enums when asked.

Every call needs an access token from the authority (401 otherwise). Resource names carry the project
NUMBER, as Vertex's do, though requests may name the project by id. Objects are read and written in
Cloud Storage through the storage client given (the GCS emulator in tests):
- `import_data` reads the JSONL files (a trailing `*` wildcard is expanded), checks each line against
  its import schema (bounding box, single- or multi-label classification) and that each image exists;
  bad lines become `partial_failures` in the operation metadata; no valid line fails the operation.
  The stand-in is stricter than Vertex on one point: a key the schema does not define is a bad line.
- a training pipeline is checked as Vertex refuses it (definition, model type, budget range, dataset
  with items, filter splits); it then moves QUEUED -> RUNNING -> SUCCEEDED over `training_polls` GETs
  and uploads a model that has memorised its training dataset.
- a batch prediction job reads its instances and writes `prediction-<model>-<time>/predictions_0000N.jsonl`
  (and `errors_0000N.jsonl` when some instances failed) as AutoML image does: the ground truth of each
  known image with a small deterministic jitter and high confidence, plus a low-confidence false positive.
- a custom job (one worker pool, one replica, `python_package_spec` only) is checked as Vertex refuses it,
  then really runs from a background thread: QUEUED -> PENDING (each package URI must exist in Cloud
  Storage, else FAILED) -> RUNNING (`python -m <python_module> <args>` in a fresh temp dir, in its own
  process group, with the Vertex env: `AIP_MODEL_DIR` etc. under `base_output_directory`, `CLOUD_ML_JOB_ID`,
  the spec's `env`, then the stand-in's `job_env`) -> SUCCEEDED on exit 0, FAILED with Vertex's
  "The replica workerpool0-0 exited with a non-zero status of N" otherwise. The packages are NOT installed:
  the module must be importable already (the tests put the repo on PYTHONPATH through `job_env`).

What it does NOT prove: real training or model quality, IAM, quotas, the service agent's access to the
bucket, long queueing and run times, image size/format limits beyond "Pillow can decode it", the
per-label minimums (10 images per label), Vertex's exact error wording, and whether Vertex writes an
empty errors file when no instance failed (this stand-in writes none); for custom jobs: that the packages
install in the executor image, machines, accelerators, multi-replica clusters (CLUSTER_SPEC, TF_CONFIG),
`scheduling.timeout`, and the service account the job runs as.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from google.api_core import exceptions as gexc
from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format
from google.rpc import status_pb2
from PIL import Image

from tests.cloud._http import (
    UNAUTHENTICATED_MESSAGE,
    GoogleApiError,
    LoopbackServer,
    bearer_token,
    google_error,
    parse_proto,
    proto_json,
    rfc3339,
    to_dict,
    wants_int_enums,
)
from tests.cloud.google_tokens import TokenAuthority

if TYPE_CHECKING:
    from google.cloud import storage

_SCHEMA = "gs://google-cloud-aiplatform/schema"
IMAGE_METADATA_SCHEMA = f"{_SCHEMA}/dataset/metadata/image_1.0.0.yaml"
IMAGE_DATA_ITEM_SCHEMA = f"{_SCHEMA}/dataset/dataitem/image_1.0.0.yaml"
BOUNDING_BOX_IMPORT = f"{_SCHEMA}/dataset/ioformat/image_bounding_box_io_format_1.0.0.yaml"
SINGLE_LABEL_IMPORT = f"{_SCHEMA}/dataset/ioformat/image_classification_single_label_io_format_1.0.0.yaml"
MULTI_LABEL_IMPORT = f"{_SCHEMA}/dataset/ioformat/image_classification_multi_label_io_format_1.0.0.yaml"
OD_DEFINITION = f"{_SCHEMA}/trainingjob/definition/automl_image_object_detection_1.0.0.yaml"
CLS_DEFINITION = f"{_SCHEMA}/trainingjob/definition/automl_image_classification_1.0.0.yaml"
_MOBILE_TYPES = {"MOBILE_TF_LOW_LATENCY_1", "MOBILE_TF_VERSATILE_1", "MOBILE_TF_HIGH_ACCURACY_1"}
# google/cloud/aiplatform/constants/base.py AUTOML_IMAGE_PREDICTION_MODEL_TYPES, less the Model Garden types
# (they need checkpoints and trainer configs this stand-in does not model); ranges from the schema protos.
MODEL_TYPES: Mapping[str, Mapping[str, tuple[int, int, int]]] = {
    "object_detection": {
        **{t: (20_000, 900_000, 216_000) for t in ("CLOUD_1", "CLOUD_HIGH_ACCURACY_1", "CLOUD_LOW_LATENCY_1")},
        **{t: (1_000, 100_000, 24_000) for t in _MOBILE_TYPES},
    },
    "classification": {
        **{t: (8_000, 800_000, 192_000) for t in ("CLOUD", "CLOUD_1")},
        **{t: (1_000, 100_000, 24_000) for t in _MOBILE_TYPES},
    },
}
_TASK_INPUT_KEYS = {
    "object_detection": {"modelType", "budgetMilliNodeHours", "disableEarlyStopping", "uptrainBaseModelId"},
    "classification": {
        "modelType",
        "budgetMilliNodeHours",
        "disableEarlyStopping",
        "multiLabel",
        "baseModelId",
        "uptrainBaseModelId",
    },
}
ML_USE_KEY = "aiplatform.googleapis.com/ml_use"
ML_USES = ("training", "validation", "test")
MAX_BOXES_PER_IMAGE = 500
DEFAULT_MAX_PREDICTIONS = 10
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_FILTER_TERM = re.compile(
    r"""\s*(?P<field>labels\.[A-Za-z0-9_./-]+|display_name|displayName|state)\s*(?P<op>=|:)\s*"""
    r"""(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]+))\s*"""
)
_PIPELINE_DONE = {"PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}
_JOB_DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
MAX_DISPLAY_NAME = 128
MAX_PACKAGE_URIS = 100
_LOG_TAIL_LINES = 50
_ERROR_LINE = re.compile(r"(?:[\w.-]+: )?error:", re.IGNORECASE)  # "error: x", argparse's "prog: error: x"


@dataclass(frozen=True)
class Box:
    label: str
    x_min: float
    x_max: float
    y_min: float
    y_max: float


@dataclass(frozen=True)
class ImportedItem:
    """One image of a dataset, with its ground truth as imported."""

    image_uri: str
    ml_use: str | None
    data_item_labels: dict[str, str]
    boxes: tuple[Box, ...] = ()
    labels: tuple[str, ...] = ()  # classification annotations


@dataclass
class _Operation:
    name: str
    kind: str  # "create" or "import"
    polls_left: int
    create_time: float
    work: Callable[[_Operation], None]
    done: bool = False
    error: dict[str, Any] | None = None
    response: Any = None  # a protobuf message
    partial_failures: list[dict[str, Any]] = field(default_factory=list)
    update_time: float = 0.0


@dataclass
class _Dataset:
    data: dict[str, Any]
    items: dict[str, ImportedItem] = field(default_factory=dict)


@dataclass
class _Model:
    data: dict[str, Any]
    task: str  # "object_detection" or "classification"
    multi_label: bool
    items: dict[str, ImportedItem]
    label_ids: dict[str, str]


@dataclass
class _Pipeline:
    data: dict[str, Any]
    task: str
    multi_label: bool
    dataset: str
    budget: int
    polls: int = 0
    cancel: bool = False
    failure: str | None = None


@dataclass
class _BatchJob:
    data: dict[str, Any]
    model: _Model
    polls: int = 0
    cancel: bool = False
    outputs: list[str] = field(default_factory=list)


@dataclass
class _CustomJob:
    data: dict[str, Any]
    module: str
    args: list[str]
    env: dict[str, str]  # what Vertex sets: the spec's env, AIP_*, CLOUD_ML_JOB_ID
    packages: list[str]
    failure: str | None = None  # fail_next_custom_job: ends FAILED with this, without running
    cancel: bool = False
    deleted: bool = False
    process: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    directory: Path | None = None  # holds work/ (its cwd), stdout.log, stderr.log
    log: str | None = None  # stdout + stderr, once it ended


class VertexStandIn(LoopbackServer):
    """Vertex AI AutoML image on loopback, reading and writing GCS through `storage_client`.

    Knobs (attributes, changeable while running): `dataset_create_polls`, `import_polls`,
    `training_polls`, `batch_polls` (GETs answered "not done yet" before the resource finishes);
    `prediction_lines_per_file`; `fail_training` (a message: every pipeline that finishes from now on
    FAILS with it; `fail_pipeline(name, message)` for one); `fail_instances` (image uri suffixes whose
    prediction becomes an error line); `fail_next_custom_job(message)` (the next custom job created ends
    FAILED with it, without running). Custom jobs run `[python, "-m", module, *args]` (`python` defaults to
    this interpreter) with this process's environment, the job's Vertex env, then `job_env` on top.
    Inspection: `datasets()`, `items(dataset)`, `pipelines()`, `models()`, `batch_jobs()`, `custom_jobs()`,
    `custom_job_log(name)`, `wait_custom_jobs(timeout_s)`, `operations()`, `output_uris(job)`, `requests`
    (every API call); `register_model(...)` makes a model without a pipeline. `stop()` kills the process
    groups of the custom jobs still running.
    """

    def __init__(
        self,
        authority: TokenAuthority,
        storage_client: storage.Client,
        *,
        project_id: str = "test-project",
        project_number: str = "123456789",
        location: str = "us-central1",
        dataset_create_polls: int = 0,
        import_polls: int = 1,
        training_polls: int = 2,
        batch_polls: int = 1,
        prediction_lines_per_file: int = 100,
        fail_training: str | None = None,
        fail_instances: Collection[str] = (),
        python: str = sys.executable,
        job_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("vertex-stand-in")
        self.authority = authority
        self.storage = storage_client
        self.project_id = project_id
        self.project_number = project_number
        self.location = location
        self.dataset_create_polls = dataset_create_polls
        self.import_polls = import_polls
        self.training_polls = training_polls
        self.batch_polls = batch_polls
        self.prediction_lines_per_file = prediction_lines_per_file
        self.fail_training = fail_training
        self.fail_instances = tuple(fail_instances)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._datasets: dict[str, _Dataset] = {}
        self._operations: dict[str, _Operation] = {}
        self._pipelines: dict[str, _Pipeline] = {}
        self._models: dict[str, _Model] = {}
        self._jobs: dict[str, _BatchJob] = {}
        self.python = python
        self.job_env = dict(job_env or {})
        self._custom_jobs: dict[str, _CustomJob] = {}
        self._fail_next_custom_job: str | None = None
        self._location_operations: dict[str, operations_pb2.Operation] = {}
        self._job_root: Path | None = None
        self._stopping = False

    # -- inspection ----------------------------------------------------------------------------

    @property
    def parent(self) -> str:
        return f"projects/{self.project_number}/locations/{self.location}"

    def datasets(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(d.data)) for d in self._datasets.values()]

    def items(self, dataset: str) -> list[ImportedItem]:
        with self._lock:
            return list(self._dataset(self._canonical(dataset, "datasets")).items.values())

    def pipelines(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(p.data)) for p in self._pipelines.values()]

    def models(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(m.data)) for m in self._models.values()]

    def batch_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(j.data)) for j in self._jobs.values()]

    def operations(self) -> list[str]:
        with self._lock:
            return list(self._operations)

    def output_uris(self, job: str) -> list[str]:
        with self._lock:
            return list(self._jobs[self._canonical(job, "batchPredictionJobs")].outputs)

    def fail_pipeline(self, name: str, message: str) -> None:
        """The pipeline ends FAILED with `message` when it would otherwise succeed."""
        with self._lock:
            self._pipelines[self._canonical(name, "trainingPipelines")].failure = message

    def custom_jobs(self) -> list[dict[str, Any]]:
        """The custom jobs as `GET` shows them (deleted ones left out)."""
        with self._lock:
            return [json.loads(json.dumps(j.data)) for j in self._custom_jobs.values() if not j.deleted]

    def custom_job_log(self, name: str) -> str:
        """What the job's process wrote: its stdout, then its stderr (so far, while it runs)."""
        with self._lock:
            job = self._custom_jobs[self._canonical(name, "customJobs")]
            if job.log is not None:
                return job.log
            return _read_log(job.directory)

    def wait_custom_jobs(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Waits until every custom job has ended; TimeoutError naming those still going after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = [(name, j.thread) for name, j in self._custom_jobs.items() if j.thread is not None]
        for _, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        going = [name for name, thread in threads if thread.is_alive()]
        if going:
            raise TimeoutError(f"custom jobs still going after {timeout_s} s: {going}")
        return self.custom_jobs()

    def fail_next_custom_job(self, message: str) -> None:
        """The next custom job created ends FAILED with `message` (code 13) without running its module."""
        with self._lock:
            self._fail_next_custom_job = message

    def start(self) -> VertexStandIn:
        with self._lock:
            self._stopping = False
        super().start()
        return self

    def stop(self) -> None:
        """Stops serving, then kills the custom jobs' process groups and waits for their threads."""
        super().stop()
        with self._lock:
            self._stopping = True
            jobs = list(self._custom_jobs.values())
            for job in jobs:
                if job.log is None:
                    job.cancel = True
                    _kill(job)
        for job in jobs:
            if job.thread is not None:
                job.thread.join(30)
        with self._lock:
            if self._job_root is not None:
                shutil.rmtree(self._job_root, ignore_errors=True)
                self._job_root = None

    def register_model(
        self,
        display_name: str,
        items: Iterable[ImportedItem],
        *,
        task: str = "object_detection",
        multi_label: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """A model as a finished pipeline would upload it, for tests that start at batch prediction."""
        with self._lock:
            model = self._new_model(display_name, dict(labels or {}), task, multi_label, list(items), None)
            return f"{model.data['name']}@{model.data['versionId']}"

    # -- plumbing ------------------------------------------------------------------------------

    def _new_id(self, kind: int) -> str:
        return str(kind * 10**18 + next(self._ids))

    def _canonical(self, name: str, collection: str) -> str:
        """A resource name with the project number; accepts the project id, or a bare resource id."""
        if re.fullmatch(r"\d+", name):
            return f"{self.parent}/{collection}/{name}"
        match = re.fullmatch(rf"projects/([^/]+)/locations/([^/]+)/{collection}/([^/@]+)(@[^/]+)?", name)
        if not match:
            raise GoogleApiError(400, f"Invalid resource name {name!r} for collection {collection}")
        self._check_parent(match[1], match[2])
        return f"{self.parent}/{collection}/{match[3]}"

    def _check_parent(self, project: str, location: str) -> None:
        if project not in (self.project_id, self.project_number):
            raise GoogleApiError(403, f"Permission denied on resource project {project}.")
        if location != self.location:
            raise GoogleApiError(
                400, f"Location {location} is not served by this endpoint; use {location}-aiplatform.googleapis.com"
            )

    def _dataset(self, name: str) -> _Dataset:
        found = self._datasets.get(name)
        if found is None:
            raise GoogleApiError(404, f"The Dataset does not exist: {name}")
        return found

    def build_app(self) -> Flask:
        app = Flask("vertex-stand-in")
        p = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("POST", rf"{p}/datasets", self._create_dataset),
            ("GET", rf"{p}/datasets", self._list_datasets),
            ("GET", rf"{p}/datasets/(?P<rid>[^/:]+)", self._get_dataset),
            ("POST", rf"{p}/datasets/(?P<rid>[^/:]+):import", self._import_data),
            ("GET", rf"{p}/datasets/(?P<rid>[^/:]+)/operations", self._list_operations),
            ("GET", rf"{p}/datasets/(?P<rid>[^/:]+)/operations/(?P<op>[^/:]+)", self._get_operation),
            ("POST", rf"{p}/trainingPipelines", self._create_pipeline),
            ("GET", rf"{p}/trainingPipelines", self._list_pipelines),
            ("GET", rf"{p}/trainingPipelines/(?P<rid>[^/:]+)", self._get_pipeline),
            ("POST", rf"{p}/trainingPipelines/(?P<rid>[^/:]+):cancel", self._cancel_pipeline),
            ("POST", rf"{p}/batchPredictionJobs", self._create_job),
            ("GET", rf"{p}/batchPredictionJobs", self._list_jobs),
            ("GET", rf"{p}/batchPredictionJobs/(?P<rid>[^/:]+)", self._get_job),
            ("POST", rf"{p}/batchPredictionJobs/(?P<rid>[^/:]+):cancel", self._cancel_job),
            ("GET", rf"{p}/models/(?P<rid>[^/:]+)", self._get_model),
            ("POST", rf"{p}/customJobs", self._create_custom_job),
            ("GET", rf"{p}/customJobs", self._list_custom_jobs),
            ("GET", rf"{p}/customJobs/(?P<rid>[^/:]+)", self._get_custom_job),
            ("POST", rf"{p}/customJobs/(?P<rid>[^/:]+):cancel", self._cancel_custom_job),
            ("DELETE", rf"{p}/customJobs/(?P<rid>[^/:]+)", self._delete_custom_job),
            ("GET", rf"{p}/operations/(?P<op>[^/:]+)", self._get_location_operation),
        ]
        table = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]

        @app.route("/<prefix>/<path:rest>", methods=["GET", "POST", "DELETE", "PATCH"])
        def dispatch(prefix: str, rest: str) -> Response:
            caller = self.authority.identity_of_access_token(bearer_token(request.headers))
            try:
                if caller is None:
                    raise GoogleApiError(401, UNAUTHENTICATED_MESSAGE)
                if prefix not in ("v1", "ui"):
                    raise GoogleApiError(404, f"The stand-in does not serve {request.path}")
                response = self._route(table, rest)
            except GoogleApiError as exc:
                response = google_error(exc.code, exc.message, exc.status)
            self.record(request, identity=caller, status=response.status_code)
            return response

        return app

    def _route(self, table: list[tuple[str, re.Pattern[str], Callable[..., Response]]], rest: str) -> Response:
        for method, pattern, handler in table:
            match = pattern.fullmatch(rest)
            if match and method == request.method:
                args = match.groupdict()
                self._check_parent(args.pop("project"), args.pop("location"))
                with self._lock:
                    return handler(**args)
        raise GoogleApiError(404, f"The stand-in does not serve {request.method} {request.path}")

    def _answer(self, message: Any) -> Response:
        return proto_json(message, int_enums=wants_int_enums(request))

    def _answer_dict(self, data: Mapping[str, Any], message_type: Any) -> Response:
        return self._answer(json_format.ParseDict(data, message_type.pb()()))

    def _page(self, resources: list[dict[str, Any]], response_type: Any, field_name: str) -> Response:
        chosen = [r for r in resources if _matches(r, _parse_filter(request.args.get("filter", "")))]
        size = int(request.args.get("pageSize") or 100)
        start = int(request.args.get("pageToken") or 0)
        body: dict[str, Any] = {field_name: chosen[start : start + size]}
        if start + size < len(chosen):
            body["nextPageToken"] = str(start + size)
        return self._answer_dict(body, response_type)

    # -- datasets and their operations ---------------------------------------------------------

    def _create_dataset(self) -> Response:
        dataset = parse_proto(request.get_data(), v1.Dataset.pb()())
        if not dataset.display_name:
            raise _required("dataset.display_name")
        if dataset.metadata_schema_uri != IMAGE_METADATA_SCHEMA:
            raise GoogleApiError(400, f"The stand-in serves image datasets only ({IMAGE_METADATA_SCHEMA})")
        _check_labels(dict(dataset.labels))
        now = time.time()
        name = f"{self.parent}/datasets/{self._new_id(1)}"
        data = to_dict(dataset)
        data.update(
            name=name,
            metadata={"dataItemSchemaUri": IMAGE_DATA_ITEM_SCHEMA},
            createTime=rfc3339(now),
            updateTime=rfc3339(now),
            etag=hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(),
        )
        self._datasets[name] = _Dataset(data)

        def finish(op: _Operation) -> None:
            op.response = json_format.ParseDict(self._dataset_view(self._datasets[name]), v1.Dataset.pb()())

        op = self._new_operation(name, "create", self.dataset_create_polls, finish)
        return self._answer(self._operation_message(op))

    def _dataset_view(self, dataset: _Dataset) -> dict[str, Any]:
        return {**dataset.data, "dataItemCount": str(len(dataset.items))}

    def _get_dataset(self, rid: str) -> Response:
        return self._answer_dict(self._dataset_view(self._dataset(f"{self.parent}/datasets/{rid}")), v1.Dataset)

    def _list_datasets(self) -> Response:
        views = [self._dataset_view(d) for d in self._datasets.values()]
        return self._page(views, v1.ListDatasetsResponse, "datasets")

    def _import_data(self, rid: str) -> Response:
        name = f"{self.parent}/datasets/{rid}"
        self._dataset(name)
        req = parse_proto(request.get_data(), v1.ImportDataRequest.pb()())
        if not req.import_configs:
            raise _required("import_configs")
        configs = []
        for i, config in enumerate(req.import_configs):
            if config.import_schema_uri not in (BOUNDING_BOX_IMPORT, SINGLE_LABEL_IMPORT, MULTI_LABEL_IMPORT):
                schema = config.import_schema_uri
                raise GoogleApiError(
                    400, f"import_configs[{i}].import_schema_uri {schema!r} is not an image import schema"
                )
            uris = list(config.gcs_source.uris)
            if not uris or not all(u.startswith("gs://") for u in uris):
                raise GoogleApiError(400, f"import_configs[{i}].gcs_source.uris must be gs:// URIs, got {uris}")
            configs.append((config.import_schema_uri, uris, dict(config.data_item_labels)))

        def finish(op: _Operation) -> None:
            self._run_import(op, self._datasets[name], configs)

        op = self._new_operation(name, "import", self.import_polls, finish)
        return self._answer(self._operation_message(op))

    def _new_operation(self, dataset: str, kind: str, polls: int, work: Callable[[_Operation], None]) -> _Operation:
        now = time.time()
        op = _Operation(f"{dataset}/operations/{self._new_id(5)}", kind, polls, now, work, update_time=now)
        self._operations[op.name] = op
        return op

    def _operation_message(self, op: _Operation) -> operations_pb2.Operation:
        meta_type = v1.CreateDatasetOperationMetadata if op.kind == "create" else v1.ImportDataOperationMetadata
        generic = {"createTime": rfc3339(op.create_time), "updateTime": rfc3339(op.update_time)}
        if op.partial_failures:
            generic["partialFailures"] = op.partial_failures
        message = operations_pb2.Operation(name=op.name, done=op.done)
        message.metadata.Pack(json_format.ParseDict({"genericMetadata": generic}, meta_type.pb()()))
        if op.done and op.error is not None:
            message.error.CopyFrom(status_pb2.Status(code=op.error["code"], message=op.error["message"]))
        elif op.done:
            message.response.Pack(op.response)
        return message

    def _get_operation(self, rid: str, op: str) -> Response:
        found = self._operations.get(f"{self.parent}/datasets/{rid}/operations/{op}")
        if found is None:
            raise GoogleApiError(404, f"Operation {request.path} does not exist")
        if not found.done:
            if found.polls_left > 0:
                found.polls_left -= 1
            else:
                found.work(found)
                found.done = True
            found.update_time = time.time()
        return self._answer(self._operation_message(found))

    def _list_operations(self, rid: str) -> Response:
        dataset = f"{self.parent}/datasets/{rid}"
        self._dataset(dataset)
        listed = operations_pb2.ListOperationsResponse()
        for op in self._operations.values():
            if op.name.startswith(f"{dataset}/operations/"):
                listed.operations.add().CopyFrom(self._operation_message(op))
        return self._answer(listed)

    def _run_import(
        self, op: _Operation, dataset: _Dataset, configs: list[tuple[str, list[str], dict[str, str]]]
    ) -> None:
        valid: list[ImportedItem] = []
        for schema, uris, config_labels in configs:
            for uri in uris:
                files = self._expand(uri)
                if not files:
                    op.error = {"code": 5, "message": f"No files found at {uri}"}
                    return
                for file_uri in files:
                    text = self._read(file_uri).decode("utf-8", errors="replace")
                    for number, line in enumerate(text.splitlines(), start=1):
                        if not line.strip():
                            continue
                        try:
                            valid.append(self._import_line(line, schema, config_labels))
                        except ValueError as bad:
                            op.partial_failures.append({"code": 3, "message": f"{file_uri} line {number}: {bad}"})
        if not valid:
            op.error = {"code": 3, "message": "No valid data item was found in the import files; see partial failures"}
            return
        for item in valid:
            known = dataset.items.get(item.image_uri)
            if known is None:
                dataset.items[item.image_uri] = item
            else:  # the first ml_use Vertex meets wins; annotations add up
                merged_labels = tuple(dict.fromkeys(known.labels + item.labels))
                dataset.items[item.image_uri] = replace(known, boxes=known.boxes + item.boxes, labels=merged_labels)
        dataset.data["updateTime"] = rfc3339(time.time())
        op.response = v1.ImportDataResponse.pb()()

    def _import_line(self, line: str, schema: str, config_labels: Mapping[str, str]) -> ImportedItem:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError("a line must be a JSON object")
        annotation_key = {
            BOUNDING_BOX_IMPORT: "boundingBoxAnnotations",
            SINGLE_LABEL_IMPORT: "classificationAnnotation",
            MULTI_LABEL_IMPORT: "classificationAnnotations",
        }[schema]
        unknown = set(record) - {"imageGcsUri", "dataItemResourceLabels", annotation_key}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} for schema {schema.rsplit('/', 1)[-1]}")
        uri = record.get("imageGcsUri")
        if not isinstance(uri, str) or not uri.startswith("gs://"):
            raise ValueError(f"imageGcsUri must be a gs:// URI, got {uri!r}")
        resource_labels = record.get("dataItemResourceLabels", {})
        if not isinstance(resource_labels, dict) or not all(isinstance(v, str) for v in resource_labels.values()):
            raise ValueError("dataItemResourceLabels must map strings to strings")
        item_labels = {**config_labels, **resource_labels}
        ml_use = item_labels.get(ML_USE_KEY)
        if ml_use is not None and ml_use not in ML_USES:
            raise ValueError(f"{ML_USE_KEY} must be one of {', '.join(ML_USES)}, got {ml_use!r}")
        boxes: tuple[Box, ...] = ()
        labels: tuple[str, ...] = ()
        if schema == BOUNDING_BOX_IMPORT:
            boxes = tuple(_box(a) for a in _annotation_list(record.get(annotation_key, [])))
            if len(boxes) > MAX_BOXES_PER_IMAGE:
                raise ValueError(f"{len(boxes)} boxes; at most {MAX_BOXES_PER_IMAGE} per image")
        elif schema == SINGLE_LABEL_IMPORT:
            if annotation_key in record:
                labels = (
                    _display_name(_annotation(record[annotation_key], {"displayName", "annotationResourceLabels"})),
                )
        else:
            labels = tuple(dict.fromkeys(_display_name(a) for a in _annotation_list(record.get(annotation_key, []))))
        if not self._exists(uri):
            raise ValueError(f"image {uri} does not exist")
        return ImportedItem(uri, ml_use, item_labels, boxes, labels)

    # -- Cloud Storage -------------------------------------------------------------------------

    def _expand(self, uri: str) -> list[str]:
        bucket, path = _split_gs(uri)
        if "*" not in path:
            return [uri] if self._exists(uri) else []
        prefix = path.split("*", 1)[0]
        names = sorted(b.name for b in self.storage.list_blobs(bucket, prefix=prefix))
        return [f"gs://{bucket}/{n}" for n in names if fnmatch.fnmatchcase(n, path)]

    def _exists(self, uri: str) -> bool:
        bucket, path = _split_gs(uri)
        try:
            return self.storage.bucket(bucket).get_blob(path) is not None
        except gexc.NotFound:
            return False

    def _read(self, uri: str) -> bytes:
        bucket, path = _split_gs(uri)
        return self.storage.bucket(bucket).blob(path).download_as_bytes()

    def _write(self, uri: str, data: bytes) -> None:
        bucket, path = _split_gs(uri)
        self.storage.bucket(bucket).blob(path).upload_from_string(data, content_type="application/jsonl")

    # -- training pipelines and models ---------------------------------------------------------

    def _create_pipeline(self) -> Response:
        pipeline = parse_proto(request.get_data(), v1.TrainingPipeline.pb()())
        data = to_dict(pipeline)
        if not pipeline.display_name:
            raise _required("training_pipeline.display_name")
        task = {OD_DEFINITION: "object_detection", CLS_DEFINITION: "classification"}.get(
            pipeline.training_task_definition
        )
        if task is None:
            definition = pipeline.training_task_definition
            raise GoogleApiError(400, f"training_task_definition {definition!r} is not an AutoML image definition")
        inputs = data.get("trainingTaskInputs", {})
        if not isinstance(inputs, dict):
            raise GoogleApiError(400, "training_task_inputs must be a JSON object")
        unknown = set(inputs) - _TASK_INPUT_KEYS[task]
        if unknown:
            raise GoogleApiError(400, f"training_task_inputs has unknown field(s) {sorted(unknown)} for {task}")
        model_type = inputs.get("modelType", "CLOUD_HIGH_ACCURACY_1" if task == "object_detection" else "CLOUD")
        if model_type not in MODEL_TYPES[task]:
            known = ", ".join(sorted(MODEL_TYPES[task]))
            raise GoogleApiError(400, f"modelType {model_type!r} is not an AutoML image {task} model type: {known}")
        low, high, default = MODEL_TYPES[task][model_type]
        budget = inputs.get("budgetMilliNodeHours", default)
        if isinstance(budget, str) and budget.isdigit():
            budget = int(budget)
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget != int(budget):
            raise GoogleApiError(400, f"budgetMilliNodeHours must be an integer, got {budget!r}")
        if not low <= budget <= high:
            raise GoogleApiError(400, f"budgetMilliNodeHours {int(budget)} is outside {low}..{high} for {model_type}")
        for flag in ("disableEarlyStopping", "multiLabel"):
            if flag in inputs and not isinstance(inputs[flag], bool):
                raise GoogleApiError(400, f"{flag} must be a boolean")
        config = data.get("inputDataConfig", {})
        if not config.get("datasetId"):
            raise _required("training_pipeline.input_data_config.dataset_id")
        dataset_name = f"{self.parent}/datasets/{config['datasetId']}"
        dataset = self._dataset(dataset_name)
        if not dataset.items:
            raise GoogleApiError(400, f"The Dataset {dataset_name} has no data items", "FAILED_PRECONDITION")
        if "filterSplit" in config:
            for key in ("trainingFilter", "validationFilter", "testFilter"):
                _parse_filter(config["filterSplit"].get(key, ""), required=f"filter_split.{_snake(key)}", split=True)
        _check_labels(data.get("labels", {}))
        _check_labels(data.get("modelToUpload", {}).get("labels", {}))
        now = time.time()
        name = f"{self.parent}/trainingPipelines/{self._new_id(2)}"
        data.update(name=name, state="PIPELINE_STATE_QUEUED", createTime=rfc3339(now), updateTime=rfc3339(now))
        self._pipelines[name] = _Pipeline(
            data, task, bool(inputs.get("multiLabel", False)), dataset_name, int(budget), failure=self.fail_training
        )
        return self._answer_dict(data, v1.TrainingPipeline)

    def _get_pipeline(self, rid: str) -> Response:
        pipeline = self._pipelines.get(f"{self.parent}/trainingPipelines/{rid}")
        if pipeline is None:
            raise GoogleApiError(404, f"TrainingPipeline {rid} does not exist")
        self._advance_pipeline(pipeline)
        return self._answer_dict(pipeline.data, v1.TrainingPipeline)

    def _advance_pipeline(self, pipeline: _Pipeline) -> None:
        data = pipeline.data
        if data["state"] in _PIPELINE_DONE:
            return
        now = rfc3339(time.time())
        data["updateTime"] = now
        if pipeline.cancel:
            data.update(state="PIPELINE_STATE_CANCELLED", endTime=now, error={"code": 1, "message": "CANCELED"})
            return
        pipeline.polls += 1
        data.setdefault("startTime", now)
        if pipeline.polls <= self.training_polls:
            data["state"] = "PIPELINE_STATE_RUNNING"
            return
        data["endTime"] = now
        if pipeline.failure is not None:
            data.update(state="PIPELINE_STATE_FAILED", error={"code": 13, "message": pipeline.failure})
            return
        problem = self._split_problem(pipeline)
        if problem is not None:
            data.update(state="PIPELINE_STATE_FAILED", error={"code": 9, "message": problem})
            return
        inputs = data.get("trainingTaskInputs", {})
        early_stop = not inputs.get("disableEarlyStopping", False)
        cost = int(pipeline.budget * 0.85) if early_stop else pipeline.budget
        data["trainingTaskMetadata"] = {
            "costMilliNodeHours": str(cost),
            "successfulStopReason": "MODEL_CONVERGED" if early_stop else "BUDGET_REACHED",
        }
        upload = data.setdefault("modelToUpload", {})
        items = list(self._datasets[pipeline.dataset].items.values())
        model = self._new_model(
            upload.get("displayName") or data["displayName"],
            upload.get("labels", {}),
            pipeline.task,
            pipeline.multi_label,
            items,
            data,
        )
        upload.update(name=model.data["name"], versionId=model.data["versionId"])
        data["state"] = "PIPELINE_STATE_SUCCEEDED"

    def _split_problem(self, pipeline: _Pipeline) -> str | None:
        """Why Vertex would fail this pipeline on its data (an empty training split), or None."""
        split = pipeline.data.get("inputDataConfig", {}).get("filterSplit")
        if not split:
            return None
        items = self._datasets[pipeline.dataset].items.values()
        terms = _parse_filter(split["trainingFilter"], split=True)
        if not any(_item_matches(item, terms) for item in items):
            return f"The training split selected by {split['trainingFilter']!r} is empty"
        return None

    def _new_model(
        self,
        display_name: str,
        labels: dict[str, str],
        task: str,
        multi_label: bool,
        items: list[ImportedItem],
        pipeline: dict[str, Any] | None,
    ) -> _Model:
        model_id = (pipeline or {}).get("modelId") or self._new_id(3)
        name = f"{self.parent}/models/{model_id}"
        version = str(1 + sum(1 for m in self._models.values() if m.data["name"] == name))
        now = rfc3339(time.time())
        data = {
            "name": name,
            "versionId": version,
            "versionAliases": (pipeline or {}).get("modelToUpload", {}).get("versionAliases", ["default"]),
            "displayName": display_name,
            "labels": labels,
            "createTime": now,
            "updateTime": now,
            "versionCreateTime": now,
            "versionUpdateTime": now,
            "supportedInputStorageFormats": ["jsonl"],
            "supportedOutputStorageFormats": ["jsonl"],
        }
        if pipeline is not None:
            data["trainingPipeline"] = pipeline["name"]
        names = sorted({b.label for i in items for b in i.boxes} | {label for i in items for label in i.labels})
        label_ids = {
            label: str(int(hashlib.sha256(f"{name}/{label}".encode()).hexdigest()[:15], 16)) for label in names
        }
        model = _Model(data, task, multi_label, {i.image_uri: i for i in items}, label_ids)
        self._models[f"{name}@{version}"] = model
        return model

    def _find_model(self, ref: str) -> _Model:
        name = self._canonical(ref, "models")
        version = ref.split("@", 1)[1] if "@" in ref else None
        versions = [m for m in self._models.values() if m.data["name"] == name]
        if version is not None:
            versions = [m for m in versions if version in (m.data["versionId"], *m.data["versionAliases"])]
        if not versions:
            raise GoogleApiError(404, f'The Model "{ref}" does not exist.')
        return versions[-1]

    def _get_model(self, rid: str) -> Response:
        return self._answer_dict(self._find_model(f"{self.parent}/models/{rid}").data, v1.Model)

    def _list_pipelines(self) -> Response:
        return self._page(
            [p.data for p in self._pipelines.values()], v1.ListTrainingPipelinesResponse, "trainingPipelines"
        )

    def _cancel_pipeline(self, rid: str) -> Response:
        pipeline = self._pipelines.get(f"{self.parent}/trainingPipelines/{rid}")
        if pipeline is None:
            raise GoogleApiError(404, f"TrainingPipeline {rid} does not exist")
        if pipeline.data["state"] in _PIPELINE_DONE:
            raise GoogleApiError(
                400, f"Cannot cancel TrainingPipeline {rid} in state {pipeline.data['state']}", "FAILED_PRECONDITION"
            )
        pipeline.cancel = True
        pipeline.data.update(state="PIPELINE_STATE_CANCELLING", updateTime=rfc3339(time.time()))
        return Response("{}", mimetype="application/json")

    # -- batch prediction ----------------------------------------------------------------------

    def _create_job(self) -> Response:
        job = parse_proto(request.get_data(), v1.BatchPredictionJob.pb()())
        data = to_dict(job)
        if not job.display_name:
            raise _required("batch_prediction_job.display_name")
        if not job.model:
            raise _required("batch_prediction_job.model")
        model = self._find_model(job.model)
        if job.input_config.instances_format != "jsonl":
            given = job.input_config.instances_format
            raise GoogleApiError(400, f"instances_format {given!r} is not supported by AutoML image models; use jsonl")
        uris = list(job.input_config.gcs_source.uris)
        if not uris or not all(u.startswith("gs://") for u in uris):
            raise GoogleApiError(400, f"input_config.gcs_source.uris must be gs:// URIs, got {uris}")
        if job.output_config.predictions_format != "jsonl":
            raise GoogleApiError(400, "predictions_format must be jsonl for AutoML image models")
        if not job.output_config.gcs_destination.output_uri_prefix.startswith("gs://"):
            raise GoogleApiError(400, "output_config.gcs_destination.output_uri_prefix must be a gs:// URI")
        _prediction_parameters(data.get("modelParameters", {}), model.task)
        _check_labels(data.get("labels", {}))
        now = time.time()
        name = f"{self.parent}/batchPredictionJobs/{self._new_id(4)}"
        data.update(
            name=name,
            state="JOB_STATE_PENDING",
            modelVersionId=model.data["versionId"],
            createTime=rfc3339(now),
            updateTime=rfc3339(now),
        )
        self._jobs[name] = _BatchJob(data, model)
        return self._answer_dict(data, v1.BatchPredictionJob)

    def _get_job(self, rid: str) -> Response:
        job = self._jobs.get(f"{self.parent}/batchPredictionJobs/{rid}")
        if job is None:
            raise GoogleApiError(404, f"BatchPredictionJob {rid} does not exist")
        self._advance_job(job)
        return self._answer_dict(job.data, v1.BatchPredictionJob)

    def _list_jobs(self) -> Response:
        return self._page(
            [j.data for j in self._jobs.values()], v1.ListBatchPredictionJobsResponse, "batchPredictionJobs"
        )

    def _cancel_job(self, rid: str) -> Response:
        job = self._jobs.get(f"{self.parent}/batchPredictionJobs/{rid}")
        if job is None:
            raise GoogleApiError(404, f"BatchPredictionJob {rid} does not exist")
        if job.data["state"] in _JOB_DONE:
            raise GoogleApiError(
                400, f"Cannot cancel BatchPredictionJob {rid} in state {job.data['state']}", "FAILED_PRECONDITION"
            )
        job.cancel = True
        job.data.update(state="JOB_STATE_CANCELLING", updateTime=rfc3339(time.time()))
        return Response("{}", mimetype="application/json")

    def _advance_job(self, job: _BatchJob) -> None:
        data = job.data
        if data["state"] in _JOB_DONE:
            return
        now = rfc3339(time.time())
        data["updateTime"] = now
        if job.cancel:
            data.update(state="JOB_STATE_CANCELLED", endTime=now, error={"code": 1, "message": "CANCELED"})
            return
        job.polls += 1
        data.setdefault("startTime", now)
        if job.polls <= self.batch_polls:
            data["state"] = "JOB_STATE_RUNNING"
            return
        data["endTime"] = now
        try:
            self._predict(job)
        except _JobFailed as failed:
            data.update(state="JOB_STATE_FAILED", error={"code": failed.code, "message": str(failed)})

    def _predict(self, job: _BatchJob) -> None:
        data = job.data
        lines: list[str] = []
        for uri in data["inputConfig"]["gcsSource"]["uris"]:
            files = self._expand(uri)
            if not files:
                raise _JobFailed(5, f"Input file {uri} does not exist")
            for file_uri in files:
                lines += [line for line in self._read(file_uri).decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines:
            raise _JobFailed(3, "The input files hold no instances")
        params = data.get("modelParameters", {})
        threshold = float(params.get("confidenceThreshold", 0.0))
        limit = min(int(params.get("maxPredictions", DEFAULT_MAX_PREDICTIONS)), MAX_BOXES_PER_IMAGE)
        predictions: list[str] = []
        errors: list[str] = []
        failures: list[dict[str, Any]] = []
        for line in lines:
            instance: Any = line
            try:
                instance = json.loads(line)
                if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
                    raise ValueError("an instance must be a JSON object with a string 'content'")
                answer = self._answer_for(job.model, instance["content"], threshold, limit)
                predictions.append(json.dumps({"instance": instance, "prediction": answer}))
            except (ValueError, _InstanceFailed) as exc:
                message = str(exc) if isinstance(exc, _InstanceFailed) else f"Invalid instance: {exc}"
                errors.append(json.dumps({"instance": instance, "error": {"code": 3, "message": message}}))
                if len(failures) < 20:
                    failures.append({"code": 3, "message": message})
        stamp = datetime.fromtimestamp(_epoch(data["createTime"]), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        prefix = data["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
        directory = f"{prefix}/prediction-{job.model.data['displayName']}-{stamp}"
        per_file = max(1, self.prediction_lines_per_file)
        for kind, rows in (("predictions", predictions), ("errors", errors)):
            for index in range(0, len(rows), per_file):
                uri = f"{directory}/{kind}_{index // per_file + 1:05d}.jsonl"
                self._write(uri, ("\n".join(rows[index : index + per_file]) + "\n").encode())
                job.outputs.append(uri)
        data["outputInfo"] = {"gcsOutputDirectory": directory}
        data["completionStats"] = {
            "successfulCount": str(len(predictions)),
            "failedCount": str(len(errors)),
            "incompleteCount": "0",
        }
        if failures:
            data["partialFailures"] = failures
        if not predictions:
            raise _JobFailed(3, f"All {len(errors)} instances failed; see {directory}/errors_*.jsonl")
        data["state"] = "JOB_STATE_SUCCEEDED"

    def _answer_for(self, model: _Model, content: str, threshold: float, limit: int) -> dict[str, Any]:
        if content.endswith(self.fail_instances) and self.fail_instances:
            raise _InstanceFailed(f"Prediction failed for {content}")
        if not content.startswith("gs://") or not self._exists(content):
            raise _InstanceFailed(f"The image {content} does not exist or cannot be read")
        try:
            with Image.open(io.BytesIO(self._read(content))) as image:
                image.load()
        except Exception as exc:
            raise _InstanceFailed(f"Unable to decode the image {content}: {type(exc).__name__}") from None
        rng = random.Random(hashlib.sha256(content.encode()).digest())
        item = model.items.get(content)
        labels = sorted(model.label_ids) or ["object"]
        scored: list[tuple[float, str, list[float] | None]] = []
        if model.task == "object_detection":
            for box in item.boxes if item else ():
                scored.append((rng.uniform(0.9, 0.99), box.label, _jittered(box, rng)))
            x, y = rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.8)
            w, h = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
            scored.append((rng.uniform(0.05, 0.15), rng.choice(labels), [x, min(1.0, x + w), y, min(1.0, y + h)]))
        else:
            truth = list(item.labels) if item else []
            if not model.multi_label:
                truth = truth[:1]
            scored += [(rng.uniform(0.85, 0.99), label, None) for label in truth]
            others = [label for label in labels if label not in truth]
            if others:
                scored.append((rng.uniform(0.01, 0.1), rng.choice(others), None))
        scored = [s for s in scored if s[0] >= threshold]
        scored.sort(key=lambda s: s[0], reverse=True)
        scored = scored[:limit]
        prediction: dict[str, Any] = {
            "ids": [model.label_ids.get(label, "0") for _, label, _ in scored],
            "displayNames": [label for _, label, _ in scored],
            "confidences": [_f32(score) for score, _, _ in scored],
        }
        if model.task == "object_detection":
            prediction["bboxes"] = [[_f32(v) for v in box or ()] for _, _, box in scored]
        return prediction

    # -- custom jobs ---------------------------------------------------------------------------

    def _create_custom_job(self) -> Response:
        job = parse_proto(request.get_data(), v1.CustomJob.pb()())
        _check_custom_job(job)
        data = to_dict(job)
        job_id = self._new_id(6)
        name = f"{self.parent}/customJobs/{job_id}"
        now = rfc3339(time.time())
        data.update(name=name, state="JOB_STATE_QUEUED", createTime=now, updateTime=now)
        spec = job.job_spec.worker_pool_specs[0].python_package_spec
        env = {e.name: e.value for e in spec.env}
        if job.job_spec.HasField("base_output_directory"):
            base = job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
            env |= {
                "AIP_MODEL_DIR": f"{base}/model/",
                "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
                "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/",
            }
        env["CLOUD_ML_JOB_ID"] = job_id
        custom = _CustomJob(
            data,
            spec.python_module,
            list(spec.args),
            env,
            list(spec.package_uris),
            failure=self._fail_next_custom_job,
        )
        self._fail_next_custom_job = None
        self._custom_jobs[name] = custom
        answer = self._answer_dict(data, v1.CustomJob)  # before the thread can move it on
        custom.thread = threading.Thread(
            target=self._run_custom_job, args=(custom,), name=f"custom-job-{job_id}", daemon=True
        )
        custom.thread.start()
        return answer

    def _custom_job(self, rid: str) -> _CustomJob:
        job = self._custom_jobs.get(f"{self.parent}/customJobs/{rid}")
        if job is None or job.deleted:
            raise GoogleApiError(404, f"CustomJob {self.parent}/customJobs/{rid} does not exist")
        return job

    def _get_custom_job(self, rid: str) -> Response:
        return self._answer_dict(self._custom_job(rid).data, v1.CustomJob)

    def _list_custom_jobs(self) -> Response:
        jobs = [j.data for j in self._custom_jobs.values() if not j.deleted]
        return self._page(jobs, v1.ListCustomJobsResponse, "customJobs")

    def _cancel_custom_job(self, rid: str) -> Response:
        job = self._custom_job(rid)
        state = job.data["state"]
        if state in _JOB_DONE:
            raise GoogleApiError(400, f"Cannot cancel CustomJob {rid} in state {state}", "FAILED_PRECONDITION")
        if not job.cancel:
            job.cancel = True
            job.data.update(state="JOB_STATE_CANCELLING", updateTime=rfc3339(time.time()))
            _kill(job)
        return Response("{}", mimetype="application/json")

    def _delete_custom_job(self, rid: str) -> Response:
        job = self._custom_job(rid)
        state = job.data["state"]
        if state not in _JOB_DONE:
            message = f"CustomJob {job.data['name']} is in state {state}; cancel it before deleting"
            raise GoogleApiError(400, message, "FAILED_PRECONDITION")
        job.deleted = True
        now = rfc3339(time.time())
        op = operations_pb2.Operation(name=f"{self.parent}/operations/{self._new_id(7)}", done=True)
        metadata = {"genericMetadata": {"createTime": now, "updateTime": now}}
        op.metadata.Pack(json_format.ParseDict(metadata, v1.DeleteOperationMetadata.pb()()))
        op.response.Pack(empty_pb2.Empty())
        self._location_operations[op.name] = op
        return self._answer(op)

    def _get_location_operation(self, op: str) -> Response:
        found = self._location_operations.get(f"{self.parent}/operations/{op}")
        if found is None:
            raise GoogleApiError(404, f"Operation {request.path} does not exist")
        return self._answer(found)

    def _run_custom_job(self, job: _CustomJob) -> None:
        """The job's life, from its own thread; every change to the job is made under the lock."""
        with self._lock:
            if self._ended_by_cancel(job):
                return
            if job.failure is not None:
                self._end_custom_job(job, "JOB_STATE_FAILED", {"code": 13, "message": job.failure})
                return
            self._set_custom_state(job, "JOB_STATE_PENDING")
        for uri in job.packages:
            try:
                present = self._exists(uri)
            except Exception:  # the storage answered something else than the object or a 404
                present = False
            if not present:
                with self._lock:
                    if not self._ended_by_cancel(job):
                        message = f"Failed to download package {uri}: No such object: {uri.removeprefix('gs://')}"
                        self._end_custom_job(job, "JOB_STATE_FAILED", {"code": 5, "message": message})
                return
        with self._lock:
            if self._ended_by_cancel(job):
                return
            try:
                job.process = self._start_process(job)
            except OSError as exc:
                message = f"The replica workerpool0-0 could not start {self.python!r}: {exc}"
                self._end_custom_job(job, "JOB_STATE_FAILED", {"code": 13, "message": message})
                return
            self._set_custom_state(job, "JOB_STATE_RUNNING")
            job.data["startTime"] = job.data["updateTime"]
        status = job.process.wait()
        with self._lock:
            job.log = _read_log(job.directory)
            if self._ended_by_cancel(job):
                return
            if status == 0:
                self._end_custom_job(job, "JOB_STATE_SUCCEEDED", None)
                return
            assert job.directory is not None
            stderr = (job.directory / "stderr.log").read_text("utf-8", "replace")
            stdout = (job.directory / "stdout.log").read_text("utf-8", "replace")
            message = _exit_message(status, stderr, stdout)
            self._end_custom_job(job, "JOB_STATE_FAILED", {"code": 13, "message": message})

    def _start_process(self, job: _CustomJob) -> subprocess.Popen[bytes]:
        if self._job_root is None:
            self._job_root = Path(tempfile.mkdtemp(prefix="vertex-standin-jobs-"))
        job.directory = self._job_root / job.data["name"].rsplit("/", 1)[-1]
        work = job.directory / "work"
        work.mkdir(parents=True)
        env = {**os.environ, **job.env, **self.job_env}
        with open(job.directory / "stdout.log", "wb") as out, open(job.directory / "stderr.log", "wb") as err:
            return subprocess.Popen(
                [self.python, "-m", job.module, *job.args],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, which cancel and stop kill
            )

    def _ended_by_cancel(self, job: _CustomJob) -> bool:
        if job.cancel or self._stopping:
            self._end_custom_job(job, "JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"})
            return True
        return False

    def _set_custom_state(self, job: _CustomJob, state: str) -> None:
        job.data.update(state=state, updateTime=rfc3339(time.time()))

    def _end_custom_job(self, job: _CustomJob, state: str, error: dict[str, Any] | None) -> None:
        self._set_custom_state(job, state)
        job.data["endTime"] = job.data["updateTime"]
        if error is not None:
            job.data["error"] = error
        if job.log is None:
            job.log = _read_log(job.directory)


def _check_custom_job(job: Any) -> None:
    """What Vertex refuses in a CustomJob, and what the stand-in cannot run (said as such)."""
    if not job.display_name:
        raise _required("custom_job.display_name")
    if len(job.display_name) > MAX_DISPLAY_NAME:
        raise GoogleApiError(
            400, f"custom_job.display_name is {len(job.display_name)} characters long; at most {MAX_DISPLAY_NAME}"
        )
    pools = job.job_spec.worker_pool_specs
    if not pools:
        raise _required("custom_job.job_spec.worker_pool_specs")
    if len(pools) > 1:
        raise GoogleApiError(
            400,
            f"custom_job.job_spec.worker_pool_specs has {len(pools)} worker pools; the stand-in runs only one "
            "replica: give one worker pool with replica_count 1",
        )
    pool, at = pools[0], "custom_job.job_spec.worker_pool_specs[0]"
    if not pool.machine_spec.machine_type:
        raise _required(f"{at}.machine_spec.machine_type")
    if pool.replica_count != 1:
        raise GoogleApiError(
            400, f"{at}.replica_count must be 1, got {pool.replica_count}: the stand-in runs only one replica"
        )
    task = pool.WhichOneof("task")
    if task is None:
        raise GoogleApiError(400, f"{at}: exactly one of python_package_spec or container_spec must be set")
    if task != "python_package_spec":
        raise GoogleApiError(400, f"{at}.{task} is not supported by the stand-in; it runs python_package_spec only")
    spec = pool.python_package_spec
    if not spec.executor_image_uri:
        raise _required(f"{at}.python_package_spec.executor_image_uri")
    uris = list(spec.package_uris)
    if not 1 <= len(uris) <= MAX_PACKAGE_URIS:
        raise GoogleApiError(
            400, f"{at}.python_package_spec.package_uris must hold 1 to {MAX_PACKAGE_URIS} URIs, got {len(uris)}"
        )
    for index, uri in enumerate(uris):
        try:
            _split_gs(uri)
        except ValueError:
            raise GoogleApiError(
                400, f"{at}.python_package_spec.package_uris[{index}] must be a gs:// object URI, got {uri!r}"
            ) from None
    if not spec.python_module:
        raise _required(f"{at}.python_package_spec.python_module")
    for index, variable in enumerate(spec.env):
        if not variable.name:
            raise _required(f"{at}.python_package_spec.env[{index}].name")
    _check_labels(dict(job.labels))
    if job.job_spec.HasField("base_output_directory"):
        prefix = job.job_spec.base_output_directory.output_uri_prefix
        if not re.fullmatch(r"gs://[^/]+(/.*)?", prefix):
            raise GoogleApiError(
                400, f"custom_job.job_spec.base_output_directory.output_uri_prefix must be a gs:// URI, got {prefix!r}"
            )


def _kill(job: _CustomJob) -> None:
    """Kills the job's process group (its module and whatever it started), if it has one still there."""
    if job.process is None or job.process.returncode is not None or job.log is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(job.process.pid, signal.SIGKILL)


def _read_log(directory: Path | None) -> str:
    if directory is None:
        return ""
    parts = [directory / "stdout.log", directory / "stderr.log"]
    return "".join(p.read_text("utf-8", "replace") for p in parts if p.exists())


def _exit_message(status: int, stderr: str, stdout: str) -> str:
    """Vertex's words for a replica that exited non-zero; the line shown is the last `error:` line among
    the last lines of stderr, else its last line (else stdout's)."""
    code = status if status >= 0 else 128 - status  # killed by signal N: the shell's 128 + N
    tail = [line.strip() for line in stderr.splitlines()[-_LOG_TAIL_LINES:] if line.strip()]
    errors = [line for line in tail if _ERROR_LINE.match(line)]
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    last = errors[-1] if errors else tail[-1] if tail else out[-1] if out else "(the replica wrote nothing)"
    return (
        f"The replica workerpool0-0 exited with a non-zero status of {code}. Termination reason: Error. "
        f"Last lines: {last}"
    )


class _JobFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _InstanceFailed(Exception):
    pass


def _required(path: str) -> GoogleApiError:
    return GoogleApiError(400, f"List of found errors:\t1.Field: {path}; Message: Required field is not set.\t")


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), name)


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not path:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    return bucket, path


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _f32(value: float) -> float:
    """Vertex writes float32 values; seven significant digits look the same."""
    return float(f"{value:.7g}")


def _jittered(box: Box, rng: random.Random) -> list[float]:
    def move(value: float) -> float:
        return min(1.0, max(0.0, value + rng.uniform(-0.01, 0.01)))

    x_min, x_max = sorted((move(box.x_min), move(box.x_max)))
    y_min, y_max = sorted((move(box.y_min), move(box.y_max)))
    return [x_min, max(x_max, x_min + 1e-3), y_min, max(y_max, y_min + 1e-3)]


def _check_labels(labels: Mapping[str, Any]) -> None:
    """Vertex resource labels: at most 64; keys start lowercase, keys and values 0-63 of [a-z0-9_-]."""
    if len(labels) > 64:
        raise GoogleApiError(400, f"At most 64 labels per resource, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise GoogleApiError(400, f"Invalid label {key!r}: {value!r} (lowercase letters, digits, '_' or '-')")


def _annotation(value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"an annotation must be a JSON object, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"unknown annotation field(s) {sorted(unknown)}")
    labels = value.get("annotationResourceLabels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("annotationResourceLabels must map strings to strings")
    return value


def _annotation_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("annotations must be a JSON list")
    return value


def _display_name(annotation: Any) -> str:
    name = _annotation(annotation, {"displayName", "annotationResourceLabels"}).get("displayName")
    if not isinstance(name, str) or not name:
        raise ValueError(f"displayName must be a non-empty string, got {name!r}")
    return name


def _box(annotation: Any) -> Box:
    fields = {"displayName", "xMin", "xMax", "yMin", "yMax", "annotationResourceLabels"}
    value = _annotation(annotation, fields)
    coords = {}
    for key in ("xMin", "xMax", "yMin", "yMax"):
        raw = value.get(key)
        try:
            number = float(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else math.nan
        except ValueError:
            number = math.nan
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{key} must be a number in [0, 1], got {raw!r}")
        coords[key] = number
    if not (coords["xMin"] < coords["xMax"] and coords["yMin"] < coords["yMax"]):
        raise ValueError(f"the box must have xMin < xMax and yMin < yMax, got {coords}")
    label = value.get("displayName")
    if not isinstance(label, str) or not label:
        raise ValueError(f"displayName must be a non-empty string, got {label!r}")
    return Box(label, coords["xMin"], coords["xMax"], coords["yMin"], coords["yMax"])


def _prediction_parameters(params: Any, task: str) -> None:
    if not isinstance(params, dict):
        raise GoogleApiError(400, "model_parameters must be a JSON object")
    unknown = set(params) - {"confidenceThreshold", "maxPredictions"}
    if unknown:
        raise GoogleApiError(400, f"model_parameters has unknown field(s) {sorted(unknown)}")
    threshold = params.get("confidenceThreshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise GoogleApiError(400, f"confidenceThreshold must be a number in [0, 1], got {threshold!r}")
    limit = params.get("maxPredictions", DEFAULT_MAX_PREDICTIONS)
    top = MAX_BOXES_PER_IMAGE if task == "object_detection" else 1000
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit != int(limit) or not 1 <= limit <= top:
        raise GoogleApiError(400, f"maxPredictions must be an integer in 1..{top}, got {limit!r}")


def _parse_filter(text: str, *, required: str | None = None, split: bool = False) -> list[tuple[str, str, str]]:
    """AIP-160 filter terms joined by AND: `labels.k=v`, `labels.k="v"`, `labels.k:*`, `display_name=...`,
    `state=...`; a split filter may be "-" (matches nothing). Anything else is refused, so a test notices."""
    if not text.strip():
        if required:
            raise _required(required)
        return []
    if split and text.strip() == "-":
        return [("-", "=", "")]
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(part)
        if not match or (split and not match["field"].startswith("labels.")):
            raise GoogleApiError(400, f"Unsupported filter {text!r} (the stand-in knows labels.k=v AND ...)")
        value = match["quoted"] if match["quoted"] is not None else match["bare"]
        terms.append((match["field"], match["op"], value))
    return terms


def _matches(resource: Mapping[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    labels = resource.get("labels", {})
    for field_name, op, value in terms:
        if field_name.startswith("labels."):
            key = field_name.removeprefix("labels.")
            ok = key in labels if op == ":" and value == "*" else labels.get(key) == value
        elif field_name in ("display_name", "displayName"):
            ok = resource.get("displayName") == value
        else:
            ok = resource.get("state") == value
        if not ok:
            return False
    return True


def _item_matches(item: ImportedItem, terms: list[tuple[str, str, str]]) -> bool:
    if terms and terms[0][0] == "-":
        return False
    return _matches({"labels": item.data_item_labels}, terms)
