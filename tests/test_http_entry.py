"""What a stage accepts in its body: `{"run_id", "force", "look"}` and nothing else, as JSON."""

from __future__ import annotations

import json

import flask
import pytest

from shared.http_entry import parse_stage_call
from shared.stages.runner import StageCall
from shared.webhook import Rejected

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
