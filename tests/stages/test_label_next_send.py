"""Model-assisted labeling at the end of inference: the rows to label next go to the run's labeling
project (the local platform's project folder) after COMPLETE; nothing is sent twice, and a failure is
recorded and shown without failing the run or losing its results.

The demo run goes through ETL, train, monitor and inference in-process, as in `test_inference.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.demo import DEMO_PROJECT, create_demo_project
from shared.domain import run_record as rr
from shared.domain.run_paths import RunPaths
from shared.platform.local_model_run import LocalModelRuns
from shared.stages.label_next_send import RETRY_HINT
from shared.stages.runner import StageAnswer
from tests.demo_run import DemoRun
from tests.stages.test_inference import HELD_OUT, Flow, flow_up_to_inference


@pytest.fixture
def completed(tmp_path: Path, demo: DemoRun) -> Callable[..., tuple[Flow, StageAnswer]]:
    """`completed(**env)`: a demo run taken through inference to COMPLETE, with those settings."""

    def run(config: dict[str, Any] | None = None, **env: str) -> tuple[Flow, StageAnswer]:
        if config is not None:
            (demo.folder / "config.json").write_text(json.dumps(config))
        f = flow_up_to_inference(tmp_path, demo, **env)
        f.inference()
        f.job_finished(f.manifest(*HELD_OUT, "unassigned"))
        answer = f.inference()
        assert answer.status == 200 and answer.body["outcome"] == "complete", answer.body
        return f, answer

    return run


def project_of(f: Flow, project_id: str = DEMO_PROJECT) -> Path:
    return f.platform.projects_dir / project_id


def last_metadata(f: Flow) -> dict[str, str]:
    """The status metadata as Labelbox keeps it: every update's merged over the earlier ones."""
    merged: dict[str, str] = {}
    for status in f.platform.statuses(f.run_id):
        merged.update(status.get("metadata", {}))
    return merged


def test_the_rows_to_label_next_go_to_the_project_with_their_pre_labels(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    create_demo_project(tmp_path / "projects")
    f, answer = completed(LABEL_NEXT_PROJECT_ID=DEMO_PROJECT, LABEL_NEXT_PRIORITY="3")
    record = f.record()
    listed = [row["data_row_id"] for row in record.metrics["label_next"]["rows"]]
    batch_name = f"lbchain-{f.run_id}-r0-label-next"
    (batch,) = f.platform.batches(DEMO_PROJECT)
    assert (batch["name"], batch["priority"], batch["dataRowIds"]) == (batch_name, 3, listed)  # in ranking order
    uploaded = [u for u in f.platform.uploaded(f.run_id) if u["dataRow"]["id"] in listed and "bbox" in u]
    prelabels = f.platform.prelabels(DEMO_PROJECT, batch_name)
    assert len(prelabels) == len(uploaded) > 0 and all(p["schemaId"].startswith("schema-") for p in prelabels)
    assert [p["bbox"] for p in prelabels] == [u["bbox"] for u in uploaded]

    assert record.status is rr.RunStatus.COMPLETE
    assert record.metrics["label_next"]["sent"] == {
        "project": DEMO_PROJECT,
        "batch": batch_name,
        "batch_id": batch["id"],
        "import_id": f"prelabels/{batch_name}.ndjson",
        "sent": len(listed),
        "skipped": 0,
        "already_sent": False,
        "unmatched_features": [],
    }
    shown = f"{len(listed)} rows to project {DEMO_PROJECT} (batch {batch_name})"
    assert last_metadata(f)["label_next_sent"] == shown and answer.body["label_next_sent"] == shown
    assert last_metadata(f)["setting: label_next_project"] == DEMO_PROJECT
    assert last_metadata(f)["setting: label_next_priority"] == "3"
    assert f.platform.statuses(f.run_id)[-1]["status"] == "COMPLETE"


def test_a_forced_re_run_or_a_duplicate_call_sends_nothing_twice(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    create_demo_project(tmp_path / "projects")
    f, _answer = completed(LABEL_NEXT_PROJECT_ID=DEMO_PROJECT)
    sent = f.record().metrics["label_next"]["sent"]
    folder = project_of(f)
    written = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    assert [(p, b) for p, b, _ids in f.platform.sends] == [(DEMO_PROJECT, f"lbchain-{f.run_id}-r0-label-next")]

    assert f.inference().body["outcome"] in ("already_done", "run_finished")  # a duplicate delivery
    forced = f.inference(force=True)  # the fan-in runs again
    assert forced.status == 200 and forced.body["outcome"] == "complete"
    assert len(f.platform.sends) == 1  # the record holds the send as done: the project is not even asked
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} == written
    assert f.record().metrics["label_next"]["sent"] == sent and f.record().status is rr.RunStatus.COMPLETE

    # the send's record lost (a kill between the send and its record): the platform knows it by name
    f.services.runs.update(f.run_id, lambda r: r.metrics["label_next"].pop("sent", None))
    assert f.inference(force=True).body["label_next_sent"].endswith(", sent before)")
    assert len(f.platform.sends) == 2 and len(f.platform.batches(DEMO_PROJECT)) == 1
    assert f.record().metrics["label_next"]["sent"]["already_sent"] is True


def test_a_failed_send_leaves_the_run_complete_with_its_results_and_says_why(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    f, answer = completed(LABEL_NEXT_PROJECT_ID="no-such-project")  # no project folder
    record = f.record()
    assert record.status is rr.RunStatus.COMPLETE and record.stages["inference"].state is rr.StageState.SUCCEEDED
    assert record.metrics["summary"]["map50"] == pytest.approx(1.0)  # the results are all there
    assert f.services.store.read(RunPaths(f.run_id).report).startswith(b"<!DOCTYPE html>")
    assert json.loads((f.platform.folder(f.run_id) / "config.json").read_text())["chain"]["report"]
    sent = record.metrics["label_next"]["sent"]
    projects = tmp_path / "projects"
    assert sent["error"] == (
        f"there is no labeling project no-such-project in {projects}: create the folder "
        f"{projects / 'no-such-project'} with the project's ontology.json, or set another project id"
    )
    assert sent["sent"] == 0 and record.metrics["label_next"]["rows"]
    shown = last_metadata(f)["label_next_sent"]
    assert shown == f"failed: {sent['error']}; {RETRY_HINT}"
    assert f.platform.statuses(f.run_id)[-1]["status"] == "COMPLETE" and answer.body["label_next_sent"] == shown

    create_demo_project(projects, "no-such-project")  # fixed: a forced re-run sends
    again = f.inference(force=True)
    rows, batch = len(record.metrics["label_next"]["rows"]), f"lbchain-{f.run_id}-r0-label-next"
    assert again.body["label_next_sent"] == f"{rows} rows to project no-such-project (batch {batch})"
    assert "error" not in f.record().metrics["label_next"]["sent"]


def test_an_ontology_mismatch_is_shown_with_the_features_to_add(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    folder = create_demo_project(tmp_path / "projects")
    (folder / "ontology.json").write_text(json.dumps({"tools": [{"tool": "rectangle", "name": "hexagon"}]}))
    f, _answer = completed(LABEL_NEXT_PROJECT_ID=DEMO_PROJECT)
    error = f.record().metrics["label_next"]["sent"]["error"]
    assert error.startswith(f"labeling project {DEMO_PROJECT}'s ontology has none of the model's features (")
    assert "circle" in error and "add them to its ontology.json" in error
    assert last_metadata(f)["label_next_sent"] == f"failed: {error}; {RETRY_HINT}"
    assert f.record().status is rr.RunStatus.COMPLETE and not f.platform.batches(DEMO_PROJECT)


def test_a_crash_in_the_send_is_recorded_and_the_run_stays_complete(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_demo_project(tmp_path / "projects")

    def broken(self: LocalModelRuns, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(LocalModelRuns, "send_to_project", broken)
    f, _answer = completed(LABEL_NEXT_PROJECT_ID=DEMO_PROJECT)
    assert f.record().metrics["label_next"]["sent"]["error"] == "internal error: RuntimeError: disk on fire"
    assert f.record().status is rr.RunStatus.COMPLETE


def test_the_run_config_names_the_project_and_the_priority(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    create_demo_project(tmp_path / "projects", "per-run")
    f, _answer = completed({"train": {"label_next_project": "per-run", "label_next_priority": 1}})
    (batch,) = f.platform.batches("per-run")
    assert batch["priority"] == 1
    assert last_metadata(f)["setting: label_next_project"] == "per-run (from config)"


def test_without_a_project_nothing_is_sent_or_shown(completed: Callable[..., tuple[Flow, StageAnswer]]) -> None:
    f, answer = completed()
    assert "sent" not in f.record().metrics["label_next"] and "label_next_sent" not in answer.body
    assert all("label_next_sent" not in s.get("metadata", {}) for s in f.platform.statuses(f.run_id))
    assert "setting: label_next_project" not in last_metadata(f)


def test_a_run_config_can_turn_off_the_deployments_project(
    completed: Callable[..., tuple[Flow, StageAnswer]], tmp_path: Path
) -> None:
    create_demo_project(tmp_path / "projects")
    f, _answer = completed({"train": {"label_next_project": ""}}, LABEL_NEXT_PROJECT_ID=DEMO_PROJECT)
    assert "sent" not in f.record().metrics["label_next"] and not f.platform.batches(DEMO_PROJECT)
