"""A stand-in for Cloud Tasks (v2 REST) with HTTP targets: queues, named tasks, dedup, OIDC push, retries.

`tasks_v2.CloudTasksClient(transport="rest", client_options=ClientOptions(api_endpoint=standin.url))`
talks to it unchanged. It serves `POST/GET .../queues/{q}/tasks` and `GET/DELETE .../tasks/{id}` with the
request and response shapes of the installed protos (the REST transport sends `$alt=json;enum-encoding=int`
and integer enums), and refuses what Cloud Tasks refuses: an unknown queue (404), a caller without an
access token from the authority (401), a bad task id, URL, method/body pairing, schedule time more
than 30 days ahead or dispatch deadline outside 15 s..30 min (400), an OIDC service account the caller
may not act as (403), and a task name that exists or was used before (409 ALREADY_EXISTS; names are
kept for the stand-in's life, standing for Cloud Tasks' ~24 h). Note that google-api-core maps a REST
409 to `exceptions.Conflict`, not its subclass `AlreadyExists` (that one only comes from gRPC).

A dispatcher thread pushes each task at its schedule time with the headers Cloud Tasks adds
(`Authorization: Bearer <ID token>` for `oidcToken`, `User-Agent: Google-Cloud-Tasks`,
`X-CloudTasks-*`); a non-2xx answer, a connection error or no answer within the dispatch deadline is a
failed attempt, retried with the queue's (or the task's) RetryConfig backoff up to max_attempts.
Every attempt is recorded. `delay_scale`/`deadline_scale` shrink schedule delays and deadlines so a
test need not wait real minutes; backoffs are the queue's own, so give test queues short ones.

What it does NOT prove: real IAM (`cloudtasks.enqueuer`, `iam.serviceAccountUser`, `run.invoker` are an
allowlist here), rate limits and `maxDispatchesPerSecond`, queue creation and its propagation delay,
App Engine targets, at-least-once duplicate deliveries (each attempt is delivered exactly once), and
Cloud Tasks' own clock skew.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import requests as http
from flask import Flask, Response, request
from google.cloud import tasks_v2

from tests.cloud._http import (
    UNAUTHENTICATED_MESSAGE,
    GoogleApiError,
    LoopbackServer,
    bearer_token,
    google_error,
    parse_proto,
    proto_json,
    wants_int_enums,
)
from tests.cloud.google_tokens import TokenAuthority

MAX_SCHEDULE_AHEAD_S = 30 * 86_400
DISPATCH_DEADLINE_RANGE_S = (15.0, 1_800.0)
DEFAULT_DISPATCH_DEADLINE_S = 600.0
MAX_TASK_SIZE = 1024 * 1024
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize."
)
_ACT_AS = (
    'The principal (user or service account) lacks IAM permission "{permission}" for the resource "{resource}" '
    "(or the resource may not exist)."
)


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's RetryConfig; max_attempts counts the first attempt, -1 is unlimited."""

    max_attempts: int = 3
    min_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    max_doublings: int = 2

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 = the first retry), as the RetryConfig proto describes:
        min_backoff doubling max_doublings times, then growing linearly by that last step, capped at max_backoff.
        """
        step = self.min_backoff_s * 2 ** min(retry - 1, self.max_doublings)
        linear = max(0, retry - 1 - self.max_doublings) * self.min_backoff_s * 2**self.max_doublings
        return min(step + linear, self.max_backoff_s)


@dataclass(frozen=True)
class Queue:
    project: str
    location: str
    queue_id: str
    retry: RetryPolicy
    max_concurrent_dispatches: int

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/queues/{self.queue_id}"


@dataclass(frozen=True)
class Attempt:
    """One push of a task, as the target answered it (or did not)."""

    number: int  # 1 for the first attempt
    eta: float  # the schedule time it was pushed for, epoch seconds
    dispatched_at: float  # epoch seconds
    monotonic_at: float
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # why no answer came (connection error, deadline)
    duration_s: float
    headers: dict[str, str]  # the request headers sent, Authorization included

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class TaskRecord:
    """A task as the stand-in holds it. `state`: pending, dispatching, succeeded, failed, deleted."""

    name: str
    queue: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    oidc_service_account: str | None
    audience: str | None
    schedule_time: float  # epoch seconds, as requested (unscaled)
    create_time: float
    dispatch_deadline_s: float
    created_by: str
    state: str
    attempts: tuple[Attempt, ...]

    @property
    def task_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass
class _Task:
    record: TaskRecord
    queue: Queue
    retry: RetryPolicy
    due: float  # monotonic
    eta: float  # epoch seconds of the next attempt
    attempts: list[Attempt] = field(default_factory=list)
    state: str = "pending"
    task_pb: Any = None  # the stored Task message (JSON-form fields the API returns)

    def view(self) -> TaskRecord:
        return replace(self.record, state=self.state, attempts=tuple(self.attempts))


class CloudTasksStandIn(LoopbackServer):
    """Cloud Tasks on loopback. Queues come from `add_queue`; tasks from the REST API.

    Knobs: `act_as` (service accounts any caller may put in `oidcToken`, besides its own identity),
    `enqueuers` (callers allowed to create tasks; None = any authority token), `delay_scale` (schedule
    delays are multiplied by it), `deadline_scale` (dispatch deadlines too).
    Inspection: `tasks()`, `task(name)`, `attempts(name)`, `pending()`, `wait_idle(timeout)`,
    `run_now(name)`, `requests` (every API call).
    """

    def __init__(
        self,
        authority: TokenAuthority,
        *,
        act_as: Collection[str] = (),
        enqueuers: Collection[str] | None = None,
        delay_scale: float = 1.0,
        deadline_scale: float = 1.0,
    ) -> None:
        super().__init__("cloud-tasks-stand-in")
        self.authority = authority
        self.act_as = set(act_as)
        self.enqueuers = None if enqueuers is None else set(enqueuers)
        self.delay_scale = delay_scale
        self.deadline_scale = deadline_scale
        self._queues: dict[str, Queue] = {}
        self._tasks: dict[str, _Task] = {}
        self._used_names: set[str] = set()
        self._in_flight: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._dispatcher: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> CloudTasksStandIn:
        super().start()
        if self._dispatcher is None:
            self._stopping = False
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="cloud-tasks-dispatcher", daemon=True)
            self._dispatcher.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)
            self._dispatcher = None
        for worker in list(self._workers):
            worker.join(timeout=1)
        super().stop()

    # -- test helpers ----------------------------------------------------------------------------

    def add_queue(
        self,
        project: str,
        location: str,
        queue: str,
        *,
        retry: RetryPolicy | None = None,
        max_concurrent_dispatches: int = 2,
    ) -> Queue:
        created = Queue(project, location, queue, retry or RetryPolicy(), max_concurrent_dispatches)
        with self._cond:
            self._queues[created.name] = created
            self._in_flight.setdefault(created.name, 0)
        return created

    def tasks(self) -> list[TaskRecord]:
        """Every task ever created, in creation order, whatever its state."""
        with self._cond:
            return [task.view() for task in self._tasks.values()]

    def task(self, name: str) -> TaskRecord:
        with self._cond:
            return self._find(name).view()

    def attempts(self, name: str) -> list[Attempt]:
        """A task's attempts so far; `name` is the full name or the task id."""
        with self._cond:
            return list(self._find(name).attempts)

    def pending(self) -> list[TaskRecord]:
        """Tasks not finished yet: waiting for their schedule time or a retry, or being pushed now."""
        with self._cond:
            return [t.view() for t in self._tasks.values() if t.state in ("pending", "dispatching")]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Waits until no task is pending or in flight; TimeoutError names what is still outstanding."""
        with self._cond:
            idle = self._cond.wait_for(
                lambda: all(t.state not in ("pending", "dispatching") for t in self._tasks.values()), timeout
            )
            if not idle:
                left = [f"{t.record.task_id} ({t.state}, {len(t.attempts)} attempts)" for t in self._outstanding()]
                raise TimeoutError(f"Cloud Tasks stand-in still busy after {timeout}s: {', '.join(left)}")

    def run_now(self, name: str) -> None:
        """Makes a waiting task due now, as `RunTask` would (its ETA header keeps the schedule time)."""
        with self._cond:
            task = self._find(name)
            if task.state == "pending":
                task.due = time.monotonic()
                self._cond.notify_all()

    def _outstanding(self) -> Iterator[_Task]:
        return (t for t in self._tasks.values() if t.state in ("pending", "dispatching"))

    def _find(self, name: str) -> _Task:
        if name in self._tasks:
            return self._tasks[name]
        matches = [t for t in self._tasks.values() if t.record.task_id == name]
        if len(matches) != 1:
            raise KeyError(f"no single task named {name!r}")
        return matches[0]

    # -- the API -----------------------------------------------------------------------------------

    def build_app(self) -> Flask:
        app = Flask("cloud-tasks-stand-in")
        queue_path = "/v2/projects/<project>/locations/<location>/queues/<queue>"

        @app.post(f"{queue_path}/tasks")
        def create_task(project: str, location: str, queue: str) -> Response:
            return self._api(
                lambda caller: self._create(caller, f"projects/{project}/locations/{location}/queues/{queue}")
            )

        @app.get(f"{queue_path}/tasks")
        def list_tasks(project: str, location: str, queue: str) -> Response:
            return self._api(lambda caller: self._list(f"projects/{project}/locations/{location}/queues/{queue}"))

        @app.get(f"{queue_path}/tasks/<task_id>")
        def get_task(project: str, location: str, queue: str, task_id: str) -> Response:
            name = f"projects/{project}/locations/{location}/queues/{queue}/tasks/{task_id}"
            return self._api(lambda caller: self._get(name))

        @app.delete(f"{queue_path}/tasks/<task_id>")
        def delete_task(project: str, location: str, queue: str, task_id: str) -> Response:
            name = f"projects/{project}/locations/{location}/queues/{queue}/tasks/{task_id}"
            return self._api(lambda caller: self._delete(name))

        @app.errorhandler(404)
        def unknown_path(_: Exception) -> Response:
            return google_error(404, f"The stand-in does not serve {request.method} {request.path}")

        return app

    def _api(self, handler: Any) -> Response:
        caller = self.authority.identity_of_access_token(bearer_token(request.headers))
        try:
            if caller is None:
                raise GoogleApiError(401, UNAUTHENTICATED_MESSAGE)
            response = handler(caller)
        except GoogleApiError as exc:
            response = google_error(exc.code, exc.message, exc.status)
        self.record(request, identity=caller, status=response.status_code)
        return response

    def _queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise GoogleApiError(404, _QUEUE_MISSING)
        return queue

    def _create(self, caller: str, parent: str) -> Response:
        req = parse_proto(request.get_data(), tasks_v2.CreateTaskRequest.pb()())
        with self._cond:
            queue = self._queue(parent)
        if self.enqueuers is not None and caller not in self.enqueuers:
            raise GoogleApiError(403, _ACT_AS.format(permission="cloudtasks.tasks.create", resource=parent))
        task = req.task
        if task.WhichOneof("message_type") != "http_request":
            raise GoogleApiError(400, "The stand-in supports HTTP target tasks only (Task.httpRequest).")
        http_request = task.http_request
        now = time.time()
        name = task.name or f"{parent}/tasks/{uuid.uuid4().int % 10**20:020d}"
        prefix, _, task_id = name.rpartition("/tasks/")
        if prefix != parent or not _TASK_ID.fullmatch(task_id):
            raise GoogleApiError(
                400,
                'Task name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>/'
                'tasks/<TASK_ID>", in the queue of the request; TASK_ID can contain only letters ([A-Za-z]), '
                "numbers ([0-9]), hyphens (-), or underscores (_), at most 500 characters. Got " + repr(name),
            )
        url = http_request.url
        if not re.match(r"https?://[^/\s]+", url) or len(url) > 2083:
            raise GoogleApiError(400, f"HttpRequest.url must be an http:// or https:// URL: {url!r}")
        method = tasks_v2.HttpMethod(http_request.http_method).name
        method = "POST" if method == "HTTP_METHOD_UNSPECIFIED" else method
        if http_request.body and method not in _BODY_METHODS:
            raise GoogleApiError(400, f"HttpRequest.body can only be set for POST, PUT or PATCH, not {method}")
        if task.ByteSize() > MAX_TASK_SIZE:
            raise GoogleApiError(400, f"Task size {task.ByteSize()} bytes exceeds the maximum of {MAX_TASK_SIZE}")
        schedule = task.schedule_time.ToNanoseconds() / 1e9 if task.HasField("schedule_time") else now
        if schedule > now + MAX_SCHEDULE_AHEAD_S:
            raise GoogleApiError(400, "Task.scheduleTime cannot be more than 30 days in the future")
        deadline = DEFAULT_DISPATCH_DEADLINE_S
        if task.HasField("dispatch_deadline"):
            deadline = task.dispatch_deadline.ToNanoseconds() / 1e9
            low, high = DISPATCH_DEADLINE_RANGE_S
            if not low <= deadline <= high:
                raise GoogleApiError(400, f"Task.dispatchDeadline must be between 15s and 30m, got {deadline:g}s")
        token_kind = http_request.WhichOneof("authorization_header")
        oidc_email = audience = None
        if token_kind is not None:
            token = getattr(http_request, token_kind)
            oidc_email = token.service_account_email
            if not oidc_email:
                raise GoogleApiError(400, f"HttpRequest.{token_kind}.serviceAccountEmail is required")
            if oidc_email != caller and oidc_email not in self.act_as:
                raise GoogleApiError(403, _ACT_AS.format(permission="iam.serviceAccounts.actAs", resource=oidc_email))
            audience = (token.audience or url) if token_kind == "oidc_token" else None
        retry = queue.retry
        if task.HasField("retry_config"):
            retry = _task_retry(retry, task.retry_config)

        with self._cond:
            if name in self._used_names:
                raise GoogleApiError(409, "Requested entity already exists", "ALREADY_EXISTS")
            self._used_names.add(name)
            stored = tasks_v2.Task.pb()()
            stored.CopyFrom(task)
            stored.name = name
            stored.http_request.http_method = tasks_v2.HttpMethod[method].value
            stored.schedule_time.FromNanoseconds(int(schedule * 1e9))
            stored.create_time.FromNanoseconds(int(now * 1e9))
            stored.dispatch_deadline.FromNanoseconds(int(deadline * 1e9))
            record = TaskRecord(
                name=name,
                queue=queue.name,
                url=url,
                method=method,
                headers=dict(http_request.headers),
                body=bytes(http_request.body),
                oidc_service_account=oidc_email if token_kind == "oidc_token" else None,
                audience=audience,
                schedule_time=schedule,
                create_time=now,
                dispatch_deadline_s=deadline,
                created_by=caller,
                state="pending",
                attempts=(),
            )
            due = time.monotonic() + max(0.0, schedule - now) * self.delay_scale
            self._tasks[name] = _Task(record, queue, retry, due=due, eta=schedule, task_pb=stored)
            self._cond.notify_all()
            return self._task_response(self._tasks[name], req.response_view)

    def _list(self, parent: str) -> Response:
        view = _view_arg()
        page_size = int(request.args.get("pageSize") or 1000)
        start = int(request.args.get("pageToken") or 0)
        with self._cond:
            self._queue(parent)
            listed = [
                t for t in self._tasks.values() if t.queue.name == parent and t.state in ("pending", "dispatching")
            ]
            page = listed[start : start + page_size]
            response = tasks_v2.ListTasksResponse.pb()()
            for task in page:
                response.tasks.add().CopyFrom(self._task_message(task, view))
            if start + page_size < len(listed):
                response.next_page_token = str(start + page_size)
        return proto_json(response, int_enums=wants_int_enums(request))

    def _get(self, name: str) -> Response:
        with self._cond:
            self._queue(name.rpartition("/tasks/")[0])
            task = self._tasks.get(name)
            if task is None or task.state not in ("pending", "dispatching"):
                raise GoogleApiError(404, "The task no longer exists, though a task with this name existed recently.")
            return self._task_response(task, _view_arg())

    def _delete(self, name: str) -> Response:
        with self._cond:
            self._queue(name.rpartition("/tasks/")[0])
            task = self._tasks.get(name)
            if task is None or task.state not in ("pending", "dispatching"):
                raise GoogleApiError(404, "The task no longer exists, though a task with this name existed recently.")
            task.state = "deleted"
            self._cond.notify_all()
        return Response("{}", mimetype="application/json")

    def _task_message(self, task: _Task, view: int) -> Any:
        out = tasks_v2.Task.pb()()
        out.CopyFrom(task.task_pb)
        full = view == tasks_v2.Task.View.FULL
        out.view = tasks_v2.Task.View.FULL if full else tasks_v2.Task.View.BASIC
        if not full:
            out.http_request.ClearField("body")
        out.dispatch_count = len(task.attempts)
        out.response_count = sum(1 for a in task.attempts if a.status is not None)
        for attempt, target in ((task.attempts[:1], out.first_attempt), (task.attempts[-1:], out.last_attempt)):
            for a in attempt:
                target.schedule_time.FromNanoseconds(int(a.eta * 1e9))
                target.dispatch_time.FromNanoseconds(int(a.dispatched_at * 1e9))
                if a.status is not None:
                    target.response_time.FromNanoseconds(int((a.dispatched_at + a.duration_s) * 1e9))
                    target.response_status.code = 0 if a.succeeded else _rpc_code(a.status)
        if task.state == "pending" and task.attempts:
            out.schedule_time.FromNanoseconds(int(task.eta * 1e9))
        return out

    def _task_response(self, task: _Task, view: int) -> Response:
        return proto_json(self._task_message(task, view), int_enums=wants_int_enums(request))

    # -- the dispatcher ----------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                next_due: float | None = None
                for task in self._tasks.values():
                    if task.state != "pending":
                        continue
                    if task.due > now:
                        next_due = task.due if next_due is None else min(next_due, task.due)
                        continue
                    if self._in_flight[task.queue.name] >= task.queue.max_concurrent_dispatches:
                        continue
                    task.state = "dispatching"
                    self._in_flight[task.queue.name] += 1
                    worker = threading.Thread(target=self._deliver, args=(task,), name="cloud-tasks-push", daemon=True)
                    self._workers = [w for w in self._workers if w.is_alive()] + [worker]
                    worker.start()
                wait = 0.5 if next_due is None else min(0.5, max(0.0, next_due - now))
                self._cond.wait(timeout=wait)

    def _deliver(self, task: _Task) -> None:
        with self._cond:
            number = len(task.attempts) + 1
            previous = task.attempts[-1] if task.attempts else None
            executions = sum(1 for a in task.attempts if a.status is not None and a.status < 500)
            eta = task.eta
        record = task.record
        headers = {k: v for k, v in record.headers.items() if k.lower() not in ("user-agent", "host", "content-length")}
        if record.body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        headers["User-Agent"] = "Google-Cloud-Tasks"
        headers["X-CloudTasks-QueueName"] = task.queue.queue_id
        headers["X-CloudTasks-TaskName"] = record.task_id
        headers["X-CloudTasks-TaskRetryCount"] = str(number - 1)
        headers["X-CloudTasks-TaskExecutionCount"] = str(executions)
        headers["X-CloudTasks-TaskETA"] = f"{eta:.6f}"
        if previous is not None and previous.status is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(previous.status)
        if record.oidc_service_account and record.audience:
            token = self.authority.mint_id_token(record.oidc_service_account, record.audience)
            headers["Authorization"] = f"Bearer {token}"
        elif task.task_pb.http_request.HasField("oauth_token"):
            email = task.task_pb.http_request.oauth_token.service_account_email
            headers["Authorization"] = f"Bearer {self.authority.mint_access_token(email)}"
        deadline = record.dispatch_deadline_s * self.deadline_scale
        started_wall, started = time.time(), time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            with http.Session() as session:
                session.trust_env = False  # Cloud Tasks reaches the target directly, not via a test's proxy
                response = session.request(
                    record.method,
                    record.url,
                    headers=headers,
                    data=record.body or None,
                    timeout=deadline,
                    allow_redirects=False,
                )
                status = response.status_code
        except http.Timeout:
            error = f"DEADLINE_EXCEEDED: no answer within the {deadline:g}s dispatch deadline"
        except http.RequestException as exc:
            error = f"UNAVAILABLE: {type(exc).__name__}: {exc}"
        attempt = Attempt(number, eta, started_wall, started, status, error, time.monotonic() - started, headers)
        with self._cond:
            task.attempts.append(attempt)
            self._in_flight[task.queue.name] -= 1
            if task.state == "deleted":
                pass
            elif attempt.succeeded:
                task.state = "succeeded"
            elif task.retry.max_attempts != -1 and number >= task.retry.max_attempts:
                task.state = "failed"
            else:
                backoff = task.retry.backoff_s(number)
                task.state = "pending"
                task.due = time.monotonic() + backoff
                task.eta = time.time() + backoff
            self._cond.notify_all()


def _task_retry(queue_retry: RetryPolicy, config: Any) -> RetryPolicy:
    """A task-level RetryConfig (google-cloud-tasks 2.26 has `Task.retry_config`) overrides the queue's fields."""
    given = {f.name for f, _ in config.ListFields()}

    def seconds(name: str, default: float) -> float:
        return getattr(config, name).ToNanoseconds() / 1e9 if name in given else default

    return RetryPolicy(
        max_attempts=config.max_attempts if "max_attempts" in given else queue_retry.max_attempts,
        min_backoff_s=seconds("min_backoff", queue_retry.min_backoff_s),
        max_backoff_s=seconds("max_backoff", queue_retry.max_backoff_s),
        max_doublings=config.max_doublings if "max_doublings" in given else queue_retry.max_doublings,
    )


def _view_arg() -> int:
    value = request.args.get("responseView", "0")
    if value.isdigit():
        return int(value)
    try:
        return tasks_v2.Task.View[value].value
    except KeyError:
        raise GoogleApiError(400, f"Invalid value for responseView: {value!r}") from None


def _rpc_code(status: int) -> int:
    """google.rpc.Code for an HTTP status, as Attempt.responseStatus reports it."""
    return {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 499: 1, 500: 13, 501: 12, 503: 14, 504: 4}.get(status, 2)
