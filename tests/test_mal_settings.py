"""The settings of model-assisted labeling: the deployment's LABEL_NEXT_PROJECT_ID / LABEL_NEXT_PRIORITY,
a run's `train.label_next_project` / `train.label_next_priority` over them, and their messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings
from shared.domain.model_types import Backend, Task
from shared.run_settings import RunSettings, resolve
from tests.test_config import local_env
from tests.test_run_settings import defaults, refused, run


def test_off_by_default_with_labelboxs_default_priority(tmp_path: Path) -> None:
    predict = load_settings(local_env(tmp_path)).predict
    assert (predict.label_next_project, predict.label_next_priority) == ("", 5)
    assert load_settings(local_env(tmp_path)).local.projects_dir == (tmp_path / "projects").resolve()  # type: ignore[union-attr]
    shown = defaults().shown()
    assert "setting: label_next_project" not in shown and "setting: label_next_priority" not in shown


def test_the_deployment_names_a_project_and_a_priority(tmp_path: Path) -> None:
    predict = load_settings(local_env(tmp_path, LABEL_NEXT_PROJECT_ID="cproj123", LABEL_NEXT_PRIORITY="1")).predict
    assert (predict.label_next_project, predict.label_next_priority) == ("cproj123", 1)
    shown = defaults(LABEL_NEXT_PROJECT_ID="cproj123", LABEL_NEXT_PRIORITY="1").shown()
    assert shown["setting: label_next_project"] == "cproj123" and shown["setting: label_next_priority"] == "1"


def test_bad_variables_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(local_env(tmp_path, LABEL_NEXT_PROJECT_ID="../other", LABEL_NEXT_PRIORITY="6"))
    message = str(caught.value)
    assert "LABEL_NEXT_PROJECT_ID must be a project id (letters, digits, - and _), not '../other'" in message
    assert "LABEL_NEXT_PRIORITY must be between 1 and 5, got 6" in message


def test_a_run_sets_or_clears_the_project_and_sets_the_priority() -> None:
    settings = run({"train": {"label_next_project": "my-project", "label_next_priority": 2}})
    assert (settings.label_next_project, settings.label_next_priority) == ("my-project", 2)
    assert settings.shown()["setting: label_next_project"] == "my-project (from config)"
    on = defaults(LABEL_NEXT_PROJECT_ID="deployed")
    off = resolve({"train": {"label_next_project": ""}}, on, task=Task.OBJECT_DETECTION, backend=Backend.LOCAL)
    assert off.label_next_project == "" and on.label_next_project == "deployed"
    assert RunSettings.from_dict(settings.to_dict()) == settings
    assert RunSettings.from_dict({"confidence_threshold": 0.3, "max_predictions": 5}).label_next_project == ""


def test_bad_run_keys_are_named() -> None:
    message = refused({"train": {"label_next_project": 12, "label_next_priority": 0}})
    assert "train.label_next_project must be a project id (a string), not 12" in message
    assert "train.label_next_priority must be between 1 and 5, not 0" in message
    assert "train.label_next_project must be a project id" in refused({"train": {"label_next_project": "a b"}})
    vertex = refused({"train": {"label_next_priority": 2.5}}, Backend.VERTEX)  # a key of both backends
    assert "train.label_next_priority must be an integer, not 2.5" in vertex
