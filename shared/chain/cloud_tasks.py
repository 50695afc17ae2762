"""The cloud chain: every hand-off and every "call this stage later" is a Cloud Tasks HTTP task.

A stage never calls the next one directly. It asks Cloud Tasks to POST `{"run_id": ...}` to the stage,
now or after a delay, with a Google OIDC token the (private) stage function accepts, and returns. So
no work rides on a request whose caller has gone (a 2nd-gen function is not guaranteed its CPU after
its caller hangs up), and a stage that fails, times out or answers 409 while another invocation
holds it is delivered again by the queue's retry policy. Each task is named from the call (run, stage,
hand-off key or look number), so a repeated create of the same call is refused by Cloud Tasks itself
(`ALREADY_EXISTS`) and delivered once. Names are hashed, as Cloud Tasks advises: sequential names slow
task creation down. The client uses the REST transport; `CLOUD_TASKS_API_ENDPOINT` can point it
elsewhere (the end-to-end test's stand-in).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.api_core.client_options import ClientOptions
from google.cloud import tasks_v2

from shared.chain.port import HandOffFailed, stage_body
from shared.gcp.errors import is_already_exists

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


def task_id(run_id: str, stage: str, key: str | int) -> str:
    """Same (run, stage, key), same id; the hash comes first to spread names over Cloud Tasks' index."""
    digest = hashlib.sha256(json.dumps([run_id, stage, key]).encode()).hexdigest()[:32]
    suffix = re.sub(r"[^A-Za-z0-9_-]", "_", str(key))[:64]
    return f"{digest}-{re.sub(r'[^A-Za-z0-9_-]', '_', stage)[:64]}-{suffix}"


class CloudTasksChain:
    """Hands off and schedules stage calls through one Cloud Tasks queue; the client is made on first use."""

    def __init__(
        self,
        *,
        project: str,
        region: str,
        queue: str,
        service_account: str,
        stage_urls: Mapping[str, str],
        client: tasks_v2.CloudTasksClient | None = None,
        api_endpoint: str | None = None,
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
        self._api_endpoint = api_endpoint
        self._dispatch_deadline = timedelta(seconds=dispatch_deadline_s)

    def hand_off(self, stage: str, run_id: str, *, key: str, shard: int | None = None) -> None:
        """Queues the call for now; a create Cloud Tasks refuses for good is a HandOffFailed."""
        try:
            body = stage_body(run_id, shard=shard)
            self._create(stage, run_id, name_key=f"handoff:{key}", delay_s=0.0, body=body)
        except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as exc:
            raise HandOffFailed(
                f"could not queue the call of {stage} for run {run_id} ({type(exc).__name__}: {exc.message})",
                stage=stage,
            ) from None

    def schedule(self, stage: str, run_id: str, *, delay_s: float, attempt: int) -> bool:
        """Returns False when this (run, stage, attempt) was already scheduled: nothing new is queued."""
        return self._create(stage, run_id, name_key=attempt, delay_s=delay_s, body=stage_body(run_id, look=attempt))

    def _create(self, stage: str, run_id: str, *, name_key: str | int, delay_s: float, body: dict[str, object]) -> bool:
        url = self._stage_urls.get(stage)
        if url is None:
            raise ValueError(f"no URL is configured for stage {stage!r}; known: {', '.join(self._stage_urls)}")
        if not 0 <= delay_s <= MAX_SCHEDULE_AHEAD_S:
            raise ValueError(f"delay_s must be between 0 and {MAX_SCHEDULE_AHEAD_S} seconds, got {delay_s}")
        client = self._client or self._make_client()
        task = tasks_v2.Task(
            name=client.task_path(self._project, self._region, self._queue, task_id(run_id, stage, name_key)),
            http_request=tasks_v2.HttpRequest(
                http_method=tasks_v2.HttpMethod.POST,
                url=url,
                headers={"Content-Type": "application/json"},
                body=json.dumps(body).encode(),
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
        except api_exceptions.Conflict as exc:  # over REST, ALREADY_EXISTS arrives as a plain 409 Conflict
            if is_already_exists(exc):
                return False
            raise
        return True

    def _make_client(self) -> tasks_v2.CloudTasksClient:
        options = ClientOptions(api_endpoint=self._api_endpoint) if self._api_endpoint else None
        self._client = tasks_v2.CloudTasksClient(transport="rest", client_options=options)
        return self._client
