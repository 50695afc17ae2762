"""A small fake Labelbox GraphQL server, so the real labelbox SDK runs end to end on loopback.

It answers the operations the SDK 7.17 sends for the chain (captured by running the SDK against it):
model run lookup, the streamable model-run export (task lookup and polling, metadata header, file
offsets; the adapter's own export reader sends the same queries), `model_run_data_rows()`, pipeline
status on `/_gql`, config, the multipart prediction import with its polling and status files, and
model-assisted labeling: labeling projects (lookup, batches, task queues, ontology, a project export
filtered on data row ids), the model's ontology, and `sendToAnnotateFromMea`, which makes the batch
and the pre-labels (the model run's imported predictions of the batch's rows, mapped by feature
schema id) as one task. Every GraphQL request is recorded, so tests assert exactly what the SDK sent.
Files (export chunks, import status/error files, media) are plain GET URLs whose query string carries
a fake signature, like Labelbox's signed URLs. It never answers 5xx (the SDK would retry for
minutes); failures are GraphQL errors or task states, as Labelbox reports them.

    with running_fake_labelbox(rows, model_run_id=..., model_id=...) as fake:
        platform = LabelboxPlatform(Secret(fake.api_key), endpoint=fake.endpoint, rest_endpoint=fake.rest_endpoint)
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from shared.domain.examples import Split

FAKE_API_KEY = "lb-fake-key-0123456789abcdef"
FAKE_SIGNATURE = "X-Goog-Signature=fake-signature-abc123"
USER_ID = "cfakeuser000000000000000001"
TIMESTAMP = "2024-05-01T12:00:00.000Z"
_OPERATION_NAME = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")


@dataclass(frozen=True)
class Operation:
    """One GraphQL request as the fake received it."""

    name: str
    path: str  # "/graphql" or "/_gql"
    query: str
    variables: dict[str, Any]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)  # multipart form fields (uploads only)
    files: dict[str, bytes] = field(default_factory=dict)  # multipart file parts (uploads only)


@dataclass
class ExportJob:
    task_id: str
    input: dict[str, Any]
    chunks: list[bytes]  # the RESULT stream's files, in order; b"".join(chunks) is the whole stream
    chunk_lines: list[int]
    errors: bytes
    failed: bool
    in_progress_polls: int

    @property
    def result(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class PredictionImport:
    """One prediction import: the rows as uploaded and what the fake decided for each."""

    id: str
    name: str
    model_run_id: str
    content: bytes
    rows: list[dict[str, Any]]
    statuses: list[dict[str, Any]]
    state: str = "RUNNING"
    polls: int = 0
    final_state: str = "FINISHED"
    running_polls: int = 0

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [s for s in self.statuses if s["status"] == "FAILURE"]


def feature_schema_id(kind: str, name: str) -> str:
    """A stable 25-character cuid-like feature schema id for a feature of the fake's ontologies."""
    return "c" + hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()[:24]


def ontology_of_rows(rows: Sequence[Mapping[str, Any]], *, salt: str = "model") -> dict[str, Any]:
    """A normalized ontology with the features the export rows' labels use: a rectangle tool per box
    name, a radio or checklist classification per question, its options the answers seen."""
    tools: dict[str, dict[str, Any]] = {}
    questions: dict[str, dict[str, Any]] = {}
    for row in rows:
        for experiment in (row.get("experiments") or {}).values():
            for run in (experiment.get("runs") or {}).values():
                for label in run.get("labels") or ():
                    annotations = label.get("annotations") or {}
                    for obj in annotations.get("objects") or ():
                        tools.setdefault(obj["name"], {"tool": "rectangle", "name": obj["name"]})
                    for c in annotations.get("classifications") or ():
                        kind = "radio" if "radio_answer" in c else "checklist"
                        answers = [c["radio_answer"]] if kind == "radio" else c.get("checklist_answers", [])
                        q = questions.setdefault(c["name"], {"type": kind, "name": c["name"], "options": {}})
                        for a in answers:
                            q["options"].setdefault(a["name"], None)
    return {
        "tools": [
            {**t, "featureSchemaId": feature_schema_id(f"{salt}/rectangle", n), "classifications": []}
            for n, t in sorted(tools.items())
        ],
        "classifications": [
            {
                "type": q["type"],
                "name": n,
                "instructions": n,
                "featureSchemaId": feature_schema_id(f"{salt}/{q['type']}", n),
                "options": [
                    {"value": o, "label": o, "featureSchemaId": feature_schema_id(f"{salt}/{n}/option", o)}
                    for o in sorted(q["options"])
                ],
            }
            for n, q in sorted(questions.items())
        ],
    }


@dataclass
class FakeBatch:
    id: str
    name: str
    priority: int
    data_row_ids: list[str]
    created_at: str = TIMESTAMP


@dataclass
class MalImport:
    """What one `sendToAnnotateFromMea` imported as pre-labels, and how it was asked."""

    project_id: str
    batch_name: str
    model_run_id: str
    task_queue: dict[str, Any]
    mapping: dict[str, str]
    rows: list[dict[str, Any]]


@dataclass
class FakeProject:
    """A labeling project: its ontology, the data rows it has, its batches and its pre-label imports."""

    id: str
    name: str
    ontology: dict[str, Any] | None
    data_row_ids: list[str] = field(default_factory=list)
    batches: list[FakeBatch] = field(default_factory=list)
    mal_imports: list[MalImport] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.queues:
            self.queues = [
                {
                    "id": f"cqueue{self.id[-12:]}label0",
                    "name": "Initial labeling task",
                    "queueType": "INITIAL_LABELING_QUEUE",
                },
                {
                    "id": f"cqueue{self.id[-12:]}review",
                    "name": "Initial review task",
                    "queueType": "MANUAL_REVIEW_QUEUE",
                },
            ]


@dataclass
class SendTask:
    id: str
    input: dict[str, Any]
    status: str
    in_progress_polls: int
    failure: str | None = None


class _SmallReads:
    """The request stream, except that one `read` returns at most 64 KiB.

    After each response werkzeug's dev server drains the socket with `rfile.read(10_000_000)`, which
    allocates a 10 MB buffer in this process; tests that measure the client's memory would see it.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._raw.read(1 << 16 if size is None or size < 0 or size > 1 << 16 else size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.rfile = _SmallReads(self.rfile)  # type: ignore[assignment]

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """Every request is in `FakeLabelbox.operations` / `.downloads`; no access log."""


class GraphQLError(Exception):
    def __init__(self, message: str, code: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _run_of(row: Mapping[str, Any], model_id: str, model_run_id: str) -> dict[str, Any] | None:
    run = row.get("experiments", {}).get(model_id, {}).get("runs", {}).get(model_run_id)
    return run if isinstance(run, dict) else None


class FakeLabelbox:
    """An in-memory model run behind a Labelbox-shaped GraphQL API on 127.0.0.1.

    Behaviour knobs (all optional):
    - export_failure: the export task ends FAILED, its error file holds this message;
    - export_errors: rows of the export's ERRORS stream on a COMPLETE export;
    - export_chunk_rows: rows per export file chunk (several chunks exercise the offset protocol);
    - export_file_bytes: cut the RESULT stream into files of this many bytes instead (a sequence is
      cycled), anywhere: mid-line and, unless export_split_chars is False, mid-UTF-8-character;
    - export_result: serve these bytes as the RESULT stream instead of the rows (big exports, cheaply);
    - export_expire_urls_once: the first GET of each RESULT file answers 403, as an expired signed URL;
    - export_break_once_after: the first GET of each RESULT file drops the connection after this many bytes;
    - export_short_file: the RESULT file with this index is served one byte short of its offsets;
    - export_in_progress_polls: task refreshes answered IN_PROGRESS first (each costs the SDK 2 s);
    - media_delay_s: every media download waits this long first (can be changed while running);
    - splits_on_run: whether export rows carry `split` on their run object (with model_run_details);
    - splits: data_row_id -> DataSplit value for `model_run_data_rows()` (default: from the rows);
    - max_page_size: caps a `model_run_data_rows()` page, to exercise pagination;
    - import_running_polls: import polls answered RUNNING before it settles;
    - import_failure: the whole import ends FAILED;
    - reject_prediction: row -> error message or None (default: rows whose data row is not in the run);
    - fail_operations: operation name -> message, answered as a GraphQL error;
    - projects: project id -> {"ontology": normalized ontology, "data_row_ids": rows it has already,
      "queues": task queues (default: an initial labeling and a review queue)};
    - foreign_projects: project ids of another organization (AUTHORIZATION_ERROR);
    - model_ontology: the model's normalized ontology (default: the features the rows' labels use);
    - send_failure: every send-to-annotate task ends FAILED with this message;
    - send_in_progress_polls: send-to-annotate task looks answered IN_PROGRESS first.
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        model_run_id: str,
        model_id: str,
        model_run_name: str = "fake model run",
        api_key: str = FAKE_API_KEY,
        export_failure: str | None = None,
        export_errors: Sequence[Mapping[str, Any]] = (),
        export_chunk_rows: int = 1000,
        export_file_bytes: int | Sequence[int] | None = None,
        export_split_chars: bool = True,
        export_result: bytes | None = None,
        export_expire_urls_once: bool = False,
        export_break_once_after: int | None = None,
        export_short_file: int | None = None,
        export_in_progress_polls: int = 0,
        media_delay_s: float = 0.0,
        splits_on_run: bool = True,
        splits: Mapping[str, str] | None = None,
        max_page_size: int = 100,
        import_running_polls: int = 0,
        import_failure: bool = False,
        reject_prediction: Callable[[dict[str, Any]], str | None] | None = None,
        fail_operations: Mapping[str, str] | None = None,
        projects: Mapping[str, Mapping[str, Any]] | None = None,
        foreign_projects: Sequence[str] = (),
        model_ontology: Mapping[str, Any] | None = None,
        send_failure: str | None = None,
        send_in_progress_polls: int = 0,
    ) -> None:
        self.rows = [copy.deepcopy(dict(r)) for r in rows]
        self.model_run_id = model_run_id
        self.model_id = model_id
        self.model_run_name = model_run_name
        self.api_key = api_key
        self.export_failure = export_failure
        self.export_errors = [dict(e) for e in export_errors]
        self.export_chunk_rows = max(1, export_chunk_rows)
        self.export_file_bytes = export_file_bytes
        self.export_split_chars = export_split_chars
        self.export_result = export_result
        self.export_expire_urls_once = export_expire_urls_once
        self.export_break_once_after = export_break_once_after
        self.export_short_file = export_short_file
        self.export_in_progress_polls = export_in_progress_polls
        self.media_delay_s = media_delay_s
        self.splits_on_run = splits_on_run
        self.max_page_size = max_page_size
        self.import_running_polls = import_running_polls
        self.import_failure = import_failure
        self.fail_operations = dict(fail_operations or {})
        self.reject_prediction = reject_prediction or self._not_in_model_run
        self.splits = dict(splits) if splits is not None else None
        self.projects = {
            pid: FakeProject(
                pid,
                str(spec.get("name", f"project {pid}")),
                copy.deepcopy(dict(spec["ontology"])) if spec.get("ontology") is not None else None,
                list(spec.get("data_row_ids", ())),
                queues=[dict(q) for q in spec.get("queues", ())],
            )
            for pid, spec in (projects or {}).items()
        }
        self.foreign_projects = set(foreign_projects)
        self.model_ontology = dict(model_ontology) if model_ontology is not None else None
        self.ontology_id = "contology" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.send_failure = send_failure
        self.send_in_progress_polls = send_in_progress_polls
        self.send_tasks: list[SendTask] = []

        self.operations: list[Operation] = []
        self.downloads: list[str] = []  # GET paths with their query strings
        self.statuses: list[dict[str, Any]] = []  # the `data` of every setPipelineStatus, in order
        self.pipeline: dict[str, Any] = {}  # the pipeline as Labelbox keeps it: merged metadata
        self.configs: list[dict[str, Any]] = []  # every config sent by updateModelRunConfig
        self.training_metadata: dict[str, Any] = {}
        self.imports: list[PredictionImport] = []
        self.exports: list[ExportJob] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._quirks_spent: set[str] = set()  # RESULT files whose one-time expiry or break has happened
        self._signatures = 0
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._app = self._build_app()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeLabelbox:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-labelbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLabelbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the fake Labelbox is not running"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/graphql"

    @property
    def rest_endpoint(self) -> str:
        return f"{self.base_url}/api/v1"

    # -- helpers for tests -----------------------------------------------------------------------

    def operation_names(self) -> list[str]:
        return [op.name for op in self.operations]

    def named(self, name: str) -> list[Operation]:
        return [op for op in self.operations if op.name == name]

    def add_media(self, name: str, content: bytes, content_type: str = "image/jpeg") -> str:
        """Serves `content` at a signed-looking URL, for rows whose row_data points at this server."""
        self.media[name] = (content, content_type)
        return f"{self.base_url}/media/{name}?{FAKE_SIGNATURE}"

    # -- the server ------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("fake_labelbox")

        @app.post("/graphql")
        @app.post("/_gql")
        def graphql() -> Response:
            return self._graphql()

        @app.get("/files/<path:key>")
        def files(key: str) -> Response:
            self.downloads.append(request.full_path)
            found = self._files.get(key)
            if found is None:
                return Response("no such file", status=404)
            content, mimetype = found
            if "/result-" in key and key not in self._quirks_spent:
                if self.export_expire_urls_once:
                    self._quirks_spent.add(key)
                    return Response("<Error><Code>ExpiredToken</Code></Error>", status=403, mimetype="application/xml")
                if self.export_break_once_after is not None:
                    self._quirks_spent.add(key)
                    headers = {"Content-Length": str(len(content))}  # promises more than it sends, then hangs up
                    return Response([content[: self.export_break_once_after]], mimetype=mimetype, headers=headers)
            return Response(content, mimetype=mimetype)

        @app.get("/media/<path:name>")
        def media(name: str) -> Response:
            self.downloads.append(request.full_path)
            if self.media_delay_s:
                time.sleep(self.media_delay_s)  # a slow image host: ETL takes a while
            found = self.media.get(name)
            if found is None:
                return Response("no such object", status=404)
            return Response(found[0], mimetype=found[1])

        return app

    def _file_url(self, key: str, content: bytes, mimetype: str = "application/x-ndjson") -> str:
        """A freshly signed URL each time, as Labelbox hands out; the content is shared, not copied."""
        self._files[key] = (content, mimetype)
        self._signatures += 1
        return f"{self.base_url}/files/{key}?{FAKE_SIGNATURE}&X-Goog-Date={self._signatures}"

    def _graphql(self) -> Response:
        form: dict[str, str] = {}
        files: dict[str, bytes] = {}
        if request.mimetype == "multipart/form-data":
            form = {k: v for k, v in request.form.items()}
            files = {k: f.read() for k, f in request.files.items()}
            body = json.loads(form.get("operations", "{}"))
        else:
            body = request.get_json(force=True, silent=True) or {}
        query = body.get("query") or ""
        variables = body.get("variables") or {}
        match = _OPERATION_NAME.match(query)
        op = Operation(
            name=match.group(1) if match else "",
            path=request.path,
            query=query,
            variables=variables,
            headers=dict(request.headers.items()),
            form=form,
            files=files,
        )
        with self._lock:
            self.operations.append(op)
            try:
                if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                    raise GraphQLError("Not authenticated", "AUTHENTICATION_ERROR", status=401)
                if op.name in self.fail_operations:
                    raise GraphQLError(self.fail_operations[op.name], "BAD_USER_INPUT", status=400)
                handler = self._handlers().get(op.name)
                if handler is None:
                    raise GraphQLError(
                        f"fake Labelbox does not serve {op.name or 'this query'}", "GRAPHQL_PARSE_FAILED"
                    )
                try:
                    data = handler(op)
                except (KeyError, TypeError, ValueError) as exc:  # a 500 would make the SDK retry for minutes
                    raise GraphQLError(
                        f"fake Labelbox cannot read {op.name}'s variables: {exc!r}", "BAD_USER_INPUT"
                    ) from None
            except GraphQLError as exc:
                payload = {"data": None, "errors": [{"message": str(exc), "extensions": {"code": exc.code}}]}
                return Response(json.dumps(payload), status=exc.status, mimetype="application/json")
        return Response(json.dumps({"data": data}), mimetype="application/json")

    def _handlers(self) -> dict[str, Callable[[Operation], dict[str, Any]]]:
        return {
            "GetModelRunPyApi": self._get_model_run,
            "exportDataRowsInModelRunPyApi": self._create_export,
            "GetUserPyApi": self._get_user,
            "GetUserCreatedTasksPyApi": self._get_tasks,
            "GetExportMetadataHeaderPyApi": self._export_header,
            "GetExportFileFromOffsetPyApi": self._export_file,
            "modelRunPyApi": self._model_run_data_rows,
            "GetMetadataOntologyBetaPyApi": lambda op: {"customMetadataOntology": []},
            "setPipelineStatusPyApi": self._set_pipeline_status,
            "updateModelRunConfigPyApi": self._update_config,
            "ModelRunPyApi": self._get_config,
            "createMEAPredictionImportByFilePyApi": self._create_import,
            "getModelErrorAnalysisPredictionImportPyApi": self._get_import,
            "GetProjectPyApi": self._get_project,
            "GetProjectBatchesPyApi": self._get_batches,
            "GetModelPyApi": self._get_model,
            "GetOntologyPyApi": self._get_ontology,
            "GetProjectOntologyPyApi": self._get_project_ontology,
            "GetProjectTaskQueuesPyApi": self._get_task_queues,
            "exportDataRowsInProjectPyApi": self._create_project_export,
            "SendToAnnotateFromMeaPyApi": self._send_to_annotate,
        }

    def _not_in_model_run(self, row: dict[str, Any]) -> str | None:
        """Labelbox attaches predictions only to data rows already in the model run."""
        data_row = row.get("dataRow") or {}
        for r in self.rows:
            if data_row.get("id") == r["data_row"]["id"] or (
                data_row.get("globalKey") is not None and data_row.get("globalKey") == r["data_row"].get("global_key")
            ):
                return None
        return f"Data row {json.dumps(data_row, sort_keys=True)} is not part of this model run"

    def split_of(self, row: Mapping[str, Any]) -> str:
        """The row's DataSplit as `model_run_data_rows()` reports it."""
        data_row_id = row["data_row"]["id"]
        if self.splits is not None:
            return self.splits.get(data_row_id, "UNASSIGNED")
        run = _run_of(row, self.model_id, self.model_run_id) or {}
        return Split.parse(run.get("split")).value.upper()

    def _check_run(self, model_run_id: str | None) -> None:
        if model_run_id != self.model_run_id:
            raise GraphQLError(f"Model run {model_run_id} not found", "RESOURCE_NOT_FOUND")

    # -- model run -------------------------------------------------------------------------------

    def _get_model_run(self, op: Operation) -> dict[str, Any]:
        (model_run_id,) = op.variables.values()
        self._check_run(model_run_id)
        return {
            "modelRun": {
                "id": self.model_run_id,
                "name": self.model_run_name,
                "updatedAt": TIMESTAMP,
                "createdAt": TIMESTAMP,
                "createdBy": USER_ID,
                "modelId": self.model_id,
                "trainingMetadata": self.training_metadata or None,
                "modelAppId": None,
            }
        }

    # -- export ----------------------------------------------------------------------------------

    def _exported_row(self, row: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        row = copy.deepcopy(row)
        run = _run_of(row, self.model_id, self.model_run_id)
        if run is not None:
            if not (params.get("includeModelRunDetails") and self.splits_on_run):
                run.pop("split", None)
            if not params.get("includePredictions"):
                run.pop("predictions", None)
        return row

    def export_lines(self, params: Mapping[str, Any]) -> list[bytes]:
        """The RESULT stream's lines as Labelbox writes them: compact JSON, UTF-8 (not \\u escapes)."""
        return [
            json.dumps(self._exported_row(r, params), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for r in self.rows
        ]

    def _cut(self, stream: bytes) -> list[bytes]:
        """Files of `export_file_bytes` bytes, blind to lines (and to characters unless told otherwise)."""
        sizes = self.export_file_bytes
        cycle = [sizes] if isinstance(sizes, int) else list(sizes or ())
        chunks, start, index = [], 0, 0
        while start < len(stream):
            end = min(len(stream), start + max(1, cycle[index % len(cycle)]))
            while not self.export_split_chars and start + 1 < end < len(stream) and stream[end] & 0xC0 == 0x80:
                end -= 1  # back to the first byte of the character
            chunks.append(stream[start:end])
            start, index = end, index + 1
        return chunks

    def _create_export(self, op: Operation) -> dict[str, Any]:
        data = op.variables["input"]
        self._check_run(data["filters"]["modelRunId"])
        task_id = "cexport" + uuid.uuid4().hex[:18]
        if self.export_result is not None or self.export_file_bytes is not None:
            stream = (
                self.export_result if self.export_result is not None else b"".join(self.export_lines(data["params"]))
            )
            chunks = self._cut(stream) if self.export_file_bytes is not None else [stream]
        else:
            lines = self.export_lines(data["params"])
            step = self.export_chunk_rows
            chunks = [b"".join(lines[i : i + step]) for i in range(0, len(lines), step)]
        errors = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.export_errors)
        self.exports.append(
            ExportJob(
                task_id=task_id,
                input=data,
                chunks=chunks,
                chunk_lines=[c.count(b"\n") for c in chunks],
                errors=errors.encode(),
                failed=self.export_failure is not None,
                in_progress_polls=self.export_in_progress_polls,
            )
        )
        return {"exportDataRowsInModelRun": {"taskId": task_id, "isStreamable": True}}

    def _get_user(self, op: Operation) -> dict[str, Any]:
        return {
            "user": {
                "id": USER_ID,
                "updatedAt": TIMESTAMP,
                "createdAt": TIMESTAMP,
                "lastLoginAt": TIMESTAMP,
                "email": "trainer@example.com",
                "nickname": "trainer",
                "name": "Trainer",
                "picture": None,
                "isViewer": False,
                "isExternalUser": False,
            }
        }

    def _export(self, task_id: str) -> ExportJob:
        for job in self.exports:
            if job.task_id == task_id:
                return job
        raise GraphQLError(f"Task {task_id} not found", "RESOURCE_NOT_FOUND")

    def _get_tasks(self, op: Operation) -> dict[str, Any]:
        """`user.created_tasks(where=Task.uid == id)`, as Task.get_task and Task.refresh send it."""
        if op.variables["param_1"] != USER_ID:
            raise GraphQLError("You may only list your own tasks", "AUTHORIZATION_ERROR")
        job = next((j for j in self.exports if j.task_id == op.variables["param_0"]), None)
        send = next((t for t in self.send_tasks if t.id == op.variables["param_0"]), None)
        if send is not None:
            return {"user": {"createdTasks": [self._send_task_json(send)]}}
        if job is None:
            return {"user": {"createdTasks": []}}  # a filter that matches nothing
        if job.in_progress_polls > 0:
            job.in_progress_polls -= 1
            status = "IN_PROGRESS"
        else:
            status = "FAILED" if job.failed else "COMPLETE"
        errors_url = None
        if status == "FAILED":
            message = json.dumps({"message": self.export_failure}) + "\n"
            errors_url = self._file_url(f"export/{job.task_id}/failure", message.encode())
        task = {
            "id": job.task_id,
            "completionPercentage": 100.0 if status != "IN_PROGRESS" else 40.0,
            "createdAt": TIMESTAMP,
            "updatedAt": TIMESTAMP,
            "errors": errors_url,
            "metadata": None,
            "name": job.input.get("taskName") or "Export v2: model run",
            "result": None,
            "status": status,
            "type": "export-data-rows",
        }
        return {"user": {"createdTasks": [task]}}

    def _export_header(self, op: Operation) -> dict[str, Any]:
        job = self._export(op.variables["where"]["id"])
        if op.variables["streamType"] == "ERRORS":
            size, lines = len(job.errors), len(self.export_errors)
        else:
            size, lines = sum(len(c) for c in job.chunks), sum(job.chunk_lines)
            lines += bool(job.chunks and not job.chunks[-1].endswith(b"\n"))
        header = {"totalSize": size, "totalLines": lines} if size else None
        return {"task": {"exportMetadataHeader": header}}

    def _export_file(self, op: Operation) -> dict[str, Any]:
        job = self._export(op.variables["where"]["id"])
        offset = int(op.variables["offset"])
        if op.variables["streamType"] == "ERRORS":
            chunks, counts = [job.errors], [len(self.export_errors)]
        else:
            chunks, counts = job.chunks, job.chunk_lines
        start = line = 0
        for index, (chunk, count) in enumerate(zip(chunks, counts, strict=True)):
            if start <= offset < start + len(chunk):
                kind = op.variables["streamType"].lower()
                served = chunk[:-1] if kind == "result" and index == self.export_short_file else chunk
                url = self._file_url(f"export/{job.task_id}/{kind}-{index}.ndjson", served)
                return {
                    "task": {
                        "exportFileFromOffset": {
                            "offsets": {"start": start, "end": start + len(chunk) - 1},
                            "lines": {"start": line, "end": line + count - 1},
                            "file": url,
                        }
                    }
                }
            start += len(chunk)
            line += count
        return {"task": {"exportFileFromOffset": None}}

    # -- splits ----------------------------------------------------------------------------------

    def _model_run_data_rows(self, op: Operation) -> dict[str, Any]:
        self._check_run(op.variables["modelRunId"])
        start = int(op.variables.get("from") or 0)
        size = min(int(op.variables.get("first") or 100), self.max_page_size)
        page = self.rows[start : start + size]
        nodes = []
        for r in page:
            data_row = r["data_row"]
            nodes.append(
                {
                    "id": "cgroup" + data_row["id"][-19:],
                    "dataSplit": self.split_of(r),
                    "labelId": None,
                    "modelRunId": self.model_run_id,
                    "dataRow": {
                        "id": data_row["id"],
                        "externalId": None,
                        "globalKey": data_row.get("global_key"),
                        "rowData": data_row.get("row_data"),
                        "mediaAttributes": r.get("media_attributes"),
                        "customMetadata": [],
                        "metadataFields": [],
                        "createdAt": TIMESTAMP,
                        "updatedAt": TIMESTAMP,
                    },
                }
            )
        after = start + len(page)
        cursor = str(after) if after < len(self.rows) else None
        return {"annotationGroups": {"nodes": nodes, "pageInfo": {"endCursor": cursor}}}

    # -- status and config -----------------------------------------------------------------------

    def _set_pipeline_status(self, op: Operation) -> dict[str, Any]:
        self._check_run(op.variables["modelRunId"])
        data = op.variables["data"]
        self.statuses.append(data)
        self.pipeline["status"] = data["status"]
        if data.get("errorMessage"):
            self.pipeline["errorMessage"] = data["errorMessage"]
        if data.get("metadata"):
            self.pipeline["metadata"] = {**self.pipeline.get("metadata", {}), **data["metadata"]}
        return {"updateTrainingPipeline": {"status": data["status"]}}

    def _get_config(self, op: Operation) -> dict[str, Any]:
        self._check_run(op.variables["modelRunId"])
        return {"modelRun": {"trainingMetadata": self.training_metadata or None}}

    def _update_config(self, op: Operation) -> dict[str, Any]:
        self._check_run(op.variables["modelRunId"])
        config = op.variables["data"]["config"]
        self.configs.append(config)
        self.training_metadata = config
        return {"updateModelRunConfig": {"trainingMetadata": config}}

    # -- prediction import -----------------------------------------------------------------------

    def _import_json(self, job: PredictionImport) -> dict[str, Any]:
        settled = job.state != "RUNNING"
        base = f"imports/{job.id}"
        status_lines = "".join(json.dumps(s) + "\n" for s in job.statuses).encode()
        error_lines = "".join(json.dumps(s) + "\n" for s in job.errors).encode()
        return {
            "id": job.id,
            "name": job.name,
            "modelRunId": job.model_run_id,
            "state": job.state,
            "progress": "100%" if settled else "0%",
            "inputFileUrl": self._file_url(f"{base}/input.ndjson", job.content),
            "statusFileUrl": self._file_url(f"{base}/status.ndjson", status_lines) if settled else None,
            "errorFileUrl": self._file_url(f"{base}/errors.ndjson", error_lines) if settled else None,
        }

    def _create_import(self, op: Operation) -> dict[str, Any]:
        variables = op.variables
        self._check_run(variables["modelRunId"])
        file_map = json.loads(op.form.get("map", "{}"))
        part = next((name for name, targets in file_map.items() if "variables.file" in targets), None)
        if part is None or part not in op.files:
            raise GraphQLError("the upload carries no file for variables.file", "BAD_USER_INPUT", status=400)
        content = op.files[part]
        rows = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        statuses = []
        for row in rows:
            problem = self.reject_prediction(row)
            status: dict[str, Any] = {"uuid": row.get("uuid"), "dataRow": row.get("dataRow"), "status": "SUCCESS"}
            if problem:
                status["status"] = "FAILURE"
                status["errors"] = [{"name": "ValidationError", "message": problem, "additionalInfo": None}]
            statuses.append(status)
        job = PredictionImport(
            id="cimport" + uuid.uuid4().hex[:18],
            name=variables["name"],
            model_run_id=variables["modelRunId"],
            content=content,
            rows=rows,
            statuses=statuses,
            final_state="FAILED" if self.import_failure else "FINISHED",
            running_polls=self.import_running_polls,
        )
        self.imports.append(job)
        return {"createModelErrorAnalysisPredictionImport": self._import_json(job)}

    def _get_import(self, op: Operation) -> dict[str, Any]:
        for job in reversed(self.imports):
            if job.model_run_id == op.variables["modelRunId"] and job.name == op.variables["name"]:
                job.polls += 1
                if job.polls > job.running_polls:
                    job.state = job.final_state
                return {"modelErrorAnalysisPredictionImport": self._import_json(job)}
        raise GraphQLError("Prediction import not found", "RESOURCE_NOT_FOUND")

    # -- model-assisted labeling -----------------------------------------------------------------

    def the_model_ontology(self) -> dict[str, Any]:
        return self.model_ontology if self.model_ontology is not None else ontology_of_rows(self.rows)

    def _project(self, project_id: str | None) -> FakeProject:
        if project_id in self.foreign_projects:
            raise GraphQLError(f"You do not have access to project {project_id}", "AUTHORIZATION_ERROR")
        project = self.projects.get(str(project_id))
        if project is None:
            raise GraphQLError(f"Project {project_id} not found", "RESOURCE_NOT_FOUND")
        return project

    def _get_project(self, op: Operation) -> dict[str, Any]:
        project = self._project(op.variables["param_0"])
        return {
            "project": {
                "id": project.id,
                "name": project.name,
                "description": "",
                "updatedAt": TIMESTAMP,
                "createdAt": TIMESTAMP,
                "setupComplete": TIMESTAMP,
                "lastActivityTime": TIMESTAMP,
                "autoAuditNumberOfLabels": 1,
                "autoAuditPercentage": 1.0,
                "allowedMediaType": "IMAGE",
                "editorTaskType": None,
                "dataRowCount": len(project.data_row_ids),
                "modelSetupComplete": None,
                "uploadType": None,
                "isBenchmarkEnabled": False,
                "isConsensusEnabled": False,
            }
        }

    def _get_batches(self, op: Operation) -> dict[str, Any]:
        project = self._project(op.variables["projectId"])
        start = int(op.variables.get("from") or 0)
        size = min(int(op.variables.get("first") or 100), self.max_page_size)
        page = project.batches[start : start + size]
        after = start + len(page)
        nodes = [
            {
                "id": b.id,
                "name": b.name,
                "createdAt": b.created_at,
                "updatedAt": b.created_at,
                "size": len(b.data_row_ids),
                "consensusSettingsJson": None,
            }
            for b in page
        ]
        cursor = str(after) if after < len(project.batches) else None
        return {"project": {"id": project.id, "batches": {"nodes": nodes, "pageInfo": {"endCursor": cursor}}}}

    def _get_model(self, op: Operation) -> dict[str, Any]:
        if op.variables["param_0"] != self.model_id:
            raise GraphQLError(f"Model {op.variables['param_0']} not found", "RESOURCE_NOT_FOUND")
        return {"model": {"id": self.model_id, "name": "fake model", "ontologyId": self.ontology_id}}

    def _ontology_json(self, ontology_id: str, normalized: Mapping[str, Any] | None) -> dict[str, Any]:
        normalized = normalized or {"tools": [], "classifications": []}
        return {
            "id": ontology_id,
            "name": f"ontology {ontology_id}",
            "description": "",
            "createdAt": TIMESTAMP,
            "updatedAt": TIMESTAMP,
            "mediaType": "IMAGE",
            "normalized": normalized,
            "objectSchemaCount": len(normalized.get("tools", [])),
            "classificationSchemaCount": len(normalized.get("classifications", [])),
        }

    def _get_ontology(self, op: Operation) -> dict[str, Any]:
        if op.variables["param_0"] != self.ontology_id:
            raise GraphQLError(f"Ontology {op.variables['param_0']} not found", "RESOURCE_NOT_FOUND")
        return {"ontology": self._ontology_json(self.ontology_id, self.the_model_ontology())}

    def _get_project_ontology(self, op: Operation) -> dict[str, Any]:
        project = self._project(op.variables["param_0"])
        if project.ontology is None:
            return {"project": {"ontology": None}}
        return {"project": {"ontology": self._ontology_json(f"contology{project.id[-16:]}", project.ontology)}}

    def _get_task_queues(self, op: Operation) -> dict[str, Any]:
        project = self._project(op.variables["projectId"])
        queues = [{"description": "", "dataRowCount": 0, **q} for q in project.queues]
        return {"project": {"taskQueues": queues}}

    def _create_project_export(self, op: Operation) -> dict[str, Any]:
        """A project export; the only filter served is `data_row_id is [...]` (what the adapter sends)."""
        data = op.variables["input"]
        project = self._project(data["filters"]["projectId"])
        wanted: set[str] | None = None
        for clause in data["filters"]["searchQuery"]["query"]:
            if clause["type"] != "data_row_id" or clause["operator"] != "is":
                raise GraphQLError(f"the fake serves no {clause['type']} filter", "BAD_USER_INPUT")
            wanted = set(clause["ids"])
        keys = {r["data_row"]["id"]: r["data_row"].get("global_key") for r in self.rows}
        lines = [
            json.dumps(
                {
                    "data_row": {"id": i, "global_key": keys.get(i)},
                    "projects": {project.id: {"name": project.name, "labels": []}},
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
            for i in project.data_row_ids
            if wanted is None or i in wanted
        ]
        task_id = "cexport" + uuid.uuid4().hex[:18]
        self.exports.append(
            ExportJob(
                task_id=task_id,
                input=data,
                chunks=[b"".join(lines)] if lines else [],
                chunk_lines=[len(lines)] if lines else [],
                errors=b"",
                failed=False,
                in_progress_polls=self.export_in_progress_polls,
            )
        )
        return {"exportDataRowsInProject": {"taskId": task_id, "isStreamable": True}}

    def _send_task_json(self, task: SendTask) -> dict[str, Any]:
        if task.in_progress_polls > 0:
            task.in_progress_polls -= 1
            status = "IN_PROGRESS"
        else:
            status = task.status
        return {
            "id": task.id,
            "completionPercentage": 100.0 if status != "IN_PROGRESS" else 10.0,
            "createdAt": TIMESTAMP,
            "updatedAt": TIMESTAMP,
            "errors": None,
            "metadata": None,
            "name": "Send to annotate from model run",
            "result": json.dumps({"message": task.failure}) if status == "FAILED" else None,
            "status": status,
            "type": "send-to-annotate",
        }

    def _prelabels(self, ids: set[str], mapping: Mapping[str, str], low: float, high: float) -> list[dict[str, Any]]:
        """The model run's imported predictions of `ids` (annotations only, accepted ones), each feature
        mapped to the project's by `mapping`; a feature it does not map is not imported."""
        model: dict[str, tuple[str, dict[str, str]]] = {}
        for tool in self.the_model_ontology().get("tools", []):
            model[tool["name"]] = (tool["featureSchemaId"], {})
        for q in self.the_model_ontology().get("classifications", []):
            model[q["name"]] = (q["featureSchemaId"], {o["value"]: o["featureSchemaId"] for o in q.get("options", [])})
        out = []
        for job in self.imports:
            accepted = {s["uuid"] for s in job.statuses if s["status"] == "SUCCESS"}
            for row in job.rows:
                data_row = row.get("dataRow") or {}
                if row.get("uuid") not in accepted or "metricValue" in row or data_row.get("id") not in ids:
                    continue
                if not low <= float(row.get("confidence", 1.0)) <= high or row.get("name") not in model:
                    continue
                schema_id, options = model[row["name"]]
                if schema_id not in mapping:
                    continue
                prelabel = {k: v for k, v in row.items() if k not in ("name", "confidence", "customMetrics")}
                prelabel["schemaId"] = mapping[schema_id]
                if "answer" in row:
                    answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
                    mapped = [
                        {"schemaId": mapping[options[a["name"]]]} for a in answers if options.get(a["name"]) in mapping
                    ]
                    if not mapped:
                        continue
                    prelabel["answer"] = mapped if isinstance(row["answer"], list) else mapped[0]
                out.append(prelabel)
        return out

    def _send_to_annotate(self, op: Operation) -> dict[str, Any]:
        data = op.variables["input"]
        self._check_run(data["sourceModelRunId"])
        project = self._project(data["destinationProjectId"])
        queue = data["destinationTaskQueue"]
        if queue.get("type") == "id" and queue.get("value") not in {q["id"] for q in project.queues}:
            raise GraphQLError(f"Task queue {queue.get('value')} is not in project {project.id}", "BAD_USER_INPUT")
        name = data["batchInput"]["batchName"]
        if any(b.name == name for b in project.batches):
            raise GraphQLError(f"A batch named {name} already exists in this project", "RESOURCE_CONFLICT")
        (clause,) = data["searchQuery"]
        if clause["type"] != "data_row_id" or clause["operator"] != "is":
            raise GraphQLError(f"the fake serves no {clause['type']} search", "BAD_USER_INPUT")
        known = {r["data_row"]["id"] for r in self.rows}
        ids = [i for i in clause["ids"] if i in known]
        if data.get("excludeDataRowsInProject"):
            ids = [i for i in ids if i not in project.data_row_ids]
        task = SendTask(
            "csend" + uuid.uuid4().hex[:20],
            data,
            "FAILED" if self.send_failure else "COMPLETE",
            self.send_in_progress_polls,
            self.send_failure,
        )
        self.send_tasks.append(task)
        if self.send_failure:
            return {"sendToAnnotateFromMea": {"taskId": task.id}}
        predictions = data["predictionsInput"]
        mapping = predictions.get("featureSchemaIdsMapping") or {}
        if ids:
            batch = FakeBatch("cbatch" + uuid.uuid4().hex[:19], name, int(data["batchInput"]["batchPriority"]), ids)
            project.batches.append(batch)
            project.data_row_ids.extend(ids)
            rows = self._prelabels(
                set(ids), mapping, float(predictions["minConfidence"]), float(predictions["maxConfidence"])
            )
            project.mal_imports.append(MalImport(project.id, name, self.model_run_id, dict(queue), dict(mapping), rows))
        return {"sendToAnnotateFromMea": {"taskId": task.id}}


@contextmanager
def running_fake_labelbox(
    rows: Sequence[Mapping[str, Any]], *, model_run_id: str, model_id: str, **behaviour: Any
) -> Iterator[FakeLabelbox]:
    """Starts a FakeLabelbox on a free loopback port for the duration of the block."""
    fake = FakeLabelbox(rows, model_run_id=model_run_id, model_id=model_id, **behaviour)
    with fake:
        yield fake


@contextmanager
def running_fake_labelbox_for_folder(folder: Path, **behaviour: Any) -> Iterator[FakeLabelbox]:
    """Serves a local model run folder (`shared.demo` layout) as a Labelbox model run, media included.

    Relative `row_data` paths become this server's signed-looking media URLs, so the chain downloads
    the images over HTTP exactly as it would from Labelbox.
    """
    folder = Path(folder)
    info = json.loads((folder / "model_run.json").read_text())
    behaviour.setdefault("model_run_name", info.get("name") or "local model run")
    with running_fake_labelbox([], model_run_id=info["id"], model_id=info["model_id"], **behaviour) as fake:
        rows = []
        with open(folder / "export.ndjson") as export:
            for line in export:
                if not line.strip():
                    continue
                row = json.loads(line)
                row_data = row["data_row"]["row_data"]
                if "://" not in row_data:
                    mime = (row.get("media_attributes") or {}).get("mime_type") or "application/octet-stream"
                    row["data_row"]["row_data"] = fake.add_media(row_data, (folder / row_data).read_bytes(), mime)
                rows.append(row)
        fake.rows = rows
        yield fake
