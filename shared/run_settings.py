"""A run's own settings: the model run's config (its `"train"` namespace) over the deployment's.

Labelbox lets a user attach a config to a model run (`create_model_run(name, config=...)`,
`update_config`); the local model run keeps it in `config.json`. ETL reads it once, at the run's
start, and `resolve` turns it into the run's settings: every key the namespace may hold is checked as
the environment's version is, a key not given takes the deployment's value, and the result is frozen
into the run record, so every later stage uses the same values and a config edited during a run
cannot change that run. Keys outside the namespace are the user's own and are left alone. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.config import (
    ENGINE_BACKBONES,
    VERTEX_CLS_MODEL_TYPES,
    VERTEX_EDGE_MODEL_TYPES,
    VERTEX_OD_MODEL_TYPES,
    Settings,
    slice_id_problem,
    vertex_budget_range,
)
from shared.domain.label_next import (
    BATCH_PRIORITIES,
    DEFAULT_BATCH_PRIORITY,
    DEFAULT_LABEL_NEXT_COUNT,
    DEFAULT_STRATEGY,
    MAX_LABEL_NEXT,
    Strategy,
    project_id_problem,
)
from shared.domain.machines import NO_ACCELERATOR, Machine
from shared.domain.model_types import Backend, Task
from shared.domain.run_record import RunRecord

NAMESPACE = "train"  # the config key whose object holds the run's settings
RESULTS = "chain"  # the config key the chain writes its results under (never a user's key)


class RunConfigError(ValueError):
    """The model run's config cannot be used; the message names the key and what it may be."""


@dataclass(frozen=True)
class _Key:
    backends: frozenset[Backend]
    kind: type
    meaning: str
    limits: Callable[[Task], tuple[float, float] | tuple[str, ...]] | None = None


_BOTH = frozenset(Backend)
_VERTEX = frozenset({Backend.VERTEX})
_ENGINE = frozenset({Backend.LOCAL, Backend.VERTEX_CUSTOM})  # the project's engine, here or as a custom job
_CUSTOM = frozenset({Backend.VERTEX_CUSTOM})


def _model_types(task: Task) -> tuple[str, ...]:
    return VERTEX_CLS_MODEL_TYPES if task.is_classification else VERTEX_OD_MODEL_TYPES


KEYS: dict[str, _Key] = {
    "confidence_threshold": _Key(_BOTH, float, "predictions below it are not uploaded", lambda t: (0.0, 1.0)),
    "max_predictions": _Key(_BOTH, int, "predictions kept per image", lambda t: (1, 500)),
    "label_next_strategy": _Key(
        _BOTH, str, "what ranks the unlabeled rows to label next", lambda t: tuple(s.value for s in Strategy)
    ),
    "label_next_count": _Key(_BOTH, int, "how many rows to list to label next", lambda t: (0, MAX_LABEL_NEXT)),
    "label_next_project": _Key(
        _BOTH, str, 'the labeling project the rows to label next are sent to, with pre-labels ("" = none)'
    ),
    "label_next_priority": _Key(
        _BOTH, int, "the priority of that batch in the project (1 highest, 5 lowest)", lambda t: BATCH_PRIORITIES
    ),
    "label_next_slice": _Key(_BOTH, str, "a Catalog slice whose rows are added to the model run to rank (null: none)"),
    "model_type": _Key(_VERTEX, str, "the AutoML model type", _model_types),
    "budget_milli_node_hours": _Key(_VERTEX, int, "the AutoML training budget (1000 = one node hour)"),
    "early_stopping": _Key(_VERTEX, bool, "let AutoML stop once the model converges"),
    "steps": _Key(_ENGINE, int, "train exactly this many steps (the same weights for a seed)", lambda t: (1, 10**7)),
    "train_seconds": _Key(
        _ENGINE, float, "train for this much wall time (when steps is not set)", lambda t: (1, 86_400)
    ),
    "learning_rate": _Key(_ENGINE, float, "the engine's learning rate", lambda t: (1e-6, 1.0)),
    "batch_size": _Key(_ENGINE, int, "the engine's batch size", lambda t: (1, 1024)),
    "input_size": _Key(_ENGINE, int, "the engine's input side in pixels (a multiple of 32)", lambda t: (64, 1024)),
    "backbone": _Key(
        _ENGINE,
        str,
        "the engine's backbone (mobilenet_v2: ImageNet-pretrained; auto: by device)",
        lambda t: ("auto", *ENGINE_BACKBONES),
    ),
    "machine_type": _Key(_CUSTOM, str, "the custom job's machine type (e.g. g2-standard-8, n1-standard-8)"),
    "accelerator_type": _Key(_CUSTOM, str, "the custom job's GPU (NVIDIA_L4, NVIDIA_TESLA_T4)"),
    "accelerator_count": _Key(_CUSTOM, int, "GPUs on the custom job's machine", lambda t: (0, 8)),
}


@dataclass(frozen=True)
class RunSettings:
    """What one run trains and predicts with. `from_config`: the keys the model run's config set."""

    confidence_threshold: float
    max_predictions: int
    training: dict[str, Any]  # the backend's training settings (the keys of KEYS for that backend)
    from_config: tuple[str, ...] = ()
    label_next_strategy: str = DEFAULT_STRATEGY
    label_next_count: int = DEFAULT_LABEL_NEXT_COUNT
    label_next_project: str = ""  # "" = the rows to label next are listed, not sent anywhere
    label_next_priority: int = DEFAULT_BATCH_PRIORITY
    label_next_slice: str | None = None  # added to the model run at ETL, so its rows are predicted and ranked

    def to_dict(self) -> dict[str, Any]:
        return {
            "confidence_threshold": self.confidence_threshold,
            "max_predictions": self.max_predictions,
            "label_next_strategy": self.label_next_strategy,
            "label_next_count": self.label_next_count,
            "label_next_project": self.label_next_project,
            "label_next_priority": self.label_next_priority,
            "label_next_slice": self.label_next_slice,
            "training": dict(self.training),
            "from_config": list(self.from_config),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSettings:
        return cls(
            confidence_threshold=float(data["confidence_threshold"]),
            max_predictions=int(data["max_predictions"]),
            training=dict(data.get("training", {})),
            from_config=tuple(data.get("from_config", ())),
            label_next_strategy=str(data.get("label_next_strategy", DEFAULT_STRATEGY)),
            label_next_count=int(data.get("label_next_count", DEFAULT_LABEL_NEXT_COUNT)),
            label_next_project=str(data.get("label_next_project", "")),
            label_next_priority=int(data.get("label_next_priority", DEFAULT_BATCH_PRIORITY)),
            label_next_slice=data.get("label_next_slice") or None,
        )

    def shown(self) -> dict[str, str]:
        """Every setting as the strings a model run's status metadata keeps (`from config` marked)."""
        values: dict[str, Any] = {
            "confidence_threshold": self.confidence_threshold,
            "max_predictions": self.max_predictions,
            "label_next_strategy": self.label_next_strategy,
            "label_next_count": self.label_next_count,
            "label_next_project": self.label_next_project or None,  # unset: not shown
            "label_next_priority": self.label_next_priority if self.label_next_project else None,
            "label_next_slice": self.label_next_slice,
        }
        values.update(self.training)
        return {
            f"setting: {key}": f"{value}{' (from config)' if key in self.from_config else ''}"
            for key, value in sorted(values.items())
            if value is not None
        }


def deployment_defaults(settings: Settings, task: Task, backend: Backend) -> RunSettings:
    """The run's settings when the config sets nothing: the deployment's environment."""
    training: dict[str, Any]
    if backend is Backend.VERTEX:
        training = {
            "model_type": settings.vertex.model_type(task),
            "budget_milli_node_hours": settings.vertex.budget_milli_node_hours(task),
            "early_stopping": True,
        }
    elif backend is Backend.VERTEX_CUSTOM:
        custom = settings.vertex_custom  # a custom job runs only where its settings are
        training = (
            {}
            if custom is None
            else {
                "steps": custom.steps,
                "machine_type": custom.machine.machine_type,
                "accelerator_type": custom.machine.accelerator_type,
                "accelerator_count": custom.machine.accelerator_count,
            }
        )
    else:
        local = settings.local  # a local backend runs only where the local settings are
        training = (
            {} if local is None else {"steps": local.engine_max_steps, "train_seconds": local.engine_train_seconds}
        )
    predict = settings.predict
    return RunSettings(
        predict.confidence_threshold,
        predict.max_predictions,
        training,
        label_next_strategy=predict.label_next_strategy,
        label_next_count=predict.label_next_count,
        label_next_project=predict.label_next_project,
        label_next_priority=predict.label_next_priority,
        label_next_slice=predict.label_next_slice,
    )


def resolve(config: Mapping[str, Any] | None, defaults: RunSettings, *, task: Task, backend: Backend) -> RunSettings:
    """The config's `"train"` namespace over `defaults`; RunConfigError names every bad key at once."""
    given = (config or {}).get(NAMESPACE)
    if given is None:
        return defaults
    if not isinstance(given, Mapping):
        raise RunConfigError(
            f'the model run config\'s "{NAMESPACE}" must be an object of settings, not {type(given).__name__}'
        )
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in given.items():
        problem = _check(str(key), value, task, backend)
        if problem:
            problems.append(problem)
        else:
            kind = KEYS[key].kind
            values[str(key)] = kind(value) if kind in (int, float) else value
    if "budget_milli_node_hours" in values:
        model_type = values.get("model_type", defaults.training.get("model_type"))
        low, high = vertex_budget_range(str(model_type), classification=task.is_classification)
        if not low <= values["budget_milli_node_hours"] <= high:
            problems.append(
                f"{NAMESPACE}.budget_milli_node_hours {values['budget_milli_node_hours']} is outside {low}..{high}, "
                f"what Vertex AI accepts for {task.value} model type {model_type}"
            )
    training = dict(defaults.training)
    training.update({k: v for k, v in values.items() if KEYS[k].backends != _BOTH})  # the backend's own keys
    if backend is Backend.VERTEX_CUSTOM and {"machine_type", "accelerator_type", "accelerator_count"} & set(values):
        problem = machine_of(training).problem("", check_region=False)  # the region is checked at train
        if problem:
            problems.append(f"{NAMESPACE}.machine_type/accelerator_type/accelerator_count: {problem}")
    if problems:
        raise RunConfigError("bad model run config: " + "; ".join(problems))
    if "train_seconds" in values and "steps" not in values:
        training["steps"] = None  # a wall-time budget asked for: not the deployment's step count
    return RunSettings(
        confidence_threshold=values.get("confidence_threshold", defaults.confidence_threshold),
        max_predictions=values.get("max_predictions", defaults.max_predictions),
        training=training,
        from_config=tuple(sorted(values)),
        label_next_strategy=values.get("label_next_strategy", defaults.label_next_strategy),
        label_next_count=values.get("label_next_count", defaults.label_next_count),
        label_next_project=values.get("label_next_project", defaults.label_next_project),
        label_next_priority=values.get("label_next_priority", defaults.label_next_priority),
        label_next_slice=values.get("label_next_slice", defaults.label_next_slice) or None,
    )


def machine_of(training: Mapping[str, Any]) -> Machine:
    """The custom job's machine a run's training settings name."""
    return Machine(
        str(training.get("machine_type", "")),
        str(training.get("accelerator_type", NO_ACCELERATOR)),
        int(training.get("accelerator_count", 0)),
    )


def _check(key: str, value: Any, task: Task, backend: Backend) -> str | None:
    name = f"{NAMESPACE}.{key}"
    spec = KEYS.get(key)
    usable = sorted(k for k, s in KEYS.items() if backend in s.backends)
    if spec is None:
        return f"unknown key {name}; the keys are {', '.join(usable)}"
    if backend not in spec.backends:
        return f"{name} is not a setting of the {backend.value} backend; its keys are {', '.join(usable)}"
    if key == "label_next_slice":  # null or "" turns the deployment's slice off for this run
        problem = None if value is None or value == "" else slice_id_problem(value)
        return f"{name} {problem}" if problem else None
    if spec.kind is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, not {value!r}"
    if key == "label_next_project":
        problem = project_id_problem(value)
        return f"{name} {problem}" if problem else None
    if spec.kind is str:
        allowed = spec.limits(task) if spec.limits else ()
        if not isinstance(value, str) or (allowed and value not in allowed):
            edge = " (edge types cannot batch-predict)" if value in VERTEX_EDGE_MODEL_TYPES else ""
            return f"{name} must be one of {', '.join(map(str, allowed))} for {task.value}, not {value!r}{edge}"
        return None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or (spec.kind is int and not float(value).is_integer()):
        return f"{name} must be {'an integer' if spec.kind is int else 'a number'}, not {value!r}"
    if spec.limits is not None:
        low, high = spec.limits(task)
        if not low <= value <= high:
            return f"{name} must be between {low:g} and {high:g}, not {value!r}"
    if key == "input_size" and int(value) % 32:
        return f"{name} must be a multiple of 32, not {value!r}"
    return None


def merged_results(current: Mapping[str, Any] | None, results: Mapping[str, Any]) -> dict[str, Any]:
    """The config to write back: the user's keys as they are, the chain's results under `"chain"`."""
    return {**(current or {}), RESULTS: dict(results)}


def of_record(settings: Settings, record: RunRecord) -> RunSettings:
    """The settings a run froze at its start, or (a run recorded before it froze any) the deployment's."""
    if record.settings:
        return RunSettings.from_dict(record.settings)
    return deployment_defaults(settings, Task(record.task), Backend(record.backend))
