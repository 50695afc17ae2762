"""Kills and restarts of the local chain: a run never stays "running" with nothing working on it.

Real function processes, a real engine process; the kills are SIGKILLs of whole process groups.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shared.demo import _ids, create_demo_model_run
from shared.engine import job_folders
from shared.local_chain import LocalChain

FAST_MONITOR = {"MONITOR_INITIAL_DELAY_S": "1", "MONITOR_MAX_DELAY_S": "2"}


def _engine_state(tmp_path: Path, record: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    job = tmp_path / "engine" / "jobs" / record["jobs"]["training"].rsplit("/", 1)[-1]
    deadline = time.monotonic() + 120
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = json.loads((job / "state.json").read_text()) if (job / "state.json").is_file() else {}
        if state.get("state") == "running" and state.get("pid"):
            break
        time.sleep(0.2)
    return job, state


def _until_dead(job: Path) -> None:
    """SIGKILL is delivered asynchronously: wait until the job's lock says its process is gone."""
    deadline = time.monotonic() + 30
    while job_folders.read_state(job).get("state") in job_folders.UNFINISHED and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_the_monitor_look_of_a_killed_train_function_is_delivered_by_the_processes_still_alive(
    tmp_path: Path,
) -> None:
    """The look `train` scheduled lived only in its own process's timer; now it lives in the folder."""
    create_demo_model_run(tmp_path / "model_runs", images=60, seed=31)
    model_run_id, _ = _ids(31)
    with LocalChain(tmp_path, env={"LOCAL_ENGINE_TRAIN_SECONDS": "8", **FAST_MONITOR}) as chain:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        chain.wait(model_run_id, until=lambda r: "training" in r["jobs"] and r["watch"], timeout_s=180)
        chain.kill("train")  # the engine job survives; the process that scheduled monitor's look does not
        record = chain.wait(model_run_id, timeout_s=300)
        assert record["status"] == "complete", record.get("error")
        looks = [e for e in record["events"] if e["stage"] == "monitor" and e["event"] == "started"]
        assert len(looks) >= 1
        # nothing had to notice a lost look: the scheduled one came on time
        assert not [e for e in record["events"] if e["event"] == "rescheduled"]


@pytest.mark.slow
def test_a_plain_train_re_run_after_the_engine_was_killed_restarts_the_job_and_the_run_completes(
    tmp_path: Path,
) -> None:
    create_demo_model_run(tmp_path / "model_runs", images=60, seed=32)
    model_run_id, _ = _ids(32)
    with LocalChain(tmp_path, env={"LOCAL_ENGINE_TRAIN_SECONDS": "600", **FAST_MONITOR}) as chain:
        assert chain.webhook(model_run_id, "local_detector").status_code == 202
        record = chain.wait(model_run_id, until=lambda r: "training" in r["jobs"], timeout_s=180)
        first_job, state = _engine_state(tmp_path, record)
        os.kill(state["pid"], signal.SIGKILL)
        _until_dead(first_job)

        # whether or not monitor has noticed yet, a plain re-run (no force) starts a new training job
        rerun = chain.call_stage("train", model_run_id)
        assert rerun.status_code == 202, rerun.text
        assert rerun.json()["outcome"] == "training_started"
        record = chain.run_record(model_run_id)
        assert record is not None and record["status"] == "running"
        assert record["jobs"]["training"] != f"local-engine://jobs/{first_job.name}"
        assert [j["ref"] for j in record["failed_jobs"]] == [f"local-engine://jobs/{first_job.name}"]

        # the new job is watched like the first; killed too, monitor fails the run, and a forced train restarts it
        new_job, state = _engine_state(tmp_path, record)
        os.kill(state["pid"], signal.SIGKILL)
        failed = chain.wait(model_run_id, timeout_s=120)  # monitor finds the killed job: the run fails
        assert failed["status"] == "failed" and failed["stages"]["train"]["state"] == "failed"
        assert "re-run train" in failed["error"]
        forced = chain.call_stage("train", model_run_id, force=True)
        assert forced.status_code == 202 and forced.json()["outcome"] == "training_started", forced.text
        record = chain.run_record(model_run_id)
        assert record is not None and record["status"] == "running" and record["watch"]["kind"] == "training"
        assert len(record["failed_jobs"]) == 2
        assert record["jobs"]["training"] not in {f"local-engine://jobs/{p.name}" for p in (first_job, new_job)}
        job_folders.cancel(job_folders.job_folder(tmp_path / "engine", record["jobs"]["training"].rsplit("/", 1)[-1]))
