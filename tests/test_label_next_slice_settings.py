"""`label_next_slice`: a Catalog slice whose rows each run adds to its model run, to predict on and rank.
The deployment's `LABEL_NEXT_SLICE_ID` (unset: none), and the run's own key over it (null: none)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError, load_settings
from shared.domain.model_types import Backend, Task
from shared.run_settings import RunConfigError, RunSettings, deployment_defaults, resolve

ENV = {
    "CHAIN_MODE": "local",
    "WEBHOOK_SECRET": "s",
    **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
}
SLICE = "clslice0000000000000000001"


def defaults(backend: Backend = Backend.LOCAL, **env: str) -> RunSettings:
    return deployment_defaults(load_settings({**ENV, **env}), Task.OBJECT_DETECTION, backend)


def run(config: dict[str, Any], backend: Backend = Backend.LOCAL, **env: str) -> RunSettings:
    return resolve(config, defaults(backend, **env), task=Task.OBJECT_DETECTION, backend=backend)


def test_unset_is_no_slice_and_the_variable_is_the_deployments_default() -> None:
    assert load_settings(ENV).predict.label_next_slice is None
    assert defaults().label_next_slice is None
    assert defaults(LABEL_NEXT_SLICE_ID=f" {SLICE} ").label_next_slice == SLICE
    assert "setting: label_next_slice" not in defaults().shown()
    assert defaults(LABEL_NEXT_SLICE_ID=SLICE).shown()["setting: label_next_slice"] == SLICE


@pytest.mark.parametrize("value", ["../../etc/passwd", "a b", "slice.ndjson", "-leading-dash"])
def test_a_variable_that_cannot_be_a_slice_id_is_named(value: str) -> None:
    with pytest.raises(ConfigError, match="LABEL_NEXT_SLICE_ID must be a Catalog slice id"):
        load_settings({**ENV, "LABEL_NEXT_SLICE_ID": value})


@pytest.mark.parametrize("backend", list(Backend))
def test_the_runs_config_names_a_slice_on_either_backend_and_it_survives_the_record(backend: Backend) -> None:
    settings = run({"train": {"label_next_slice": SLICE}}, backend)
    assert settings.label_next_slice == SLICE and settings.from_config == ("label_next_slice",)
    assert settings.shown()["setting: label_next_slice"] == f"{SLICE} (from config)"
    assert "label_next_slice" not in settings.training
    assert RunSettings.from_dict(settings.to_dict()) == settings


@pytest.mark.parametrize("off", [None, ""])
def test_null_or_empty_in_the_config_turns_the_deployments_slice_off(off: str | None) -> None:
    settings = run({"train": {"label_next_slice": off}}, LABEL_NEXT_SLICE_ID=SLICE)
    assert settings.label_next_slice is None and settings.from_config == ("label_next_slice",)
    assert run({"train": {"steps": 5}}, LABEL_NEXT_SLICE_ID=SLICE).label_next_slice == SLICE


@pytest.mark.parametrize("value", [42, "../x", ["a"], True])
def test_a_config_value_that_cannot_be_a_slice_id_fails_naming_the_key(value: object) -> None:
    with pytest.raises(RunConfigError, match=r"train\.label_next_slice must be a Catalog slice id"):
        run({"train": {"label_next_slice": value}})


def test_a_record_frozen_before_the_key_existed_has_no_slice() -> None:
    old = {k: v for k, v in defaults().to_dict().items() if k != "label_next_slice"}
    assert RunSettings.from_dict(old).label_next_slice is None
