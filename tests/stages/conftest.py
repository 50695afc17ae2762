"""A run whose ETL is done, on the demo model run, with a scripted backend and a recording chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain import run_record as rr
from shared.services import Services
from tests.demo_run import DemoRun
from tests.fakes import RecordingChain, RecordingModelRuns, ScriptedBackend
from tests.stages.world import create_run, services_for


@pytest.fixture
def etl_done(tmp_path: Path, demo: DemoRun) -> tuple[Services, ScriptedBackend, RecordingChain, str]:
    """The run as `train` finds it: ETL succeeded and recorded its import files (which no test reads)."""
    backend, chain = ScriptedBackend(), RecordingChain()
    services = services_for(tmp_path, RecordingModelRuns(demo.root), backend=backend, chain=chain)
    record = create_run(services, demo.model_run_id, model_id=demo.model_id)

    def etl_succeeded(r: rr.RunRecord) -> None:
        r.artifacts["import_jsonl"] = "gs://local-bucket/runs/x/etl/vertex_import-*.jsonl"
        r.stages["etl"].state = rr.StageState.SUCCEEDED

    services.runs.update(record.run_id, etl_succeeded)
    return services, backend, chain, demo.model_run_id
