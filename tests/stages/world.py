"""The in-process world the stage tests run in: real settings and a real run record in a folder store,
with the fakes of `tests/fakes.py` for the ports a test scripts. No subprocess, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.bootstrap import build_services
from shared.config import load_settings
from shared.domain import run_record as rr
from shared.platform.port import LabelingPlatform
from shared.services import Services
from shared.stages.etl import run_etl, run_etl_shard
from shared.stages.inference import run_inference, run_inference_shard
from shared.stages.monitor import run_monitor
from shared.stages.runner import StageAnswer, StageCall, run_stage
from shared.stages.shards import ShardWork, run_shard
from shared.stages.train import run_train, train_already_done
from shared.store.local_folder import LocalFolderStore
from tests.fakes import RecordingChain

MODEL_TYPES = {
    "object_detection": "local_detector",
    "single_label_classification": "local_single_label_classifier",
    "multi_label_classification": "local_multi_label_classifier",
}
STAGES = {
    "etl": (run_etl, None),
    "train": (run_train, train_already_done),
    "monitor": (run_monitor, None),
    "inference": (run_inference, None),
}
SHARD_WORK: dict[str, ShardWork] = {"etl": run_etl_shard, "inference": run_inference_shard}


def services_for(
    tmp: Path, platform: LabelingPlatform, *, backend: Any = None, chain: Any = None, **env: str
) -> Services:
    """Local-mode services on a folder bucket under `tmp`; `backend` and `chain` replace the real ones."""
    settings = load_settings(
        {
            "CHAIN_MODE": "local",
            "LOCAL_DATA_DIR": str(tmp),
            "WEBHOOK_SECRET": "a-webhook-secret-for-the-stage-tests",
            **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
            **env,
        }
    )
    overrides: dict[str, object] = {"store": LocalFolderStore(tmp / "bucket"), "platform": platform}
    if backend is not None:
        overrides["backend"] = backend
    if chain is not None:
        overrides["chain"] = chain
    return build_services(settings, **overrides)


def create_run(
    services: Services, model_run_id: str, *, task: str = "object_detection", model_id: str | None = None
) -> rr.RunRecord:
    """A new run of the model run, as the webhook creates it (its id is the model run's)."""
    record = rr.new_run(
        run_id=model_run_id,
        model_run_id=model_run_id,
        model_type=MODEL_TYPES[task],
        task=task,
        backend="local",
        model_id=model_id,
        now=services.clock(),
    )
    assert services.runs.create(record)
    return record


def call(services: Services, stage: str, run_id: str, **flags: Any) -> StageAnswer:
    """One invocation of `stage`, as its function's HTTP entry point makes it; with a recording chain,
    also the calls of the stage's shards and its fan-in that it hands off (as the queue would deliver
    them), returning the last plain call's answer."""
    work, on_done = STAGES[stage]
    answer = run_stage(services, StageCall(run_id, **flags), stage, work, on_done=on_done)
    chain = services.chain
    while isinstance(chain, RecordingChain) and (pending := chain.take_internal()):
        for handed in pending:
            if handed.shard is not None:
                shard_call(services, handed.stage, handed.run_id, handed.shard)
            else:
                answer = run_stage(services, StageCall(handed.run_id), handed.stage, *STAGES[handed.stage][:1])
    return answer


def shard_call(services: Services, stage: str, run_id: str, shard: int) -> StageAnswer:
    """One invocation of shard `shard` of `stage`."""
    return run_shard(services, StageCall(run_id, shard=shard), stage, SHARD_WORK[stage])
