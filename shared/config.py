"""Configuration, read from the environment once at start-up and validated.

Every problem is collected and reported together, each naming its variable, so an operator fixes a
deployment in one pass. Secrets are wrapped in `Secret`, whose repr never shows the value; a secret
comes from `NAME` or from a file named by `NAME_FILE` (Secret Manager mounts files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.model_types import Backend


class ConfigError(ValueError):
    """The environment does not describe a usable deployment; the message names every bad variable."""


class Secret:
    """A secret value that cannot leak through repr, str or f-strings by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


STAGES = ("model_run", "etl", "train", "monitor", "inference")
VERTEX_OD_MODEL_TYPES = (
    "CLOUD_HIGH_ACCURACY_1",
    "CLOUD_1",
    "CLOUD_LOW_LATENCY_1",
    "MOBILE_TF_LOW_LATENCY_1",
    "MOBILE_TF_VERSATILE_1",
    "MOBILE_TF_HIGH_ACCURACY_1",
)
VERTEX_CLS_MODEL_TYPES = (
    "CLOUD",
    "CLOUD_1",
    "MOBILE_TF_LOW_LATENCY_1",
    "MOBILE_TF_VERSATILE_1",
    "MOBILE_TF_HIGH_ACCURACY_1",
)


def vertex_budget_range(model_type: str, *, classification: bool) -> tuple[int, int]:
    """Vertex's accepted training budget, in milli node hours, for an AutoML image model type."""
    if model_type.startswith("MOBILE_"):
        return 1_000, 100_000
    return (8_000, 800_000) if classification else (20_000, 900_000)


@dataclass(frozen=True)
class LocalSettings:
    bucket_dir: Path
    bucket_name: str
    model_runs_dir: Path
    engine_dir: Path
    engine_train_seconds: float
    engine_seed: int
    engine_device: str


@dataclass(frozen=True)
class CloudSettings:
    project: str
    region: str
    bucket: str
    tasks_queue: str
    service_account: str
    labelbox_api_key: Secret
    labelbox_endpoint: str
    labelbox_rest_endpoint: str


@dataclass(frozen=True)
class VertexSettings:
    od_model_type: str
    classification_model_type: str
    budget_milli_node_hours: int


@dataclass(frozen=True)
class Settings:
    mode: str  # "local" or "cloud"
    deployment_name: str
    stage_urls: Mapping[str, str]
    webhook_secret: Secret | None
    max_webhook_bytes: int
    stage_lease_seconds: float
    monitor_initial_delay_s: float
    monitor_max_delay_s: float
    monitor_max_wait_s: float
    etl_copy_concurrency: int
    etl_max_image_bytes: int
    etl_max_image_pixels: int
    etl_chunk_rows: int
    predict_confidence_threshold: float
    predict_max_predictions: int
    predict_on_training: bool
    vertex: VertexSettings
    local: LocalSettings | None = None
    cloud: CloudSettings | None = None
    secrets: tuple[Secret, ...] = field(default=(), repr=False)

    @property
    def backend(self) -> Backend:
        return Backend.LOCAL if self.mode == "local" else Backend.VERTEX

    def stage_url(self, stage: str) -> str:
        return self.stage_urls[stage]


class _Reader:
    """Reads variables and collects every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.env.get(name, "").strip()
        if value:
            return value
        if required:
            self.problems.append(f"{name} is required but not set")
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

    def secret(self, name: str, *, required: bool) -> Secret | None:
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
            self.problems.append(f"{name} (or {name}_FILE) is required but not set")
        return None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Builds the validated settings, or raises ConfigError naming every missing or wrong variable."""
    env = os.environ if env is None else env
    r = _Reader(env)
    mode = r.choice("CHAIN_MODE", "local", ("local", "cloud"))
    local_default = mode == "local"

    allow_unsigned = r.flag("ALLOW_UNSIGNED_WEBHOOKS", False)
    webhook_secret = r.secret("WEBHOOK_SECRET", required=not allow_unsigned)

    stage_urls = {}
    for stage in ("etl", "train", "monitor", "inference"):
        stage_urls[stage] = r.text(f"{stage.upper()}_URL", required=True)

    vertex = VertexSettings(
        od_model_type=r.choice("VERTEX_OD_MODEL_TYPE", "CLOUD_HIGH_ACCURACY_1", VERTEX_OD_MODEL_TYPES),
        classification_model_type=r.choice("VERTEX_CLASSIFICATION_MODEL_TYPE", "CLOUD", VERTEX_CLS_MODEL_TYPES),
        budget_milli_node_hours=int(
            r.number("VERTEX_BUDGET_MILLI_NODE_HOURS", 20_000, low=1_000, high=900_000, integer=True)
        ),
    )

    for kind, model_type in (
        ("VERTEX_OD_MODEL_TYPE", vertex.od_model_type),
        ("VERTEX_CLASSIFICATION_MODEL_TYPE", vertex.classification_model_type),
    ):
        low, high = vertex_budget_range(model_type, classification=kind != "VERTEX_OD_MODEL_TYPE")
        if not low <= vertex.budget_milli_node_hours <= high:
            r.problems.append(
                f"VERTEX_BUDGET_MILLI_NODE_HOURS={vertex.budget_milli_node_hours} is outside Vertex's range "
                f"{low}..{high} for {kind}={model_type}"
            )

    local = cloud = None
    secrets: list[Secret] = [webhook_secret] if webhook_secret else []
    if local_default:
        root = Path(r.text("LOCAL_DATA_DIR", "var")).resolve()
        local = LocalSettings(
            bucket_dir=Path(r.text("LOCAL_BUCKET_DIR", str(root / "bucket"))).resolve(),
            bucket_name=r.text("LOCAL_BUCKET_NAME", "local-bucket"),
            model_runs_dir=Path(r.text("LOCAL_MODEL_RUNS_DIR", str(root / "model_runs"))).resolve(),
            engine_dir=Path(r.text("LOCAL_ENGINE_DIR", str(root / "engine"))).resolve(),
            engine_train_seconds=r.number("LOCAL_ENGINE_TRAIN_SECONDS", 90.0, low=1, high=86_400),
            engine_seed=int(r.number("LOCAL_ENGINE_SEED", 0, low=0, high=2**31, integer=True)),
            engine_device=r.choice("LOCAL_ENGINE_DEVICE", "auto", ("auto", "cpu", "cuda")),
        )
    else:
        api_key = r.secret("LABELBOX_API_KEY", required=True)
        cloud = CloudSettings(
            project=r.text("GCP_PROJECT", required=True),
            region=r.text("GCP_REGION", required=True),
            bucket=r.text("BUCKET", required=True),
            tasks_queue=r.text("TASKS_QUEUE", required=True),
            service_account=r.text("SERVICE_ACCOUNT_EMAIL", required=True),
            labelbox_api_key=api_key or Secret(""),
            labelbox_endpoint=r.text("LABELBOX_ENDPOINT", "https://api.labelbox.com/graphql"),
            labelbox_rest_endpoint=r.text("LABELBOX_REST_ENDPOINT", "https://api.labelbox.com/api/v1"),
        )
        if api_key:
            secrets.append(api_key)

    settings = Settings(
        mode=mode,
        deployment_name=r.text("CHAIN_DEPLOYMENT", "default"),
        stage_urls=stage_urls,
        webhook_secret=webhook_secret,
        max_webhook_bytes=int(r.number("MAX_WEBHOOK_BYTES", 65_536, low=256, high=10_485_760, integer=True)),
        stage_lease_seconds=r.number("STAGE_LEASE_SECONDS", 120.0, low=1, high=86_400),
        monitor_initial_delay_s=r.number(
            "MONITOR_INITIAL_DELAY_S", 5.0 if local_default else 60.0, low=0.1, high=86_400
        ),
        monitor_max_delay_s=r.number("MONITOR_MAX_DELAY_S", 20.0 if local_default else 600.0, low=0.1, high=86_400),
        monitor_max_wait_s=r.number("MONITOR_MAX_WAIT_S", 3 * 86_400, low=1, high=30 * 86_400),
        etl_copy_concurrency=int(r.number("ETL_COPY_CONCURRENCY", 16, low=1, high=256, integer=True)),
        etl_max_image_bytes=int(r.number("ETL_MAX_IMAGE_BYTES", 30 * 2**20, low=1, high=2**31, integer=True)),
        etl_max_image_pixels=int(r.number("ETL_MAX_IMAGE_PIXELS", 100_000_000, low=1, high=2**40, integer=True)),
        etl_chunk_rows=int(r.number("ETL_CHUNK_ROWS", 5_000, low=1, high=1_000_000, integer=True)),
        predict_confidence_threshold=r.number("PREDICT_CONFIDENCE_THRESHOLD", 0.3, low=0.0, high=1.0),
        predict_max_predictions=int(r.number("PREDICT_MAX_PREDICTIONS", 100, low=1, high=500, integer=True)),
        predict_on_training=r.flag("PREDICT_ON_TRAINING", False),
        vertex=vertex,
        local=local,
        cloud=cloud,
        secrets=tuple(secrets),
    )
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return settings
