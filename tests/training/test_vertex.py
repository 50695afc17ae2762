"""VertexBackend against Vertex AI's gapic clients, patched at the method boundary (no emulator exists).

Every test asserts the exact request a real project would receive, or the exact status a user would
see for the response Vertex sends back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from unittest import mock

import pytest
from google.api_core import exceptions, operation
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.dataset_service import DatasetServiceClient
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
from google.cloud.aiplatform_v1.types import (
    BatchPredictionJob,
    CompletionStats,
    Dataset,
    FilterSplit,
    GcsSource,
    GenericOperationMetadata,
    ImportDataConfig,
    ImportDataOperationMetadata,
    ImportDataResponse,
    InputDataConfig,
    JobState,
    Model,
    PipelineState,
    TrainingPipeline,
)
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from shared.config import VertexSettings
from shared.domain.model_types import Task
from shared.training import port
from shared.training.port import DatasetRequest, JobRef, PredictionRequest, TrainingRequest
from shared.training.vertex import VertexBackend, VertexRequestError
from tests.offline import offline  # noqa: F401

PROJECT = "lb-chain-project"
REGION = "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
DATASET = f"projects/123456/locations/{REGION}/datasets/4455667788"
IMPORT_OP = f"{DATASET}/operations/991122"
PIPELINE = f"projects/123456/locations/{REGION}/trainingPipelines/3141592653"
PIPELINE_LINK = f"https://console.cloud.google.com/agent-platform/locations/{REGION}/training/3141592653?project=123456"
BATCH = f"projects/123456/locations/{REGION}/batchPredictionJobs/2718281828"
BATCH_LINK = (
    f"https://console.cloud.google.com/agent-platform/locations/{REGION}/batch-predictions/2718281828?project=123456"
)
LABELS = {"lb_chain": "prod-eu", "lb_model_run": "9a0d8b1c-2f3e-4a5b-8c7d-6e5f4a3b2c1d"}
SCHEMA = "gs://google-cloud-aiplatform/schema"
KEY = "training-1-0123456789abcdef0123"
SENT_LABELS = {**LABELS, "lb_job": KEY}  # the launch's key rides along, so a retry finds what it made


def settings(od: str = "CLOUD_HIGH_ACCURACY_1", cls: str = "CLOUD", budget: int = 20_000) -> VertexSettings:
    return VertexSettings(od, cls, od_budget_milli_node_hours=budget, classification_budget_milli_node_hours=budget)


DEFAULTS = settings()


@pytest.fixture(autouse=True)
def nothing_launched_yet() -> Iterator[dict[str, mock.MagicMock]]:
    """Before creating anything the adapter lists by the launch's label; by default nothing is found."""
    with (
        mock.patch.object(DatasetServiceClient, "list_datasets", return_value=[]) as datasets,
        mock.patch.object(PipelineServiceClient, "list_training_pipelines", return_value=[]) as pipelines,
        mock.patch.object(JobServiceClient, "list_batch_prediction_jobs", return_value=[]) as batch_jobs,
    ):
        yield {"datasets": datasets, "pipelines": pipelines, "batch_jobs": batch_jobs}


ML_USE = "labels.aiplatform.googleapis.com/ml_use="


@pytest.fixture(autouse=True)
def _offline(offline: None) -> Iterator[None]:  # noqa: F811
    yield


def backend(vertex: VertexSettings = DEFAULTS) -> VertexBackend:
    return VertexBackend(
        project=PROJECT,
        region=REGION,
        staging_bucket="gs://lb-chain-bucket",
        vertex=vertex,
        credentials=AnonymousCredentials(),
    )


def training_request(task: Task, dataset: str = DATASET) -> TrainingRequest:
    return TrainingRequest(
        run_id="9a0d8b1c-2f3e-4a5b-8c7d-6e5f4a3b2c1d",
        task=task,
        dataset=dataset,
        labels=LABELS,
        display_name="lb-9a0d8b1c",
        job_key=KEY,
    )


def dataset_request(task: Task = Task.OBJECT_DETECTION, labels: dict[str, str] = LABELS) -> DatasetRequest:
    return DatasetRequest("9a0d8b1c", task, "gs://lb-chain-bucket/runs/9a0d8b1c/vertex_import.jsonl", labels, KEY)


def lro(name: str, *, done: bool, response=None, error: status_pb2.Status | None = None) -> operation.Operation:
    """The google.api_core Operation a gapic LRO method returns, as the real client builds it."""
    raw = operations_pb2.Operation(name=name, done=done)
    if response is not None:
        raw.response.Pack(type(response).pb(response))
    if error is not None:
        raw.error.CopyFrom(error)
    result_type = type(response) if response is not None else Dataset
    return operation.from_gapic(raw, mock.Mock(), result_type, metadata_type=ImportDataOperationMetadata)


# --------------------------------------------------------------------------------------- dataset import


@pytest.mark.parametrize(
    ("task", "schema"),
    [
        (Task.OBJECT_DETECTION, "image_bounding_box_io_format_1.0.0.yaml"),
        (Task.SINGLE_LABEL_CLASSIFICATION, "image_classification_single_label_io_format_1.0.0.yaml"),
        (Task.MULTI_LABEL_CLASSIFICATION, "image_classification_multi_label_io_format_1.0.0.yaml"),
    ],
)
def test_dataset_import_creates_a_labelled_dataset_and_starts_the_import_with_the_task_schema(
    task: Task, schema: str
) -> None:
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
    ):
        create.return_value = lro(f"{DATASET}/operations/1", done=True, response=Dataset(name=DATASET))
        import_data.return_value = lro(IMPORT_OP, done=False)
        ref = backend().start_dataset_import(dataset_request(task))

    assert ref == JobRef(ref=IMPORT_OP)
    create.assert_called_once_with(
        parent=PARENT,
        dataset=Dataset(
            display_name=f"lb-{task.value}-9a0d8b1c",
            metadata_schema_uri=f"{SCHEMA}/dataset/metadata/image_1.0.0.yaml",
            metadata=None,
            labels=SENT_LABELS,
        ),
    )
    import_data.assert_called_once_with(
        name=DATASET,
        import_configs=[
            ImportDataConfig(
                gcs_source=GcsSource(uris=["gs://lb-chain-bucket/runs/9a0d8b1c/vertex_import.jsonl"]),
                import_schema_uri=f"{SCHEMA}/dataset/ioformat/{schema}",
            )
        ],
    )


def test_a_failed_dataset_creation_raises_and_imports_nothing() -> None:
    denied = status_pb2.Status(code=7, message="Permission 'aiplatform.datasets.create' denied")
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
    ):
        create.return_value = lro(f"{DATASET}/operations/1", done=True, error=denied)
        with pytest.raises(exceptions.PermissionDenied, match=r"aiplatform\.datasets\.create"):
            backend().start_dataset_import(dataset_request())
    import_data.assert_not_called()


def test_label_values_are_made_acceptable_to_vertex_and_bad_keys_are_refused_before_any_request() -> None:
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
    ):
        create.return_value = lro(f"{DATASET}/operations/1", done=True, response=Dataset(name=DATASET))
        import_data.return_value = lro(IMPORT_OP, done=False)
        backend().start_dataset_import(dataset_request(labels={"lb_model_run": "Run.ID/" + "x" * 80}))
        assert create.call_args.kwargs["dataset"].labels == {"lb_model_run": "run_id_" + "x" * 56, "lb_job": KEY}

        create.reset_mock()
        with pytest.raises(VertexRequestError, match="label key 'LB Run'"):
            backend().start_dataset_import(dataset_request(labels={"LB Run": "x"}))
        create.assert_not_called()


def test_dataset_status_reads_the_stored_import_operation() -> None:
    with mock.patch.object(DatasetServiceClient, "get_operation") as get:
        get.return_value = operations_pb2.Operation(name=IMPORT_OP, done=False)
        status = backend().dataset_status(IMPORT_OP)
    get.assert_called_once_with(request=operations_pb2.GetOperationRequest(name=IMPORT_OP), retry=mock.ANY)
    assert status == port.JobStatus(state=port.JobState.RUNNING)


def test_a_finished_import_yields_the_dataset_and_reports_rows_vertex_skipped() -> None:
    done = operations_pb2.Operation(name=IMPORT_OP, done=True)
    done.response.Pack(ImportDataResponse.pb(ImportDataResponse()))
    metadata = ImportDataOperationMetadata(
        generic_metadata=GenericOperationMetadata(
            partial_failures=[status_pb2.Status(code=3, message="gs://b/images/r7.jpg: image is corrupted")]
        )
    )
    done.metadata.Pack(ImportDataOperationMetadata.pb(metadata))
    with mock.patch.object(DatasetServiceClient, "get_operation", return_value=done):
        status = backend().dataset_status(IMPORT_OP)
    assert status.state is port.JobState.SUCCEEDED
    assert status.result == DATASET
    assert status.progress == {
        "partial_failures": 1,
        "partial_failure_messages": ["gs://b/images/r7.jpg: image is corrupted"],
    }


def test_a_failed_import_carries_vertex_s_message() -> None:
    failed = operations_pb2.Operation(
        name=IMPORT_OP,
        done=True,
        error=status_pb2.Status(code=3, message="There are too few images (3) for label 'Tomato'."),
    )
    with mock.patch.object(DatasetServiceClient, "get_operation", return_value=failed):
        status = backend().dataset_status(IMPORT_OP)
    assert status == port.JobStatus(
        state=port.JobState.FAILED, error="There are too few images (3) for label 'Tomato'."
    )


def test_dataset_status_refuses_a_ref_that_is_not_an_import_operation() -> None:
    with (
        mock.patch.object(DatasetServiceClient, "get_operation") as get,
        pytest.raises(VertexRequestError, match="not a Vertex AI dataset import operation"),
    ):
        backend().dataset_status(PIPELINE)
    get.assert_not_called()


# ------------------------------------------------------------------------------------------- training


def expected_pipeline(definition: str, inputs: dict[str, object]) -> TrainingPipeline:
    return TrainingPipeline(
        display_name="lb-9a0d8b1c",
        training_task_definition=f"{SCHEMA}/trainingjob/definition/{definition}",
        training_task_inputs=inputs,
        model_to_upload=Model(display_name="lb-9a0d8b1c", labels=SENT_LABELS, version_aliases=["default"]),
        input_data_config=InputDataConfig(
            dataset_id="4455667788",
            filter_split=FilterSplit(
                training_filter=ML_USE + "training",
                validation_filter=ML_USE + "validation",
                test_filter=ML_USE + "test",
            ),
        ),
        labels=SENT_LABELS,
    )


@pytest.mark.parametrize(
    ("task", "vertex", "definition", "inputs"),
    [
        (
            Task.OBJECT_DETECTION,
            DEFAULTS,
            "automl_image_object_detection_1.0.0.yaml",
            {
                "modelType": "CLOUD_HIGH_ACCURACY_1",
                "budgetMilliNodeHours": 20000,
                "disableEarlyStopping": False,
            },
        ),
        (
            Task.SINGLE_LABEL_CLASSIFICATION,
            DEFAULTS,
            "automl_image_classification_1.0.0.yaml",
            {
                "modelType": "CLOUD",
                "budgetMilliNodeHours": 20000,
                "disableEarlyStopping": False,
                "multiLabel": False,
            },
        ),
        (
            Task.MULTI_LABEL_CLASSIFICATION,
            DEFAULTS,
            "automl_image_classification_1.0.0.yaml",
            {
                "modelType": "CLOUD",
                "budgetMilliNodeHours": 20000,
                "disableEarlyStopping": False,
                "multiLabel": True,
            },
        ),
    ],
    ids=["od", "single-label", "multi-label"],
)
def test_training_sends_the_automl_image_pipeline_and_returns_its_resource_name(
    task: Task, vertex: VertexSettings, definition: str, inputs: dict[str, object]
) -> None:
    with mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create:
        create.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_PENDING)
        ref = backend(vertex).start_training(training_request(task))

    assert ref == JobRef(ref=PIPELINE, link=PIPELINE_LINK)
    create.assert_called_once_with(parent=PARENT, training_pipeline=expected_pipeline(definition, inputs))
    sent = json_format.MessageToDict(TrainingPipeline.pb(create.call_args.kwargs["training_pipeline"]))
    assert sent["inputDataConfig"] == {
        "datasetId": "4455667788",
        "filterSplit": {
            "trainingFilter": "labels.aiplatform.googleapis.com/ml_use=training",
            "validationFilter": "labels.aiplatform.googleapis.com/ml_use=validation",
            "testFilter": "labels.aiplatform.googleapis.com/ml_use=test",
        },
    }
    assert sent["labels"] == sent["modelToUpload"]["labels"] == SENT_LABELS


def test_a_runs_own_settings_replace_the_deployments_in_the_exact_pipeline_request() -> None:
    run_settings = {"model_type": "CLOUD_LOW_LATENCY_1", "budget_milli_node_hours": 40000, "early_stopping": False}
    request = replace(training_request(Task.OBJECT_DETECTION), settings=run_settings)
    with mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create:
        create.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_PENDING)
        backend(DEFAULTS).start_training(request)
    inputs = {"modelType": "CLOUD_LOW_LATENCY_1", "budgetMilliNodeHours": 40000, "disableEarlyStopping": True}
    expected = expected_pipeline("automl_image_object_detection_1.0.0.yaml", inputs)
    create.assert_called_once_with(parent=PARENT, training_pipeline=expected)
    # monitor's limit follows the run's budget: 40 node hours on one node
    assert backend(DEFAULTS).training_deadline_s(PIPELINE, Task.OBJECT_DETECTION, run_settings) == 40 * 3600
    assert backend(DEFAULTS).training_deadline_s(PIPELINE, Task.OBJECT_DETECTION, {}) == 20 * 3600


@pytest.mark.parametrize(
    ("vertex", "task", "message"),
    [
        (
            settings(od="CLOUD_1", budget=8_000),
            Task.OBJECT_DETECTION,
            r"budget 8000 .* range 20000\.\.900000 .* object_detection model type CLOUD_1",
        ),
        (settings(budget=5_000), Task.MULTI_LABEL_CLASSIFICATION, r"budget 5000 .* range 8000\.\.800000"),
        (
            settings(od="MOBILE_TF_VERSATILE_1"),
            Task.OBJECT_DETECTION,
            r"'MOBILE_TF_VERSATILE_1' is not a Vertex AI AutoML model type for object_detection",
        ),
    ],
    ids=["od-below-cloud-minimum", "classification-below-minimum", "edge-model-type"],
)
def test_an_out_of_range_budget_or_an_edge_model_type_is_refused_before_any_request(
    vertex: VertexSettings, task: Task, message: str
) -> None:
    with (
        mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create,
        pytest.raises(VertexRequestError, match=message),
    ):
        backend(vertex).start_training(training_request(task))
    create.assert_not_called()


def test_a_model_type_of_the_other_task_is_refused_before_any_request() -> None:
    with (
        mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create,
        pytest.raises(VertexRequestError, match=r"'CLOUD_HIGH_ACCURACY_1' is not .* single_label"),
    ):
        backend(settings("CLOUD_1", "CLOUD_HIGH_ACCURACY_1")).start_training(
            training_request(Task.SINGLE_LABEL_CLASSIFICATION)
        )
    create.assert_not_called()


def test_training_refuses_a_dataset_that_is_not_a_dataset_resource_name() -> None:
    with (
        mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create,
        pytest.raises(VertexRequestError, match="not a Vertex AI dataset"),
    ):
        backend().start_training(training_request(Task.OBJECT_DETECTION, dataset=IMPORT_OP))
    create.assert_not_called()


def test_training_status_reads_exactly_the_stored_pipeline_never_by_display_name() -> None:
    with (
        mock.patch.object(PipelineServiceClient, "get_training_pipeline") as get,
        mock.patch.object(PipelineServiceClient, "list_training_pipelines", side_effect=AssertionError) as listing,
    ):
        get.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_RUNNING)
        status = backend().training_status(PIPELINE)
    get.assert_called_once_with(name=PIPELINE, retry=mock.ANY)
    listing.assert_not_called()
    assert status == port.JobStatus(state=port.JobState.RUNNING, link=PIPELINE_LINK)


PIPELINE_STATES = {
    PipelineState.PIPELINE_STATE_UNSPECIFIED: port.JobState.PENDING,
    PipelineState.PIPELINE_STATE_QUEUED: port.JobState.QUEUED,
    PipelineState.PIPELINE_STATE_PENDING: port.JobState.PENDING,
    PipelineState.PIPELINE_STATE_RUNNING: port.JobState.RUNNING,
    PipelineState.PIPELINE_STATE_SUCCEEDED: port.JobState.SUCCEEDED,
    PipelineState.PIPELINE_STATE_FAILED: port.JobState.FAILED,
    PipelineState.PIPELINE_STATE_CANCELLING: port.JobState.CANCELLING,
    PipelineState.PIPELINE_STATE_CANCELLED: port.JobState.CANCELLED,
    PipelineState.PIPELINE_STATE_PAUSED: port.JobState.PAUSED,
}


def test_every_pipeline_state_has_a_mapping() -> None:
    assert set(PIPELINE_STATES) == set(PipelineState)


@pytest.mark.parametrize("vertex_state", list(PipelineState), ids=lambda s: s.name)
def test_pipeline_states_map_to_job_states(vertex_state: PipelineState) -> None:
    pipeline = TrainingPipeline(
        name=PIPELINE,
        state=vertex_state,
        model_to_upload=Model(name=f"projects/123456/locations/{REGION}/models/77", version_id="1"),
    )
    with mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=pipeline):
        status = backend().training_status(PIPELINE)
    assert status.state is PIPELINE_STATES[vertex_state]
    assert status.link == PIPELINE_LINK


def test_a_succeeded_pipeline_yields_the_model_version_and_automl_s_cost() -> None:
    pipeline = TrainingPipeline(
        name=PIPELINE,
        state=PipelineState.PIPELINE_STATE_SUCCEEDED,
        model_to_upload=Model(name=f"projects/123456/locations/{REGION}/models/77", version_id="2"),
        training_task_metadata={"costMilliNodeHours": 18233, "successfulStopReason": "MODEL_CONVERGED"},
    )
    with mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=pipeline):
        status = backend().training_status(PIPELINE)
    assert status == port.JobStatus(
        state=port.JobState.SUCCEEDED,
        result=f"projects/123456/locations/{REGION}/models/77@2",
        progress={"costMilliNodeHours": 18233.0, "successfulStopReason": "MODEL_CONVERGED"},
        link=PIPELINE_LINK,
    )


def test_a_failed_pipeline_reports_vertex_s_message_and_the_console_link() -> None:
    pipeline = TrainingPipeline(
        name=PIPELINE,
        state=PipelineState.PIPELINE_STATE_FAILED,
        error=status_pb2.Status(code=9, message="Label 'Tomato' has fewer than 10 training images."),
    )
    with mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=pipeline):
        status = backend().training_status(PIPELINE)
    assert status == port.JobStatus(
        state=port.JobState.FAILED,
        error="Label 'Tomato' has fewer than 10 training images.",
        link=PIPELINE_LINK,
    )


def test_a_cancelled_pipeline_without_a_message_still_says_what_happened() -> None:
    pipeline = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_CANCELLED)
    with mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=pipeline):
        status = backend().training_status(PIPELINE)
    assert status.state is port.JobState.CANCELLED
    assert status.error == "Vertex AI training pipeline cancelled without a message"


def test_a_succeeded_pipeline_without_a_model_is_a_failure_the_user_sees() -> None:
    pipeline = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_SUCCEEDED)
    with mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=pipeline):
        status = backend().training_status(PIPELINE)
    assert status.state is port.JobState.FAILED
    assert status.error == "Vertex AI finished the training pipeline without uploading a model"


def test_cancel_targets_the_stored_pipeline_and_is_a_no_op_once_it_has_ended() -> None:
    with (
        mock.patch.object(PipelineServiceClient, "cancel_training_pipeline") as cancel,
        mock.patch.object(PipelineServiceClient, "get_training_pipeline") as get,
    ):
        backend().cancel_training(PIPELINE)
        cancel.assert_called_once_with(name=PIPELINE)

        cancel.side_effect = exceptions.FailedPrecondition("pipeline is already in a terminal state")
        get.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_SUCCEEDED)
        backend().cancel_training(PIPELINE)

        get.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_RUNNING)
        with pytest.raises(exceptions.FailedPrecondition):
            backend().cancel_training(PIPELINE)


class _Response:
    def __init__(self, status: str) -> None:
        self._status = status

    def json(self) -> dict:
        return {"error": {"code": 400, "status": self._status, "message": "..."}}


def test_over_rest_a_400_failed_precondition_on_an_ended_pipeline_is_still_a_no_op() -> None:
    with (
        mock.patch.object(PipelineServiceClient, "cancel_training_pipeline") as cancel,
        mock.patch.object(PipelineServiceClient, "get_training_pipeline") as get,
    ):
        # the REST transport raises the class of the HTTP code, BadRequest, not FailedPrecondition
        cancel.side_effect = exceptions.BadRequest("terminal", response=_Response("FAILED_PRECONDITION"))
        get.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_FAILED)
        backend().cancel_training(PIPELINE)
        cancel.side_effect = exceptions.BadRequest("bad name", response=_Response("INVALID_ARGUMENT"))
        with pytest.raises(exceptions.BadRequest):
            backend().cancel_training(PIPELINE)


# ---------------------------------------------------------------------------------- batch prediction

MODEL = f"projects/123456/locations/{REGION}/models/77@2"


def prediction_request() -> PredictionRequest:
    return PredictionRequest(
        run_id="9a0d8b1c",
        task=Task.OBJECT_DETECTION,
        model=MODEL,
        instances_uri="gs://lb-chain-bucket/runs/9a0d8b1c/instances.jsonl",
        output_uri_prefix="gs://lb-chain-bucket/runs/9a0d8b1c/predictions",
        confidence_threshold=0.3,
        max_predictions=100,
        labels=LABELS,
        display_name="lb-infer-9a0d8b1c",
        job_key=KEY,
    )


def test_batch_prediction_sends_the_automl_image_job_without_machine_resources() -> None:
    with mock.patch.object(JobServiceClient, "create_batch_prediction_job") as create:
        create.return_value = BatchPredictionJob(name=BATCH, state=JobState.JOB_STATE_PENDING)
        ref = backend().start_batch_prediction(prediction_request())

    assert ref == JobRef(ref=BATCH, link=BATCH_LINK)
    assert create.call_args.kwargs["parent"] == PARENT
    sent = json_format.MessageToDict(BatchPredictionJob.pb(create.call_args.kwargs["batch_prediction_job"]))
    assert sent == {
        "displayName": "lb-infer-9a0d8b1c",
        "model": MODEL,
        "inputConfig": {
            "instancesFormat": "jsonl",
            "gcsSource": {"uris": ["gs://lb-chain-bucket/runs/9a0d8b1c/instances.jsonl"]},
        },
        "outputConfig": {
            "predictionsFormat": "jsonl",
            "gcsDestination": {"outputUriPrefix": "gs://lb-chain-bucket/runs/9a0d8b1c/predictions"},
        },
        "modelParameters": {"confidenceThreshold": 0.3, "maxPredictions": 100.0},
        "labels": SENT_LABELS,
    }


BATCH_STATES = {
    JobState.JOB_STATE_UNSPECIFIED: port.JobState.PENDING,
    JobState.JOB_STATE_QUEUED: port.JobState.QUEUED,
    JobState.JOB_STATE_PENDING: port.JobState.PENDING,
    JobState.JOB_STATE_RUNNING: port.JobState.RUNNING,
    JobState.JOB_STATE_SUCCEEDED: port.JobState.SUCCEEDED,
    JobState.JOB_STATE_FAILED: port.JobState.FAILED,
    JobState.JOB_STATE_CANCELLING: port.JobState.CANCELLING,
    JobState.JOB_STATE_CANCELLED: port.JobState.CANCELLED,
    JobState.JOB_STATE_PAUSED: port.JobState.PAUSED,
    JobState.JOB_STATE_EXPIRED: port.JobState.FAILED,
    JobState.JOB_STATE_UPDATING: port.JobState.RUNNING,
    JobState.JOB_STATE_PARTIALLY_SUCCEEDED: port.JobState.SUCCEEDED,
}


def test_every_batch_job_state_has_a_mapping() -> None:
    assert set(BATCH_STATES) == set(JobState)


@pytest.mark.parametrize("vertex_state", list(JobState), ids=lambda s: s.name)
def test_batch_job_states_map_to_job_states(vertex_state: JobState) -> None:
    job = BatchPredictionJob(name=BATCH, state=vertex_state)
    job.output_info.gcs_output_directory = "gs://b/out/prediction-m-2026"
    with mock.patch.object(JobServiceClient, "get_batch_prediction_job", return_value=job) as get:
        status = backend().batch_prediction_status(BATCH)
    get.assert_called_once_with(name=BATCH, retry=mock.ANY)
    assert status.state is BATCH_STATES[vertex_state]
    assert status.link == BATCH_LINK


def test_a_succeeded_batch_job_yields_its_output_directory_and_counts() -> None:
    job = BatchPredictionJob(
        name=BATCH,
        state=JobState.JOB_STATE_SUCCEEDED,
        completion_stats=CompletionStats(successful_count=1180, failed_count=0, incomplete_count=0),
    )
    job.output_info.gcs_output_directory = "gs://b/predictions/prediction-lb-9a0d8b1c-2026_08_19T10_00_00_000Z"
    with mock.patch.object(JobServiceClient, "get_batch_prediction_job", return_value=job):
        status = backend().batch_prediction_status(BATCH)
    assert status == port.JobStatus(
        state=port.JobState.SUCCEEDED,
        result="gs://b/predictions/prediction-lb-9a0d8b1c-2026_08_19T10_00_00_000Z",
        progress={"successful": 1180, "failed": 0, "incomplete": 0},
        link=BATCH_LINK,
    )


def test_a_partially_succeeded_batch_job_is_read_with_its_failures_shown() -> None:
    job = BatchPredictionJob(
        name=BATCH,
        state=JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
        completion_stats=CompletionStats(successful_count=98, failed_count=2, incomplete_count=0),
        partial_failures=[status_pb2.Status(code=3, message="gs://b/images/r9.jpg is larger than 1.5 MB")],
    )
    job.output_info.gcs_output_directory = "gs://b/predictions/prediction-x"
    with mock.patch.object(JobServiceClient, "get_batch_prediction_job", return_value=job):
        status = backend().batch_prediction_status(BATCH)
    assert status.state is port.JobState.SUCCEEDED
    assert status.result == "gs://b/predictions/prediction-x"
    assert status.progress == {
        "successful": 98,
        "failed": 2,
        "incomplete": 0,
        "partial_failures": ["gs://b/images/r9.jpg is larger than 1.5 MB"],
    }


def test_a_failed_or_expired_batch_job_carries_a_message_and_the_link() -> None:
    failed = BatchPredictionJob(
        name=BATCH,
        state=JobState.JOB_STATE_FAILED,
        error=status_pb2.Status(code=7, message="Vertex AI Service Agent lacks storage.objects.get on gs://b"),
    )
    expired = BatchPredictionJob(name=BATCH, state=JobState.JOB_STATE_EXPIRED)
    with mock.patch.object(JobServiceClient, "get_batch_prediction_job", side_effect=[failed, expired]):
        first, second = backend().batch_prediction_status(BATCH), backend().batch_prediction_status(BATCH)
    assert (first.state, first.error, first.link) == (
        port.JobState.FAILED,
        "Vertex AI Service Agent lacks storage.objects.get on gs://b",
        BATCH_LINK,
    )
    assert (second.state, second.error) == (
        port.JobState.FAILED,
        "Vertex AI expired the batch prediction job before it finished",
    )


def test_a_succeeded_batch_job_without_output_is_a_failure_the_user_sees() -> None:
    job = BatchPredictionJob(name=BATCH, state=JobState.JOB_STATE_SUCCEEDED)
    with mock.patch.object(JobServiceClient, "get_batch_prediction_job", return_value=job):
        status = backend().batch_prediction_status(BATCH)
    assert status.state is port.JobState.FAILED
    assert status.error == "Vertex AI finished the batch prediction job without an output directory"


def test_building_the_backend_touches_no_client_and_it_satisfies_the_port() -> None:
    built = VertexBackend(project=PROJECT, region=REGION, staging_bucket="gs://b", vertex=DEFAULTS)
    training_backend: port.TrainingBackend = built
    assert training_backend.name == "vertex"


# --------------------------------------------------------------------------- a start whose record write was lost


def test_each_start_first_lists_by_the_launch_label(nothing_launched_yet: dict[str, mock.MagicMock]) -> None:
    with mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create:
        create.return_value = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_PENDING)
        backend().start_training(training_request(Task.OBJECT_DETECTION))
    nothing_launched_yet["pipelines"].assert_called_once_with(
        request={"parent": PARENT, "filter": f'labels.lb_job="{KEY}"'}
    )


def test_a_retried_training_start_returns_the_pipeline_the_first_try_made(
    nothing_launched_yet: dict[str, mock.MagicMock],
) -> None:
    nothing_launched_yet["pipelines"].return_value = [TrainingPipeline(name=PIPELINE, labels=SENT_LABELS)]
    with mock.patch.object(PipelineServiceClient, "create_training_pipeline") as create:
        ref = backend().start_training(training_request(Task.OBJECT_DETECTION))
    assert ref == JobRef(ref=PIPELINE, link=PIPELINE_LINK)
    create.assert_not_called()  # a second pipeline would be billed twice


def test_a_retried_batch_prediction_start_returns_the_job_the_first_try_made(
    nothing_launched_yet: dict[str, mock.MagicMock],
) -> None:
    nothing_launched_yet["batch_jobs"].return_value = [BatchPredictionJob(name=BATCH)]
    with mock.patch.object(JobServiceClient, "create_batch_prediction_job") as create:
        ref = backend().start_batch_prediction(prediction_request())
    assert ref == JobRef(ref=BATCH, link=BATCH_LINK)
    create.assert_not_called()


def test_a_retried_import_reuses_the_dataset_and_the_import_it_started(
    nothing_launched_yet: dict[str, mock.MagicMock],
) -> None:
    nothing_launched_yet["datasets"].return_value = [Dataset(name=DATASET, labels=SENT_LABELS)]
    running = operations_pb2.Operation(name=IMPORT_OP, done=False)
    running.metadata.Pack(ImportDataOperationMetadata.pb(ImportDataOperationMetadata()))
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
        mock.patch.object(
            DatasetServiceClient,
            "list_operations",
            return_value=operations_pb2.ListOperationsResponse(operations=[running]),
        ) as listed,
    ):
        ref = backend().start_dataset_import(dataset_request())
    assert ref == JobRef(ref=IMPORT_OP)
    create.assert_not_called()
    import_data.assert_not_called()
    listed.assert_called_once_with(request=operations_pb2.ListOperationsRequest(name=DATASET))


def test_a_dataset_made_before_a_crash_but_never_imported_is_imported_not_made_again(
    nothing_launched_yet: dict[str, mock.MagicMock],
) -> None:
    nothing_launched_yet["datasets"].return_value = [Dataset(name=DATASET, labels=SENT_LABELS)]
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
        mock.patch.object(
            DatasetServiceClient, "list_operations", return_value=operations_pb2.ListOperationsResponse()
        ),
    ):
        import_data.return_value = lro(IMPORT_OP, done=False)
        ref = backend().start_dataset_import(dataset_request())
    assert ref == JobRef(ref=IMPORT_OP)
    create.assert_not_called()
    assert import_data.call_args.kwargs["name"] == DATASET


def test_the_clients_use_the_rest_transport_and_the_configured_endpoint() -> None:
    built = VertexBackend(
        project=PROJECT,
        region=REGION,
        staging_bucket="gs://b",
        vertex=VertexSettings("CLOUD_1", "CLOUD", 20_000, 20_000, api_endpoint="http://127.0.0.1:9"),
        credentials=AnonymousCredentials(),
    )
    assert built._pipelines._transport.kind == "rest"
    assert built._pipelines._transport._host == "http://127.0.0.1:9"
    assert backend()._jobs._transport._host == f"https://{REGION}-aiplatform.googleapis.com"
