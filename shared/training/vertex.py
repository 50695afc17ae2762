"""Vertex AI AutoML image adapter of the training backend port.

It talks to the gapic clients directly, not to the `aiplatform` SDK classes: every call sends one
request and returns, so no stage ever waits on a dataset import, a training pipeline or a batch job
(the SDK's `sync=False` leaves a thread polling until the job ends). The requests are the ones the SDK
builds (`ImageDataset.create`, `AutoMLImageTrainingJob.run`, `BatchPredictionJob.submit`); the tests
hold them equal. The gapic modules also import in a fraction of the SDK's time, which shortens cold
starts. The clients use the REST transport, the same one the end-to-end test drives against its
stand-in, and `VERTEX_API_ENDPOINT` can point them elsewhere (a private endpoint).

Vertex AI lets no caller choose a resource id, so a create cannot be made idempotent by name. Every
resource carries the launch's `lb_job` label instead, and a start first lists by that label: a retry
after a lost run-record write returns the resource the first try made rather than a second one.

References stored in the run record:
- dataset import: the import operation's name, `projects/P/locations/L/datasets/D/operations/O`;
  Vertex names a dataset's operations under the dataset, so the dataset is the part before
  `/operations/`;
- training: the pipeline, `projects/P/locations/L/trainingPipelines/T`;
- batch prediction: the job, `projects/P/locations/L/batchPredictionJobs/B`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import TypedDict

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.cloud.aiplatform_v1.services.dataset_service import DatasetServiceClient
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
from google.cloud.aiplatform_v1.types import (
    BatchPredictionJob,
    Dataset,
    FilterSplit,
    GcsDestination,
    GcsSource,
    ImportDataConfig,
    ImportDataOperationMetadata,
    InputDataConfig,
    Model,
    PipelineState,
    TrainingPipeline,
)
from google.cloud.aiplatform_v1.types import JobState as VertexJobState
from google.longrunning import operations_pb2
from google.protobuf import json_format

from shared.config import VERTEX_CLS_MODEL_TYPES, VERTEX_OD_MODEL_TYPES, VertexSettings, vertex_budget_range
from shared.domain.model_types import Task
from shared.formats.vertex_import import ML_USE
from shared.gcp.errors import is_failed_precondition
from shared.training.port import (
    DatasetRequest,
    JobRef,
    JobState,
    JobStatus,
    PredictionRequest,
    RequestRefused,
    TrainingRequest,
)

_SCHEMA = "gs://google-cloud-aiplatform/schema"
IMAGE_DATASET_METADATA_SCHEMA = f"{_SCHEMA}/dataset/metadata/image_1.0.0.yaml"
IMPORT_SCHEMAS: Mapping[Task, str] = {
    Task.OBJECT_DETECTION: f"{_SCHEMA}/dataset/ioformat/image_bounding_box_io_format_1.0.0.yaml",
    Task.SINGLE_LABEL_CLASSIFICATION: (
        f"{_SCHEMA}/dataset/ioformat/image_classification_single_label_io_format_1.0.0.yaml"
    ),
    Task.MULTI_LABEL_CLASSIFICATION: (
        f"{_SCHEMA}/dataset/ioformat/image_classification_multi_label_io_format_1.0.0.yaml"
    ),
}
TRAINING_DEFINITIONS: Mapping[str, str] = {
    "object_detection": f"{_SCHEMA}/trainingjob/definition/automl_image_object_detection_1.0.0.yaml",
    "classification": f"{_SCHEMA}/trainingjob/definition/automl_image_classification_1.0.0.yaml",
}
ML_USE_FILTER = "labels." + ML_USE + "={}"
# The label that names one launch (the stage's job key): a retried start finds the resource it made.
JOB_LABEL = "lb_job"

# Creating the (empty) dataset takes seconds; only the import that follows is long.
CREATE_DATASET_TIMEOUT_S = 120.0
# Reads are idempotent, so a brief retry on a transient error saves a whole monitor round.
READ_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded),
    initial=0.5,
    maximum=5.0,
    timeout=30.0,
)

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE_BAD = re.compile(r"[^a-z0-9_-]")
_IMPORT_OPERATION = re.compile(r"(projects/[^/]+/locations/[^/]+/datasets/[^/]+)/operations/[^/]+")
_RESOURCE = re.compile(r"projects/([^/]+)/locations/([^/]+)/([A-Za-z]+)/([^/@]+)(?:@.*)?")
_CONSOLE_PAGES = {
    "trainingPipelines": "training",
    "batchPredictionJobs": "batch-predictions",
    "customJobs": "training",  # the SDK's CustomJob._job_type
}

# Keyed by int: proto-plus enums are IntEnums, and proto-plus ships no types, so mypy sees their members
# as ints.
_PIPELINE_STATES: Mapping[int, JobState] = {
    PipelineState.PIPELINE_STATE_UNSPECIFIED: JobState.PENDING,
    PipelineState.PIPELINE_STATE_QUEUED: JobState.QUEUED,
    PipelineState.PIPELINE_STATE_PENDING: JobState.PENDING,
    PipelineState.PIPELINE_STATE_RUNNING: JobState.RUNNING,
    PipelineState.PIPELINE_STATE_SUCCEEDED: JobState.SUCCEEDED,
    PipelineState.PIPELINE_STATE_FAILED: JobState.FAILED,
    PipelineState.PIPELINE_STATE_CANCELLING: JobState.CANCELLING,
    PipelineState.PIPELINE_STATE_CANCELLED: JobState.CANCELLED,
    PipelineState.PIPELINE_STATE_PAUSED: JobState.PAUSED,
}
# EXPIRED is a job Vertex gave up on: to the user it failed. PARTIALLY_SUCCEEDED wrote predictions for
# most instances; the failed ones show in `progress`, and the inference stage reads what is there.
JOB_STATES: Mapping[int, JobState] = {
    VertexJobState.JOB_STATE_UNSPECIFIED: JobState.PENDING,
    VertexJobState.JOB_STATE_QUEUED: JobState.QUEUED,
    VertexJobState.JOB_STATE_PENDING: JobState.PENDING,
    VertexJobState.JOB_STATE_RUNNING: JobState.RUNNING,
    VertexJobState.JOB_STATE_SUCCEEDED: JobState.SUCCEEDED,
    VertexJobState.JOB_STATE_FAILED: JobState.FAILED,
    VertexJobState.JOB_STATE_CANCELLING: JobState.CANCELLING,
    VertexJobState.JOB_STATE_CANCELLED: JobState.CANCELLED,
    VertexJobState.JOB_STATE_PAUSED: JobState.PAUSED,
    VertexJobState.JOB_STATE_EXPIRED: JobState.FAILED,
    VertexJobState.JOB_STATE_UPDATING: JobState.RUNNING,
    VertexJobState.JOB_STATE_PARTIALLY_SUCCEEDED: JobState.SUCCEEDED,
}


class ClientKwargs(TypedDict):
    """What every gapic client here is built with."""

    credentials: Credentials | None
    transport: str
    client_options: ClientOptions


def client_kwargs(region: str, vertex: VertexSettings, credentials: Credentials | None) -> ClientKwargs:
    """REST, at the region's endpoint unless VERTEX_API_ENDPOINT names another (a private endpoint, a test)."""
    return {
        "credentials": credentials,
        "transport": "rest",
        "client_options": ClientOptions(api_endpoint=vertex.api_endpoint or f"{region}-aiplatform.googleapis.com"),
    }


class VertexRequestError(RequestRefused):
    """A request Vertex would refuse; raised before anything is sent, so nothing is half started."""


def console_link(resource_name: str) -> str | None:
    """The Cloud console page of a training pipeline or batch prediction job (the SDK's own URL form)."""
    match = _RESOURCE.fullmatch(resource_name)
    if not match or match[3] not in _CONSOLE_PAGES:
        return None
    project, location, collection, resource_id = match.groups()
    return (
        f"https://console.cloud.google.com/agent-platform/locations/{location}/"
        f"{_CONSOLE_PAGES[collection]}/{resource_id}?project={project}"
    )


def vertex_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Resource labels Vertex accepts: values are lowercased, other characters become `_`, cut to 63.

    Keys are chosen by this code, so a bad key is a bug and is refused rather than rewritten.
    """
    if len(labels) > 64:
        raise VertexRequestError(f"Vertex AI accepts at most 64 labels per resource, got {len(labels)}")
    cleaned = {}
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise VertexRequestError(
                f"label key {key!r} is not a Vertex AI label key (lowercase letter first, then at most "
                "62 lowercase letters, digits, '_' or '-')"
            )
        cleaned[key] = _LABEL_VALUE_BAD.sub("_", value.lower())[:63]
    return cleaned


def model_type_for(task: Task, vertex: VertexSettings) -> str:
    model_type = vertex.model_type(task)
    allowed = VERTEX_CLS_MODEL_TYPES if task.is_classification else VERTEX_OD_MODEL_TYPES
    if model_type not in allowed:
        raise VertexRequestError(
            f"{model_type!r} is not a Vertex AI AutoML model type for {task.value}; use one of " + ", ".join(allowed)
        )
    return model_type


def check_budget(task: Task, model_type: str, budget_milli_node_hours: int) -> None:
    low, high = vertex_budget_range(model_type, classification=task.is_classification)
    if not low <= budget_milli_node_hours <= high:
        raise VertexRequestError(
            f"training budget {budget_milli_node_hours} milli node hours is outside the range {low}..{high} "
            f"that Vertex AI accepts for {task.value} model type {model_type} "
            "(set VERTEX_OD_BUDGET_MILLI_NODE_HOURS or VERTEX_CLASSIFICATION_BUDGET_MILLI_NODE_HOURS; "
            "1000 = one node hour)"
        )


def training_pipeline(request: TrainingRequest, vertex: VertexSettings) -> TrainingPipeline:
    """The TrainingPipeline `AutoMLImageTrainingJob.run` sends, with Labelbox's split as filter splits."""
    model_type = str(request.settings.get("model_type") or model_type_for(request.task, vertex))
    budget = int(request.settings.get("budget_milli_node_hours") or vertex.budget_milli_node_hours(request.task))  # type: ignore[call-overload]
    check_budget(request.task, model_type, budget)
    prediction_type = "classification" if request.task.is_classification else "object_detection"
    inputs: dict[str, object] = {
        "modelType": model_type,
        "budgetMilliNodeHours": budget,
        "disableEarlyStopping": request.settings.get("early_stopping", True) is False,
    }
    if request.task.is_classification:
        inputs["multiLabel"] = request.task is Task.MULTI_LABEL_CLASSIFICATION
    labels = vertex_labels({**request.labels, JOB_LABEL: request.job_key})
    return TrainingPipeline(
        display_name=request.display_name,
        training_task_definition=TRAINING_DEFINITIONS[prediction_type],
        training_task_inputs=inputs,
        model_to_upload=Model(display_name=request.display_name, labels=labels, version_aliases=["default"]),
        input_data_config=InputDataConfig(
            dataset_id=dataset_id(request.dataset),
            filter_split=FilterSplit(
                training_filter=ML_USE_FILTER.format("training"),
                validation_filter=ML_USE_FILTER.format("validation"),
                test_filter=ML_USE_FILTER.format("test"),
            ),
        ),
        labels=labels,
    )


def batch_prediction_job(request: PredictionRequest) -> BatchPredictionJob:
    """The job `BatchPredictionJob.submit` sends; no machine type: AutoML image models pick their own."""
    return BatchPredictionJob(
        display_name=request.display_name,
        model=request.model,
        input_config=BatchPredictionJob.InputConfig(
            instances_format="jsonl", gcs_source=GcsSource(uris=[request.instances_uri])
        ),
        model_parameters={
            "confidenceThreshold": request.confidence_threshold,
            "maxPredictions": request.max_predictions,
        },
        output_config=BatchPredictionJob.OutputConfig(
            predictions_format="jsonl",
            gcs_destination=GcsDestination(output_uri_prefix=request.output_uri_prefix),
        ),
        labels=vertex_labels({**request.labels, JOB_LABEL: request.job_key}),
    )


def job_filter(job_key: str) -> str:
    """The list filter that finds the resources of one launch."""
    return f'labels.{JOB_LABEL}="{vertex_labels({JOB_LABEL: job_key})[JOB_LABEL]}"'


def dataset_id(dataset: str) -> str:
    """Training names its dataset by ID; the run record keeps the full resource name."""
    match = _RESOURCE.fullmatch(dataset)
    if match and match[3] == "datasets":
        return match[4]
    if re.fullmatch(r"\d+", dataset):
        return dataset
    raise VertexRequestError(f"{dataset!r} is not a Vertex AI dataset resource name")


def import_dataset_name(ref: str) -> str:
    match = _IMPORT_OPERATION.fullmatch(ref)
    if not match:
        raise VertexRequestError(f"{ref!r} is not a Vertex AI dataset import operation name")
    return match[1]


class VertexBackend:
    """Trains AutoML image models on Vertex AI; clients are made on first use, so building one is free."""

    name = "vertex"

    def __init__(
        self,
        *,
        project: str,
        region: str,
        staging_bucket: str,
        vertex: VertexSettings,
        credentials: Credentials | None = None,
    ) -> None:
        self.project = project
        self.region = region
        # AutoML image training stages nothing itself; the bucket is the deployment's, kept for callers
        # that need to know where this backend's inputs and outputs live.
        self.staging_bucket = staging_bucket
        self.vertex = vertex
        self._credentials = credentials

    @property
    def _parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def _client_kwargs(self) -> ClientKwargs:
        return client_kwargs(self.region, self.vertex, self._credentials)

    @cached_property
    def _datasets(self) -> DatasetServiceClient:
        return DatasetServiceClient(**self._client_kwargs())

    @cached_property
    def _pipelines(self) -> PipelineServiceClient:
        return PipelineServiceClient(**self._client_kwargs())

    @cached_property
    def _jobs(self) -> JobServiceClient:
        return JobServiceClient(**self._client_kwargs())

    def start_dataset_import(self, request: DatasetRequest) -> JobRef:
        dataset_name = self._launched_dataset(request.job_key)
        if dataset_name is None:
            dataset = Dataset(
                display_name=f"lb-{request.task.value}-{request.run_id}"[:128],
                metadata_schema_uri=IMAGE_DATASET_METADATA_SCHEMA,
                metadata=None,
                labels=vertex_labels({**request.labels, JOB_LABEL: request.job_key}),
            )
            created = self._datasets.create_dataset(parent=self._parent, dataset=dataset)
            dataset_name = created.result(timeout=CREATE_DATASET_TIMEOUT_S).name
        else:
            running = self._import_operation(dataset_name)
            if running is not None:
                return JobRef(ref=running)
        started = self._datasets.import_data(
            name=dataset_name,
            import_configs=[
                ImportDataConfig(
                    gcs_source=GcsSource(uris=[request.import_uri]), import_schema_uri=IMPORT_SCHEMAS[request.task]
                )
            ],
        )
        ref = started.operation.name
        if not ref.startswith(f"{dataset_name}/operations/"):
            # dataset_status could not find the dataset again from this ref: fail now, not at the end.
            raise RuntimeError(f"Vertex AI named the import of {dataset_name!r} {ref!r}, outside the dataset")
        return JobRef(ref=ref)

    def _launched_dataset(self, job_key: str) -> str | None:
        found = self._datasets.list_datasets(request={"parent": self._parent, "filter": job_filter(job_key)})
        return next((dataset.name for dataset in found), None)

    def _import_operation(self, dataset_name: str) -> str | None:
        """The import a first try started on its dataset, if it got that far."""
        listed = self._datasets.list_operations(request=operations_pb2.ListOperationsRequest(name=dataset_name))
        for op in listed.operations:
            metadata = ImportDataOperationMetadata.pb(ImportDataOperationMetadata())
            if op.name.startswith(f"{dataset_name}/operations/") and op.metadata.Unpack(metadata):
                return op.name
        return None

    def dataset_status(self, ref: str) -> JobStatus:
        dataset_name = import_dataset_name(ref)
        operation = self._datasets.get_operation(request=operations_pb2.GetOperationRequest(name=ref), retry=READ_RETRY)
        if not operation.done:
            return JobStatus(state=JobState.RUNNING)
        if operation.HasField("error") and operation.error.code != 0:
            return JobStatus(
                state=JobState.FAILED,
                error=operation.error.message or f"Vertex AI dataset import failed (code {operation.error.code})",
            )
        return JobStatus(state=JobState.SUCCEEDED, result=dataset_name, progress=_import_progress(operation))

    def start_training(self, request: TrainingRequest) -> JobRef:
        body = training_pipeline(request, self.vertex)  # refused here, before any request, if Vertex would
        listed = self._pipelines.list_training_pipelines(
            request={"parent": self._parent, "filter": job_filter(request.job_key)}
        )
        pipeline = next(iter(listed), None) or self._pipelines.create_training_pipeline(
            parent=self._parent, training_pipeline=body
        )
        return JobRef(ref=pipeline.name, link=console_link(pipeline.name))

    def training_status(self, ref: str) -> JobStatus:
        pipeline = self._pipelines.get_training_pipeline(name=ref, retry=READ_RETRY)
        state = _PIPELINE_STATES[pipeline.state]
        link = console_link(ref)
        progress = _training_progress(pipeline)
        if state is JobState.SUCCEEDED:
            model = pipeline.model_to_upload
            if not model.name:
                return JobStatus(
                    state=JobState.FAILED,
                    error="Vertex AI finished the training pipeline without uploading a model",
                    progress=progress,
                    link=link,
                )
            result = f"{model.name}@{model.version_id}" if model.version_id else model.name
            return JobStatus(state=state, result=result, progress=progress, link=link)
        if state in (JobState.FAILED, JobState.CANCELLED):
            fallback = f"Vertex AI training pipeline {state.value} without a message"
            return JobStatus(state=state, error=pipeline.error.message or fallback, progress=progress, link=link)
        return JobStatus(state=state, progress=progress, link=link)

    def training_deadline_s(self, ref: str, task: Task, settings: Mapping[str, object]) -> float | None:
        budget = settings.get("budget_milli_node_hours")
        return self.vertex.training_wall_time_s(task) if budget is None else float(budget) / 1000 * 3600  # type: ignore[arg-type]

    def cancel_training(self, ref: str) -> None:
        """Cancelling a pipeline that has already ended is a no-op, as a repeated cancel must be."""
        try:
            self._pipelines.cancel_training_pipeline(name=ref)
        except (api_exceptions.FailedPrecondition, api_exceptions.BadRequest) as exc:  # REST: a plain 400
            if not is_failed_precondition(exc) or not self.training_status(ref).state.finished:
                raise

    def start_batch_prediction(self, request: PredictionRequest) -> JobRef:
        body = batch_prediction_job(request)
        listed = self._jobs.list_batch_prediction_jobs(
            request={"parent": self._parent, "filter": job_filter(request.job_key)}
        )
        job = next(iter(listed), None) or self._jobs.create_batch_prediction_job(
            parent=self._parent, batch_prediction_job=body
        )
        return JobRef(ref=job.name, link=console_link(job.name))

    def batch_prediction_status(self, ref: str) -> JobStatus:
        job = self._jobs.get_batch_prediction_job(name=ref, retry=READ_RETRY)
        state = JOB_STATES[job.state]
        link = console_link(ref)
        stats = job.completion_stats
        progress: dict[str, object] = {
            "successful": stats.successful_count,
            "failed": stats.failed_count,
            "incomplete": stats.incomplete_count,
        }
        if job.partial_failures:
            progress["partial_failures"] = [failure.message for failure in job.partial_failures[:10]]
        if state is JobState.SUCCEEDED:
            output = job.output_info.gcs_output_directory
            if not output:
                return JobStatus(
                    state=JobState.FAILED,
                    error="Vertex AI finished the batch prediction job without an output directory",
                    progress=progress,
                    link=link,
                )
            return JobStatus(state=state, result=output, progress=progress, link=link)
        if state in (JobState.FAILED, JobState.CANCELLED):
            if job.state == VertexJobState.JOB_STATE_EXPIRED:
                fallback = "Vertex AI expired the batch prediction job before it finished"
            else:
                fallback = f"Vertex AI batch prediction job {state.value} without a message"
            return JobStatus(state=state, error=job.error.message or fallback, progress=progress, link=link)
        return JobStatus(state=state, progress=progress, link=link)


def _training_progress(pipeline: TrainingPipeline) -> dict[str, object]:
    """AutoML's own training metadata (costMilliNodeHours, successfulStopReason), as plain JSON."""
    raw = TrainingPipeline.pb(pipeline)
    if not raw.HasField("training_task_metadata"):
        return {}
    metadata = json_format.MessageToDict(raw.training_task_metadata)
    return metadata if isinstance(metadata, dict) else {}


def _import_progress(operation: operations_pb2.Operation) -> dict[str, object]:
    """Rows Vertex skipped during an import that still succeeded, so the user learns why counts drop."""
    metadata = ImportDataOperationMetadata.pb(ImportDataOperationMetadata())
    if not operation.metadata.Unpack(metadata):
        return {}
    failures = metadata.generic_metadata.partial_failures
    if not failures:
        return {}
    return {"partial_failures": len(failures), "partial_failure_messages": [f.message for f in failures[:10]]}
