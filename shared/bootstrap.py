"""The composition root: the one place where configuration picks the adapters, port by port.

Adapters are imported here lazily, so a cloud function never imports torch and the local mode never
needs the Google client libraries to be configured. Stages never import this module: they receive a
`Services` (shared/services.py) whose factories are made here.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable

from shared.chain.port import Chain
from shared.config import CloudSettings, LocalSettings, Settings, load_settings
from shared.domain.run_record import Stage
from shared.invocation import process_owner_alive, unknowable
from shared.platform.port import LabelingPlatform
from shared.run_repository import RunRepository
from shared.services import Factory, Services
from shared.store.port import ObjectStore
from shared.training.port import TrainingBackend


def _runs(svc: Services) -> RunRepository:
    return RunRepository(svc.store, secrets=svc.settings.secrets)


# Each adapter's factory reads only its own part of the settings, which config guarantees is there for
# every port it chose (ConfigError otherwise), so the asserts below never fire on loaded settings.


def _local(settings: Settings) -> LocalSettings:
    assert settings.local is not None, "a port on this machine without local settings"
    return settings.local


def _cloud(settings: Settings) -> CloudSettings:
    assert settings.cloud is not None, "a Google Cloud port without cloud settings"
    return settings.cloud


def _folder_store(settings: Settings, svc: Services) -> ObjectStore:
    from shared.store.local_folder import LocalFolderStore

    local = _local(settings)
    return LocalFolderStore(local.bucket_dir, local.bucket_name)


def _gcs_store(settings: Settings, svc: Services) -> ObjectStore:
    from shared.store.gcs import GcsStore

    cloud = _cloud(settings)
    return GcsStore(cloud.bucket, project=cloud.project)


def _local_platform(settings: Settings, svc: Services) -> LabelingPlatform:
    from shared.platform.local_model_run import LocalModelRuns

    local = _local(settings)
    return LocalModelRuns(local.model_runs_dir, local.projects_dir)


def _labelbox_platform(settings: Settings, svc: Services) -> LabelingPlatform:
    import labelbox  # noqa: F401 - the SDK loads at start-up: a function without it fails to boot, not mid-run

    from shared.platform.labelbox_adapter import LabelboxPlatform

    labelbox_settings = settings.labelbox
    assert labelbox_settings is not None, "the Labelbox platform without Labelbox settings"
    return LabelboxPlatform(
        labelbox_settings.api_key,
        endpoint=labelbox_settings.endpoint,
        rest_endpoint=labelbox_settings.rest_endpoint,
    )


def _local_backend(settings: Settings, svc: Services) -> TrainingBackend:
    from shared.training.local_engine import LocalEngineBackend

    local = _local(settings)
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


def _vertex_backend(settings: Settings, svc: Services) -> TrainingBackend:
    from shared.training.vertex import VertexBackend
    from shared.training.vertex_custom import VertexCustomBackend
    from shared.training.vertex_training import VertexTraining

    cloud = _cloud(settings)
    automl = VertexBackend(
        project=cloud.project,
        region=cloud.region,
        staging_bucket=f"gs://{cloud.bucket}",
        vertex=settings.vertex,
    )
    custom = settings.vertex_custom
    return VertexTraining(
        automl,
        None
        if custom is None
        else VertexCustomBackend(
            project=cloud.project, region=cloud.region, store=svc.store, vertex=settings.vertex, custom=custom
        ),
    )


def _loopback_chain(settings: Settings, svc: Services) -> Chain:
    from shared.chain.loopback import LoopbackChain
    from shared.stages.runner import fail_undelivered

    local = _local(settings)
    return LoopbackChain(
        settings.stage_urls,
        local.schedule_dir,
        answer_timeout_s=settings.function_timeout_s,
        max_concurrent=local.concurrent_calls,
        redeliveries=local.call_retries,
        first_retry_s=local.call_first_retry_s,
        on_give_up=lambda stage, body, why: fail_undelivered(svc, stage, body, why),
    )


def _cloud_tasks_chain(settings: Settings, svc: Services) -> Chain:
    from shared.chain.cloud_tasks import CloudTasksChain

    cloud = _cloud(settings)
    return CloudTasksChain(
        project=cloud.project,
        region=cloud.region,
        queue=cloud.tasks_queue,
        service_account=cloud.service_account,
        stage_urls=settings.stage_urls,
        api_endpoint=cloud.tasks_api_endpoint,
    )


# port -> the choice its variable names (shared.config.PORT_CHOICES) -> the factory of its adapter.
ADAPTERS: dict[str, dict[str, Callable[[Settings, Services], object]]] = {
    "store": {"folder": _folder_store, "gcs": _gcs_store},
    "platform": {"local": _local_platform, "labelbox": _labelbox_platform},
    "backend": {"local": _local_backend, "vertex": _vertex_backend},
    "chain": {"loopback": _loopback_chain, "cloud_tasks": _cloud_tasks_chain},
}


def adapter_factories(settings: Settings) -> dict[str, Factory]:
    """One factory per port, each the adapter `settings.ports` chose for it."""
    factories: dict[str, Factory] = {"runs": _runs}
    for port, choice in settings.ports.items():
        factories[port] = functools.partial(ADAPTERS[port][choice], settings)
    return factories


def build_services(settings: Settings, *, clock: Callable[[], float] = time.time, **overrides: object) -> Services:
    """The services for `settings`, port by port (`overrides` replace some, in tests).

    On the loopback queue every function runs on this machine, so a stage held by a process that died
    is recognised at once; Cloud Tasks' instances run elsewhere, and only the lease can tell."""
    owner_alive = process_owner_alive if settings.ports.chain == "loopback" else unknowable
    return Services(settings, adapter_factories(settings), clock=clock, owner_alive=owner_alive, overrides=overrides)


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
