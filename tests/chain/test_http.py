"""One loopback delivery of a stage call, against a real scripted HTTP server on 127.0.0.1: what each
answer means to the local queue that retries it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from shared.chain.http import HttpDelivery
from shared.chain.port import HandOffFailed, stage_body
from tests.fakes import HANG, StageSink


@pytest.fixture
def server() -> Iterator[StageSink]:
    with StageSink() as sink:
        yield sink


def delivery(url: str, answer_timeout_s: float = 5.0) -> HttpDelivery:
    return HttpDelivery({"etl": url}, answer_timeout_s=answer_timeout_s)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/etl"


@pytest.mark.parametrize("status", [200, 202, 204])
def test_a_2xx_is_taken(server: StageSink, status: int) -> None:
    server.script = [status]
    delivery(server.url + "etl").post("etl", stage_body("run-1"))
    assert len(server.received) == 1


def test_the_body_is_the_call_and_carries_no_credential(server: StageSink) -> None:
    delivery(server.url + "etl").post("etl", stage_body("run-1", shard=3))
    (request,) = server.received
    assert request.path == "/etl"
    assert json.loads(request.body) == {"run_id": "run-1", "shard": 3}
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers


def test_one_post_per_delivery_the_queue_does_the_retrying(server: StageSink) -> None:
    server.script = [503, 200]
    with pytest.raises(HandOffFailed) as caught:
        delivery(server.url + "etl").post("etl", stage_body("run-1"))
    assert len(server.received) == 1
    assert not caught.value.final and not caught.value.busy
    assert str(caught.value).startswith("etl answered run run-1 with HTTP 503: ")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_worth_another_delivery(server: StageSink, status: int) -> None:
    server.script = [status]
    with pytest.raises(HandOffFailed) as caught:
        delivery(server.url + "etl").post("etl", stage_body("run-1"))
    assert not caught.value.final


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_a_refusal_is_final_and_keeps_the_callees_explanation(server: StageSink, status: int) -> None:
    server.script = [status]
    with pytest.raises(HandOffFailed) as caught:
        delivery(server.url + "etl").post("etl", stage_body("run-1"))
    assert caught.value.final and not caught.value.busy
    assert f"HTTP {status}" in str(caught.value) and "scripted" in str(caught.value)


def test_a_409_means_another_invocation_holds_the_stage(server: StageSink) -> None:
    server.script = [409]
    with pytest.raises(HandOffFailed) as caught:
        delivery(server.url + "etl").post("etl", stage_body("run-1"))
    assert caught.value.busy and not caught.value.final


def test_no_connection_is_worth_another_delivery() -> None:
    with pytest.raises(HandOffFailed, match=r"could not reach etl for run run-1 \(ConnectionError\)") as caught:
        delivery(closed_port_url()).post("etl", stage_body("run-1"))
    assert not caught.value.final


def test_a_callee_that_keeps_working_past_the_answer_timeout_counts_as_delivered(server: StageSink) -> None:
    server.script = [HANG]
    delivery(server.url + "etl", answer_timeout_s=0.2).post("etl", stage_body("run-1"))  # raises nothing
    assert server.got_request.wait(5)
    assert len(server.received) == 1


def test_unknown_stage_is_a_programming_error(server: StageSink) -> None:
    with pytest.raises(KeyError):
        delivery(server.url + "etl").post("train", stage_body("run-1"))
    assert server.received == []
