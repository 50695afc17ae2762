"""What a stage accepts in its body: `{"run_id", "force", "look"}` and nothing else, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flask
import pytest

from shared import http_entry
from shared.http_entry import parse_stage_call
from shared.stages.runner import StageCall
from shared.webhook import Rejected
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns
from tests.stages.world import services_for

APP = flask.Flask(__name__)


def parse(body: bytes, content_type: str | None = "application/json") -> StageCall:
    with APP.test_request_context("/", method="POST", data=body, content_type=content_type):
        return parse_stage_call(flask.request)


def refused(body: bytes) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_a_stage_call_is_the_run_id_with_optional_force_and_look() -> None:
    assert parse(b'{"run_id": "run-1"}') == StageCall("run-1")
    assert parse(b'{"run_id": "run-1", "force": true, "look": 3}') == StageCall("run-1", force=True, look=3)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_the_body_is_read_as_json_whatever_the_content_type(content_type: str | None) -> None:
    assert parse(b'{"run_id": "run-1"}', content_type) == StageCall("run-1")


@pytest.mark.parametrize("run_id", ["run-1\n", "run-1\r\n", " run-1", "run/1", "../run"])
def test_a_run_id_must_match_whole(run_id: str) -> None:
    # re.match with `$` accepted "run-1\n", and a run record was written under runs/<id>\n/
    assert "run id must be" in refused(json.dumps({"run_id": run_id}).encode()).message


def test_unknown_keys_are_refused_by_name_so_a_misspelt_flag_is_not_ignored() -> None:
    assert "unknown keys 'forced'" in refused(b'{"run_id": "run-1", "forced": true}').message


@pytest.mark.parametrize("look", [-1, 1.5, "2", True])
def test_a_look_must_be_a_whole_number(look: object) -> None:
    assert "look must be a whole number" in refused(json.dumps({"run_id": "run-1", "look": look}).encode()).message


@pytest.mark.parametrize("shard", [-1, 1.5, "2", True])
def test_a_shard_must_be_a_whole_number(shard: object) -> None:
    assert "shard must be a whole number" in refused(json.dumps({"run_id": "run-1", "shard": shard}).encode()).message


def test_a_shard_call_names_its_shard() -> None:
    assert parse(b'{"run_id": "run-1", "shard": 4}') == StageCall("run-1", shard=4)


def _post(handler: Any, body: bytes) -> flask.Response:
    with APP.test_request_context("/", method="POST", data=body, content_type="application/json"):
        return handler(flask.request)


def test_a_shard_call_reaches_the_shard_work_and_a_stage_without_shards_refuses_it(
    tmp_path: Path, demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = services_for(tmp_path, RecordingModelRuns(demo.root), chain=RecordingChain())
    monkeypatch.setattr(http_entry, "services", lambda function=None: svc)
    never = lambda ctx: pytest.fail("the plain stage work ran for a shard call")  # noqa: E731
    train = http_entry.stage_endpoint("train", never)
    refused_call = _post(train, b'{"run_id": "run-1", "shard": 0}')
    assert refused_call.status_code == 400 and "train has no shards" in refused_call.get_json()["error"]
    etl = http_entry.stage_endpoint("etl", never, shard_work=lambda ctx: pytest.fail("no run, no shard work"))
    missing = _post(etl, b'{"run_id": "run-1", "shard": 0}')  # run_shard answered: there is no such run
    assert missing.status_code == 404 and missing.get_json() == {
        "run_id": "run-1",
        "stage": "etl",
        "shard": 0,
        "error": "no run record for run_id 'run-1'",
    }
