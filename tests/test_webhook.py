"""Labelbox's training webhook: HMAC signatures over the raw body and the request payload."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from shared.domain.model_types import MODEL_TYPES, Backend, offered
from shared.secret import Secret
from shared.webhook import Rejected, TrainingRequest, parse_training_request, verify_signature

SECRET = "s3cr3t-webhook-value"
BODY = json.dumps({"modelRunId": "9da6c7e2-bc0d-0679-1e2e-a6a4e28475c8", "modelType": "local_detector"}).encode()


def sha1(body: bytes = BODY, secret: str = SECRET) -> str:
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def sha256(body: bytes = BODY, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def rejected(body: bytes, headers: dict[str, str], secret: Secret | None = Secret(SECRET)) -> Rejected:
    with pytest.raises(Rejected) as caught:
        verify_signature(body, headers, secret)
    return caught.value


# -- signatures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature": sha1()},
        {"X-Hub-Signature-256": sha256()},
        {"X-Hub-Signature": sha1(), "X-Hub-Signature-256": sha256()},
        {"X-Hub-Signature": sha1().upper().replace("SHA1=", "sha1=")},
        {"X-Hub-Signature": "SHA1=" + sha1().split("=", 1)[1]},
        {"X-Hub-Signature-256": " " + sha256() + " "},
    ],
    ids=["sha1", "sha256", "both", "uppercase-hex", "uppercase-scheme", "padded"],
)
def test_valid_signatures_are_accepted(headers: dict[str, str]) -> None:
    verify_signature(BODY, headers, Secret(SECRET))


def test_signature_of_the_empty_body_of_a_models_get_is_accepted() -> None:
    verify_signature(b"", {"X-Hub-Signature": sha1(b"")}, Secret(SECRET))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing signature"),
        ({"X-Hub-Signature": ""}, "missing signature"),
        ({"X-Labelbox-Id": "delivery-1"}, "missing signature"),
        ({"X-Hub-Signature": sha1(secret="wrong")}, "invalid signature in X-Hub-Signature"),
        ({"X-Hub-Signature-256": sha256(secret="wrong")}, "invalid signature in X-Hub-Signature-256"),
        (
            {"X-Hub-Signature": sha1(), "X-Hub-Signature-256": sha256(secret="wrong")},
            "invalid signature in X-Hub-Signature-256",
        ),
        (
            {"X-Hub-Signature": sha1(secret="wrong"), "X-Hub-Signature-256": sha256()},
            "invalid signature in X-Hub-Signature",
        ),
        # the right digest under the wrong scheme name, or no scheme at all
        ({"X-Hub-Signature": "sha256=" + sha1().split("=", 1)[1]}, "invalid signature"),
        ({"X-Hub-Signature": "md5=" + sha1().split("=", 1)[1]}, "invalid signature"),
        ({"X-Hub-Signature": sha1().split("=", 1)[1]}, "invalid signature"),
        ({"X-Hub-Signature-256": "sha1=" + sha256().split("=", 1)[1]}, "invalid signature"),
        # a sha1 signature put in the sha256 header
        ({"X-Hub-Signature-256": sha1()}, "invalid signature in X-Hub-Signature-256"),
        ({"X-Hub-Signature": "sha1=not-hex-ä"}, "invalid signature"),
    ],
)
def test_bad_or_missing_signatures_are_refused_with_401(headers: dict[str, str], message: str) -> None:
    error = rejected(BODY, headers)
    assert error.status == 401
    assert message in error.message
    assert SECRET not in error.message


def test_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"local_detector", b"local_single_label_classifier")
    assert rejected(tampered, {"X-Hub-Signature": sha1(), "X-Hub-Signature-256": sha256()}).status == 401
    assert rejected(BODY + b" ", {"X-Hub-Signature-256": sha256()}).status == 401


def test_signature_is_over_the_raw_bytes_not_the_parsed_json() -> None:
    reformatted = json.dumps(json.loads(BODY), indent=2).encode()
    assert rejected(reformatted, {"X-Hub-Signature": sha1()}).status == 401
    verify_signature(reformatted, {"X-Hub-Signature": sha1(reformatted)}, Secret(SECRET))


def test_without_a_secret_unsigned_requests_are_allowed() -> None:
    verify_signature(BODY, {}, None)
    verify_signature(BODY, {"X-Hub-Signature": "sha1=whatever"}, None)


def test_flask_headers_are_matched_case_insensitively() -> None:
    from werkzeug.datastructures import Headers

    verify_signature(BODY, Headers({"x-hub-signature-256": sha256()}), Secret(SECRET))


# -- the training request ----------------------------------------------------------------------------------

OFFERED = offered(Backend.LOCAL)


def parse(payload: object) -> TrainingRequest:
    return parse_training_request(json.dumps(payload).encode(), OFFERED)


def refused(body: bytes) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse_training_request(body, OFFERED)
    assert caught.value.status == 400
    return caught.value


def test_happy_path() -> None:
    request = parse(
        {"modelRunId": "9da6c7e2-bc0d-0679-1e2e-a6a4e28475c8", "modelType": "local_detector", "modelId": "cmodel1"}
    )
    assert request == TrainingRequest(
        model_run_id="9da6c7e2-bc0d-0679-1e2e-a6a4e28475c8",
        model_type=MODEL_TYPES["local_detector"],
        model_id="cmodel1",
        force=False,
    )


def test_force_and_unknown_extra_keys() -> None:
    request = parse({"modelRunId": "run_1", "modelType": "local_detector", "force": True, "extra": {"a": 1}})
    assert (request.model_run_id, request.model_id, request.force) == ("run_1", None, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is not valid JSON"),
        (b"{not json", "body is not valid JSON"),
        (b"\xff\xfe\x00", "body is not valid JSON"),
        (b"[" * 60_000, "body is not valid JSON"),  # nested past the parser's recursion limit
        (b"[1, 2]", "body must be a JSON object with modelRunId and modelType"),
        (b'"modelRunId"', "body must be a JSON object with modelRunId and modelType"),
        (b"null", "body must be a JSON object with modelRunId and modelType"),
        (b'{"modelType": "local_detector"}', "modelRunId is required"),
    ],
)
def test_malformed_bodies_get_400_with_a_clear_message(body: bytes, message: str) -> None:
    assert refused(body).message == message


@pytest.mark.parametrize(
    "run_id", ["../x", "a/b", "", "-leading-dash", "x" * 129, 12, None, "a b", "ä", "run-1\n", "run-1\r\n", "\nrun"]
)
def test_unsafe_run_ids_are_refused(run_id: object) -> None:
    error = refused(json.dumps({"modelRunId": run_id, "modelType": "local_detector"}).encode())
    assert "run id must be 1-128 letters, digits, '-' or '_'" in error.message


def test_longest_allowed_run_id_is_accepted() -> None:
    assert parse({"modelRunId": "a" * 128, "modelType": "local_detector"}).model_run_id == "a" * 128


@pytest.mark.parametrize("model_type", [None, "", 5])
def test_missing_model_type(model_type: object) -> None:
    payload = {"modelRunId": "run1"} if model_type is None else {"modelRunId": "run1", "modelType": model_type}
    assert refused(json.dumps(payload).encode()).message == "modelType is required"


def test_unknown_model_type_lists_the_offered_ones() -> None:
    error = refused(json.dumps({"modelRunId": "run1", "modelType": "yolo"}).encode())
    assert error.message.startswith("unknown modelType 'yolo'; this deployment offers: ")
    assert error.message.split(": ", 1)[1].split(", ") == list(OFFERED)


def test_model_type_not_offered_by_this_deployment_is_unknown() -> None:
    with pytest.raises(Rejected, match="unknown modelType 'local_detector'"):
        parse_training_request(
            json.dumps({"modelRunId": "run1", "modelType": "local_detector"}).encode(), offered(Backend.VERTEX)
        )


def test_long_unknown_model_type_is_cut_in_the_message() -> None:
    error = refused(json.dumps({"modelRunId": "run1", "modelType": "y" * 5000}).encode())
    assert len(error.message) < 120 + len(", ".join(OFFERED))  # the name cut to 64, then the offered list


@pytest.mark.parametrize("model_id", [7, ["a"], {"id": "a"}, True])
def test_model_id_must_be_a_string(model_id: object) -> None:
    body = json.dumps({"modelRunId": "run1", "modelType": "local_detector", "modelId": model_id}).encode()
    assert refused(body).message == "modelId must be a string when given"


@pytest.mark.parametrize("force", ["true", 1, 0, None])
def test_force_must_be_a_boolean(force: object) -> None:
    body = json.dumps({"modelRunId": "run1", "modelType": "local_detector", "force": force}).encode()
    assert refused(body).message == "force must be true or false"
