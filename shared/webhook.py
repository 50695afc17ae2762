"""Labelbox's model-training webhook: signature check and payload validation. Pure, no I/O.

Labelbox signs the raw body with the shared secret: `X-Hub-Signature: sha1=<hex HMAC-SHA1>`, and newer
deliveries add `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`. Every signature present must verify,
compared in constant time. The `models` endpoint is a GET, whose body (empty) is signed the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from shared.domain.model_types import ModelType
from shared.secret import Secret

# Matched whole (fullmatch): with re.match, `$` also matches before a final newline ("id\n" passed).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class Rejected(Exception):
    """A request we refuse; `status` is the HTTP status and the message is safe to return."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HeaderLookup(Protocol):
    """What the signature check reads of a request's headers: a dict, or Flask's case-insensitive ones."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class TrainingRequest:
    model_run_id: str
    model_type: ModelType
    model_id: str | None
    force: bool


def _digest(secret: Secret, body: bytes, algorithm: str) -> str:
    return hmac.new(secret.reveal().encode(), body, getattr(hashlib, algorithm)).hexdigest()


def verify_signature(body: bytes, headers: HeaderLookup, secret: Secret | None) -> None:
    """Raises Rejected(401) unless every signature header present verifies; at least one is required."""
    if secret is None:
        return  # only when the operator set ALLOW_UNSIGNED_WEBHOOKS=true (config refuses it otherwise)
    checks = (("X-Hub-Signature-256", "sha256"), ("X-Hub-Signature", "sha1"))
    present = [(name, algo, headers.get(name)) for name, algo in checks if headers.get(name)]
    if not present:
        raise Rejected(401, "missing signature: expected an X-Hub-Signature header signed with the webhook secret")
    for name, algo, value in present:
        scheme, _, given = (value or "").partition("=")
        expected = _digest(secret, body, algo)
        # compare_digest on equal-length ASCII strings; a wrong scheme still costs one comparison
        ok = hmac.compare_digest(given.strip().lower().encode(), expected.encode())
        if not ok or scheme.strip().lower() != algo:
            raise Rejected(401, f"invalid signature in {name}")


def valid_run_id(value: object) -> str:
    """Run ids become object names in the bucket: only a safe, bounded alphabet is accepted."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise Rejected(400, "run id must be 1-128 letters, digits, '-' or '_' (a Labelbox model run id)")
    return value


def parse_training_request(body: bytes, offered: Mapping[str, ModelType]) -> TrainingRequest:
    """The webhook body, read as JSON whatever its Content-Type (the signature covers the raw bytes and
    Labelbox does not document the header). Keys other than modelRunId, modelType, modelId and force
    are ignored: the payload is Labelbox's, and a field it adds must not break training."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise Rejected(400, "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "body must be a JSON object with modelRunId and modelType")
    if "modelRunId" not in payload:
        raise Rejected(400, "modelRunId is required")
    model_run_id = valid_run_id(payload["modelRunId"])
    model_type = payload.get("modelType")
    if not isinstance(model_type, str) or not model_type:
        raise Rejected(400, "modelType is required")
    if model_type not in offered:
        raise Rejected(400, f"unknown modelType {model_type[:64]!r}; this deployment offers: {', '.join(offered)}")
    model_id = payload.get("modelId")
    if model_id is not None and not isinstance(model_id, str):
        raise Rejected(400, "modelId must be a string when given")
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise Rejected(400, "force must be true or false")
    return TrainingRequest(model_run_id, offered[model_type], model_id, force)
