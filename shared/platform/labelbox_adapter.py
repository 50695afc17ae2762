"""The labeling platform port on Labelbox, through the official `labelbox` SDK (7.17).

Everything the SDK raises becomes a PlatformError whose text is safe to show a user: the API key is
scrubbed from it (and from the SDK's own log records), and signed media URLs lose their query string,
which carries their credentials. The SDK sends `update_status` to the experimental `/_gql` endpoint,
so the client is built with `enable_experimental=True`.

Exports are split into start / one look / read, so a caller can bound its own wait; the rows are read
by `export_stream` (bounded memory) instead of the SDK's buffered stream, which first downloads the
whole export into a temporary file (RAM on Cloud Functions).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.domain.examples import Split
from shared.formats.labelbox_metrics import RESERVED_METRIC_NAMES
from shared.formats.labelbox_ontology import FeatureMatch, features_of, match_features
from shared.platform import export_stream
from shared.platform.export_stream import url_without_query
from shared.platform.port import (
    ExportState,
    ExportStatus,
    ModelRunInfo,
    ModelRunNotFound,
    ModelRunStatus,
    PlatformError,
    ProjectRefused,
    SendResult,
    SliceNotFound,
    UploadResult,
    cut_message,
)
from shared.secret import Secret, redact

if TYPE_CHECKING:
    from labelbox import Client, ModelRun, Project
    from labelbox.schema.batch import Batch
    from labelbox.schema.slice import CatalogSlice
    from labelbox.schema.task import Task
    from labelbox.schema.user import User

logger = logging.getLogger(__name__)

EXPORT_PARAMS = {
    "data_row_details": True,
    "model_run_details": True,  # the split of each row rides on its run object only with this flag
    "predictions": False,
    "attachments": False,
    "metadata_fields": False,
    "embeddings": False,
}
EXPORT_TASK_NAME = "training chain export"
MAX_ERROR_TEXT = 1000
ERROR_SAMPLES = 5
EXPORT_POLL_S = 2.0  # the SDK's own minimum between two looks at a task
PROJECT_EXPORT_PARAMS = {  # which of the rows the project has: the data row ids are all it needs
    "attachments": False,
    "embeddings": False,
    "metadata_fields": False,
    "data_row_details": False,
    "project_details": False,
    "performance_details": False,
    "label_details": False,
    "interpolated_frames": False,
}
PROJECT_EXPORT_IDS = 2000  # the SDK's SEARCH_LIMIT_PER_EXPORT_V2: data row ids one export filter takes
PROJECT_EXPORT_TASK_NAME = "training chain: rows already in the project"
LABELING_QUEUE = "INITIAL_LABELING_QUEUE"  # rows sent there are labeled with the predictions as pre-labels
_SIGNED_QUERY = re.compile(r"(\bhttps?://[^\s?#'\"<>]+)\?[^\s#'\"<>]*")


@dataclass
class ExportErrors:
    """Row errors Labelbox reported on an otherwise complete export (its ERRORS stream)."""

    count: int = 0
    samples: list[str] = field(default_factory=list)


class _RedactSecrets(logging.Filter):
    """Scrubs API keys from the SDK's log records (it logs server error text verbatim)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:
                return True
            clean = redact(message, self.secrets)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_REDACTOR = _RedactSecrets()


def _guard_sdk_logs(secret: str) -> None:
    if len(secret) >= 4:
        _REDACTOR.secrets.add(secret)
    for name, candidate in list(logging.root.manager.loggerDict.items()):
        ours = name.split(".")[0] in {"labelbox", "lbox"}
        if ours and isinstance(candidate, logging.Logger) and _REDACTOR not in candidate.filters:
            candidate.addFilter(_REDACTOR)


def _describe_error(entry: Any) -> str:
    if isinstance(entry, dict):
        for key in ("message", "error", "errorMessage"):
            if isinstance(entry.get(key), str):
                return entry[key]
    text = entry if isinstance(entry, str) else json.dumps(entry, default=str, sort_keys=True)
    return cut_message(text, 300)


class LabelboxPlatform:
    """A model run on Labelbox: export, splits, media, status, config and prediction import."""

    def __init__(
        self,
        api_key: Secret,
        *,
        endpoint: str = "https://api.labelbox.com/graphql",
        rest_endpoint: str = "https://api.labelbox.com/api/v1",
        export_timeout_s: float = 7200,
        export_poll_s: float = EXPORT_POLL_S,
        export_block_bytes: int = export_stream.BLOCK_BYTES,
        export_max_line_bytes: int = export_stream.MAX_LINE_BYTES,
        import_poll_s: float = 10,
        send_timeout_s: float = 120,  # each of two waits: the project export, the send task
        media_timeout_s: float = 60,
        media_chunk_bytes: int = 1 << 20,
    ) -> None:
        self._api_key = api_key
        self.endpoint = endpoint
        self.rest_endpoint = rest_endpoint
        self.export_timeout_s = export_timeout_s
        self.export_poll_s = export_poll_s
        self.export_block_bytes = export_block_bytes
        self.export_max_line_bytes = export_max_line_bytes
        self.import_poll_s = import_poll_s
        self.send_timeout_s = send_timeout_s
        self.media_timeout_s = media_timeout_s
        self.media_chunk_bytes = media_chunk_bytes
        self.export_errors: dict[str, ExportErrors] = {}
        self._client_instance: Client | None = None
        self._user_instance: User | None = None
        self._media: requests.Session | None = None
        self._model_runs: dict[str, ModelRun] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LabelboxPlatform(endpoint={self.endpoint!r})"

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def _client(self) -> Client:
        with self._lock:
            if self._client_instance is None:
                from labelbox import Client

                key = self._api_key.reveal()
                if not key:
                    raise PlatformError("the Labelbox API key is empty; set LABELBOX_API_KEY")
                _guard_sdk_logs(key)
                with self._calling("client set-up"):
                    self._client_instance = Client(
                        api_key=key,
                        endpoint=self.endpoint,
                        rest_endpoint=self.rest_endpoint,
                        enable_experimental=True,
                    )
            return self._client_instance

    def _safe(self, text: str) -> str:
        text = _SIGNED_QUERY.sub(r"\1", redact(text, {self._api_key.reveal()}))
        return cut_message(text, MAX_ERROR_TEXT)

    @contextmanager
    def _calling(self, what: str, *, model_run_id: str | None = None) -> Iterator[None]:
        """Turns any SDK failure into a PlatformError without the key and without chaining the original.

        For a call on a model run, a null answer (the SDK's TypeError or ResourceNotFoundError) is checked
        against a fresh lookup, so a run deleted since it was cached surfaces as ModelRunNotFound.
        """
        try:
            yield
        except PlatformError:
            raise
        except Exception as exc:
            from lbox.exceptions import ResourceNotFoundError

            if model_run_id is not None and isinstance(exc, TypeError | ResourceNotFoundError):
                self._model_runs.pop(model_run_id, None)
                try:
                    self._model_run(model_run_id)
                except ModelRunNotFound as gone:
                    raise gone from None
                except PlatformError:
                    pass
            detail = self._safe(f"{type(exc).__name__}: {exc}")
            raise PlatformError(f"Labelbox {what} failed: {detail}") from None

    def _model_run(self, model_run_id: str) -> ModelRun:
        cached = self._model_runs.get(model_run_id)
        if cached is not None:
            return cached
        from lbox.exceptions import ResourceNotFoundError

        client = self._client
        with self._calling(f"lookup of model run {model_run_id}"):
            try:
                model_run = client.get_model_run(model_run_id)
            except ResourceNotFoundError:
                model_run = None
        if model_run is None:
            raise ModelRunNotFound(
                self._safe(
                    f"Labelbox has no model run {model_run_id} visible to this API key "
                    "(check the id and the key's organization)"
                )
            )
        self._model_runs[model_run_id] = model_run
        return model_run

    # -- the port --------------------------------------------------------------------------------

    def get_model_run(self, model_run_id: str) -> ModelRunInfo:
        model_run = self._model_run(model_run_id)
        return ModelRunInfo(id=model_run.uid, model_id=model_run.model_id, name=model_run.name)

    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        """Start, look every `export_poll_s` up to `export_timeout_s`, then stream: for callers that wait in one go."""
        task_id = self.start_export(model_run_id)
        status = self._wait_for_export(task_id, f"model run {model_run_id}", self.export_timeout_s)
        if status.row_errors:
            self._note_export_errors(model_run_id, status)
        yield from self.read_export(model_run_id, task_id)

    def _wait_for_export(self, task_id: str, what: str, timeout_s: float) -> ExportStatus:
        """Looks every `export_poll_s` until the export is done; PlatformError if it failed or outlasted
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (status := self.export_status(task_id)).state is ExportState.RUNNING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PlatformError(
                    f"Labelbox export of {what} did not finish within {timeout_s:g} s "
                    f"(task {task_id} is still running); try again later"
                )
            time.sleep(min(self.export_poll_s, left))
        if status.state is ExportState.FAILED:
            why = f"(task {task_id} FAILED): {status.error}"
            raise PlatformError(self._safe(f"Labelbox could not export {what} {why}"))
        return status

    def start_export(self, model_run_id: str) -> str:
        """Creates the export task; the SDK's `export` only creates it and fetches it once, it never waits."""
        model_run = self._model_run(model_run_id)
        with self._calling(f"start of the export of model run {model_run_id}", model_run_id=model_run_id):
            task = model_run.export(task_name=EXPORT_TASK_NAME, params=EXPORT_PARAMS)
            user = getattr(task._task, "_user", None)  # Task.get_task fetched the user: one lookup less later
            task_id = str(task.uid)
        with self._lock:
            if self._user_instance is None and user is not None:
                self._user_instance = user
        return task_id

    def export_status(self, task_id: str) -> ExportStatus:
        """One task lookup; once COMPLETE, also the ERRORS header and (if any) its first rows as samples."""
        task = self._task(task_id)
        status = str(task.status).upper()
        if status == "IN_PROGRESS":
            return ExportStatus(ExportState.RUNNING)
        if status == "FAILED":
            return ExportStatus(ExportState.FAILED, error=self._why(task))
        if status != "COMPLETE":  # CANCELLING, CANCELED, UNKNOWN: it will never deliver rows
            error = self._safe(f"Labelbox reports export task {task_id} {status}")
            return ExportStatus(ExportState.FAILED, error=error)
        count, samples = self._row_errors(task_id)
        return ExportStatus(ExportState.COMPLETE, row_errors=count, row_error_samples=samples)

    def read_export(self, model_run_id: str, task_id: str) -> Iterator[dict[str, Any]]:
        """Checks the task now (PlatformError unless COMPLETE) and streams its rows with bounded memory."""
        task = self._task(task_id)
        status = str(task.status).upper()
        if status != "COMPLETE":
            why = f": {self._why(task)}" if status == "FAILED" else "; wait until export_status answers complete"
            raise PlatformError(
                self._safe(f"the export of model run {model_run_id} (task {task_id}) is {status}, not COMPLETE{why}")
            )
        rows = export_stream.read_stream(
            self._client,
            task_id,
            export_stream.RESULT,
            session=self._media_session(),
            block_bytes=self.export_block_bytes,
            max_line_bytes=self.export_max_line_bytes,
        )
        return self._guarded(rows, f"export of model run {model_run_id}")

    def _guarded(self, rows: Iterator[Any], what: str) -> Iterator[Any]:
        """Scrubs whatever the stream raises (the SDK's `execute` included) and closes it when abandoned."""
        try:
            while True:
                with self._calling(what):
                    try:
                        row = next(rows)
                    except StopIteration:
                        return
                yield row
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    def _user(self) -> User:
        """The key's user, once per process: tasks are looked up among the tasks it created."""
        with self._lock:
            user = self._user_instance
        if user is None:
            client = self._client
            with self._calling("lookup of the API key's user"):
                user = client.get_user()
            with self._lock:
                self._user_instance = user
        return user

    def _task(self, task_id: str) -> Task:
        """The task by id, as `Task.get_task` and `Task.refresh` look it up (one `GetUserCreatedTasksPyApi`)."""
        from labelbox.schema.task import Task

        user = self._user()
        with self._calling(f"lookup of export task {task_id}"):
            tasks = list(user.created_tasks(where=Task.uid == task_id))
        if len(tasks) != 1:
            raise PlatformError(
                self._safe(
                    f"Labelbox has no export task {task_id} created by this API key's user "
                    "(check the id; a task is visible only to the user who started it)"
                )
            )
        return tasks[0]

    def _why(self, task: Task) -> str:
        """The failure reason from the failed task's error file, when Labelbox left one."""
        url = task.errors_url
        if not url:
            return "Labelbox gave no reason"
        try:
            entries = export_stream.read_error_file(url, session=self._media_session())
        except PlatformError as exc:
            return self._safe(f"its error file could not be read ({exc})")
        if not entries:
            return "Labelbox gave no reason"
        return self._safe("; ".join(_describe_error(e) for e in entries[:ERROR_SAMPLES]))

    def _row_errors(self, task_id: str) -> tuple[int, tuple[str, ...]]:
        """How many rows the ERRORS stream holds (its header) and the first few, read and then dropped."""
        client = self._client
        with self._calling(f"reading the row errors of export task {task_id}"):
            header = export_stream.stream_header(client, task_id, export_stream.ERRORS)
            if header is None or header.total_size <= 0:
                return 0, ()
            errors = export_stream.read_stream(
                client, task_id, export_stream.ERRORS, session=self._media_session(), header=header
            )
            try:
                samples = tuple(self._safe(_describe_error(e)) for e in islice(errors, ERROR_SAMPLES))
            finally:
                errors.close()
        return max(header.total_lines, len(samples)), samples

    def _note_export_errors(self, model_run_id: str, status: ExportStatus) -> None:
        found = ExportErrors(count=status.row_errors, samples=list(status.row_error_samples))
        self.export_errors[model_run_id] = found
        logger.warning(
            "Labelbox reported %d row errors exporting model run %s; first: %s",
            found.count,
            model_run_id,
            " | ".join(found.samples),
        )

    def data_row_splits(self, model_run_id: str) -> Mapping[str, Split]:
        model_run = self._model_run(model_run_id)
        splits: dict[str, Split] = {}
        with self._calling(f"listing the data rows of model run {model_run_id}", model_run_id=model_run_id):
            for member in model_run.model_run_data_rows():
                value = getattr(member.data_split, "value", member.data_split)
                splits[member.data_row().uid] = Split.parse(value)
        return splits

    def media_size(self, row_data: str, *, model_run_id: str | None = None) -> int | None:
        """Content-Length from a HEAD request, so a re-run can tell a staged image is complete."""
        if urlsplit(row_data).scheme not in ("http", "https"):
            return None
        try:
            response = self._media_session().head(row_data, allow_redirects=True, timeout=self.media_timeout_s)
        except requests.RequestException:
            return None
        length = response.headers.get("Content-Length")
        return int(length) if response.status_code < 400 and length and length.isdigit() else None

    def open_media(self, row_data: str, *, model_run_id: str | None = None) -> Iterator[bytes]:
        """Opens the download now (so a refused URL fails here) and streams it in chunks."""
        parts = urlsplit(row_data)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PlatformError(f"the data row's media is not an http(s) URL: {url_without_query(row_data)!r}")
        safe = url_without_query(row_data)

        def scrub(exc: Exception) -> str:
            text = f"{type(exc).__name__}: {exc}"
            if parts.query:
                text = text.replace(parts.query, "…")
            return self._safe(text)

        try:
            response = self._media_session().get(row_data, stream=True, timeout=self.media_timeout_s)
        except requests.RequestException as exc:
            raise PlatformError(f"downloading {safe} failed: {scrub(exc)}") from None
        if response.status_code >= 400:
            response.close()
            raise PlatformError(f"downloading {safe} failed: HTTP {response.status_code} {response.reason}")

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in response.iter_content(chunk_size=self.media_chunk_bytes):
                    if chunk:
                        yield chunk
            except requests.RequestException as exc:
                raise PlatformError(f"downloading {safe} broke off: {scrub(exc)}") from None
            finally:
                response.close()

        return chunks()

    def _media_session(self) -> requests.Session:
        with self._lock:
            if self._media is None:
                retry = Retry(
                    total=3,
                    backoff_factor=0.5,
                    status_forcelist=(429, 500, 502, 503, 504),
                    allowed_methods=("GET", "HEAD"),
                    raise_on_status=False,
                )
                session = requests.Session()
                adapter = HTTPAdapter(max_retries=retry, pool_connections=8, pool_maxsize=64)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._media = session
            return self._media

    def update_status(
        self,
        model_run_id: str,
        status: ModelRunStatus,
        *,
        metadata: Mapping[str, str] | None = None,
        error_message: str | None = None,
    ) -> None:
        status = ModelRunStatus(status)
        model_run = self._model_run(model_run_id)
        key = {self._api_key.reveal()}
        values = {str(k): redact(str(v), key) for k, v in (metadata or {}).items()}
        message = cut_message(self._safe(error_message)) if error_message else None
        with self._calling(f"status update of model run {model_run_id} to {status.value}", model_run_id=model_run_id):
            model_run.update_status(status.value, metadata=values or None, error_message=message)

    def get_config(self, model_run_id: str) -> dict[str, Any]:
        model_run = self._model_run(model_run_id)
        with self._calling(f"config read of model run {model_run_id}", model_run_id=model_run_id):
            config = model_run.get_config()
        return dict(config) if isinstance(config, Mapping) else {}

    def update_config(self, model_run_id: str, config: Mapping[str, Any]) -> None:
        model_run = self._model_run(model_run_id)
        with self._calling(f"config update of model run {model_run_id}", model_run_id=model_run_id):
            model_run.update_config(dict(config))

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> UploadResult:
        from labelbox.schema.enums import AnnotationImportState

        rows = list(rows)
        if not rows:
            return UploadResult(name=name, accepted=0)
        reserved = sorted({r["metricName"] for r in rows if r.get("metricName") in RESERVED_METRIC_NAMES})
        if reserved:
            raise PlatformError(
                f"prediction import {name!r} uses metric names Labelbox reserves: {', '.join(reserved)}"
            )
        model_run = self._model_run(model_run_id)
        what = f"prediction import {name!r} into model run {model_run_id}"
        with self._calling(what, model_run_id=model_run_id):
            job = model_run.add_predictions(name=name, predictions=rows)
            job.wait_till_done(sleep_time_seconds=self.import_poll_s)
        if job.state == AnnotationImportState.FAILED:
            raise PlatformError(
                f"Labelbox rejected the whole {what} (import state FAILED, none of its {len(rows)} rows "
                "were imported); check the rows' data row ids, feature names and metric values"
            )
        with self._calling(what):
            statuses = job.statuses
            failures = job.errors
        accepted = sum(1 for s in statuses if s.get("status") == "SUCCESS")
        errors = [
            {"dataRow": f.get("dataRow"), "uuid": f.get("uuid"), "errors": f.get("errors") or []} for f in failures
        ]
        return UploadResult(name=name, accepted=accepted, errors=errors)

    # -- model-assisted labeling -------------------------------------------------------------------

    def send_to_project(
        self,
        model_run_id: str,
        project_id: str,
        data_row_ids: Sequence[str],
        *,
        batch_name: str,
        priority: int,
        features: Collection[str] = (),
    ) -> SendResult:
        """`ModelRun.send_to_annotate_from_model`: one server-side task makes the batch and imports the
        model run's own predictions on its rows as pre-labels, so nothing is uploaded a second time.

        Before it: the project (ProjectRefused if missing or foreign), a batch of this name (then it was
        sent: nothing again), the feature mapping by name from the model's ontology to the project's,
        its initial labeling queue, and which rows it has already (one project export filtered on the
        ids), which are left out and counted; `exclude_data_rows_in_project` guards a race.
        """
        from labelbox.schema.conflict_resolution_strategy import ConflictResolutionStrategy
        from labelbox.schema.identifiables import UniqueIds

        ids = list(dict.fromkeys(data_row_ids))
        model_run = self._model_run(model_run_id)
        project = self._project(project_id)
        found = self._batch_named(project, batch_name)
        if found is not None:
            return self._already_sent(project_id, batch_name, found, len(ids))
        if not ids:
            return SendResult(project_id, batch_name, 0, 0)
        match = self._feature_match(model_run, project, features)
        queue = self._labeling_queue(project)
        in_project = self._rows_in_project(project, ids)
        new = [i for i in ids if i not in in_project]
        if not new:  # every row is there already: no batch to make
            return SendResult(project_id, batch_name, 0, len(ids), unmatched_features=match.unmatched)
        what = f"sending {len(new)} rows of model run {model_run_id} to project {project_id}"
        try:
            with self._calling(what, model_run_id=model_run_id):
                task = model_run.send_to_annotate_from_model(
                    destination_project_id=project_id,
                    task_queue_id=queue,
                    batch_name=batch_name,
                    data_rows=UniqueIds(new),
                    params={
                        "predictions_ontology_mapping": match.schema_mapping(),
                        "exclude_data_rows_in_project": True,
                        "override_existing_annotations_rule": ConflictResolutionStrategy.KeepExisting,
                        "batch_priority": priority,
                    },
                )
        except PlatformError:  # a batch of this name made meanwhile (Labelbox refuses a second): sent
            found = self._batch_named(project, batch_name)
            if found is None:
                raise
            return self._already_sent(project_id, batch_name, found, len(ids))
        with self._calling(f"waiting for the task {what}"):
            task.wait_till_done(timeout_seconds=self.send_timeout_s, check_frequency=max(2.0, self.export_poll_s))
        status = str(task.status).upper()
        if status == "IN_PROGRESS":
            raise PlatformError(
                f"Labelbox task {task.uid} ({what}) did not finish within {self.send_timeout_s:g} s; it may "
                f"still finish: batch {batch_name} then shows in the project"
            )
        if status != "COMPLETE":
            with self._calling(f"reading why the task {what} failed"):
                errors = task.errors
            why = _describe_error(errors) if errors else "Labelbox gave no reason"
            raise PlatformError(self._safe(f"Labelbox task {task.uid} ({what}) ended {status}: {why}"))
        batch = self._batch_named(project, batch_name)
        sent = int(batch.size) if batch is not None and batch.size is not None else len(new)
        return SendResult(
            project_id,
            batch_name,
            sent=sent,
            skipped_in_project=len(ids) - sent,
            batch_id=batch.uid if batch is not None else None,
            import_id=str(task.uid),
            unmatched_features=match.unmatched,
        )

    def _already_sent(self, project_id: str, batch_name: str, batch: Batch, rows: int) -> SendResult:
        sent = int(batch.size or 0)
        return SendResult(project_id, batch_name, sent, max(0, rows - sent), batch_id=batch.uid, already_sent=True)

    def _project(self, project_id: str) -> Project:
        from lbox.exceptions import AuthorizationError, ResourceNotFoundError

        client = self._client
        with self._calling(f"lookup of project {project_id}"):
            try:
                return client.get_project(project_id)
            except (ResourceNotFoundError, AuthorizationError) as exc:
                raise ProjectRefused(
                    self._safe(
                        f"Labelbox has no labeling project {project_id} visible to this API key "
                        f"({type(exc).__name__}); check the project id and that the key's organization owns it"
                    )
                ) from None

    def _batch_named(self, project: Project, name: str) -> Batch | None:
        with self._calling(f"listing the batches of project {project.uid}"):
            return next((b for b in project.batches() if b.name == name), None)

    def _feature_match(self, model_run: ModelRun, project: Project, features: Collection[str]) -> FeatureMatch:
        """The model's ontology (its model's) matched by name and kind to the project's."""
        client = self._client
        with self._calling(f"reading the ontologies of model run {model_run.uid} and project {project.uid}"):
            model = client.get_model(model_run.model_id)
            mine = client.get_ontology(model.ontology_id).normalized
            ontology = project.ontology()
            theirs = ontology.normalized if ontology is not None else None
        match = match_features(features_of(mine), features_of(theirs), only=features)
        if not match.pairs:
            listed = ", ".join(match.unmatched) or "it has none"
            raise ProjectRefused(
                f"the ontology of labeling project {project.uid} has none of the model's features ({listed}): "
                "add them to the project's ontology (same names and kinds), or send to another project"
            )
        return match

    def _labeling_queue(self, project: Project) -> str:
        """The project's initial labeling queue: rows sent to "Done" (no queue) would make the
        predictions labels instead of pre-labels."""
        with self._calling(f"listing the task queues of project {project.uid}"):
            queues = project.task_queues()
        for queue in queues:
            if queue.queue_type == LABELING_QUEUE:
                return str(queue.uid)
        raise ProjectRefused(
            f"labeling project {project.uid} has no initial labeling task queue ({LABELING_QUEUE}); "
            "send to a project with a labeling workflow"
        )

    def _rows_in_project(self, project: Project, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the project has: a project export filtered on them, in slices the filter takes."""
        found: set[str] = set()
        for start in range(0, len(ids), PROJECT_EXPORT_IDS):
            chunk = list(ids[start : start + PROJECT_EXPORT_IDS])
            with self._calling(f"export of project {project.uid}"):
                task = project.export(
                    task_name=PROJECT_EXPORT_TASK_NAME,
                    filters={"data_row_ids": chunk},
                    params=PROJECT_EXPORT_PARAMS,
                )
                task_id = str(task.uid)
                user = getattr(task._task, "_user", None)
            with self._lock:
                if self._user_instance is None and user is not None:
                    self._user_instance = user
            self._wait_for_export(task_id, f"project {project.uid}", self.send_timeout_s)
            rows = export_stream.read_stream(self._client, task_id, export_stream.RESULT, session=self._media_session())
            for row in self._guarded(rows, f"export of project {project.uid}"):
                data_row = row.get("data_row") if isinstance(row, Mapping) else None
                if isinstance(data_row, Mapping) and data_row.get("id") in chunk:
                    found.add(str(data_row["id"]))
        return found

    # -- rows from a Catalog slice, to rank for labeling -----------------------------------------

    slice_batch_rows = 10_000  # data row ids per `upsert_data_rows` call (Labelbox states no limit)
    slice_upsert_timeout_s = 300.0  # per batch; the SDK's own default (an hour) outlasts any function

    def add_rows_from_slice(
        self, model_run_id: str, slice_id: str, *, progress: Callable[[int], None] | None = None
    ) -> int:
        """The slice's data row ids (`get_data_row_identifiers`, pages of 100 as the SDK asks), added in
        batches with `upsert_data_rows`, which waits for each registration task (a look every 5 s)."""
        model_run = self._model_run(model_run_id)
        found = self._catalog_slice(slice_id)
        listing = f"listing the data rows of Catalog slice {slice_id}"
        with self._calling(listing):  # a generator: iter() on the SDK's collection would restart it
            identifiers = (member for member in found.get_data_row_identifiers())
        added = 0
        while True:
            with self._calling(listing):
                batch = [str(member.id.key) for member in islice(identifiers, self.slice_batch_rows)]
            if not batch:
                return added
            what = f"adding {len(batch)} data rows of Catalog slice {slice_id} to model run {model_run_id}"
            with self._calling(what, model_run_id=model_run_id):
                model_run.upsert_data_rows(data_row_ids=batch, timeout_seconds=self.slice_upsert_timeout_s)
            added += len(batch)
            if progress is not None:
                progress(added)

    def _catalog_slice(self, slice_id: str) -> CatalogSlice:
        """The slice by id; SliceNotFound for Labelbox's not-found answer or a null one (the SDK's TypeError)."""
        from labelbox.schema.slice import CatalogSlice
        from lbox.exceptions import ResourceNotFoundError

        client = self._client
        with self._calling(f"lookup of Catalog slice {slice_id}"):
            try:
                found = client.get_catalog_slice(slice_id=slice_id)
            except (ResourceNotFoundError, TypeError):
                found = None
        if not isinstance(found, CatalogSlice):
            raise SliceNotFound(
                self._safe(
                    f"Labelbox has no Catalog slice {slice_id} visible to this API key "
                    "(check the id in the slice's URL and the key's organization)"
                )
            )
        return found
