"""CloudTasksScheduler against CloudTasksClient.create_task, patched (the emulator neither dedups
names nor sends OIDC tokens, which is exactly what these tests check)."""

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

from shared.chain.cloud_tasks import CloudTasksScheduler
from tests.vertex.offline import offline  # noqa: F401

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


def scheduler(**overrides) -> CloudTasksScheduler:
    options = {
        "project": "lb-chain-project",
        "region": "europe-west4",
        "queue": "lb-chain",
        "service_account": INVOKER,
        "stage_urls": STAGE_URLS,
        "client": tasks_v2.CloudTasksClient(credentials=AnonymousCredentials()),
    }
    return CloudTasksScheduler(**(options | overrides))


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
    assert json.loads(request.body) == {"run_id": "cm1abc2de0001"}
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
    assert json.loads(task.http_request.body) == {"run_id": "run/with spaces & ünïcode"}


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
