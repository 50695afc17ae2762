"""The composition root: the one place where configuration picks the adapters (cloud or local).

Adapters are imported here lazily, so a cloud function never imports torch and the local mode never
needs the Google client libraries to be configured. Stages never import this module: they receive a
`Services` (shared/services.py) whose factories are made here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from shared.chain.port import Chain
from shared.config import Settings, load_settings
from shared.domain.run_record import Stage
from shared.invocation import process_owner_alive
from shared.platform.port import LabelingPlatform
from shared.run_repository import RunRepository
from shared.services import Factory, Services
from shared.store.port import ObjectStore
from shared.training.port import TrainingBackend


def _runs(svc: Services) -> RunRepository:
    return RunRepository(svc.store, secrets=svc.settings.secrets)


def _local_adapters(settings: Settings) -> dict[str, Factory]:
    local = settings.local
    assert local is not None

    def store(svc: Services) -> ObjectStore:
        from shared.store.local_folder import LocalFolderStore

        return LocalFolderStore(local.bucket_dir, local.bucket_name)

    def platform(svc: Services) -> LabelingPlatform:
        from shared.platform.local_model_run import LocalModelRuns

        return LocalModelRuns(local.model_runs_dir)

    def backend(svc: Services) -> TrainingBackend:
        from shared.training.local_engine import LocalEngineBackend

        return LocalEngineBackend(
            svc.store,
            local.engine_dir,
            train_seconds=local.engine_train_seconds,
            max_steps=local.engine_max_steps,
            train_settings={"backbone": local.engine_backbone},
            prediction_settings={"class_agnostic_nms": local.engine_class_agnostic_nms},
            seed=local.engine_seed,
            device=local.engine_device,
            bucket_dir=local.bucket_dir,
        )

    def chain(svc: Services) -> Chain:
        from shared.chain.loopback import LoopbackChain
        from shared.stages.runner import fail_undelivered

        return LoopbackChain(
            settings.stage_urls,
            local.schedule_dir,
            answer_timeout_s=settings.function_timeout_s,
            max_concurrent=local.concurrent_calls,
            redeliveries=local.call_retries,
            first_retry_s=local.call_first_retry_s,
            on_give_up=lambda stage, body, why: fail_undelivered(svc, stage, body, why),
        )

    return {"store": store, "runs": _runs, "platform": platform, "backend": backend, "chain": chain}


def _cloud_adapters(settings: Settings) -> dict[str, Factory]:
    cloud = settings.cloud
    assert cloud is not None

    def store(svc: Services) -> ObjectStore:
        from shared.store.gcs import GcsStore

        return GcsStore(cloud.bucket, project=cloud.project)

    def platform(svc: Services) -> LabelingPlatform:
        import labelbox  # noqa: F401 - the SDK loads at start-up: a function without it fails to boot, not mid-run

        from shared.platform.labelbox_adapter import LabelboxPlatform

        return LabelboxPlatform(
            cloud.labelbox_api_key,
            endpoint=cloud.labelbox_endpoint,
            rest_endpoint=cloud.labelbox_rest_endpoint,
        )

    def backend(svc: Services) -> TrainingBackend:
        from shared.training.vertex import VertexBackend

        return VertexBackend(
            project=cloud.project,
            region=cloud.region,
            staging_bucket=f"gs://{cloud.bucket}",
            vertex=settings.vertex,
        )

    def chain(svc: Services) -> Chain:
        from shared.chain.cloud_tasks import CloudTasksChain

        return CloudTasksChain(
            project=cloud.project,
            region=cloud.region,
            queue=cloud.tasks_queue,
            service_account=cloud.service_account,
            stage_urls=settings.stage_urls,
            api_endpoint=cloud.tasks_api_endpoint,
        )

    return {"store": store, "runs": _runs, "platform": platform, "backend": backend, "chain": chain}


def build_services(settings: Settings, *, clock: Callable[[], float] = time.time, **overrides: object) -> Services:
    """The services for `settings`: the local or the cloud adapters (`overrides` replace some, in tests)."""
    if settings.mode == "local":
        return Services(
            settings, _local_adapters(settings), clock=clock, owner_alive=process_owner_alive, overrides=overrides
        )
    return Services(settings, _cloud_adapters(settings), clock=clock, overrides=overrides)


# The ports each function's stage touches. A function builds them when it starts, so one deployed
# without a package its stage needs fails to boot (and says which import), not at a run's first call.
FUNCTION_PORTS: dict[str, tuple[str, ...]] = {
    "models": (),
    Stage.MODEL_RUN: ("store", "runs", "platform", "chain"),
    Stage.ETL: ("store", "runs", "platform", "chain"),
    Stage.TRAIN: ("store", "runs", "platform", "backend", "chain"),
    Stage.MONITOR: ("store", "runs", "platform", "backend", "chain"),
    Stage.INFERENCE: ("store", "runs", "platform", "backend", "chain"),
}

_services: Services | None = None
_lock = threading.Lock()


def services(function: str | None = None) -> Services:
    """The process's services, built once from the environment (ConfigError names what is wrong).

    With `function`, every port that function uses is built now, at start-up."""
    global _services
    with _lock:
        if _services is None:
            logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
            _services = build_services(load_settings())
        svc = _services
    for port in FUNCTION_PORTS[function] if function else ():
        getattr(svc, port)
    return svc
