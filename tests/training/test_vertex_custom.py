"""The custom backend's checks before it asks Vertex, what it makes of Vertex's answers, and the router.

Requests are compared with the SDK's in test_vertex_custom_sdk_parity.py; here the gapic methods are
patched to answer as Vertex does (a 400, a failed job, a finished one) and the backend's refusals and
statuses are checked: each says what to change, and nothing is created when a check fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import CustomJob
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from shared.config import VertexCustomSettings, VertexSettings
from shared.domain.machines import Machine
from shared.domain.model_types import Backend, Task
from shared.store.local_folder import LocalFolderStore
from shared.training.port import DatasetRequest, JobRef, RequestRefused, TrainingRequest
from shared.training.port import JobState as State
from shared.training.vertex_custom import JOB_START_MARGIN_S, VertexCustomBackend, training_job
from shared.training.vertex_training import VertexTraining
from tests.fakes import ScriptedBackend
from tests.offline import offline  # noqa: F401

BUCKET, REGION = "lb-bucket", "us-central1"
WHEEL_KEY = "engine/lbchain_engine-0.1.0-py3-none-any.whl"
IMPORT = f"gs://{BUCKET}/runs/run-7/etl/import-*.jsonl"
JOB = "projects/p/locations/us-central1/customJobs/77"
BASE = f"gs://{BUCKET}/runs/run-7/custom/k1/"
CUSTOM = VertexCustomSettings(
    package_uri=f"gs://{BUCKET}/{WHEEL_KEY}",
    image_uri="us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-2.py311:latest",
    machine=Machine("g2-standard-8", "NVIDIA_L4", 1),
    steps=100,
    timeout_s=7200,
    check_region=True,
)


@pytest.fixture(autouse=True)
def _offline(offline: None) -> Iterator[None]:  # noqa: F811
    yield


@pytest.fixture
def store(tmp_path: Path) -> LocalFolderStore:
    store = LocalFolderStore(tmp_path, BUCKET)
    store.write(WHEEL_KEY, b"PK")
    store.write("runs/run-7/etl/import-00000.jsonl", b"{}\n")
    return store


def backend(
    store: LocalFolderStore, custom: VertexCustomSettings = CUSTOM, region: str = REGION
) -> VertexCustomBackend:
    vertex = VertexSettings("CLOUD_HIGH_ACCURACY_1", "CLOUD", 20_000, 8_000)
    return VertexCustomBackend(
        project="p", region=region, store=store, vertex=vertex, custom=custom, credentials=AnonymousCredentials()
    )


def request(**settings: object) -> TrainingRequest:
    return TrainingRequest(
        run_id="run-7",
        task=Task.OBJECT_DETECTION,
        dataset=IMPORT,
        labels={"lb_chain": "prod"},
        display_name="lb-run-7",
        job_key="k1",
        settings=settings,
        backend=Backend.VERTEX_CUSTOM,
    )


def finished_job(state: int, *, message: str = "", minutes: float = 30) -> CustomJob:
    start = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    job = training_job(request(steps=100), CUSTOM, region=REGION, base_output_dir=BASE)
    raw = CustomJob.pb(job)
    raw.name, raw.state = JOB, state
    raw.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(start.timestamp())))
    raw.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(start.timestamp() + minutes * 60)))
    if message:
        raw.error.CopyFrom(status_pb2.Status(code=13, message=message))
    return CustomJob.wrap(raw)


@pytest.fixture
def vertex_calls() -> Iterator[dict[str, mock.MagicMock]]:
    with (
        mock.patch.object(JobServiceClient, "list_custom_jobs", return_value=[]) as listed,
        mock.patch.object(JobServiceClient, "create_custom_job", return_value=CustomJob(name=JOB)) as create,
    ):
        yield {"list": listed, "create": create}


def test_a_machine_vertex_would_refuse_is_refused_before_any_request(
    store: LocalFolderStore, vertex_calls: dict[str, mock.MagicMock]
) -> None:
    with pytest.raises(RequestRefused, match=r"NVIDIA_TESLA_T4 attaches to n1-standard-\* or n1-highmem-\* machines"):
        backend(store).start_training(
            request(machine_type="g2-standard-8", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1)
        )
    assert not vertex_calls["create"].called and not vertex_calls["list"].called


def test_a_region_without_the_accelerator_is_refused_naming_where_it_is(
    store: LocalFolderStore, vertex_calls: dict[str, mock.MagicMock]
) -> None:
    with pytest.raises(RequestRefused, match=r"offers NVIDIA_L4 in .*us-central1.*not in europe-west6: pick another"):
        backend(store, region="europe-west6").start_training(request())
    assert not vertex_calls["create"].called
    unchecked = dataclasses.replace(CUSTOM, check_region=False)  # VERTEX_CUSTOM_REGION_CHECK=off
    assert backend(store, unchecked, region="europe-west6").start_training(request()).ref == JOB


def test_a_missing_engine_package_is_refused_saying_to_run_deploy_again(
    store: LocalFolderStore, vertex_calls: dict[str, mock.MagicMock]
) -> None:
    store.delete(WHEEL_KEY)
    with pytest.raises(
        RequestRefused, match=r"engine package gs://lb-bucket/engine/.* is not in the bucket: run ./deploy.sh"
    ):
        backend(store).start_training(request())
    with pytest.raises(RequestRefused, match="no engine package"):
        backend(store, dataclasses.replace(CUSTOM, package_uri="")).start_training(request())
    assert not vertex_calls["create"].called


def test_vertex_s_own_refusal_is_passed_on_with_what_to_change(
    store: LocalFolderStore, vertex_calls: dict[str, mock.MagicMock]
) -> None:
    vertex_calls["create"].side_effect = api_exceptions.BadRequest(
        "Machine type g2-standard-8 is not supported in us-central1-f"
    )
    with pytest.raises(RequestRefused) as refused:
        backend(store).start_training(request())
    text = str(refused.value)
    assert "Vertex AI refused the custom job: Machine type g2-standard-8 is not supported" in text
    assert "VERTEX_CUSTOM_MACHINE_TYPE" in text and "quota" in text


def test_a_start_finds_the_job_its_key_launched_instead_of_a_second_one(
    store: LocalFolderStore, vertex_calls: dict[str, mock.MagicMock]
) -> None:
    vertex_calls["list"].return_value = [CustomJob(name=JOB)]
    assert backend(store).start_training(request()).ref == JOB
    assert not vertex_calls["create"].called


def test_the_import_jsonl_is_the_dataset(store: LocalFolderStore) -> None:
    custom = backend(store)
    ref = custom.start_dataset_import(DatasetRequest("run-7", Task.OBJECT_DETECTION, IMPORT, {}, "k0"))
    assert ref.ref == IMPORT and custom.dataset_status(IMPORT).result == IMPORT
    store.delete("runs/run-7/etl/import-00000.jsonl")
    assert custom.dataset_status(IMPORT).state is State.FAILED
    with pytest.raises(RequestRefused, match="does not exist; re-run etl"):
        custom.start_dataset_import(DatasetRequest("run-7", Task.OBJECT_DETECTION, IMPORT, {}, "k0"))


def test_a_failed_job_carries_vertex_s_message(store: LocalFolderStore) -> None:
    message = "The replica workerpool0-0 exited with a non-zero status of 1. Last lines: error: no import file"
    with mock.patch.object(JobServiceClient, "get_custom_job", return_value=finished_job(5, message=message)):
        status = backend(store).training_status(JOB)
    assert status.state is State.FAILED and status.error == message
    assert status.link == "https://console.cloud.google.com/agent-platform/locations/us-central1/training/77?project=p"


def test_a_succeeded_job_gives_its_model_dir_with_the_engine_figures_and_the_cost(store: LocalFolderStore) -> None:
    custom = backend(store)
    with mock.patch.object(JobServiceClient, "get_custom_job", return_value=finished_job(4, minutes=30)):
        nothing = custom.training_status(JOB)
        store.write(
            "runs/run-7/custom/k1/model/summary.json", json.dumps({"step": 100, "validation_map50": 0.8}).encode()
        )
        done = custom.training_status(JOB)
    assert nothing.state is State.FAILED and "wrote no model to gs://lb-bucket/runs/run-7/custom/k1/model/" in (
        nothing.error or ""
    )
    assert done.state is State.SUCCEEDED and done.result == f"{BASE}model/"
    assert done.progress["step"] == 100 and done.progress["validation_map50"] == 0.8
    assert done.progress["machine"] == "g2-standard-8 + 1 x NVIDIA_L4" and done.progress["elapsed_s"] == 1800
    assert done.progress["estimated_cost_usd"] == round(0.9818 / 2, 4)  # half an hour at the machine's rate


def test_an_own_hourly_rate_replaces_the_estimate(store: LocalFolderStore) -> None:
    custom = backend(store, dataclasses.replace(CUSTOM, usd_per_hour=2.0))
    with mock.patch.object(JobServiceClient, "get_custom_job", return_value=finished_job(3, minutes=15)):
        running = custom.training_status(JOB)
    assert running.state is State.RUNNING and running.progress["estimated_cost_usd"] == 0.5


def test_the_deadline_is_the_job_timeout_plus_the_start_margin(store: LocalFolderStore) -> None:
    assert backend(store).training_deadline_s(JOB, Task.OBJECT_DETECTION, {}) == 7200 + JOB_START_MARGIN_S


def test_the_router_starts_by_the_run_s_backend_and_follows_each_ref_to_its_owner(store: LocalFolderStore) -> None:
    automl = ScriptedBackend()
    custom = backend(store)
    training = VertexTraining(automl, custom)
    automl_request = dataclasses.replace(request(), backend=Backend.VERTEX, dataset="datasets/1")
    assert training.start_training(automl_request).ref.startswith("pipelines/")
    custom_import = DatasetRequest("run-7", Task.OBJECT_DETECTION, IMPORT, {}, "k0", "vertex_custom")
    assert training.start_dataset_import(custom_import).ref == IMPORT
    assert automl.calls == ["start_training datasets/1"]  # the custom dataset never reached AutoML
    with mock.patch.object(JobServiceClient, "get_custom_job", return_value=finished_job(3)) as get:
        assert training.training_status(JOB).state is State.RUNNING
        training.training_status("pipelines/42")
    assert get.call_args.kwargs["name"] == JOB and "training_status pipelines/42" in automl.calls
    without = VertexTraining(automl, None)
    with pytest.raises(RequestRefused, match="not set up for Vertex AI custom jobs"):
        without.start_training(request())
    assert isinstance(without.start_training(automl_request), JobRef)
