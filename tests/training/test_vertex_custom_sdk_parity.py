"""The custom backend's CustomJob requests equal the ones `aiplatform.CustomJob(...).submit()` sends.

The backend calls the gapic JobServiceClient itself (one request, no waiting); both it and the SDK run
here against the same patched gapic methods, and their create and get requests are compared whole:
worker pool spec, python package spec, machine and accelerator, disk, labels, base output directory,
scheduling timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import CustomJob, JobState

from shared.config import VertexCustomSettings, VertexSettings
from shared.domain.machines import Machine
from shared.domain.model_types import Backend, Task
from shared.store.local_folder import LocalFolderStore
from shared.training.port import PredictionRequest, TrainingRequest
from shared.training.vertex_custom import VertexCustomBackend
from tests.offline import offline  # noqa: F401

PROJECT, REGION, BUCKET = "lb-chain-project", "us-central1", "lb-bucket"
PACKAGE = f"gs://{BUCKET}/engine/lbchain_engine-0.1.0-py3-none-any.whl"
IMAGE = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-2.py311:latest"
LABELS = {"lb_chain": "prod", "lb_model_run": "run-42"}
JOB_KEY = "training-1-0123456789abcdef"
SENT_LABELS = {**LABELS, "lb_job": JOB_KEY}
JOB = f"projects/{PROJECT}/locations/{REGION}/customJobs/555"
SDK_SCOPE = {"project": PROJECT, "location": REGION, "credentials": AnonymousCredentials()}
CUSTOM = VertexCustomSettings(
    package_uri=PACKAGE,
    image_uri=IMAGE,
    machine=Machine("g2-standard-8", "NVIDIA_L4", 1),
    steps=2000,
    timeout_s=14_400,
    check_region=True,
)
ENV = [{"name": "LBCHAIN_RUN_ID", "value": "run-42"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]


@pytest.fixture(autouse=True)
def _offline(offline: None) -> Iterator[None]:  # noqa: F811
    yield


@pytest.fixture
def backend(tmp_path: Path) -> VertexCustomBackend:
    store = LocalFolderStore(tmp_path, BUCKET)
    store.write("engine/lbchain_engine-0.1.0-py3-none-any.whl", b"PK wheel")
    store.write("runs/run-42/etl/import-00000.jsonl", b"{}\n")
    return VertexCustomBackend(
        project=PROJECT,
        region=REGION,
        store=store,
        vertex=VertexSettings("CLOUD_HIGH_ACCURACY_1", "CLOUD", 20_000, 8_000),
        custom=CUSTOM,
        credentials=AnonymousCredentials(),
    )


def pool(args: list[str], machine: dict[str, object]) -> dict[str, object]:
    """A worker pool as the SDK takes it (a dict of the proto's fields)."""
    return {
        "machine_spec": machine,
        "replica_count": 1,
        "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100},
        "python_package_spec": {
            "executor_image_uri": IMAGE,
            "package_uris": [PACKAGE],
            "python_module": "shared.engine.vertex_job",
            "args": args,
            "env": ENV,
        },
    }


def sdk_submit(display_name: str, worker_pool: dict[str, object], base_output_dir: str) -> None:
    aiplatform.CustomJob(
        display_name=display_name,
        worker_pool_specs=[worker_pool],
        base_output_dir=base_output_dir,
        labels=SENT_LABELS,
        staging_bucket=f"gs://{BUCKET}",
        **SDK_SCOPE,
    ).submit(timeout=14_400)


L4 = {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}


@pytest.mark.parametrize(
    ("settings", "machine", "budget_args"),
    [
        ({"steps": 300}, L4, ["--steps", "300"]),
        (
            {
                "steps": None,
                "train_seconds": 900.0,
                "learning_rate": 0.01,
                "input_size": 512,
                "backbone": "mobilenet_v2",
                "machine_type": "n1-standard-8",
                "accelerator_type": "NVIDIA_TESLA_T4",
                "accelerator_count": 2,
            },
            {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2},
            [
                "--train-seconds",
                "900.0",
                "--learning-rate",
                "0.01",
                "--input-size",
                "512",
                "--backbone",
                "mobilenet_v2",
            ],
        ),
    ],
)
def test_training_create_matches_custom_job_submit(
    backend: VertexCustomBackend, settings: dict[str, object], machine: dict[str, object], budget_args: list[str]
) -> None:
    created = CustomJob(name=JOB, state=JobState.JOB_STATE_QUEUED)
    with (
        mock.patch.object(JobServiceClient, "list_custom_jobs", return_value=[]) as listed,
        mock.patch.object(JobServiceClient, "create_custom_job", return_value=created) as create,
    ):
        ref = backend.start_training(
            TrainingRequest(
                run_id="run-42",
                task=Task.OBJECT_DETECTION,
                dataset=f"gs://{BUCKET}/runs/run-42/etl/import-*.jsonl",
                labels=LABELS,
                display_name="lb-run-42",
                job_key=JOB_KEY,
                settings=settings,
                backend=Backend.VERTEX_CUSTOM,
            )
        )
        ours = create.call_args.kwargs
        base = f"gs://{BUCKET}/runs/run-42/custom/{JOB_KEY}/"
        args = ["train", "--import-uri", f"gs://{BUCKET}/runs/run-42/etl/import-*.jsonl", "--task", "object_detection"]
        args += ["--display-name", "lb-run-42", "--seed", "0", *budget_args]
        sdk_submit("lb-run-42-train", pool(args, machine), base)
        sdk = create.call_args.kwargs

    assert ref.ref == JOB
    assert listed.call_args.kwargs["request"] == {
        "parent": f"projects/{PROJECT}/locations/{REGION}",
        "filter": f'labels.lb_job="{JOB_KEY}"',
    }
    assert ours["parent"] == sdk["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert ours["custom_job"] == sdk["custom_job"]
    sent = ours["custom_job"]
    assert sent.job_spec.base_output_directory.output_uri_prefix == base  # AIP_MODEL_DIR = <base>/model/
    assert sent.job_spec.scheduling.timeout.total_seconds() == 14_400


def test_prediction_create_matches_custom_job_submit(backend: VertexCustomBackend) -> None:
    created = CustomJob(name=JOB, state=JobState.JOB_STATE_QUEUED)
    model = f"gs://{BUCKET}/runs/run-42/custom/{JOB_KEY}/model/"
    with (
        mock.patch.object(JobServiceClient, "list_custom_jobs", return_value=[]),
        mock.patch.object(JobServiceClient, "create_custom_job", return_value=created) as create,
    ):
        backend.start_batch_prediction(
            PredictionRequest(
                run_id="run-42",
                task=Task.OBJECT_DETECTION,
                model=model,
                instances_uri=f"gs://{BUCKET}/runs/run-42/inference/instances.jsonl",
                output_uri_prefix=f"gs://{BUCKET}/runs/run-42/inference/output",
                confidence_threshold=0.25,
                max_predictions=100,
                labels=LABELS,
                display_name="lb-predict-run-42",
                job_key=JOB_KEY,
                backend=Backend.VERTEX_CUSTOM,
            )
        )
        ours = create.call_args.kwargs
        sent_args = list(ours["custom_job"].job_spec.worker_pool_specs[0].python_package_spec.args)
        output_dir = sent_args[sent_args.index("--output-dir") + 1]
        assert output_dir.startswith(f"gs://{BUCKET}/runs/run-42/inference/output/prediction-lb-predict-run-42-")
        args = [
            "predict",
            "--model-dir",
            model,
            "--instances-uri",
            f"gs://{BUCKET}/runs/run-42/inference/instances.jsonl",
        ]
        args += ["--output-dir", output_dir, "--task", "object_detection"]
        args += ["--confidence-threshold", "0.25", "--max-predictions", "100"]
        sdk_submit("lb-predict-run-42-predict", pool(args, L4), output_dir)
        sdk = create.call_args.kwargs

    assert ours["custom_job"] == sdk["custom_job"]


def test_status_get_matches_custom_job_get(backend: VertexCustomBackend) -> None:
    running = CustomJob(name=JOB, display_name="lb-run-42-train", state=JobState.JOB_STATE_RUNNING)
    with mock.patch.object(JobServiceClient, "get_custom_job", return_value=running) as get:
        status = backend.training_status(JOB)
        ours = get.call_args.kwargs
        aiplatform.CustomJob.get(JOB, **SDK_SCOPE)
        sdk = get.call_args.kwargs
    assert status.state.value == "running"
    assert ours["name"] == sdk["name"] == JOB
