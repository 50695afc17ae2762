"""Google API errors read the same way over gRPC and REST.

Over gRPC, google-api-core raises the exception class of the status (`AlreadyExists`,
`FailedPrecondition`). Over REST it picks the class from the HTTP code alone, so a 409 ALREADY_EXISTS is
a plain `Conflict` and a 400 FAILED_PRECONDITION a plain `BadRequest`. The status name is still in the
response body; this reads it, so an adapter can tell "already exists" from any other conflict.
"""

from __future__ import annotations

from google.api_core import exceptions as api_exceptions
from google.api_core.exceptions import GoogleAPICallError


def status_name(exc: GoogleAPICallError) -> str | None:
    """`ALREADY_EXISTS`, `FAILED_PRECONDITION`, ...: the google.rpc status of the error, when known."""
    if exc.grpc_status_code is not None:
        return exc.grpc_status_code.name
    response = getattr(exc, "response", None)
    try:
        status = response.json()["error"]["status"] if response is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def is_already_exists(exc: Exception) -> bool:
    if isinstance(exc, api_exceptions.AlreadyExists):
        return True
    return isinstance(exc, api_exceptions.Conflict) and status_name(exc) == "ALREADY_EXISTS"


def is_failed_precondition(exc: Exception) -> bool:
    if isinstance(exc, api_exceptions.FailedPrecondition):
        return True
    return isinstance(exc, api_exceptions.BadRequest) and status_name(exc) == "FAILED_PRECONDITION"
