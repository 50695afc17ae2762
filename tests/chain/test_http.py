"""HTTP hand-off to the next stage, against a real scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from shared.chain.http import HttpHandOff
from shared.chain.port import HandOffFailed
from tests.fakes import HANG, StageSink


@pytest.fixture
def server() -> Iterator[StageSink]:
    with StageSink() as sink:
        yield sink


def etl(sink: StageSink) -> str:
    return sink.url + "etl"


def hand_off(url: str, **kw: Any) -> HttpHandOff:
    kw.setdefault("first_backoff_s", 0.001)
    kw.setdefault("accept_timeout_s", 5.0)
    return HttpHandOff({"etl": url}, **kw)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/etl"


@pytest.mark.parametrize("status", [200, 202, 204, 409])
def test_accepted_or_already_running_is_done(server: StageSink, status: int) -> None:
    server.script = [status]
    hand_off(etl(server)).hand_off("etl", "run-1")
    assert len(server.received) == 1


def test_body_is_exactly_the_run_id(server: StageSink) -> None:
    hand_off(etl(server)).hand_off("etl", "run-1")
    (request,) = server.received
    assert request.path == "/etl"
    assert json.loads(request.body) == {"run_id": "run-1"}
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_retried(server: StageSink, status: int) -> None:
    server.script = [status, status, 200]
    hand_off(etl(server)).hand_off("etl", "run-1")
    assert len(server.received) == 3
    assert all(json.loads(r.body) == {"run_id": "run-1"} for r in server.received)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_refusal_fails_at_once_without_retry(server: StageSink, status: int) -> None:
    server.script = [status, 200]
    with pytest.raises(HandOffFailed) as caught:
        hand_off(etl(server)).hand_off("etl", "run-1")
    assert len(server.received) == 1
    assert str(caught.value).startswith(f"etl refused run run-1: HTTP {status} ")
    assert "scripted" in str(caught.value)  # the callee's own explanation is kept


def test_server_errors_until_the_last_attempt_fail(server: StageSink) -> None:
    server.script = [503] * 3
    with pytest.raises(HandOffFailed, match=r"could not reach etl for run run-1 after 3 attempts \(HTTP 503\)"):
        hand_off(etl(server), attempts=3).hand_off("etl", "run-1")
    assert len(server.received) == 3


def test_connection_refused_everywhere_fails_after_every_attempt() -> None:
    with pytest.raises(HandOffFailed, match=r"after 4 attempts \(ConnectionError\)"):
        hand_off(closed_port_url(), attempts=4).hand_off("etl", "run-1")


def test_callee_that_keeps_working_counts_as_delivered(server: StageSink) -> None:
    server.script = [HANG]
    hand_off(etl(server), accept_timeout_s=0.2).hand_off("etl", "run-1")  # returns, raises nothing
    assert server.got_request.wait(5)
    assert len(server.received) == 1
    assert json.loads(server.received[0].body) == {"run_id": "run-1"}


def test_unknown_stage_is_a_programming_error(server: StageSink) -> None:
    with pytest.raises(KeyError):
        hand_off(etl(server)).hand_off("train", "run-1")
    assert server.received == []
