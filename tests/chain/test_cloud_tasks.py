"""CloudTasksChain against CloudTasksClient.create_task, patched: the exact tasks a queue receives.

(The end-to-end test in tests/cloud also runs the real client against a Cloud Tasks stand-in.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tasks_v2

from shared.chain.cloud_tasks import CloudTasksChain
from shared.chain.port import HandOffFailed
from tests.offline import offline  # noqa: F401

MONITOR_URL = "https://europe-west4-lb-chain-project.cloudfunctions.net/monitor"
STAGE_URLS = {
    "etl": "https://europe-west4-lb-chain-project.cloudfunctions.net/etl",
    "train": "https://europe-west4-lb-chain-project.cloudfunctions.net/train",
    "monitor": MONITOR_URL,
    "inference": "https://europe-west4-lb-chain-project.cloudfunctions.net/inference",
}
QUEUE = "projects/lb-chain-project/locations/europe-west4/queues/lb-chain"
INVOKER = "lb-chain-invoker@lb-chain-project.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def _offline(offline: None) -> Iterator[None]:  # noqa: F811
    yield


@pytest.fixture
def create_task() -> Iterator[mock.MagicMock]:
    with mock.patch.object(tasks_v2.CloudTasksClient, "create_task") as patched:
        patched.side_effect = lambda parent, task, **_: task
        yield patched


def scheduler(**overrides) -> CloudTasksChain:
    options = {
        "project": "lb-chain-project",
        "region": "europe-west4",
        "queue": "lb-chain",
        "service_account": INVOKER,
        "stage_urls": STAGE_URLS,
        "client": tasks_v2.CloudTasksClient(credentials=AnonymousCredentials()),
    }
    return CloudTasksChain(**(options | overrides))


def sent_task(create_task: mock.MagicMock, call: int = -1) -> tasks_v2.Task:
    kwargs = create_task.call_args_list[call].kwargs
    assert kwargs["parent"] == QUEUE
    return kwargs["task"]


def test_schedule_queues_an_authenticated_post_of_the_run_id_after_the_delay(create_task: mock.MagicMock) -> None:
    before = datetime.now(UTC)
    assert scheduler().schedule("monitor", "cm1abc2de0001", delay_s=600, attempt=3) is True
    after = datetime.now(UTC)

    create_task.assert_called_once()
    task = sent_task(create_task)
    request = task.http_request
    assert request.http_method == tasks_v2.HttpMethod.POST
    assert request.url == MONITOR_URL
    assert json.loads(request.body) == {"run_id": "cm1abc2de0001", "look": 3}  # the look knows its number
    assert dict(request.headers) == {"Content-Type": "application/json"}
    assert request.oidc_token.service_account_email == INVOKER
    assert request.oidc_token.audience == MONITOR_URL
    assert before + timedelta(seconds=600) <= task.schedule_time <= after + timedelta(seconds=600)
    assert task.dispatch_deadline == timedelta(minutes=30)
    assert re.fullmatch(rf"{QUEUE}/tasks/[A-Za-z0-9_-]{{1,500}}", task.name)


def test_the_task_name_is_the_same_for_the_same_call_and_differs_for_any_other(
    create_task: mock.MagicMock,
) -> None:
    chain = scheduler()
    chain.schedule("monitor", "run-a", delay_s=60, attempt=1)
    chain.schedule("monitor", "run-a", delay_s=300, attempt=1)
    scheduler().schedule("monitor", "run-a", delay_s=60, attempt=1)
    chain.schedule("monitor", "run-a", delay_s=60, attempt=2)
    chain.schedule("monitor", "run-b", delay_s=60, attempt=1)
    chain.schedule("inference", "run-a", delay_s=60, attempt=1)
    names = [call.kwargs["task"].name for call in create_task.call_args_list]

    assert names[0] == names[1] == names[2]
    assert len(set(names[2:])) == 4
    ids = [name.rsplit("/", 1)[1] for name in names[2:]]
    # Hashed, not sequential: neighbouring attempts do not even share a prefix.
    assert ids[0][:8] != ids[1][:8]


def test_a_run_id_with_any_characters_still_gives_a_valid_task_name(create_task: mock.MagicMock) -> None:
    scheduler().schedule("monitor", "run/with spaces & ünïcode", delay_s=0, attempt=0)
    task = sent_task(create_task)
    assert re.fullmatch(rf"{QUEUE}/tasks/[A-Za-z0-9_-]{{1,500}}", task.name)
    assert json.loads(task.http_request.body) == {"run_id": "run/with spaces & ünïcode", "look": 0}


def test_a_duplicate_schedule_returns_false_without_raising(create_task: mock.MagicMock) -> None:
    create_task.side_effect = exceptions.AlreadyExists("Requested entity already exists")
    assert scheduler().schedule("monitor", "run-a", delay_s=60, attempt=1) is False


def test_other_cloud_tasks_errors_reach_the_caller(create_task: mock.MagicMock) -> None:
    create_task.side_effect = exceptions.PermissionDenied("cloudtasks.tasks.create denied")
    with pytest.raises(exceptions.PermissionDenied):
        scheduler().schedule("monitor", "run-a", delay_s=60, attempt=1)


def test_an_unknown_stage_or_impossible_delay_is_refused_before_any_request(create_task: mock.MagicMock) -> None:
    chain = scheduler()
    with pytest.raises(ValueError, match="no URL is configured for stage 'model_run'"):
        chain.schedule("model_run", "run-a", delay_s=60, attempt=1)
    with pytest.raises(ValueError, match="delay_s"):
        chain.schedule("monitor", "run-a", delay_s=-1, attempt=1)
    with pytest.raises(ValueError, match="delay_s"):
        chain.schedule("monitor", "run-a", delay_s=31 * 86_400, attempt=1)
    create_task.assert_not_called()


def test_a_shorter_dispatch_deadline_is_sent_and_one_outside_cloud_tasks_range_refused(
    create_task: mock.MagicMock,
) -> None:
    scheduler(dispatch_deadline_s=300).schedule("monitor", "run-a", delay_s=60, attempt=1)
    assert sent_task(create_task).dispatch_deadline == timedelta(minutes=5)
    with pytest.raises(ValueError, match="dispatch_deadline_s"):
        scheduler(dispatch_deadline_s=3_600)


def test_building_a_scheduler_without_a_client_looks_up_no_credentials() -> None:
    scheduler(client=None)


def test_a_hand_off_is_a_task_for_now_named_by_its_key(create_task: mock.MagicMock) -> None:
    before = datetime.now(UTC)
    scheduler().hand_off("train", "run-a", key="train:from:etl:r0:a1")
    task = sent_task(create_task)
    assert task.http_request.url == STAGE_URLS["train"]
    assert json.loads(task.http_request.body) == {"run_id": "run-a"}
    assert task.http_request.oidc_token.service_account_email == INVOKER
    assert task.http_request.oidc_token.audience == STAGE_URLS["train"]
    assert before <= task.schedule_time <= datetime.now(UTC)
    scheduler().hand_off("train", "run-a", key="train:from:etl:r0:a1")  # a duplicate delivery
    scheduler().hand_off("train", "run-a", key="train:from:etl:r0:a2")  # a forced re-run
    names = [call.kwargs["task"].name for call in create_task.call_args_list]
    assert names[0] == names[1] != names[2]


def test_a_duplicate_hand_off_is_refused_by_the_queue_and_is_not_an_error(create_task: mock.MagicMock) -> None:
    create_task.side_effect = exceptions.AlreadyExists("Requested entity already exists")
    scheduler().hand_off("train", "run-a", key="k")  # raises nothing: the first one is queued


def test_a_hand_off_the_queue_refuses_names_the_stage_to_re_run(create_task: mock.MagicMock) -> None:
    create_task.side_effect = exceptions.PermissionDenied("cloudtasks.tasks.create denied")
    with pytest.raises(HandOffFailed, match="could not queue the call of train for run run-a") as caught:
        scheduler().hand_off("train", "run-a", key="k")
    assert caught.value.stage == "train"


def test_the_client_is_made_with_the_rest_transport_and_the_configured_endpoint() -> None:
    chain = scheduler(client=None, api_endpoint="http://127.0.0.1:9")
    with (
        mock.patch.object(tasks_v2.CloudTasksClient, "create_task"),
        mock.patch("google.auth.default", return_value=(AnonymousCredentials(), "p")),
    ):
        chain.schedule("monitor", "run-a", delay_s=1, attempt=1)
    assert chain._client._transport.kind == "rest"
    assert chain._client._transport._host == "http://127.0.0.1:9"


class _Response:
    def __init__(self, status: str) -> None:
        self._status = status

    def json(self) -> dict:
        return {"error": {"code": 409, "status": self._status, "message": "..."}}


def test_over_rest_a_409_already_exists_is_a_duplicate_and_any_other_conflict_is_an_error(
    create_task: mock.MagicMock,
) -> None:
    # the REST transport raises the class of the HTTP code, Conflict, not AlreadyExists
    create_task.side_effect = exceptions.Conflict("exists", response=_Response("ALREADY_EXISTS"))
    assert scheduler().schedule("monitor", "run-a", delay_s=60, attempt=1) is False
    scheduler().hand_off("train", "run-a", key="k")  # a duplicate hand-off is not a failure
    create_task.side_effect = exceptions.Conflict("aborted", response=_Response("ABORTED"))
    with pytest.raises(exceptions.Conflict):
        scheduler().schedule("monitor", "run-a", delay_s=60, attempt=1)
