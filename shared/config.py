"""Configuration, read from the environment once at start-up and validated.

Every problem is collected and reported together, each naming its variable, so an operator fixes a
deployment in one pass. Secrets are wrapped in `Secret`, whose repr never shows the value; a secret
comes from `NAME` or from a file named by `NAME_FILE` (Secret Manager mounts files).

`CHAIN_MODE` is a profile: `local` (everything on this machine) or `cloud` (Labelbox, GCS, Vertex AI,
Cloud Tasks). Each port can also be chosen on its own (`CHAIN_PLATFORM`, `CHAIN_STORE`,
`CHAIN_BACKEND`, `CHAIN_QUEUE`), each defaulting from the profile, so a Labelbox user without Google
Cloud can run the chain on a workstation. Only the variables the chosen ports need are required, and a
combination that cannot work is refused with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared import model_type_modules
from shared.domain.label_next import (
    BATCH_PRIORITIES,
    DEFAULT_BATCH_PRIORITY,
    DEFAULT_LABEL_NEXT_COUNT,
    DEFAULT_STRATEGY,
    MAX_LABEL_NEXT,
    Strategy,
    project_id_problem,
)
from shared.domain.machines import DEFAULT_ACCELERATOR, DEFAULT_MACHINE_TYPE, NO_ACCELERATOR, Machine
from shared.domain.model_types import Backend, ModelType, Task, offered
from shared.domain.run_record import CHAIN_STAGES
from shared.secret import Secret


class ConfigError(ValueError):
    """The environment does not describe a usable deployment; the message names every bad variable."""


# The AutoML image model types whose models Vertex AI can batch-predict. Edge types (MOBILE_TF_*) train,
# but "You cannot use an Edge model in Vertex AI to serve predictions"
# (https://cloud.google.com/vertex-ai/docs/export/export-edge-model): the chain could never finish.
VERTEX_OD_MODEL_TYPES = ("CLOUD_HIGH_ACCURACY_1", "CLOUD_1", "CLOUD_LOW_LATENCY_1")
VERTEX_CLS_MODEL_TYPES = ("CLOUD", "CLOUD_1")
VERTEX_EDGE_MODEL_TYPES = ("MOBILE_TF_LOW_LATENCY_1", "MOBILE_TF_VERSATILE_1", "MOBILE_TF_HIGH_ACCURACY_1")
# Vertex AI's accepted training budgets for the cloud image model types, in milli node hours.
VERTEX_OD_BUDGET_RANGE = (20_000, 900_000)
VERTEX_CLS_BUDGET_RANGE = (8_000, 800_000)


def vertex_budget_range(model_type: str, *, classification: bool) -> tuple[int, int]:
    """Vertex's accepted training budget, in milli node hours, for an AutoML image model type."""
    if model_type in VERTEX_EDGE_MODEL_TYPES:
        return 1_000, 100_000
    return VERTEX_CLS_BUDGET_RANGE if classification else VERTEX_OD_BUDGET_RANGE


# A Catalog slice id: a Labelbox id, or locally the name of a slice file, so no path can be named.
SLICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def slice_id_problem(value: object) -> str | None:
    """Why `value` cannot be a Catalog slice id (letters, digits, `_` and `-`), or None."""
    if isinstance(value, str) and SLICE_ID.fullmatch(value):
        return None
    return f"must be a Catalog slice id (letters, digits, _ and -), not {value!r}"


@dataclass(frozen=True)
class Ports:
    """Which adapter serves each port: the profile's, unless its own variable says otherwise."""

    platform: str  # CHAIN_PLATFORM: "local" (a model run folder) or "labelbox"
    store: str  # CHAIN_STORE: "folder" or "gcs"
    backend: str  # CHAIN_BACKEND: "local" (the local engine) or "vertex"
    chain: str  # CHAIN_QUEUE: how stages hand off, "loopback" (this machine) or "cloud_tasks"

    def items(self) -> tuple[tuple[str, str], ...]:
        """(port, choice) per port, the port named as `Services` names it."""
        return (("platform", self.platform), ("store", self.store), ("backend", self.backend), ("chain", self.chain))


# The variable that chooses each port, and the choices it takes.
PORT_VARIABLES = {
    "platform": "CHAIN_PLATFORM",
    "store": "CHAIN_STORE",
    "backend": "CHAIN_BACKEND",
    "chain": "CHAIN_QUEUE",
}
PORT_CHOICES = {
    "platform": ("local", "labelbox"),
    "store": ("folder", "gcs"),
    "backend": ("local", "vertex"),
    "chain": ("loopback", "cloud_tasks"),
}
PROFILES = {
    "local": Ports(platform="local", store="folder", backend="local", chain="loopback"),
    "cloud": Ports(platform="labelbox", store="gcs", backend="vertex", chain="cloud_tasks"),
}


@dataclass(frozen=True)
class LocalSettings:
    """What the ports on this machine use (folder store, model run folders, local engine, loopback queue);
    present when any chosen port is one of them. Every variable here has a default."""

    bucket_dir: Path
    bucket_name: str
    model_runs_dir: Path
    projects_dir: Path  # the local platform's labeling projects, one folder each (model-assisted labeling)
    engine_dir: Path
    schedule_dir: Path
    concurrent_calls: int  # stage calls each function process delivers at once (a queue's concurrency)
    call_retries: int  # deliveries of a call not taken, after the first, before it is given up
    call_first_retry_s: float  # the first retry's delay; each later one doubles, up to a minute
    engine_train_seconds: float
    engine_max_steps: int | None  # train exactly this many steps (repeatable), instead of for a wall time
    engine_class_agnostic_nms: bool  # one detection per object, whatever its class
    engine_seed: int
    engine_device: str
    engine_backbone: str  # auto (by device), scratch, or mobilenet_v2 (ImageNet-pretrained, from a wheel)


@dataclass(frozen=True)
class CloudSettings:
    """Google Cloud, present when the GCS store, Vertex AI or Cloud Tasks is chosen; a field no chosen
    port needs is "" (Cloud Tasks' queue and account with the loopback queue, for instance)."""

    project: str
    region: str
    bucket: str
    tasks_queue: str
    service_account: str
    tasks_api_endpoint: str | None = None  # None: cloudtasks.googleapis.com


@dataclass(frozen=True)
class LabelboxSettings:
    """The Labelbox platform's API key and endpoints, present when CHAIN_PLATFORM is labelbox."""

    api_key: Secret
    endpoint: str
    rest_endpoint: str


@dataclass(frozen=True)
class VertexSettings:
    od_model_type: str
    classification_model_type: str
    od_budget_milli_node_hours: int
    classification_budget_milli_node_hours: int
    api_endpoint: str | None = None  # None: the region's own `<region>-aiplatform.googleapis.com`
    # Tasks this deployment cannot train on Vertex AI, with the reason (a budget outside their range).
    unavailable: Mapping[Task, str] = field(default_factory=dict)

    def model_type(self, task: Task) -> str:
        return self.classification_model_type if task.is_classification else self.od_model_type

    def budget_milli_node_hours(self, task: Task) -> int:
        return (
            self.classification_budget_milli_node_hours if task.is_classification else self.od_budget_milli_node_hours
        )

    def training_wall_time_s(self, task: Task) -> float:
        """The longest an in-budget training can run: its whole budget on a single node.

        AutoML spreads the budget over several nodes and stops early when the model converges, so a
        real training ends sooner; waiting this long never cancels a training that is still within
        the budget the user pays for.
        """
        return self.budget_milli_node_hours(task) / 1000 * 3600


ENGINE_PACKAGE_MODULE = "shared.engine.vertex_job"  # what a custom job runs: `python -m` it
# Vertex's prebuilt PyTorch GPU training image, by the multi-region of the job's region; the engine
# package needs Python 3.11 or later (its wheel says so), so the image must be a py311+ one.
PYTORCH_TRAINING_IMAGE = "{area}-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-2.py311:latest"
MACHINE_VARIABLES = ("VERTEX_CUSTOM_MACHINE_TYPE", "VERTEX_CUSTOM_ACCELERATOR_TYPE", "VERTEX_CUSTOM_ACCELERATOR_COUNT")
DEFAULT_CUSTOM_STEPS = 2_000  # on one L4 at input 512: a few minutes of training


def default_training_image(region: str) -> str:
    area = (
        "europe"
        if region.startswith(("europe-", "me-"))
        else "asia"
        if region.startswith(("asia-", "australia-"))
        else "us"
    )
    return PYTORCH_TRAINING_IMAGE.format(area=area)


@dataclass(frozen=True)
class VertexCustomSettings:
    """The project's engine as a Vertex AI CustomJob (the `vertex_custom_*` model types)."""

    package_uri: str  # the engine wheel deploy.sh uploaded; "" = not uploaded, the types are not offered
    image_uri: str  # the prebuilt training image Vertex installs the package into
    machine: Machine  # the training job's machine, also the batch prediction job's
    steps: int  # training steps unless a run's config says otherwise
    timeout_s: float  # Vertex stops a job that runs longer (scheduling.timeout)
    check_region: bool
    usd_per_hour: float | None = None  # None: the machine's estimated on-demand rate (shared.domain.machines)
    unavailable: str | None = None  # why the vertex_custom_* types are not offered here, if they are not


@dataclass(frozen=True)
class MonitorSettings:
    initial_delay_s: float
    max_delay_s: float
    max_wait_s: float  # exports, dataset imports, batch predictions
    training_margin_s: float  # beyond a training's whole budget


@dataclass(frozen=True)
class EtlSettings:
    copy_concurrency: int
    max_image_bytes: int
    max_image_pixels: int
    chunk_rows: int  # rows staged at once within a shard
    shard_rows: int  # rows per shard: one shard is one stage invocation
    export_wait_s: float
    rare_labels: str  # "drop": labels under Vertex's minimum images leave the training set; "fail"


@dataclass(frozen=True)
class PredictSettings:
    confidence_threshold: float
    max_predictions: int
    on_training: bool
    shard_rows: int  # held-out rows per inference delivery shard (one invocation each)
    unlabeled: bool = True  # also predict on unlabeled and UNASSIGNED rows, to rank them for labeling
    label_next_strategy: str = DEFAULT_STRATEGY
    label_next_count: int = DEFAULT_LABEL_NEXT_COUNT
    label_next_project: str = ""  # a labeling project to send the rows to label next to ("" = off)
    label_next_priority: int = 5  # the batch's priority in that project: 1 (highest) to 5, Labelbox's scale
    label_next_slice: str | None = None  # a Catalog slice whose rows are added to each model run, to rank


@dataclass(frozen=True)
class Settings:
    mode: str  # the profile, "local" or "cloud"; `ports` says what each port really is
    ports: Ports
    deployment_name: str
    stage_urls: Mapping[str, str]
    webhook_secret: Secret | None
    max_webhook_bytes: int
    stage_lease_seconds: float
    function_timeout_s: float
    shard_attempts: int  # a shard that crashes this many times fails the run (one that fails for good, at once)
    monitor: MonitorSettings
    etl: EtlSettings
    predict: PredictSettings
    vertex: VertexSettings
    vertex_custom: VertexCustomSettings | None = None  # where CHAIN_BACKEND=vertex
    local: LocalSettings | None = None
    cloud: CloudSettings | None = None
    labelbox: LabelboxSettings | None = None
    secrets: tuple[Secret, ...] = field(default=(), repr=False)

    @property
    def backend(self) -> Backend:
        return Backend(self.ports.backend)

    def model_types(self) -> dict[str, ModelType]:
        """What `GET /models` offers: the model types this deployment can really train."""
        if self.backend is not Backend.VERTEX:
            return offered(self.backend)
        no_custom = self.vertex_custom is None or self.vertex_custom.unavailable is not None
        return offered(
            self.backend,
            {Backend.VERTEX: set(self.vertex.unavailable), Backend.VERTEX_CUSTOM: set(Task) if no_custom else set()},
        )

    def stage_url(self, stage: str) -> str:
        return self.stage_urls[stage]


class _Reader:
    """Reads variables and collects every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None, *, required: bool = False, why: str = "") -> str:
        value = self.env.get(name, "").strip()
        if value:
            return value
        if required:
            self.problems.append(f"{name} is required but not set{why}")
        return default or ""

    def number(self, name: str, default: float, *, low: float, high: float, integer: bool = False) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            self.problems.append(f"{name} must be {kind}, got {raw!r}")
            return default
        if not low <= value <= high:
            self.problems.append(f"{name} must be between {low:g} and {high:g}, got {raw}")
            return default
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        self.problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def endpoint(self, name: str) -> str | None:
        """An API endpoint override: `host[:port]` or `http(s)://host[:port]`, nothing after it."""
        value = self.text(name)
        if not value:
            return None
        if not re.fullmatch(r"(https?://)?[A-Za-z0-9.-]+(:\d{1,5})?", value):
            self.problems.append(f"{name} must be host[:port] or http(s)://host[:port], got {value!r}")
            return None
        return value

    def secret(self, name: str, *, required: bool, why: str = "") -> Secret | None:
        value = self.env.get(name, "")
        path = self.env.get(f"{name}_FILE", "").strip()
        if not value and path:
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                self.problems.append(f"{name}_FILE points at {path!r}, which cannot be read ({exc.strerror})")
        if value:
            return Secret(value)
        if required:
            self.problems.append(f"{name} (or {name}_FILE) is required but not set{why}")
        return None


def _vertex_model_type(r: _Reader, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = r.text(name, default)
    if value in VERTEX_EDGE_MODEL_TYPES:
        r.problems.append(
            f"{name}={value} is an Edge model type: Vertex AI trains it but cannot batch-predict with it "
            "(Edge models are exported to run on devices), so the chain could never write predictions back; "
            f"use one of {', '.join(allowed)}"
        )
        return default
    if value not in allowed:
        r.problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return default
    return value


def _vertex_budget(
    r: _Reader, name: str, *, kind: str, budget_range: tuple[int, int], unusable: list[str]
) -> int | None:
    """A task's budget, checked against the range of that task's model types only.

    The task's own variable must fit its range (a config error otherwise). The shared
    VERTEX_BUDGET_MILLI_NODE_HOURS serves both tasks: where it does not fit one task's range, that task
    is left out (None) rather than stopping every function from loading; it must fit at least one.
    """
    low, high = budget_range
    shared = "VERTEX_BUDGET_MILLI_NODE_HOURS"
    if r.env.get(name, "").strip():
        value = int(r.number(name, low, low=1, high=10_000_000, integer=True))
        if not low <= value <= high:
            r.problems.append(f"{name}={value} is outside Vertex AI's range {low}..{high} milli node hours for {kind}")
        return value
    value = int(r.number(shared, 20_000, low=1, high=10_000_000, integer=True))
    if low <= value <= high:
        return value
    unusable.append(
        f"{shared}={value} is outside Vertex AI's range {low}..{high} milli node hours for {kind} "
        f"(set {name} for {kind} alone)"
    )
    return None


def _vertex_settings(r: _Reader) -> VertexSettings:
    unusable: list[str] = []
    od_budget = _vertex_budget(
        r,
        "VERTEX_OD_BUDGET_MILLI_NODE_HOURS",
        kind="object detection",
        budget_range=VERTEX_OD_BUDGET_RANGE,
        unusable=unusable,
    )
    cls_budget = _vertex_budget(
        r,
        "VERTEX_CLASSIFICATION_BUDGET_MILLI_NODE_HOURS",
        kind="classification",
        budget_range=VERTEX_CLS_BUDGET_RANGE,
        unusable=unusable,
    )
    if od_budget is None and cls_budget is None:
        r.problems.extend(unusable)
    unavailable: dict[Task, str] = {}
    if od_budget is None:
        unavailable[Task.OBJECT_DETECTION] = unusable[0]
    if cls_budget is None:
        unavailable[Task.SINGLE_LABEL_CLASSIFICATION] = unavailable[Task.MULTI_LABEL_CLASSIFICATION] = unusable[-1]
    return VertexSettings(
        od_model_type=_vertex_model_type(r, "VERTEX_OD_MODEL_TYPE", "CLOUD_HIGH_ACCURACY_1", VERTEX_OD_MODEL_TYPES),
        classification_model_type=_vertex_model_type(
            r, "VERTEX_CLASSIFICATION_MODEL_TYPE", "CLOUD", VERTEX_CLS_MODEL_TYPES
        ),
        od_budget_milli_node_hours=od_budget or VERTEX_OD_BUDGET_RANGE[0],
        classification_budget_milli_node_hours=cls_budget or VERTEX_CLS_BUDGET_RANGE[0],
        api_endpoint=r.endpoint("VERTEX_API_ENDPOINT"),
        unavailable=unavailable,
    )


DEFAULT_ENGINE_STEPS = 500  # the demo to test mAP@0.5 about 0.95 in about 2 minutes of a 2-core CPU
# the local engine's backbones (shared.engine.model.BACKBONES, which needs torch; a test keeps them equal)
ENGINE_BACKBONES = ("scratch", "mobilenet_v2")


def _optional_steps(r: _Reader) -> int | None:
    """The local engine trains a fixed number of steps (the same weights on any machine) unless a wall
    time is asked for: LOCAL_ENGINE_STEPS wins; else a LOCAL_ENGINE_TRAIN_SECONDS given selects wall
    time; else DEFAULT_ENGINE_STEPS."""
    if r.env.get("LOCAL_ENGINE_STEPS", "").strip():
        return int(r.number("LOCAL_ENGINE_STEPS", DEFAULT_ENGINE_STEPS, low=1, high=10**7, integer=True))
    if r.env.get("LOCAL_ENGINE_TRAIN_SECONDS", "").strip():
        return None
    return DEFAULT_ENGINE_STEPS


def _project_id(r: _Reader, name: str) -> str:
    value = r.text(name)
    problem = project_id_problem(value)
    if problem:
        r.problems.append(f"{name} {problem}")
        return ""
    return value


def _ports(r: _Reader, mode: str) -> Ports:
    """Each port's choice: its own variable, else the profile's; then the combinations that cannot work."""
    profile = PROFILES[mode]
    chosen = {
        port: r.choice(PORT_VARIABLES[port], getattr(profile, port), PORT_CHOICES[port]) for port, _ in profile.items()
    }
    ports = Ports(**chosen)
    if ports.backend == "vertex" and ports.store == "folder":
        r.problems.append(
            "CHAIN_BACKEND=vertex needs CHAIN_STORE=gcs: Vertex AI reads the training images and writes its "
            "predictions as gs:// objects, which a folder on this machine is not"
        )
    if ports.backend == "local" and ports.store == "gcs":
        r.problems.append(
            "CHAIN_BACKEND=local needs CHAIN_STORE=folder: the local engine reads the staged images and writes "
            "its models and predictions in the bucket folder on this machine (LOCAL_BUCKET_DIR)"
        )

    def deployed(what: str) -> str:
        return (
            "Cloud Tasks calls the stages at public URLs, so they run as deployed functions, each instance "
            f"on its own disk, which cannot share {what} on this machine (CHAIN_QUEUE=loopback runs every "
            "function here)"
        )

    if ports.chain == "cloud_tasks" and ports.store == "folder":
        r.problems.append(f"CHAIN_QUEUE=cloud_tasks needs CHAIN_STORE=gcs: {deployed('the bucket folder')}")
    if ports.chain == "cloud_tasks" and ports.platform == "local":
        r.problems.append(f"CHAIN_QUEUE=cloud_tasks needs CHAIN_PLATFORM=labelbox: {deployed('the model run folders')}")
    return ports


def _needed_by(ports: Ports, *needs: tuple[str, str]) -> str:
    """ " (needed by CHAIN_STORE=gcs, ...)" for those of `needs` (port, choice) that are chosen; "" if none is."""
    chosen = [f"{PORT_VARIABLES[port]}={choice}" for port, choice in needs if getattr(ports, port) == choice]
    return f" (needed by {', '.join(chosen)})" if chosen else ""


def _local_settings(r: _Reader) -> LocalSettings:
    root = Path(r.text("LOCAL_DATA_DIR", "var")).resolve()
    return LocalSettings(
        bucket_dir=Path(r.text("LOCAL_BUCKET_DIR", str(root / "bucket"))).resolve(),
        bucket_name=r.text("LOCAL_BUCKET_NAME", "local-bucket"),
        model_runs_dir=Path(r.text("LOCAL_MODEL_RUNS_DIR", str(root / "model_runs"))).resolve(),
        projects_dir=Path(r.text("LOCAL_PROJECTS_DIR", str(root / "projects"))).resolve(),
        engine_dir=Path(r.text("LOCAL_ENGINE_DIR", str(root / "engine"))).resolve(),
        schedule_dir=Path(r.text("LOCAL_SCHEDULE_DIR", str(root / "schedule"))).resolve(),
        concurrent_calls=int(r.number("LOCAL_CONCURRENT_CALLS", 8, low=1, high=256, integer=True)),
        call_retries=int(r.number("LOCAL_CALL_RETRIES", 8, low=0, high=100, integer=True)),
        call_first_retry_s=r.number("LOCAL_CALL_FIRST_RETRY_S", 1.0, low=0.01, high=3600),
        engine_train_seconds=r.number("LOCAL_ENGINE_TRAIN_SECONDS", 90.0, low=1, high=86_400),
        engine_max_steps=_optional_steps(r),
        engine_class_agnostic_nms=r.flag("LOCAL_ENGINE_CLASS_AGNOSTIC_NMS", True),
        engine_seed=int(r.number("LOCAL_ENGINE_SEED", 0, low=0, high=2**31, integer=True)),
        engine_device=r.choice("LOCAL_ENGINE_DEVICE", "auto", ("auto", "cpu", "cuda")),
        engine_backbone=r.choice("LOCAL_ENGINE_BACKBONE", "auto", ("auto", *ENGINE_BACKBONES)),
    )


def _vertex_custom_settings(r: _Reader, region: str) -> VertexCustomSettings:
    """The custom jobs' settings; a machine Vertex would refuse is a configuration problem, named."""
    package_uri = r.text("VERTEX_CUSTOM_PACKAGE_URI")
    if package_uri and not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]*/\S+\.(whl|tar\.gz)", package_uri):
        r.problems.append(f"VERTEX_CUSTOM_PACKAGE_URI must be the gs:// URI of a .whl or .tar.gz, got {package_uri!r}")
        package_uri = ""
    accelerator = r.text("VERTEX_CUSTOM_ACCELERATOR_TYPE", DEFAULT_ACCELERATOR)
    count = 0 if accelerator == NO_ACCELERATOR else 1
    machine = Machine(
        r.text("VERTEX_CUSTOM_MACHINE_TYPE", DEFAULT_MACHINE_TYPE),
        accelerator,
        int(r.number("VERTEX_CUSTOM_ACCELERATOR_COUNT", count, low=0, high=16, integer=True)),
    )
    check_region = r.flag("VERTEX_CUSTOM_REGION_CHECK", True)
    problem = machine.problem(region, check_region=check_region) if region else None
    chosen = [name for name in MACHINE_VARIABLES if r.env.get(name, "").strip()]
    if problem and chosen:  # the operator's own choice: say what to change before anything runs
        r.problems.append(f"{'/'.join(chosen)}: {problem}")
    unavailable = None
    if problem and not chosen:  # the default machine does not suit this region: the custom types are not offered
        unavailable = f"the default custom-job machine does not suit {region}: {problem}"
    elif not package_uri:
        unavailable = "no engine package (VERTEX_CUSTOM_PACKAGE_URI): deploy.sh builds and uploads it"
    rate = r.env.get("VERTEX_CUSTOM_HOURLY_USD", "").strip()
    return VertexCustomSettings(
        package_uri=package_uri,
        image_uri=r.text("VERTEX_CUSTOM_IMAGE_URI", default_training_image(region)),
        machine=machine,
        steps=int(r.number("VERTEX_CUSTOM_STEPS", DEFAULT_CUSTOM_STEPS, low=1, high=10**7, integer=True)),
        timeout_s=r.number("VERTEX_CUSTOM_TIMEOUT_S", 4 * 3600, low=600, high=7 * 86_400),
        check_region=check_region,
        usd_per_hour=r.number("VERTEX_CUSTOM_HOURLY_USD", 0.0, low=0, high=1_000) if rate else None,
        unavailable=unavailable,
    )


def _cloud_settings(r: _Reader, ports: Ports) -> CloudSettings:
    """Each Google Cloud variable is required only by the chosen ports that use it, and says which."""

    def text(name: str, *needs: tuple[str, str]) -> str:
        why = _needed_by(ports, *needs)
        return r.text(name, required=bool(why), why=why)

    gcs, vertex, tasks = ("store", "gcs"), ("backend", "vertex"), ("chain", "cloud_tasks")
    return CloudSettings(
        project=text("GCP_PROJECT", gcs, vertex, tasks),
        region=text("GCP_REGION", vertex, tasks),
        bucket=text("BUCKET", gcs, vertex),
        tasks_queue=text("TASKS_QUEUE", tasks),
        service_account=text("SERVICE_ACCOUNT_EMAIL", tasks),
        tasks_api_endpoint=r.endpoint("CLOUD_TASKS_API_ENDPOINT"),
    )


def _labelbox_settings(r: _Reader, ports: Ports) -> tuple[LabelboxSettings, Secret | None]:
    api_key = r.secret("LABELBOX_API_KEY", required=True, why=_needed_by(ports, ("platform", "labelbox")))
    labelbox = LabelboxSettings(
        api_key=api_key or Secret(""),
        endpoint=r.text("LABELBOX_ENDPOINT", "https://api.labelbox.com/graphql"),
        rest_endpoint=r.text("LABELBOX_REST_ENDPOINT", "https://api.labelbox.com/api/v1"),
    )
    return labelbox, api_key


def _slice_id(r: _Reader, name: str) -> str | None:
    """An optional Catalog slice id; unset is None (no slice)."""
    value = r.text(name)
    if not value:
        return None
    problem = slice_id_problem(value)
    if problem:
        r.problems.append(f"{name} {problem}")
        return None
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Builds the validated settings, or raises ConfigError naming every missing or wrong variable."""
    env = os.environ if env is None else env
    r = _Reader(env)
    r.problems.extend(model_type_modules.load(env))  # CHAIN_MODEL_TYPE_MODULES: before any type is offered
    mode = r.choice("CHAIN_MODE", "local", ("local", "cloud"))
    ports = _ports(r, mode)
    local_engine = ports.backend == "local"  # it finishes in minutes: the monitor looks often

    allow_unsigned = r.flag("ALLOW_UNSIGNED_WEBHOOKS", False)
    webhook_secret = r.secret("WEBHOOK_SECRET", required=not allow_unsigned)

    stage_urls: dict[str, str] = {}
    for stage in CHAIN_STAGES:
        stage_urls[stage] = r.text(f"{stage.upper()}_URL", required=True)

    vertex = _vertex_settings(r)
    secrets: list[Secret] = [webhook_secret] if webhook_secret else []
    on_this_machine = "local" in (ports.platform, ports.backend) or ports.store == "folder" or ports.chain == "loopback"
    local = _local_settings(r) if on_this_machine else None
    on_google = ports.store == "gcs" or ports.backend == "vertex" or ports.chain == "cloud_tasks"
    cloud = _cloud_settings(r, ports) if on_google else None
    labelbox = None
    if ports.platform == "labelbox":
        labelbox, api_key = _labelbox_settings(r, ports)
        if api_key:
            secrets.append(api_key)

    settings = Settings(
        mode=mode,
        ports=ports,
        deployment_name=r.text("CHAIN_DEPLOYMENT", "default"),
        stage_urls=stage_urls,
        webhook_secret=webhook_secret,
        max_webhook_bytes=int(r.number("MAX_WEBHOOK_BYTES", 65_536, low=256, high=10_485_760, integer=True)),
        stage_lease_seconds=r.number("STAGE_LEASE_SECONDS", 120.0, low=1, high=86_400),
        function_timeout_s=r.number("FUNCTION_TIMEOUT_S", 540.0, low=10, high=3600),
        shard_attempts=int(r.number("SHARD_ATTEMPTS", 3, low=1, high=100, integer=True)),
        monitor=MonitorSettings(
            initial_delay_s=r.number("MONITOR_INITIAL_DELAY_S", 2.0 if local_engine else 60.0, low=0.1, high=86_400),
            max_delay_s=r.number("MONITOR_MAX_DELAY_S", 5.0 if local_engine else 600.0, low=0.1, high=86_400),
            max_wait_s=r.number("MONITOR_MAX_WAIT_S", 3 * 86_400, low=1, high=30 * 86_400),
            training_margin_s=r.number("MONITOR_TRAINING_MARGIN_S", 12 * 3600, low=0, high=30 * 86_400),
        ),
        etl=EtlSettings(
            copy_concurrency=int(r.number("ETL_COPY_CONCURRENCY", 16, low=1, high=256, integer=True)),
            max_image_bytes=int(r.number("ETL_MAX_IMAGE_BYTES", 30 * 2**20, low=1, high=2**31, integer=True)),
            max_image_pixels=int(r.number("ETL_MAX_IMAGE_PIXELS", 100_000_000, low=1, high=2**40, integer=True)),
            chunk_rows=int(r.number("ETL_CHUNK_ROWS", 1_000, low=1, high=1_000_000, integer=True)),
            shard_rows=int(r.number("ETL_SHARD_ROWS", 10_000, low=1, high=1_000_000, integer=True)),
            export_wait_s=r.number("ETL_EXPORT_WAIT_S", 30.0, low=0, high=3_600),
            rare_labels=r.choice("ETL_RARE_LABELS", "drop", ("drop", "fail")),
        ),
        predict=PredictSettings(
            confidence_threshold=r.number("PREDICT_CONFIDENCE_THRESHOLD", 0.3, low=0.0, high=1.0),
            max_predictions=int(r.number("PREDICT_MAX_PREDICTIONS", 100, low=1, high=500, integer=True)),
            on_training=r.flag("PREDICT_ON_TRAINING", False),
            shard_rows=int(r.number("INFERENCE_SHARD_ROWS", 10_000, low=1, high=1_000_000, integer=True)),
            unlabeled=r.flag("PREDICT_UNLABELED", True),
            label_next_strategy=r.choice("LABEL_NEXT_STRATEGY", DEFAULT_STRATEGY, tuple(Strategy)),
            label_next_count=int(
                r.number("LABEL_NEXT_COUNT", DEFAULT_LABEL_NEXT_COUNT, low=0, high=MAX_LABEL_NEXT, integer=True)
            ),
            label_next_project=_project_id(r, "LABEL_NEXT_PROJECT_ID"),
            label_next_priority=int(
                r.number(
                    "LABEL_NEXT_PRIORITY",
                    DEFAULT_BATCH_PRIORITY,
                    low=BATCH_PRIORITIES[0],
                    high=BATCH_PRIORITIES[1],
                    integer=True,
                )
            ),
            label_next_slice=_slice_id(r, "LABEL_NEXT_SLICE_ID"),
        ),
        vertex=vertex,
        vertex_custom=_vertex_custom_settings(r, cloud.region) if cloud and ports.backend == "vertex" else None,
        local=local,
        cloud=cloud,
        labelbox=labelbox,
        secrets=tuple(secrets),
    )
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return settings
