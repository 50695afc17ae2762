"""teardown.sh removes what deploy.sh created; the data only with --delete-data."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .deploy_harness import BUCKET, PROJECT, PROJECT_NUMBER, REGION, SA, SA_EMAIL, Result, Sandbox, is_read_only

PARENT = f"projects/{PROJECT}/locations/{REGION}"
OURS = {"lb_chain": "lbc"}
THEIRS = {"lb_chain": "someone-else"}


def created_by(result: Result) -> set[tuple[str, str]]:
    made = set()
    for call in result.calls:
        words = [a for a in call[1:] if not a.startswith("--")]
        match words:
            case ["functions", "deploy", name]:
                made.add(("function", name))
            case ["tasks", "queues", "create", name]:
                made.add(("queue", name))
            case ["secrets", "create", name]:
                made.add(("secret", name))
            case ["iam", "service-accounts", "create", name]:
                made.add(("service account", f"{name}@{PROJECT}.iam.gserviceaccount.com"))
            case ["storage", "buckets", "create", uri]:
                made.add(("bucket", uri.removeprefix("gs://")))
    return made


def deleted_by(result: Result) -> set[tuple[str, str]]:
    gone = set()
    for call in result.calls:
        words = [a for a in call[1:] if not a.startswith("--")]
        match words:
            case ["functions", "delete", name]:
                gone.add(("function", name))
            case ["tasks", "queues", "delete", name]:
                gone.add(("queue", name))
            case ["secrets", "delete", name]:
                gone.add(("secret", name))
            case ["iam", "service-accounts", "delete", name]:
                gone.add(("service account", name))
            case ["storage", "rm", uri]:
                gone.add(("bucket", uri.removeprefix("gs://")))
    return gone


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Result]:
    """The project as one first deployment leaves it, and that deployment's calls."""
    sandbox = Sandbox(tmp_path_factory.mktemp("deployed"))
    result = sandbox.deploy()
    return sandbox.state, result


@pytest.fixture
def sandbox(tmp_path: Path, first_deploy: tuple[dict[str, Any], Result]) -> Sandbox:
    """A sandbox whose fake project holds a deployment (deploy.sh's own tests check how it got there)."""
    box = Sandbox(tmp_path)
    box.save_state(first_deploy[0])
    return box


def test_teardown_deletes_what_deploy_created_and_keeps_the_bucket(
    sandbox: Sandbox, first_deploy: tuple[dict[str, Any], Result]
) -> None:
    deployed = first_deploy[1]
    result = sandbox.run("teardown.sh", "--yes")
    assert result.returncode == 0, result.stderr
    assert deleted_by(result) == created_by(deployed) - {("bucket", BUCKET)}
    state = sandbox.state
    assert state["functions"] == {} and state["queues"] == {} and state["secrets"] == {}
    assert state["service_accounts"] == {}
    assert [m for m, _ in state["project_iam"] if m == SA] == []
    assert list(state["buckets"]) == [BUCKET], "the bucket stays without --delete-data"
    assert state["buckets"][BUCKET]["iam"] == [], "its bindings for this deployment are removed"

    again = sandbox.run("teardown.sh", "--yes")
    assert again.returncode == 0, again.stderr
    assert deleted_by(again) == set()


def test_teardown_leaves_functions_of_another_deployment_alone(sandbox: Sandbox) -> None:
    state = sandbox.state
    state["functions"][f"{REGION}/models"]["labels"] = {"lb_chain": "other"}
    sandbox.save_state(state)
    result = sandbox.run("teardown.sh", "--yes")
    assert result.returncode == 0, result.stderr
    assert list(sandbox.state["functions"]) == [f"{REGION}/models"]
    assert "models is labelled lb_chain='other', not 'lbc': left alone" in result.stderr


def test_teardown_without_a_terminal_needs_yes(sandbox: Sandbox) -> None:
    result = sandbox.run("teardown.sh")
    assert result.returncode != 0
    assert "run again with --yes" in result.stderr
    assert all(is_read_only(c) for c in result.calls)


class FakeVertex:
    """Vertex AI's REST list/cancel/get/delete for the five kinds teardown removes; records requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.auth: set[str] = set()
        self.resources: dict[str, dict[str, Any]] = {}
        for kind, rid, labels, state in (
            ("customJobs", "51", OURS, "JOB_STATE_RUNNING"),
            ("customJobs", "52", OURS, "JOB_STATE_SUCCEEDED"),
            ("customJobs", "53", THEIRS, "JOB_STATE_RUNNING"),
            ("batchPredictionJobs", "11", OURS, "JOB_STATE_RUNNING"),
            ("batchPredictionJobs", "12", THEIRS, "JOB_STATE_RUNNING"),
            ("trainingPipelines", "21", OURS, "PIPELINE_STATE_SUCCEEDED"),
            ("models", "31", OURS, ""),
            ("datasets", "41", OURS, ""),
            ("datasets", "42", OURS, ""),
            ("datasets", "43", THEIRS, ""),
        ):
            name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/{kind}/{rid}"
            self.resources[name] = {"name": name, "displayName": f"run-{rid}", "labels": labels, "state": state}

    def handle(self, method: str, raw_path: str, auth: str) -> tuple[int, dict[str, Any]]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        path = url.path.removeprefix("/v1/")
        self.requests.append((method, path, query))
        self.auth.add(auth)
        if method == "GET" and path.startswith(PARENT + "/"):
            kind = path.rsplit("/", 1)[1]
            assert query["filter"] == ['labels.lb_chain="lbc"']
            key, value = "lb_chain", "lbc"
            items = [r for n, r in sorted(self.resources.items()) if f"/{kind}/" in n and r["labels"].get(key) == value]
            start = int(query.get("pageToken", ["0"])[0])
            page: dict[str, Any] = {kind: items[start : start + 1]} if items else {}
            if start + 1 < len(items):
                page["nextPageToken"] = str(start + 1)
            return 200, page
        if method == "POST" and path.endswith(":cancel"):
            self.resources[path.removesuffix(":cancel")]["state"] = "JOB_STATE_CANCELLED"
            return 200, {}
        if path not in self.resources:
            return 404, {"error": {"code": 404, "status": "NOT_FOUND"}}
        if method == "GET":
            return 200, self.resources[path]
        if method == "DELETE":
            if self.resources[path]["state"] in ("JOB_STATE_RUNNING", "PIPELINE_STATE_RUNNING"):
                return 400, {"error": {"status": "FAILED_PRECONDITION"}}
            del self.resources[path]
            return 200, {"name": f"{path}/operations/1"}
        return 405, {}


@pytest.fixture
def fake_vertex() -> Iterator[tuple[FakeVertex, str]]:
    vertex = FakeVertex()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, body = vertex.handle(self.command, self.path, self.headers.get("Authorization", ""))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield vertex, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_delete_data_removes_the_bucket_and_only_this_deployments_vertex_resources(
    sandbox: Sandbox, fake_vertex: tuple[FakeVertex, str]
) -> None:
    vertex, endpoint = fake_vertex
    result = sandbox.run("teardown.sh", "--yes", "--delete-data", VERTEX_API_ENDPOINT=endpoint)
    assert result.returncode == 0, result.stderr
    assert sandbox.state["buckets"] == {}
    assert sorted(vertex.resources) == [
        f"projects/{PROJECT_NUMBER}/locations/{REGION}/batchPredictionJobs/12",
        f"projects/{PROJECT_NUMBER}/locations/{REGION}/customJobs/53",
        f"projects/{PROJECT_NUMBER}/locations/{REGION}/datasets/43",
    ]
    listed = [p.rsplit("/", 1)[1] for m, p, q in vertex.requests if m == "GET" and "filter" in q]
    assert listed[0] == "customJobs", "custom jobs (engine training) go first: nothing else reads them"
    changes = [(m, p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]) for m, p, _ in vertex.requests if m != "GET"]
    assert changes == [
        ("POST", "customJobs/51:cancel"),  # running: cancelled, and deleted once it stopped
        ("DELETE", "customJobs/51"),
        ("DELETE", "customJobs/52"),
        ("POST", "batchPredictionJobs/11:cancel"),
        ("DELETE", "batchPredictionJobs/11"),
        ("DELETE", "trainingPipelines/21"),
        ("DELETE", "models/31"),
        ("DELETE", "datasets/41"),
        ("DELETE", "datasets/42"),
    ]
    assert vertex.auth == {"Bearer fake-access-token"}


def test_delete_data_keeps_a_bucket_this_deployment_did_not_create(
    sandbox: Sandbox, fake_vertex: tuple[FakeVertex, str]
) -> None:
    _, endpoint = fake_vertex
    state = sandbox.state
    state["buckets"][BUCKET]["labels"] = {}
    sandbox.save_state(state)
    result = sandbox.run("teardown.sh", "--yes", "--delete-data", VERTEX_API_ENDPOINT=endpoint)
    assert result.returncode == 0, result.stderr
    assert list(sandbox.state["buckets"]) == [BUCKET]
    assert f"gs://{BUCKET} was not created by this deployment" in result.stderr


def test_teardown_dry_run_deletes_nothing_and_lists_every_deletion(
    sandbox: Sandbox, fake_vertex: tuple[FakeVertex, str]
) -> None:
    vertex, endpoint = fake_vertex
    before = sandbox.state
    vertex_before = json.dumps(vertex.resources, sort_keys=True)
    result = sandbox.run("teardown.sh", "--dry-run", "--delete-data", VERTEX_API_ENDPOINT=endpoint)
    assert result.returncode == 0, result.stderr
    assert sandbox.state == before
    assert all(is_read_only(c) for c in result.calls)
    assert {m for m, _, _ in vertex.requests} == {"GET"}
    assert json.dumps(vertex.resources, sort_keys=True) == vertex_before
    assert "would cancel batchPredictionJobs/11 (run-11) (JOB_STATE_RUNNING)" in result.stdout
    assert "would cancel customJobs/51 (run-51) (JOB_STATE_RUNNING)" in result.stdout
    assert "would delete customJobs/52 (run-52)" in result.stdout
    assert "customJobs/53" not in result.stdout, "another deployment's custom job is not even listed"
    assert "would delete datasets/42 (run-42)" in result.stdout
    for expected in (
        "+ gcloud functions delete models ",
        "+ gcloud functions delete lbc-inference ",
        "+ gcloud tasks queues delete lbc-tasks ",
        "+ gcloud secrets delete lbc-labelbox-api-key ",
        "+ gcloud secrets delete lbc-webhook-secret ",
        f"+ gcloud iam service-accounts delete {SA_EMAIL} ",
        f"+ gcloud storage rm --recursive gs://{BUCKET} ",
        "+ gcloud projects remove-iam-policy-binding demo-proj ",
    ):
        assert expected in result.stdout


def test_the_help_says_delete_data_takes_custom_jobs_and_the_engines_models_in_the_bucket(sandbox: Sandbox) -> None:
    result = sandbox.run("teardown.sh", "--help")
    assert result.returncode == 0 and result.calls == []
    text = " ".join(result.stdout.split())
    assert "the engine package and the models its custom jobs trained, which are files there" in text
    assert "training pipeline, custom job and batch prediction job labelled lb_chain=<PREFIX>" in text
