"""The cloud chain's "call this stage later": a Cloud Tasks HTTP task with a schedule time.

A function never sleeps to wait for a job; it asks Cloud Tasks to POST `{"run_id": ...}` to a stage
after a delay, with a Google OIDC token the (private) stage function accepts. Each task is named from
(run, stage, attempt), so a repeated schedule of the same call is refused by Cloud Tasks itself
(`ALREADY_EXISTS`) and delivered once. Names are hashed, as Cloud Tasks advises: sequential names slow
task creation down.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud import tasks_v2

from shared.chain.port import stage_body

MAX_SCHEDULE_AHEAD_S = 30 * 86_400  # Cloud Tasks refuses schedule times further out
DISPATCH_DEADLINE_RANGE_S = (15.0, 1_800.0)  # Cloud Tasks' accepted range for HTTP targets
CREATE_TIMEOUT_S = 20.0
# A named task makes a retried create safe: if the first try did land, the retry is refused as a duplicate.
_CREATE_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded),
    initial=0.5,
    maximum=5.0,
    timeout=60.0,
)


def task_id(run_id: str, stage: str, attempt: int) -> str:
    """Same (run, stage, attempt), same id; the hash comes first to spread names over Cloud Tasks' index."""
    digest = hashlib.sha256(json.dumps([run_id, stage, attempt]).encode()).hexdigest()[:32]
    return f"{digest}-{re.sub(r'[^A-Za-z0-9_-]', '_', stage)[:64]}-{attempt}"


class CloudTasksScheduler:
    """Schedules a stage call through one Cloud Tasks queue; the client is made on first use."""

    def __init__(
        self,
        *,
        project: str,
        region: str,
        queue: str,
        service_account: str,
        stage_urls: Mapping[str, str],
        client: tasks_v2.CloudTasksClient | None = None,
        dispatch_deadline_s: float = DISPATCH_DEADLINE_RANGE_S[1],
    ) -> None:
        low, high = DISPATCH_DEADLINE_RANGE_S
        if not low <= dispatch_deadline_s <= high:
            raise ValueError(
                f"dispatch_deadline_s must be between {low:g} and {high:g} seconds, got {dispatch_deadline_s:g}"
            )
        self._project = project
        self._region = region
        self._queue = queue
        self._service_account = service_account
        self._stage_urls = dict(stage_urls)
        self._client = client
        self._dispatch_deadline = timedelta(seconds=dispatch_deadline_s)

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Returns False when this (run, stage, attempt) was already scheduled: nothing new is queued."""
        url = self._stage_urls.get(stage)
        if url is None:
            raise ValueError(f"no URL is configured for stage {stage!r}; known: {', '.join(self._stage_urls)}")
        if not 0 <= delay_s <= MAX_SCHEDULE_AHEAD_S:
            raise ValueError(f"delay_s must be between 0 and {MAX_SCHEDULE_AHEAD_S} seconds, got {delay_s}")
        client = self._client or self._make_client()
        task = tasks_v2.Task(
            name=client.task_path(self._project, self._region, self._queue, task_id(run_id, stage, attempt)),
            http_request=tasks_v2.HttpRequest(
                http_method=tasks_v2.HttpMethod.POST,
                url=url,
                headers={"Content-Type": "application/json"},
                body=json.dumps(stage_body(run_id)).encode(),
                oidc_token=tasks_v2.OidcToken(service_account_email=self._service_account, audience=url),
            ),
            schedule_time=datetime.now(UTC) + timedelta(seconds=delay_s),
            dispatch_deadline=self._dispatch_deadline,
        )
        try:
            client.create_task(
                parent=client.queue_path(self._project, self._region, self._queue),
                task=task,
                retry=_CREATE_RETRY,
                timeout=CREATE_TIMEOUT_S,
            )
        except api_exceptions.AlreadyExists:
            return False
        return True

    def _make_client(self) -> tasks_v2.CloudTasksClient:
        self._client = tasks_v2.CloudTasksClient()
        return self._client
