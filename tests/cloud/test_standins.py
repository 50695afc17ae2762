"""The cloud stand-ins driven by the real client libraries over loopback HTTP.

Each test talks to a stand-in exactly as the deployed functions will: google-auth against the metadata
server, and the gapic clients with `transport="rest"` and an `http://127.0.0.1:PORT` endpoint. Timing
assertions are lower bounds only (a retry never comes before its backoff); waits are generous.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import google.auth.credentials
import pytest
import requests
from flask import Flask, Response, request
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import aiplatform_v1 as v1
from google.cloud import storage, tasks_v2
from google.cloud.aiplatform_v1.services.dataset_service import DatasetServiceClient
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.services.model_service import ModelServiceClient
from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
from google.longrunning import operations_pb2
from google.oauth2.credentials import Credentials as AccessTokenCredentials
from PIL import Image

from shared.domain.predictions import VertexPrediction
from shared.formats.vertex_prediction import PredictionLineError, parse_prediction_line
from tests.cloud._http import LoopbackServer
from tests.cloud.front_door import FrontDoor
from tests.cloud.google_tokens import DEFAULT_SERVICE_ACCOUNT, InvalidToken, MetadataServer, TokenAuthority
from tests.cloud.tasks_standin import CloudTasksStandIn, RetryPolicy
from tests.cloud.vertex_standin import (
    BOUNDING_BOX_IMPORT,
    IMAGE_METADATA_SCHEMA,
    OD_DEFINITION,
    SINGLE_LABEL_IMPORT,
    ImportedItem,
    VertexStandIn,
)
from tests.store.gcs_emulator import GcsEmulator

SA = DEFAULT_SERVICE_ACCOUNT
OTHER_SA = "someone-else@test-project.iam.gserviceaccount.com"
PROJECT, NUMBER, REGION, QUEUE = "test-project", "123456789", "us-central1", "chain"
ML_USE = "aiplatform.googleapis.com/ml_use"
REPO = Path(__file__).resolve().parents[2]


class Sink(LoopbackServer):
    """An HTTP target that records what it receives and answers from a script of (status, delay_s)."""

    def __init__(self, answers: list[tuple[int, float]] | None = None) -> None:
        super().__init__("sink")
        self.answers = list(answers or [])
        self.received = threading.Event()

    def build_app(self) -> Flask:
        app = Flask("sink")

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT"])
        def hook(path: str) -> Response:
            status, delay = self.answers.pop(0) if self.answers else (200, 0.0)
            time.sleep(delay)
            self.record(request, identity=None, status=status)
            self.received.set()
            response = Response(b"chunk-1;" * 1000 + b"end", status, mimetype="text/plain")
            response.headers["X-Upstream"] = "sink"
            return response

        return app


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority()


@pytest.fixture
def metadata(authority: TokenAuthority) -> Iterator[MetadataServer]:
    with MetadataServer(authority, service_account_email=SA, project_id=PROJECT, project_number=NUMBER) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as server:
        yield server


def _credentials(authority: TokenAuthority, email: str = SA) -> AccessTokenCredentials:
    return AccessTokenCredentials(token=authority.mint_access_token(email))


class UnknownToken(google.auth.credentials.Credentials):
    """A token no authority issued. On a 401, google-auth's AuthorizedSession refreshes and retries twice;
    anonymous credentials would raise on that refresh instead of surfacing the 401."""

    def __init__(self) -> None:
        super().__init__()
        self.token = "ya29.never-issued"

    def refresh(self, request: Any) -> None:
        self.token = "ya29.still-never-issued"


# -- metadata server and token authority --------------------------------------------------------------

_AUTH_PROBE = r"""
import json
import google.auth, google.auth.transport.requests as tr, google.oauth2.id_token as id_token
from google.auth import compute_engine
credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
credentials.refresh(tr.Request())
id_creds = compute_engine.IDTokenCredentials(tr.Request(), "https://etl.example", use_metadata_identity_endpoint=True)
id_creds.refresh(tr.Request())
print(json.dumps({
    "class": type(credentials).__module__ + "." + type(credentials).__name__,
    "project": project,
    "email": credentials.service_account_email,
    "token": credentials.token,
    "fetched": id_token.fetch_id_token(tr.Request(), "https://train.example"),
    "id_creds": id_creds.token,
}))
"""


def test_google_auth_in_a_subprocess_gets_project_tokens_and_id_tokens(
    metadata: MetadataServer, authority: TokenAuthority
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _AUTH_PROBE], env=metadata.child_env(), capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["class"] == "google.auth.compute_engine.credentials.Credentials"
    assert (out["project"], out["email"]) == (PROJECT, SA)
    assert authority.identity_of_access_token(out["token"]) == SA
    claims = authority.verify_id_token(out["fetched"], "https://train.example")
    assert claims["email"] == SA and claims["email_verified"] is True and claims["iss"] == "https://accounts.google.com"
    assert claims["azp"] == claims["sub"] == TokenAuthority.unique_id(SA)
    assert authority.verify_id_token(out["id_creds"], "https://etl.example")["aud"] == "https://etl.example"
    paths = [(r.path, r.query.get("audience")) for r in metadata.requests]
    assert ("/", None) in paths  # the is_on_gce / fetch_id_token ping
    assert ("/computeMetadata/v1/project/project-id", None) in paths
    assert ("/computeMetadata/v1/instance/service-accounts/default/token", None) in paths
    assert ("/computeMetadata/v1/instance/service-accounts/default/identity", "https://train.example") in paths
    assert all(r.headers.get("Metadata-Flavor") == "Google" for r in metadata.requests)
    identity = next(r for r in metadata.requests if r.path.endswith("/identity"))
    assert identity.query["format"] == "full"


def test_apply_points_this_process_at_the_server_and_undoes_it(
    metadata: MetadataServer, authority: TokenAuthority
) -> None:
    import google.auth
    import google.auth.transport.requests
    import google.oauth2.id_token
    from google.auth.compute_engine import _metadata

    before = _metadata._GCE_METADATA_HOST
    with pytest.MonkeyPatch.context() as mp:
        metadata.apply(mp, seal=True)
        credentials, project = google.auth.default()
        credentials.refresh(google.auth.transport.requests.Request())
        token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), "https://aud.example")

    assert project == PROJECT
    assert authority.identity_of_access_token(credentials.token) == SA
    assert authority.verify_id_token(token, "https://aud.example")["email"] == SA
    assert before == _metadata._GCE_METADATA_HOST  # google-auth's import-time cache is restored
    assert metadata.token_requests()[-1].endswith("/identity")


def test_the_metadata_server_wants_the_flavor_header_and_sends_it_back(metadata: MetadataServer) -> None:
    url = f"{metadata.url}/computeMetadata/v1/project/numeric-project-id"

    refused = requests.get(url, timeout=5)
    answered = requests.get(url, headers={"Metadata-Flavor": "Google"}, timeout=5)
    no_audience = requests.get(
        f"{metadata.url}/computeMetadata/v1/instance/service-accounts/default/identity",
        headers={"Metadata-Flavor": "Google"},
        timeout=5,
    )

    assert refused.status_code == 403
    assert (answered.status_code, answered.text, answered.headers["Metadata-Flavor"]) == (200, NUMBER, "Google")
    assert no_audience.status_code == 400


def test_the_authority_verifies_only_its_own_unexpired_tokens_for_their_audience(authority: TokenAuthority) -> None:
    token = authority.mint_id_token(SA, "https://a.example")
    header, payload, signature = token.split(".")
    forged_claims = json.loads(_unb64(payload)) | {"email": OTHER_SA}
    forged = f"{header}.{_b64(json.dumps(forged_claims).encode())}.{signature}"
    expired = authority.mint_id_token(SA, "https://a.example", lifetime_s=-1)

    assert authority.verify_id_token(token, "https://a.example")["email"] == SA
    for bad, audience, why in [
        (token, "https://b.example", "wrong audience"),
        (forged, "https://a.example", "bad signature"),
        (TokenAuthority().mint_id_token(SA, "https://a.example"), "https://a.example", "signed by this authority"),
        (expired, "https://a.example", "expired"),
        ("not-a-jwt", "https://a.example", "not a JWT"),
    ]:
        with pytest.raises(InvalidToken, match=why):
            authority.verify_id_token(bad, audience)
    access = authority.mint_access_token(SA)
    assert authority.identity_of_access_token(access) == SA
    assert authority.identity_of_access_token("ya29.made-up") is None
    assert authority.identity_of_access_token(authority.mint_access_token(SA, lifetime_s=-1)) is None


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- Cloud Tasks ----------------------------------------------------------------------------------------


@pytest.fixture
def tasks(authority: TokenAuthority) -> Iterator[CloudTasksStandIn]:
    with CloudTasksStandIn(authority, act_as={OTHER_SA}) as standin:
        standin.add_queue(PROJECT, REGION, QUEUE, retry=RetryPolicy(3, 0.2, 1.0, 1))
        yield standin


def _tasks_client(standin: CloudTasksStandIn, credentials: Any) -> tasks_v2.CloudTasksClient:
    return tasks_v2.CloudTasksClient(
        transport="rest", credentials=credentials, client_options=ClientOptions(api_endpoint=standin.url)
    )


def _task(
    client: tasks_v2.CloudTasksClient,
    task_id: str | None,
    url: str,
    *,
    delay_s: float = 0.0,
    email: str = SA,
    audience: str | None = None,
    **http: Any,
) -> tasks_v2.Task:
    return tasks_v2.Task(
        name=client.task_path(PROJECT, REGION, QUEUE, task_id) if task_id else None,
        http_request=tasks_v2.HttpRequest(
            http_method=http.pop("method", tasks_v2.HttpMethod.POST),
            url=url,
            headers={"Content-Type": "application/json"},
            body=http.pop("body", b'{"run_id": "r1"}'),
            oidc_token=tasks_v2.OidcToken(service_account_email=email, audience=audience if audience else url),
        ),
        schedule_time=datetime.now(UTC) + timedelta(seconds=delay_s),
        dispatch_deadline=http.pop("deadline", timedelta(seconds=300)),
    )


def test_a_named_task_is_pushed_at_its_schedule_time_with_cloud_tasks_headers_and_an_oidc_token(
    tasks: CloudTasksStandIn, sink: Sink, authority: TokenAuthority
) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    url = f"{sink.url}/monitor"
    parent = client.queue_path(PROJECT, REGION, QUEUE)

    created = client.create_task(parent=parent, task=_task(client, "abc_123-x", url, delay_s=0.6))
    tasks.wait_idle(10)

    assert created.name == f"{parent}/tasks/abc_123-x"
    assert created.create_time and created.dispatch_deadline == timedelta(seconds=300)
    (attempt,) = tasks.attempts("abc_123-x")
    record = tasks.task(created.name)
    assert attempt.status == 200 and record.state == "succeeded"
    assert attempt.dispatched_at >= record.schedule_time - 0.01  # not before its schedule time
    (got,) = sink.requests
    assert (got.method, got.path, got.body) == ("POST", "/monitor", b'{"run_id": "r1"}')
    assert got.headers["User-Agent"] == "Google-Cloud-Tasks"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Cloudtasks-Queuename"] == QUEUE
    assert got.headers["X-Cloudtasks-Taskname"] == "abc_123-x"
    assert got.headers["X-Cloudtasks-Taskretrycount"] == "0"
    assert got.headers["X-Cloudtasks-Taskexecutioncount"] == "0"
    assert float(got.headers["X-Cloudtasks-Tasketa"]) == pytest.approx(record.schedule_time, abs=1e-3)
    scheme, token = got.headers["Authorization"].split(" ")
    assert scheme == "Bearer" and authority.verify_id_token(token, url)["email"] == SA
    assert tasks.requests[0].identity == SA and tasks.requests[0].json()["task"]["httpRequest"]["httpMethod"] == 1


def test_a_task_name_used_before_is_refused_as_already_exists_which_rest_raises_as_conflict(
    tasks: CloudTasksStandIn, sink: Sink, authority: TokenAuthority
) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    parent = client.queue_path(PROJECT, REGION, QUEUE)
    client.create_task(parent=parent, task=_task(client, "once", sink.url))

    with pytest.raises(gexc.Conflict) as while_queued:
        client.create_task(parent=parent, task=_task(client, "once", sink.url))
    tasks.wait_idle(10)
    with pytest.raises(gexc.Conflict):  # executed: the name stays taken
        client.create_task(parent=parent, task=_task(client, "once", sink.url))

    # google-api-core maps a REST 409 by its HTTP code: Conflict, never its gRPC-only subclass AlreadyExists.
    assert not isinstance(while_queued.value, gexc.AlreadyExists)
    assert while_queued.value.response.json() == {
        "error": {"code": 409, "message": "Requested entity already exists", "status": "ALREADY_EXISTS"}
    }
    assert len(sink.requests) == 1
    unnamed = client.create_task(parent=parent, task=_task(client, None, sink.url))
    assert re.fullmatch(rf"{parent}/tasks/\d+", unnamed.name)


def test_a_failing_target_is_retried_with_the_queue_backoff_until_max_attempts(
    tasks: CloudTasksStandIn, authority: TokenAuthority
) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    parent = client.queue_path(PROJECT, REGION, QUEUE)
    with Sink([(500, 0.0), (503, 0.0), (200, 0.0)]) as flaky, Sink([(500, 0.0)] * 5) as broken:
        client.create_task(parent=parent, task=_task(client, "flaky", flaky.url))
        client.create_task(parent=parent, task=_task(client, "broken", broken.url))
        tasks.wait_idle(15)
        retry_counts = [r.headers["X-Cloudtasks-Taskretrycount"] for r in flaky.requests]
        previous = [r.headers.get("X-Cloudtasks-Taskpreviousresponse") for r in flaky.requests]

    flaky_attempts = tasks.attempts("flaky")
    assert [a.status for a in flaky_attempts] == [500, 503, 200]
    assert retry_counts == ["0", "1", "2"] and previous == [None, "500", "503"]
    gaps = [b.monotonic_at - a.monotonic_at for a, b in itertools.pairwise(flaky_attempts)]
    assert gaps[0] >= 0.2 * 0.95 and gaps[1] >= 0.4 * 0.95  # min_backoff, then doubled once
    assert tasks.task("flaky").state == "succeeded"
    assert [a.status for a in tasks.attempts("broken")] == [500, 500, 500]
    assert tasks.task("broken").state == "failed"
    assert RetryPolicy(100, 10, 300, 3).backoff_s(1) == 10
    assert [RetryPolicy(100, 10, 300, 3).backoff_s(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_no_answer_within_the_dispatch_deadline_is_a_failed_attempt(authority: TokenAuthority) -> None:
    with CloudTasksStandIn(authority, deadline_scale=0.02) as standin, Sink([(200, 1.5)]) as slow:
        standin.add_queue(PROJECT, REGION, QUEUE, retry=RetryPolicy(2, 0.1, 0.1, 0))
        client = _tasks_client(standin, _credentials(authority))
        task = _task(client, "slow", slow.url, deadline=timedelta(seconds=15))  # waits 0.3 s here
        client.create_task(parent=client.queue_path(PROJECT, REGION, QUEUE), task=task)
        standin.wait_idle(15)

    first, second = standin.attempts("slow")
    assert first.status is None and first.error is not None and first.error.startswith("DEADLINE_EXCEEDED")
    assert second.status == 200


def test_cloud_tasks_refuses_what_the_real_service_refuses(
    tasks: CloudTasksStandIn, sink: Sink, authority: TokenAuthority
) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    parent = client.queue_path(PROJECT, REGION, QUEUE)

    def refused(task: tasks_v2.Task, *, queue: str = parent, creds: Any = None) -> gexc.GoogleAPICallError:
        with pytest.raises(gexc.GoogleAPICallError) as caught:
            (_tasks_client(tasks, creds) if creds else client).create_task(parent=queue, task=task)
        return caught.value

    assert isinstance(refused(_task(client, "a", sink.url), creds=UnknownToken()), gexc.Unauthorized)
    missing = refused(_task(client, None, sink.url), queue=client.queue_path(PROJECT, REGION, "nope"))
    assert isinstance(missing, gexc.NotFound)
    assert isinstance(refused(_task(client, "bad.id", sink.url)), gexc.BadRequest)
    assert isinstance(refused(_task(client, "a", "ftp://example.com/x")), gexc.BadRequest)
    assert isinstance(refused(_task(client, "a", sink.url, delay_s=31 * 86_400)), gexc.BadRequest)
    assert isinstance(refused(_task(client, "a", sink.url, deadline=timedelta(seconds=10))), gexc.BadRequest)
    assert isinstance(refused(_task(client, "a", sink.url, method=tasks_v2.HttpMethod.GET)), gexc.BadRequest)
    stranger = "stranger@other-project.iam.gserviceaccount.com"
    denied = refused(_task(client, "a", sink.url, email=stranger))
    assert isinstance(denied, gexc.Forbidden) and "iam.serviceAccounts.actAs" in denied.message
    assert denied.response.json()["error"]["status"] == "PERMISSION_DENIED"
    assert [r.status for r in tasks.requests] == [401, 401, 401, 404, 400, 400, 400, 400, 400, 403]
    # The act_as allowlist stands for roles/iam.serviceAccountUser on another service account.
    assert client.create_task(parent=parent, task=_task(client, "a", sink.url, email=OTHER_SA)).name


def test_get_list_and_delete_a_waiting_task(tasks: CloudTasksStandIn, sink: Sink, authority: TokenAuthority) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    parent = client.queue_path(PROJECT, REGION, QUEUE)
    name = client.create_task(parent=parent, task=_task(client, "later", sink.url, delay_s=3600)).name

    basic = client.get_task(name=name)
    full = client.get_task(request={"name": name, "response_view": tasks_v2.Task.View.FULL})
    listed = [t.name for t in client.list_tasks(parent=parent)]
    client.delete_task(name=name)

    assert basic.view == tasks_v2.Task.View.BASIC and basic.http_request.body == b""
    assert full.http_request.body == b'{"run_id": "r1"}'
    assert listed == [name]
    with pytest.raises(gexc.NotFound):
        client.get_task(name=name)
    with pytest.raises(gexc.Conflict):
        client.create_task(parent=parent, task=_task(client, "later", sink.url))
    assert tasks.pending() == [] and tasks.task("later").state == "deleted" and sink.requests == []


def test_the_default_credentials_of_a_function_enqueue_as_its_service_account(
    metadata: MetadataServer, tasks: CloudTasksStandIn, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata.apply(monkeypatch, seal=True)
    client = tasks_v2.CloudTasksClient(transport="rest", client_options=ClientOptions(api_endpoint=tasks.url))

    client.create_task(parent=client.queue_path(PROJECT, REGION, QUEUE), task=_task(client, "adc", sink.url))
    tasks.wait_idle(10)

    assert tasks.requests[0].identity == SA
    assert "/computeMetadata/v1/instance/service-accounts/default/token" in metadata.token_requests()
    assert tasks.task("adc").state == "succeeded"


# -- Vertex AI ------------------------------------------------------------------------------------------


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def bucket(gcs_emulator: GcsEmulator) -> tuple[str, storage.Client]:
    client = gcs_emulator.client()
    name = gcs_emulator.make_bucket()
    for index, image in enumerate(["a", "b", "c", "unknown"]):
        client.bucket(name).blob(f"images/{image}.png").upload_from_string(
            _png(16, 12, (40 * index, 90, 160)), content_type="image/png"
        )
    client.bucket(name).blob("images/corrupt.png").upload_from_string(b"not an image", content_type="image/png")
    return name, client


@pytest.fixture
def vertex(
    authority: TokenAuthority, bucket: tuple[str, storage.Client], gcs_emulator: GcsEmulator
) -> Iterator[VertexStandIn]:
    # A custom job's module is imported from the repo, and reaches the emulator as a real job reaches GCS.
    job_env = {**gcs_emulator.env, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    with VertexStandIn(
        authority, bucket[1], project_id=PROJECT, project_number=NUMBER, location=REGION, job_env=job_env
    ) as standin:
        yield standin


@pytest.fixture
def clients(
    vertex: VertexStandIn, authority: TokenAuthority
) -> tuple[DatasetServiceClient, PipelineServiceClient, JobServiceClient]:
    kwargs: dict[str, Any] = {
        "transport": "rest",
        "credentials": _credentials(authority),
        "client_options": ClientOptions(api_endpoint=vertex.url),
    }
    return DatasetServiceClient(**kwargs), PipelineServiceClient(**kwargs), JobServiceClient(**kwargs)


PARENT = f"projects/{PROJECT}/locations/{REGION}"
BOXES = {
    "a": [{"displayName": "cat", "xMin": 0.1, "yMin": 0.2, "xMax": 0.5, "yMax": 0.6}],
    "b": [
        {"displayName": "dog", "xMin": "0.3", "yMin": "0.3", "xMax": "0.7", "yMax": "0.6"},
        {"displayName": "cat", "xMin": 0.0, "yMin": 0.0, "xMax": 1.0, "yMax": 1.0},
    ],
    "c": [{"displayName": "dog", "xMin": 0.6, "yMin": 0.1, "xMax": 0.9, "yMax": 0.4}],
}
SPLITS = {"a": "training", "b": "validation", "c": "test"}
_PIPELINE_ENDED = {
    v1.PipelineState.PIPELINE_STATE_SUCCEEDED,
    v1.PipelineState.PIPELINE_STATE_FAILED,
    v1.PipelineState.PIPELINE_STATE_CANCELLED,
}


def _import_lines(bucket_name: str) -> list[str]:
    good = [
        {
            "imageGcsUri": f"gs://{bucket_name}/images/{image}.png",
            "boundingBoxAnnotations": boxes,
            "dataItemResourceLabels": {ML_USE: SPLITS[image]},
        }
        for image, boxes in BOXES.items()
    ]
    bad = [
        {"imageGcsUri": f"gs://{bucket_name}/images/missing.png"},
        {
            "imageGcsUri": f"gs://{bucket_name}/images/a.png",
            "boundingBoxAnnotations": [{"displayName": "x", "xMin": 2}],
        },
        {"imageGcsUri": f"gs://{bucket_name}/images/a.png", "classificationAnnotation": {"displayName": "cat"}},
    ]
    return [json.dumps(line) for line in good + bad] + ["{not json"]


def _create_dataset(datasets: DatasetServiceClient, labels: dict[str, str] | None = None) -> v1.Dataset:
    dataset = v1.Dataset(display_name="lb-od-run1", metadata_schema_uri=IMAGE_METADATA_SCHEMA, labels=labels or {})
    return datasets.create_dataset(parent=PARENT, dataset=dataset).result(timeout=30)


def _finish(get: Any, name: str, done: Any, polls: int = 10) -> Any:
    for _ in range(polls):
        resource = get(name=name)
        if done(resource):
            return resource
    raise AssertionError(f"{name} did not finish within {polls} polls")


def _imported_dataset(datasets: DatasetServiceClient, bucket_name: str, storage_client: storage.Client) -> str:
    storage_client.bucket(bucket_name).blob("imports/part-1.jsonl").upload_from_string(
        "\n".join(_import_lines(bucket_name))
    )
    dataset = _create_dataset(datasets, {"lb_job": "job-1"})
    started = datasets.import_data(
        name=dataset.name,
        import_configs=[
            v1.ImportDataConfig(
                gcs_source=v1.GcsSource(uris=[f"gs://{bucket_name}/imports/*.jsonl"]),
                import_schema_uri=BOUNDING_BOX_IMPORT,
            )
        ],
    )
    request_of = operations_pb2.GetOperationRequest
    _finish(
        lambda name: datasets.get_operation(request=request_of(name=name)), started.operation.name, lambda o: o.done
    )
    return dataset.name


def test_dataset_create_and_import_with_partial_failures_and_operation_polling(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    datasets, _, _ = clients
    bucket_name, storage_client = bucket
    storage_client.bucket(bucket_name).blob("imports/part-1.jsonl").upload_from_string(
        "\n".join(_import_lines(bucket_name))
    )

    dataset = _create_dataset(datasets, {"lb_job": "job-1"})
    started = datasets.import_data(
        name=dataset.name,
        import_configs=[
            v1.ImportDataConfig(
                gcs_source=v1.GcsSource(uris=[f"gs://{bucket_name}/imports/*.jsonl"]),
                import_schema_uri=BOUNDING_BOX_IMPORT,
            )
        ],
    )
    first = datasets.get_operation(request=operations_pb2.GetOperationRequest(name=started.operation.name))
    second = datasets.get_operation(request=operations_pb2.GetOperationRequest(name=started.operation.name))
    listed = datasets.list_operations(request=operations_pb2.ListOperationsRequest(name=dataset.name))

    assert re.fullmatch(rf"projects/{NUMBER}/locations/{REGION}/datasets/\d+", dataset.name)
    assert dataset.display_name == "lb-od-run1" and dict(dataset.labels) == {"lb_job": "job-1"}
    assert started.operation.name.startswith(f"{dataset.name}/operations/")
    assert (first.done, second.done) == (False, True)
    assert not second.HasField("error")
    metadata = v1.ImportDataOperationMetadata.pb(v1.ImportDataOperationMetadata())
    assert second.metadata.Unpack(metadata)
    failures = [f.message for f in metadata.generic_metadata.partial_failures]
    assert len(failures) == 4 and all("part-1.jsonl line" in f for f in failures)
    assert any("missing.png does not exist" in f for f in failures)
    assert any("unknown field(s) ['classificationAnnotation']" in f for f in failures)
    assert len(listed.operations) == 2  # the create and the import, both under the dataset
    items = {item.image_uri.rsplit("/", 1)[-1]: item for item in vertex.items(dataset.name)}
    assert sorted(items) == ["a.png", "b.png", "c.png"]
    assert items["b.png"].ml_use == "validation" and [b.label for b in items["b.png"].boxes] == ["dog", "cat"]
    # aiplatform 2.7.0's REST transport polls operations on the /ui/ binding, not /v1/.
    operation_paths = [r.path for r in vertex.requests if "/operations" in r.path]
    assert operation_paths and all(p.startswith("/ui/projects/") for p in operation_paths)
    found = datasets.list_datasets(request={"parent": PARENT, "filter": 'labels.lb_job="job-1"'})
    assert [d.name for d in found] == [dataset.name]
    assert datasets.get_dataset(name=dataset.name.replace(NUMBER, PROJECT)).data_item_count == 3


def test_an_import_without_one_valid_line_fails_the_operation(
    clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    datasets, _, _ = clients
    bucket_name, storage_client = bucket
    storage_client.bucket(bucket_name).blob("bad.jsonl").upload_from_string(
        json.dumps({"imageGcsUri": f"gs://{bucket_name}/images/a.png", "classificationAnnotation": "cat"})
    )
    dataset = _create_dataset(datasets)

    started = datasets.import_data(
        name=dataset.name,
        import_configs=[
            v1.ImportDataConfig(
                gcs_source=v1.GcsSource(uris=[f"gs://{bucket_name}/bad.jsonl"]), import_schema_uri=SINGLE_LABEL_IMPORT
            )
        ],
    )
    request_of = operations_pb2.GetOperationRequest
    done = _finish(
        lambda name: datasets.get_operation(request=request_of(name=name)), started.operation.name, lambda o: o.done
    )

    assert done.error.code == 3 and "No valid data item" in done.error.message


def _pipeline(dataset_name: str, job_key: str, **inputs: Any) -> v1.TrainingPipeline:
    """The pipeline shared/training/vertex.py builds (AutoMLImageTrainingJob.run's request)."""
    labels = {"lb_job": job_key}
    return v1.TrainingPipeline(
        display_name=f"lb-od-{job_key}",
        training_task_definition=OD_DEFINITION,
        training_task_inputs={
            "modelType": "CLOUD_HIGH_ACCURACY_1",
            "budgetMilliNodeHours": 20_000,
            "disableEarlyStopping": False,
            **inputs,
        },
        model_to_upload=v1.Model(display_name=f"lb-od-{job_key}", labels=labels, version_aliases=["default"]),
        input_data_config=v1.InputDataConfig(
            dataset_id=dataset_name.rsplit("/", 1)[-1],
            filter_split=v1.FilterSplit(
                training_filter=f"labels.{ML_USE}=training",
                validation_filter=f"labels.{ML_USE}=validation",
                test_filter=f"labels.{ML_USE}=test",
            ),
        ),
        labels=labels,
    )


def test_a_training_pipeline_runs_to_a_model_and_can_be_listed_by_label_and_cancelled(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client], authority: TokenAuthority
) -> None:
    datasets, pipelines, _ = clients
    dataset_name = _imported_dataset(datasets, *bucket)

    created = pipelines.create_training_pipeline(parent=PARENT, training_pipeline=_pipeline(dataset_name, "job-1"))
    other = pipelines.create_training_pipeline(parent=PARENT, training_pipeline=_pipeline(dataset_name, "job-2"))
    states = [pipelines.get_training_pipeline(name=created.name).state for _ in range(3)]
    listed = pipelines.list_training_pipelines(request={"parent": PARENT, "filter": 'labels.lb_job="job-2"'})
    both = pipelines.list_training_pipelines(
        request={"parent": PARENT, "filter": "labels.lb_job:* AND labels.lb_job=job-1"}
    )
    pipelines.cancel_training_pipeline(name=other.name)
    cancelling = pipelines.get_training_pipeline(name=other.name)

    assert created.state == v1.PipelineState.PIPELINE_STATE_QUEUED
    assert re.fullmatch(rf"projects/{NUMBER}/locations/{REGION}/trainingPipelines/\d+", created.name)
    assert states[:2] == [v1.PipelineState.PIPELINE_STATE_RUNNING] * 2
    assert states[2] == v1.PipelineState.PIPELINE_STATE_SUCCEEDED
    done = pipelines.get_training_pipeline(name=created.name)
    assert re.fullmatch(rf"projects/{NUMBER}/locations/{REGION}/models/\d+", done.model_to_upload.name)
    assert done.model_to_upload.version_id == "1"
    assert dict(done.training_task_metadata) == {
        "costMilliNodeHours": "17000",
        "successfulStopReason": "MODEL_CONVERGED",
    }
    assert dict(done.labels) == {"lb_job": "job-1"} and done.display_name == "lb-od-job-1"
    assert [p.name for p in listed] == [other.name]
    assert [p.name for p in both] == [created.name]
    assert cancelling.state == v1.PipelineState.PIPELINE_STATE_CANCELLED
    with pytest.raises(gexc.BadRequest) as again:  # REST maps by HTTP code: BadRequest, not FailedPrecondition
        pipelines.cancel_training_pipeline(name=other.name)
    assert not isinstance(again.value, gexc.FailedPrecondition)
    assert again.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    models = ModelServiceClient(
        transport="rest", credentials=_credentials(authority), client_options=ClientOptions(api_endpoint=vertex.url)
    )
    model = models.get_model(name=f"{done.model_to_upload.name}@1")
    assert model.display_name == "lb-od-job-1" and model.training_pipeline == created.name


def test_training_requests_vertex_would_refuse_are_refused(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    datasets, pipelines, _ = clients
    dataset_name = _imported_dataset(datasets, *bucket)
    empty = _create_dataset(datasets).name

    def refused(pipeline: v1.TrainingPipeline) -> gexc.GoogleAPICallError:
        with pytest.raises(gexc.GoogleAPICallError) as caught:
            pipelines.create_training_pipeline(parent=PARENT, training_pipeline=pipeline)
        return caught.value

    assert "modelType 'CLOUD'" in refused(_pipeline(dataset_name, "j", modelType="CLOUD")).message
    assert "outside 20000..900000" in refused(_pipeline(dataset_name, "j", budgetMilliNodeHours=1_000)).message
    assert isinstance(refused(_pipeline(dataset_name, "j", maxTrials=3)), gexc.BadRequest)
    assert isinstance(refused(_pipeline(f"{dataset_name[:-3]}999", "j")), gexc.NotFound)
    assert "has no data items" in refused(_pipeline(empty, "j")).message
    no_test = _pipeline(dataset_name, "j")
    no_test.input_data_config.filter_split.test_filter = ""
    assert "test_filter" in refused(no_test).message
    bad_label = _pipeline(dataset_name, "j")
    bad_label.labels = {"lb_job": "Has Spaces"}
    assert isinstance(refused(bad_label), gexc.BadRequest)
    mobile = _pipeline(dataset_name, "j", modelType="MOBILE_TF_LOW_LATENCY_1", budgetMilliNodeHours=1_000)
    assert pipelines.create_training_pipeline(parent=PARENT, training_pipeline=mobile).name

    vertex.fail_training = "Internal error: training failed"
    failing = pipelines.create_training_pipeline(parent=PARENT, training_pipeline=_pipeline(dataset_name, "f"))
    failed = _finish(pipelines.get_training_pipeline, failing.name, lambda p: p.state in _PIPELINE_ENDED)
    assert failed.state == v1.PipelineState.PIPELINE_STATE_FAILED
    assert failed.error.message == "Internal error: training failed"


def _batch_job(
    model: str, instances_uri: str, output_prefix: str, job_key: str, **params: Any
) -> v1.BatchPredictionJob:
    """The job shared/training/vertex.py builds (BatchPredictionJob.submit's request)."""
    return v1.BatchPredictionJob(
        display_name=f"lb-infer-{job_key}",
        model=model,
        input_config=v1.BatchPredictionJob.InputConfig(
            instances_format="jsonl", gcs_source=v1.GcsSource(uris=[instances_uri])
        ),
        model_parameters={"confidenceThreshold": 0.5, "maxPredictions": 100, **params},
        output_config=v1.BatchPredictionJob.OutputConfig(
            predictions_format="jsonl", gcs_destination=v1.GcsDestination(output_uri_prefix=output_prefix)
        ),
        labels={"lb_job": job_key},
    )


def _read_outputs(storage_client: storage.Client, uris: list[str]) -> dict[str, list[str]]:
    out = {}
    for uri in uris:
        bucket_name, _, path = uri.removeprefix("gs://").partition("/")
        out[path.rsplit("/", 1)[-1]] = storage_client.bucket(bucket_name).blob(path).download_as_text().splitlines()
    return out


def test_batch_prediction_writes_automl_shaped_outputs_the_chain_parser_reads(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    datasets, pipelines, jobs = clients
    bucket_name, storage_client = bucket
    dataset_name = _imported_dataset(datasets, bucket_name, storage_client)
    trained = pipelines.create_training_pipeline(parent=PARENT, training_pipeline=_pipeline(dataset_name, "t"))
    pipeline = _finish(pipelines.get_training_pipeline, trained.name, lambda p: p.state in _PIPELINE_ENDED)
    model = f"{pipeline.model_to_upload.name}@{pipeline.model_to_upload.version_id}".replace(NUMBER, PROJECT)
    images = ["a", "b", "c", "unknown", "missing", "corrupt", "a-fails"]
    storage_client.bucket(bucket_name).blob("images/a-fails.png").upload_from_string(_png(8, 8, (1, 2, 3)))
    storage_client.bucket(bucket_name).blob("infer/instances.jsonl").upload_from_string(
        "\n".join(
            json.dumps({"content": f"gs://{bucket_name}/images/{i}.png", "mimeType": "image/png"}) for i in images
        )
    )
    vertex.prediction_lines_per_file = 2
    vertex.fail_instances = ("-fails.png",)

    body = _batch_job(model, f"gs://{bucket_name}/infer/instances.jsonl", f"gs://{bucket_name}/infer/out", "j1")
    created = jobs.create_batch_prediction_job(parent=PARENT, batch_prediction_job=body)
    running = jobs.get_batch_prediction_job(name=created.name)
    done = jobs.get_batch_prediction_job(name=created.name)

    assert created.state == v1.JobState.JOB_STATE_PENDING and running.state == v1.JobState.JOB_STATE_RUNNING
    assert done.state == v1.JobState.JOB_STATE_SUCCEEDED
    output = done.output_info.gcs_output_directory
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(rf"gs://{bucket_name}/infer/out/prediction-lb-od-t-{stamp}", output)
    stats = done.completion_stats
    assert (stats.successful_count, stats.failed_count, stats.incomplete_count) == (4, 3, 0)
    assert len(done.partial_failures) == 3
    files = _read_outputs(storage_client, vertex.output_uris(created.name))
    assert sorted(files) == [
        "errors_00001.jsonl",
        "errors_00002.jsonl",
        "predictions_00001.jsonl",
        "predictions_00002.jsonl",
    ]
    assert all(uri.startswith(output + "/") for uri in vertex.output_uris(created.name))
    parsed = [parse_prediction_line(line) for name in sorted(files) for line in files[name]]
    predictions = {p.content_uri.rsplit("/", 1)[-1]: p for p in parsed if isinstance(p, VertexPrediction)}
    errors = {e.content_uri.rsplit("/", 1)[-1]: e for e in parsed if isinstance(e, PredictionLineError)}
    assert sorted(predictions) == ["a.png", "b.png", "c.png", "unknown.png"]
    assert sorted(errors) == ["a-fails.png", "corrupt.png", "missing.png"]
    assert all(e.reason == "vertex error 3" for e in errors.values())
    for image, truth in BOXES.items():
        boxes = predictions[f"{image}.png"].boxes
        assert sorted(b.label for b in boxes) == sorted(t["displayName"] for t in truth)  # the false positive is < 0.5
        assert [b.confidence for b in boxes] == sorted((b.confidence for b in boxes), reverse=True)
        for box in boxes:
            assert box.confidence >= 0.9
            assert any(
                all(abs(getattr(box, k) - float(t[c])) <= 0.0101 for k, c in [("x_min", "xMin"), ("x_max", "xMax")])
                for t in truth
                if t["displayName"] == box.label
            )
    assert predictions["unknown.png"].boxes == ()
    raw = json.loads(files["predictions_00001.jsonl"][0])
    assert list(raw) == ["instance", "prediction"] and list(raw["prediction"]) == [
        "ids",
        "displayNames",
        "confidences",
        "bboxes",
    ]
    assert raw["instance"] == {"content": f"gs://{bucket_name}/images/a.png", "mimeType": "image/png"}

    again = jobs.create_batch_prediction_job(parent=PARENT, batch_prediction_job=body)
    _finish(jobs.get_batch_prediction_job, again.name, lambda j: j.state == v1.JobState.JOB_STATE_SUCCEEDED)
    repeat = _read_outputs(storage_client, vertex.output_uris(again.name))
    assert repeat["predictions_00001.jsonl"] == files["predictions_00001.jsonl"]  # deterministic jitter
    listed = jobs.list_batch_prediction_jobs(request={"parent": PARENT, "filter": 'labels.lb_job="j1"'})
    assert [j.name for j in listed] == [created.name, again.name]


def test_classification_batch_prediction_and_refused_jobs(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    _, _, jobs = clients
    bucket_name, storage_client = bucket
    uri = f"gs://{bucket_name}/images"
    model = vertex.register_model(
        "lb-cls",
        [
            ImportedItem(f"{uri}/a.png", "training", {}, labels=("cat",)),
            ImportedItem(f"{uri}/b.png", "test", {}, labels=("dog",)),
        ],
        task="classification",
    )
    storage_client.bucket(bucket_name).blob("cls/instances.jsonl").upload_from_string(
        json.dumps({"content": f"{uri}/a.png", "mimeType": "image/png"})
    )
    body = _batch_job(
        model, f"gs://{bucket_name}/cls/instances.jsonl", f"gs://{bucket_name}/cls/out/", "c", confidenceThreshold=0.0
    )

    created = jobs.create_batch_prediction_job(parent=PARENT, batch_prediction_job=body)
    vertex.batch_polls = 0
    done = jobs.get_batch_prediction_job(name=created.name)

    (line,) = _read_outputs(storage_client, vertex.output_uris(created.name))["predictions_00001.jsonl"]
    assert "bboxes" not in json.loads(line)["prediction"]
    parsed = parse_prediction_line(line)
    assert isinstance(parsed, VertexPrediction) and parsed.boxes == ()
    assert [label.label for label in parsed.labels] == ["cat", "dog"] and parsed.labels[0].confidence > 0.8
    assert "/cls/out/prediction-lb-cls-" in done.output_info.gcs_output_directory
    with pytest.raises(gexc.NotFound):
        jobs.create_batch_prediction_job(
            parent=PARENT, batch_prediction_job=_batch_job(f"{model[:-5]}000@1", "gs://x/y", "gs://x/z", "c")
        )
    csv = _batch_job(model, "gs://x/y", "gs://x/z", "c")
    csv.input_config.instances_format = "csv"
    with pytest.raises(gexc.BadRequest):
        jobs.create_batch_prediction_job(parent=PARENT, batch_prediction_job=csv)
    pending = jobs.create_batch_prediction_job(parent=PARENT, batch_prediction_job=body)
    jobs.cancel_batch_prediction_job(name=pending.name)
    assert jobs.get_batch_prediction_job(name=pending.name).state == v1.JobState.JOB_STATE_CANCELLED


def _custom_job(
    bucket_name: str, job_key: str, *args: str, package: str = "packages/trainer-0.1.tar.gz"
) -> v1.CustomJob:
    """A one-replica python-package job, as shared/training builds one, running the stand-in's probe."""
    return v1.CustomJob(
        display_name=f"lb-custom-{job_key}",
        job_spec=v1.CustomJobSpec(
            worker_pool_specs=[
                v1.WorkerPoolSpec(
                    machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                    replica_count=1,
                    python_package_spec=v1.PythonPackageSpec(
                        executor_image_uri="us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest",
                        package_uris=[f"gs://{bucket_name}/{package}"],
                        python_module="tests.cloud.standin_job_probe",
                        args=list(args),
                        env=[v1.EnvVar(name="PROBE_SPEC_ENV", value=job_key)],
                    ),
                )
            ],
            base_output_directory=v1.GcsDestination(output_uri_prefix=f"gs://{bucket_name}/runs/{job_key}/"),
        ),
        labels={"lb_job": job_key},
    )


def _until(get: Any, name: str, done: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resource = get(name=name)
        if done(resource):
            return resource
        time.sleep(0.05)
    raise AssertionError(f"{name} did not get there within {timeout_s} s")


def test_a_custom_job_runs_its_module_with_the_vertex_env_and_is_listed_cancelled_and_deleted(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    _, _, jobs = clients
    bucket_name, storage_client = bucket
    storage_client.bucket(bucket_name).blob("packages/trainer-0.1.tar.gz").upload_from_string(b"sdist")

    created = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "j1", "--", "x", "y"))
    sleeper = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "j2", "--sleep", "60"))
    running = _until(jobs.get_custom_job, sleeper.name, lambda j: j.state == v1.JobState.JOB_STATE_RUNNING)
    with pytest.raises(gexc.BadRequest) as delete_running:
        jobs.delete_custom_job(name=sleeper.name)
    listed = jobs.list_custom_jobs(request={"parent": PARENT, "filter": 'labels.lb_job="j2"'})
    cancelled_at = time.monotonic()
    jobs.cancel_custom_job(name=sleeper.name)
    ended = {j["name"]: j for j in vertex.wait_custom_jobs(60)}
    kill_s = time.monotonic() - cancelled_at

    assert re.fullmatch(rf"projects/{NUMBER}/locations/{REGION}/customJobs/\d+", created.name)
    assert created.state == v1.JobState.JOB_STATE_QUEUED and created.create_time
    assert created.display_name == "lb-custom-j1" and dict(created.labels) == {"lb_job": "j1"}
    assert created.job_spec.worker_pool_specs[0].python_package_spec.python_module == "tests.cloud.standin_job_probe"
    assert running.start_time and not running.end_time
    assert delete_running.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert [j.name for j in listed] == [sleeper.name]
    done = jobs.get_custom_job(name=created.name.replace(NUMBER, PROJECT))
    assert done.state == v1.JobState.JOB_STATE_SUCCEEDED, vertex.custom_job_log(created.name)
    assert done.start_time and done.end_time >= done.start_time and not done.error.message
    assert ended[sleeper.name]["state"] == "JOB_STATE_CANCELLED" and kill_s < 30  # killed, not slept out
    assert jobs.get_custom_job(name=sleeper.name).error.code == 1
    job_id = created.name.rsplit("/", 1)[-1]
    base = f"gs://{bucket_name}/runs/j1"
    summary = json.loads(storage_client.bucket(bucket_name).blob("runs/j1/model/summary.json").download_as_text())
    assert summary["env"] == {
        "AIP_MODEL_DIR": f"{base}/model/",
        "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/",
        "CLOUD_ML_JOB_ID": job_id,
        "CUDA_VISIBLE_DEVICES": "",
        "PROBE_SPEC_ENV": "j1",
    }
    assert summary["argv"] == ["--", "x", "y"]
    assert not Path(summary["cwd"]).resolve().is_relative_to(REPO)
    assert f"wrote {base}/model/summary.json" in vertex.custom_job_log(created.name)
    with pytest.raises(gexc.BadRequest) as cancel_done:
        jobs.cancel_custom_job(name=created.name)
    assert cancel_done.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    deleting = jobs.delete_custom_job(name=created.name)
    assert deleting.done() and deleting.result(timeout=10) is not None
    with pytest.raises(gexc.NotFound):
        jobs.get_custom_job(name=created.name)
    assert [j["name"] for j in vertex.custom_jobs()] == [sleeper.name]


def test_a_custom_job_fails_as_vertex_says_when_a_package_is_missing_or_its_module_fails(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    _, _, jobs = clients
    bucket_name, storage_client = bucket
    storage_client.bucket(bucket_name).blob("packages/trainer-0.1.tar.gz").upload_from_string(b"sdist")

    missing = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "m", package="nope.tar.gz"))
    failing = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "f", "--fail", "no labels"))
    vertex.fail_next_custom_job("Internal error: the replica was preempted")
    knob = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "k"))
    vertex.wait_custom_jobs(60)
    after = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "a"))
    vertex.wait_custom_jobs(60)

    gone = jobs.get_custom_job(name=missing.name)
    assert gone.state == v1.JobState.JOB_STATE_FAILED and gone.error.code == 5
    assert gone.error.message.startswith(f"Failed to download package gs://{bucket_name}/nope.tar.gz: No such object")
    assert "started" not in vertex.custom_job_log(missing.name)
    broken = jobs.get_custom_job(name=failing.name)
    assert broken.state == v1.JobState.JOB_STATE_FAILED and broken.error.code == 13
    assert broken.error.message == (
        "The replica workerpool0-0 exited with a non-zero status of 1. Termination reason: Error. "
        "Last lines: error: no labels"
    )
    assert "started" in vertex.custom_job_log(failing.name)
    assert "giving up" in vertex.custom_job_log(failing.name)
    preempted = jobs.get_custom_job(name=knob.name)
    assert (preempted.state, preempted.error.message) == (
        v1.JobState.JOB_STATE_FAILED,
        "Internal error: the replica was preempted",
    )
    assert vertex.custom_job_log(knob.name) == ""  # it never ran
    assert jobs.get_custom_job(name=after.name).state == v1.JobState.JOB_STATE_SUCCEEDED  # the knob is spent


def test_stopping_the_stand_in_kills_the_custom_jobs_still_running(
    authority: TokenAuthority, bucket: tuple[str, storage.Client], gcs_emulator: GcsEmulator
) -> None:
    bucket_name, storage_client = bucket
    storage_client.bucket(bucket_name).blob("packages/trainer-0.1.tar.gz").upload_from_string(b"sdist")
    job_env = {**gcs_emulator.env, "PYTHONPATH": str(REPO)}
    with VertexStandIn(
        authority, storage_client, project_id=PROJECT, project_number=NUMBER, location=REGION, job_env=job_env
    ) as standin:
        jobs = JobServiceClient(
            transport="rest",
            credentials=_credentials(authority),
            client_options=ClientOptions(api_endpoint=standin.url),
        )
        name = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(bucket_name, "s", "--sleep", "60")).name
        _until(jobs.get_custom_job, name, lambda j: "started" in standin.custom_job_log(name))
    stopped_at = time.monotonic()
    (job,) = standin.wait_custom_jobs(30)

    assert job["state"] == "JOB_STATE_CANCELLED" and time.monotonic() - stopped_at < 30
    started = re.search(r"probe (\d+) started", standin.custom_job_log(name))
    assert started is not None
    with pytest.raises(ProcessLookupError):
        os.kill(int(started[1]), 0)


def test_custom_jobs_vertex_would_refuse_are_refused_naming_the_field(
    vertex: VertexStandIn, clients: tuple[Any, ...], bucket: tuple[str, storage.Client]
) -> None:
    _, _, jobs = clients
    bucket_name, _ = bucket

    def refused(change: Any) -> str:
        job = _custom_job(bucket_name, "r")
        change(job, job.job_spec.worker_pool_specs[0])
        with pytest.raises(gexc.BadRequest) as caught:
            jobs.create_custom_job(parent=PARENT, custom_job=job)
        assert caught.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"
        return caught.value.message

    pool = "custom_job.job_spec.worker_pool_specs[0]"
    spec = f"{pool}.python_package_spec"
    assert "custom_job.display_name" in refused(lambda j, p: setattr(j, "display_name", ""))
    assert "at most 128" in refused(lambda j, p: setattr(j, "display_name", "x" * 129))
    assert "worker_pool_specs" in refused(lambda j, p: j.job_spec.__setattr__("worker_pool_specs", []))
    assert "only one replica" in refused(lambda j, p: j.job_spec.worker_pool_specs.append(p))
    assert f"{pool}.machine_spec.machine_type" in refused(lambda j, p: setattr(p.machine_spec, "machine_type", ""))
    two = refused(lambda j, p: setattr(p, "replica_count", 2))
    assert f"{pool}.replica_count" in two and "only one replica" in two
    container = v1.ContainerSpec(image_uri="us-docker.pkg.dev/x/y:z")
    assert f"{pool}.container_spec is not supported" in refused(lambda j, p: setattr(p, "container_spec", container))
    assert "exactly one of python_package_spec or container_spec" in refused(
        lambda j, p: p.__setattr__("python_package_spec", None)
    )
    no_image = refused(lambda j, p: setattr(p.python_package_spec, "executor_image_uri", ""))
    assert f"{spec}.executor_image_uri" in no_image
    assert f"{spec}.package_uris" in refused(lambda j, p: setattr(p.python_package_spec, "package_uris", []))
    many = [f"gs://{bucket_name}/p{i}.tar.gz" for i in range(101)]
    assert "1 to 100" in refused(lambda j, p: setattr(p.python_package_spec, "package_uris", many))
    local = refused(lambda j, p: setattr(p.python_package_spec, "package_uris", ["dist/trainer.tar.gz"]))
    assert f"{spec}.package_uris[0]" in local
    assert f"{spec}.python_module" in refused(lambda j, p: setattr(p.python_package_spec, "python_module", ""))
    assert "Invalid label" in refused(lambda j, p: setattr(j, "labels", {"lb_job": "Has Spaces"}))
    output = "custom_job.job_spec.base_output_directory.output_uri_prefix"
    assert output in refused(lambda j, p: setattr(j.job_spec.base_output_directory, "output_uri_prefix", "/tmp/x"))
    assert vertex.custom_jobs() == []


def test_vertex_wants_an_access_token_from_the_authority(vertex: VertexStandIn) -> None:
    stranger = PipelineServiceClient(
        transport="rest", credentials=UnknownToken(), client_options=ClientOptions(api_endpoint=vertex.url)
    )

    with pytest.raises(gexc.Unauthorized):
        stranger.get_training_pipeline(name=f"{PARENT}/trainingPipelines/1")
    assert [(r.status, r.identity) for r in vertex.requests] == [(401, None)] * 3  # the first try and two refreshes


# -- the front door -------------------------------------------------------------------------------------


def test_the_front_door_lets_only_invokers_with_a_token_for_its_url_through(
    authority: TokenAuthority, sink: Sink
) -> None:
    with FrontDoor(authority, sink.url, invokers={SA}, deny_until=time.monotonic() + 3600) as door:

        def call(token: str | None) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.post(f"{door.url}/run?x=1", data=b"payload", headers=headers, timeout=10)

        propagating = call(authority.mint_id_token(SA, door.url))
        door.deny_until = time.monotonic()
        answers = {
            "none": call(None),
            "other authority": call(TokenAuthority().mint_id_token(SA, door.url)),
            "wrong audience": call(authority.mint_id_token(SA, "https://elsewhere.example")),
            "not an invoker": call(authority.mint_id_token(OTHER_SA, door.url)),
            "invoker": call(authority.mint_id_token(SA, door.url)),
        }

    assert propagating.status_code == 403
    assert {k: r.status_code for k, r in answers.items()} == {
        "none": 401,
        "other authority": 401,
        "wrong audience": 401,
        "not an invoker": 403,
        "invoker": 200,
    }
    assert answers["none"].text.startswith("Error: Unauthorized") and "Error: Forbidden" in propagating.text
    forwarded = answers["invoker"]
    assert forwarded.headers["X-Upstream"] == "sink" and forwarded.content == b"chunk-1;" * 1000 + b"end"
    (upstream,) = sink.requests
    assert (upstream.path, upstream.query, upstream.body) == ("/run", {"x": "1"}, b"payload")
    assert upstream.headers["Authorization"].startswith("Bearer ")
    assert door.verdicts() == [
        "propagating",
        "unauthenticated",
        "unauthenticated",
        "unauthenticated",
        "forbidden",
        "forwarded",
    ]


def test_cloud_tasks_through_the_front_door_delivers_for_invokers_and_retries_a_403(
    authority: TokenAuthority, tasks: CloudTasksStandIn, sink: Sink
) -> None:
    client = _tasks_client(tasks, _credentials(authority))
    parent = client.queue_path(PROJECT, REGION, QUEUE)
    with FrontDoor(authority, sink.url, invokers={SA}) as door:
        client.create_task(parent=parent, task=_task(client, "ok", f"{door.url}/monitor", audience=door.url))
        client.create_task(
            parent=parent, task=_task(client, "no", f"{door.url}/monitor", email=OTHER_SA, audience=door.url)
        )
        tasks.wait_idle(15)

    assert [a.status for a in tasks.attempts("ok")] == [200]
    assert [a.status for a in tasks.attempts("no")] == [403, 403, 403]
    assert tasks.task("no").state == "failed"
    assert sorted(door.verdicts()) == ["forbidden"] * 3 + ["forwarded"]
    assert len(sink.requests) == 1 and sink.requests[0].path == "/monitor"
