"""The adapter's requests equal the ones the aiplatform SDK builds for the same job.

The adapter calls the gapic clients itself (so nothing blocks), which is only safe while it sends
what `ImageDataset.create`, `AutoMLImageTrainingJob.run` and `BatchPredictionJob.submit` send. Both
sides run here against the same patched gapic methods, and their requests are compared whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest
from google.api_core import operation
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1.services.dataset_service import DatasetServiceClient
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
from google.cloud.aiplatform_v1.types import (
    BatchPredictionJob,
    Dataset,
    ImportDataOperationMetadata,
    ImportDataResponse,
    JobState,
    PipelineState,
    TrainingPipeline,
)
from google.longrunning import operations_pb2

from shared.config import VertexSettings
from shared.domain.model_types import Task
from shared.training import vertex as vertex_module
from shared.training.port import DatasetRequest, PredictionRequest, TrainingRequest
from shared.training.vertex import VertexBackend
from tests.offline import offline  # noqa: F401

PROJECT = "lb-chain-project"
REGION = "us-central1"
DATASET = f"projects/{PROJECT}/locations/{REGION}/datasets/111"
PIPELINE = f"projects/{PROJECT}/locations/{REGION}/trainingPipelines/222"
MODEL = f"projects/{PROJECT}/locations/{REGION}/models/333"
LABELS = {"lb_chain": "prod", "lb_model_run": "run-42"}
JOB_KEY = "training-1-0123456789abcdef"
# the adapter adds the launch's key as a label (a retried start finds the job by it); the SDK gets it as given
SENT_LABELS = {**LABELS, "lb_job": JOB_KEY}
SPLITS = {
    "training_filter_split": "labels.aiplatform.googleapis.com/ml_use=training",
    "validation_filter_split": "labels.aiplatform.googleapis.com/ml_use=validation",
    "test_filter_split": "labels.aiplatform.googleapis.com/ml_use=test",
}
SDK_SCOPE = {"project": PROJECT, "location": REGION, "credentials": AnonymousCredentials()}


@pytest.fixture(autouse=True)
def _offline(offline: None) -> Iterator[None]:  # noqa: F811
    yield


def settings(od: str = "CLOUD_HIGH_ACCURACY_1", cls: str = "CLOUD", budget: int = 20_000) -> VertexSettings:
    return VertexSettings(od, cls, od_budget_milli_node_hours=budget, classification_budget_milli_node_hours=budget)


@pytest.fixture(autouse=True)
def _nothing_launched_yet() -> Iterator[None]:
    """Before creating, the adapter lists by the launch's label; here there is nothing to find."""
    with (
        mock.patch.object(DatasetServiceClient, "list_datasets", return_value=[]),
        mock.patch.object(PipelineServiceClient, "list_training_pipelines", return_value=[]),
        mock.patch.object(JobServiceClient, "list_batch_prediction_jobs", return_value=[]),
    ):
        yield


def backend(vertex: VertexSettings) -> VertexBackend:
    return VertexBackend(
        project=PROJECT, region=REGION, staging_bucket="gs://b", vertex=vertex, credentials=AnonymousCredentials()
    )


def done(name: str, response) -> operation.Operation:
    raw = operations_pb2.Operation(name=name, done=True)
    raw.response.Pack(type(response).pb(response))
    return operation.from_gapic(raw, mock.Mock(), type(response), metadata_type=ImportDataOperationMetadata)


def test_schema_uris_are_the_sdk_s() -> None:
    schema = aiplatform.schema
    assert schema.dataset.metadata.image == vertex_module.IMAGE_DATASET_METADATA_SCHEMA
    assert {
        Task.OBJECT_DETECTION: schema.dataset.ioformat.image.bounding_box,
        Task.SINGLE_LABEL_CLASSIFICATION: schema.dataset.ioformat.image.single_label_classification,
        Task.MULTI_LABEL_CLASSIFICATION: schema.dataset.ioformat.image.multi_label_classification,
    } == vertex_module.IMPORT_SCHEMAS
    assert {
        "object_detection": schema.training_job.definition.automl_image_object_detection,
        "classification": schema.training_job.definition.automl_image_classification,
    } == vertex_module.TRAINING_DEFINITIONS


@pytest.mark.parametrize("task", list(Task))
def test_dataset_create_and_import_match_image_dataset_create(task: Task) -> None:
    dataset = Dataset(name=DATASET, metadata_schema_uri=aiplatform.schema.dataset.metadata.image)
    with (
        mock.patch.object(DatasetServiceClient, "create_dataset") as create,
        mock.patch.object(DatasetServiceClient, "import_data") as import_data,
        mock.patch.object(DatasetServiceClient, "get_dataset", return_value=dataset),
    ):
        create.return_value = done(f"{DATASET}/operations/1", dataset)
        import_data.return_value = done(f"{DATASET}/operations/2", ImportDataResponse())
        backend(settings()).start_dataset_import(DatasetRequest("run-42", task, "gs://b/import.jsonl", LABELS, JOB_KEY))
        ours_create, ours_import = create.call_args.kwargs, import_data.call_args.kwargs
        aiplatform.ImageDataset.create(
            display_name=f"lb-{task.value}-run-42",
            gcs_source="gs://b/import.jsonl",
            import_schema_uri=vertex_module.IMPORT_SCHEMAS[task],
            labels=SENT_LABELS,
            sync=True,
            **SDK_SCOPE,
        )
        sdk_create, sdk_import = create.call_args.kwargs, import_data.call_args.kwargs

    assert ours_create["parent"] == sdk_create["parent"]
    assert ours_create["dataset"] == sdk_create["dataset"]
    assert ours_import["name"] == sdk_import["name"] == DATASET
    assert list(ours_import["import_configs"]) == list(sdk_import["import_configs"])


@pytest.mark.parametrize(
    ("task", "vertex", "prediction_type", "model_type", "budget"),
    [
        (Task.OBJECT_DETECTION, settings(), "object_detection", "CLOUD_HIGH_ACCURACY_1", 20_000),
        (
            Task.OBJECT_DETECTION,
            settings(od="CLOUD_LOW_LATENCY_1", budget=24_000),
            "object_detection",
            "CLOUD_LOW_LATENCY_1",
            24_000,
        ),
        (Task.SINGLE_LABEL_CLASSIFICATION, settings(budget=8_000), "classification", "CLOUD", 8_000),
        (
            Task.MULTI_LABEL_CLASSIFICATION,
            settings(cls="CLOUD_1", budget=192_000),
            "classification",
            "CLOUD_1",
            192_000,
        ),
    ],
    ids=["od", "od-low-latency", "single-label", "multi-label"],
)
def test_training_request_matches_automl_image_training_job_run(
    task: Task, vertex: VertexSettings, prediction_type: str, model_type: str, budget: int
) -> None:
    # Without a model name the SDK stops after the request; with one it builds a Model from its global
    # configuration, which would look up default credentials.
    finished = TrainingPipeline(name=PIPELINE, state=PipelineState.PIPELINE_STATE_SUCCEEDED)
    dataset = Dataset(name=DATASET, metadata_schema_uri=aiplatform.schema.dataset.metadata.image)
    with (
        mock.patch.object(PipelineServiceClient, "create_training_pipeline", return_value=finished) as create,
        mock.patch.object(PipelineServiceClient, "get_training_pipeline", return_value=finished),
        mock.patch.object(DatasetServiceClient, "get_dataset", return_value=dataset),
    ):
        backend(vertex).start_training(
            TrainingRequest(
                run_id="run-42", task=task, dataset=DATASET, labels=LABELS, display_name="lb-run-42", job_key=JOB_KEY
            )
        )
        ours = create.call_args.kwargs
        job = aiplatform.AutoMLImageTrainingJob(
            display_name="lb-run-42",
            prediction_type=prediction_type,
            multi_label=task is Task.MULTI_LABEL_CLASSIFICATION,
            model_type=model_type,
            labels=SENT_LABELS,
            **SDK_SCOPE,
        )
        job.run(
            dataset=aiplatform.ImageDataset(DATASET, **SDK_SCOPE),
            budget_milli_node_hours=budget,
            model_display_name="lb-run-42",
            sync=True,
            **SPLITS,
        )
        sdk = create.call_args.kwargs

    assert ours["parent"] == sdk["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert ours["training_pipeline"] == sdk["training_pipeline"]


def test_batch_prediction_request_matches_batch_prediction_job_submit() -> None:
    pending = BatchPredictionJob(
        name=f"projects/{PROJECT}/locations/{REGION}/batchPredictionJobs/444", state=JobState.JOB_STATE_PENDING
    )
    with mock.patch.object(JobServiceClient, "create_batch_prediction_job", return_value=pending) as create:
        backend(settings()).start_batch_prediction(
            PredictionRequest(
                run_id="run-42",
                task=Task.OBJECT_DETECTION,
                model=f"{MODEL}@1",
                instances_uri="gs://b/instances.jsonl",
                output_uri_prefix="gs://b/predictions",
                confidence_threshold=0.25,
                max_predictions=100,
                labels=LABELS,
                display_name="lb-infer-run-42",
                job_key=JOB_KEY,
            )
        )
        ours = create.call_args.kwargs
        aiplatform.BatchPredictionJob.submit(
            job_display_name="lb-infer-run-42",
            model_name=f"{MODEL}@1",
            instances_format="jsonl",
            gcs_source="gs://b/instances.jsonl",
            predictions_format="jsonl",
            gcs_destination_prefix="gs://b/predictions",
            model_parameters={"confidenceThreshold": 0.25, "maxPredictions": 100},
            labels=SENT_LABELS,
            **SDK_SCOPE,
        )
        sdk = create.call_args.kwargs

    assert ours["parent"] == sdk["parent"]
    assert ours["batch_prediction_job"] == sdk["batch_prediction_job"]
