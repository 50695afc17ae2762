"""What every function's `main.py` shares: reading a bounded body, parsing a stage call, JSON answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import flask

from shared.bootstrap import services
from shared.domain.run_record import RunRecord
from shared.services import Services
from shared.stages.runner import StageAnswer, StageCall, StageContext, run_stage
from shared.stages.shards import ShardWork, run_shard
from shared.webhook import Rejected, valid_run_id, verify_signature

log = logging.getLogger(__name__)
MAX_STAGE_BODY = 4096
STAGE_CALL_KEYS = frozenset({"run_id", "force", "look", "shard"})


def answer(status: int, body: dict[str, Any]) -> flask.Response:
    return flask.Response(json.dumps(body, default=str), status=status, mimetype="application/json")


def read_body(request: flask.Request, limit: int) -> bytes:
    """The raw body, refusing anything over `limit` bytes before reading it all."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise Rejected(413, f"body over {limit} bytes")
        return request.get_data(cache=True)
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # no Content-Length and not chunked: there is no body
    body = request.stream.read(limit + 1)  # chunked: read at most one byte past the limit
    if len(body) > limit:
        raise Rejected(413, f"body over {limit} bytes")
    return body


def require_method(request: flask.Request, method: str) -> None:
    if request.method != method:
        raise Rejected(405, f"use {method}")


def parse_stage_call(request: flask.Request) -> StageCall:
    """`{"run_id": "...", "force": false}`: the only thing that travels between stages (a scheduled
    monitor look adds its number, `"look"`, so a stale look can tell it is stale; a call of one shard of
    a stage's work adds the shard's index, `"shard"`).

    The body is read as JSON whatever its Content-Type (curl's default is form-encoded; Cloud Tasks
    sends what it was given); keys other than these are refused, since this API is ours."""
    require_method(request, "POST")
    body = read_body(request, MAX_STAGE_BODY)
    try:
        payload = json.loads(body or b"null")
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Rejected(400, "body is not valid JSON") from None
    if not isinstance(payload, dict) or "run_id" not in payload:
        raise Rejected(400, 'body must be {"run_id": "<model run id>"}')
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise Rejected(400, "force must be true or false")
    look, shard = payload.get("look"), payload.get("shard")
    for name, value in (("look", look), ("shard", shard)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise Rejected(400, f"{name} must be a whole number when given")
    unknown = sorted(set(payload) - STAGE_CALL_KEYS)
    if unknown:  # our own API: a misspelt flag ("forced") must not be ignored silently
        listed = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise Rejected(400, f"unknown keys {listed}; a stage takes run_id, force (and shard, look from the chain)")
    return StageCall(valid_run_id(payload["run_id"]), force=force, look=look, shard=shard)


def signed_endpoint(
    function: str, method: str, respond: Callable[[Services, bytes], StageAnswer]
) -> Callable[[flask.Request], Any]:
    """An HTTP handler for a Labelbox-facing function: one method, a bounded body, Labelbox's signature
    checked in constant time, then `respond` with the raw body. Anything refused is a 4xx with a message."""
    svc = services(function)  # validates the configuration and builds the ports when the function starts

    def handle(request: flask.Request) -> flask.Response:
        try:
            require_method(request, method)
            body = read_body(request, svc.settings.max_webhook_bytes)
            verify_signature(body, request.headers, svc.settings.webhook_secret)
            result = respond(svc, body)
        except Rejected as exc:
            return answer(exc.status, {"error": exc.message})
        return answer(result.status, result.body)

    handle.__name__ = function
    return handle


def stage_endpoint(
    stage: str,
    work: Callable[[StageContext], StageAnswer],
    *,
    on_done: Callable[[Services, RunRecord], dict[str, Any]] | None = None,
    shard_work: ShardWork | None = None,
) -> Callable[[flask.Request], Any]:
    """An HTTP handler that runs `work` as `stage` for the run named in the body, or, for a call that
    names a shard, `shard_work` on that shard of the stage's work."""
    svc = services(stage)  # validates the configuration and builds the ports when the function starts

    def handle(request: flask.Request) -> flask.Response:
        try:
            call = parse_stage_call(request)
        except Rejected as exc:
            return answer(exc.status, {"error": exc.message})
        if call.shard is None:
            result = run_stage(svc, call, stage, work, on_done=on_done)
        elif shard_work is None:
            result = StageAnswer(400, {"error": f"{stage} has no shards; call it with run_id only"})
        else:
            result = run_shard(svc, call, stage, shard_work)
        return answer(result.status, result.body)

    handle.__name__ = stage
    return handle
