"""What every cloud stand-in shares: a flask app on a free loopback port, request records, Google errors.

Google's JSON APIs answer errors as `{"error": {"code", "message", "status"}}`; google-api-core turns
the HTTP code (not the `status` string) into an exception class, so the code must be the real one.
Responses are serialized from the installed protobuf classes, so every field name is the one the
client libraries parse, and enums follow the `$alt=json;enum-encoding=int` the REST transports ask for.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from flask import Flask, Request, Response
from google.protobuf import json_format
from google.protobuf.message import Message
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

# HTTP code -> google.rpc.Code name, as Google's front ends pair them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """Every request is in the stand-in's own record; no access log on stderr."""


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as a stand-in received it, with what it decided."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    identity: str | None = None  # the caller's email, where a token named one
    status: int | None = None  # the status answered

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class GoogleApiError(Exception):
    """Raised inside a handler to answer the Google error body with this code."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")


def google_error(code: int, message: str, status: str | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "status": status or STATUS_NAMES.get(code, "UNKNOWN")}}
    return Response(json.dumps(body), status=code, mimetype="application/json")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def wants_int_enums(request: Request) -> bool:
    """The gapic REST transports send `$alt=json;enum-encoding=int`; a plain HTTP client gets enum names."""
    return "enum-encoding=int" in request.args.get("$alt", "")


def proto_json(message: Message, *, int_enums: bool) -> Response:
    text = json_format.MessageToJson(message, use_integers_for_enums=int_enums)
    return Response(text, status=200, mimetype="application/json")


def parse_proto(body: bytes | str, message: Message) -> Message:
    """Parses a request body strictly, as Google's front ends do: an unknown field is a 400."""
    try:
        json_format.Parse(body or b"{}", message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise GoogleApiError(400, f"Invalid JSON payload received. {exc}") from None
    return message


def to_dict(message: Message) -> dict[str, Any]:
    """A message in its JSON form (camelCase names, enum names), the form the stand-ins store."""
    return json_format.MessageToDict(message)


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LoopbackServer:
    """A flask app served on 127.0.0.1 from a daemon thread; subclasses build the app."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[RecordedRequest] = []
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._record_lock = threading.Lock()

    def build_app(self) -> Flask:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            self._server = make_server("127.0.0.1", 0, self.build_app(), threaded=True, request_handler=QuietHandler)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, f"the {self.name} is not running"
        return self._server.server_port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, no trailing slash: what `ClientOptions(api_endpoint=...)` takes."""
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: Request, *, identity: str | None, status: int) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.args),
            headers=dict(request.headers),
            body=request.get_data(),
            at=time.monotonic(),
            identity=identity,
            status=status,
        )
        with self._record_lock:
            self.requests.append(recorded)
        return recorded
