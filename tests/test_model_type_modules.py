"""CHAIN_MODEL_TYPE_MODULES: your own model types, imported at start-up by `load_settings`, before any is
offered; a module that cannot be imported stops the function with its name, like any bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import model_type_modules
from shared.config import ConfigError, load_settings
from shared.domain.model_types import Backend, ModelType, lookup, offered

VAR = "CHAIN_MODEL_TYPE_MODULES"
EXAMPLE = "shared.examples.large_object_detector"
ENV = {
    "CHAIN_MODE": "local",
    "WEBHOOK_SECRET": "s",
    **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
}
MODULE = """
from shared.domain.model_types import Backend, ModelType, Task, register

register(ModelType("{name}", Task.SINGLE_LABEL_CLASSIFICATION, {{Backend.LOCAL: Backend.LOCAL}}, "a test's"))
"""


def write_module(folder: Path, module: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(text)


def test_the_readme_example_is_offered_by_both_deployment_kinds_once_named(
    model_type_registry: dict[str, ModelType],
) -> None:
    assert "large_object_detector" not in load_settings(ENV).model_types()  # not without the variable
    settings = load_settings({**ENV, VAR: f" {EXAMPLE} ,"})
    assert "large_object_detector" in settings.model_types()  # what GET /models lists
    mine = lookup("large_object_detector")
    assert mine.trainers == {Backend.VERTEX: Backend.VERTEX_CUSTOM, Backend.LOCAL: Backend.LOCAL}
    assert offered(Backend.VERTEX)["large_object_detector"] is mine
    assert load_settings({**ENV, VAR: EXAMPLE}).model_types()["large_object_detector"] is mine  # imported once


def test_every_module_named_is_imported_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_type_registry: dict[str, ModelType]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "types_one", MODULE.format(name="radio_one"))
    write_module(tmp_path, "types_two", MODULE.format(name="radio_two"))
    assert model_type_modules.load({VAR: "types_one,types_two"}) == []
    assert {"radio_one", "radio_two"} <= set(load_settings(ENV).model_types())
    assert model_type_modules.module_names({VAR: " a , ,b.c,"}) == ["a", "b.c"]
    assert model_type_modules.load({}) == [] and model_type_modules.load({VAR: " "}) == []


def test_a_module_that_is_not_there_is_named_with_where_to_put_it(model_type_registry: dict[str, ModelType]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, VAR: f"{EXAMPLE},shared.my_model_types"})
    assert (
        "CHAIN_MODEL_TYPE_MODULES: no module named 'shared.my_model_types' (place it under shared/, which the "
        "functions ship, or on PYTHONPATH)"
    ) in str(caught.value)
    assert "large_object_detector" in offered(Backend.LOCAL)  # the modules that are there still load


def test_an_error_inside_the_module_is_named_with_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_type_registry: dict[str, ModelType]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "types_broken", "raise RuntimeError('no GPU quota in this project')\n")
    write_module(tmp_path, "types_missing_dependency", "import a_package_nobody_installed\n")
    write_module(tmp_path, "types_duplicate", MODULE.format(name="local_detector"))
    problems = model_type_modules.load({VAR: "types_broken,types_missing_dependency,types_duplicate,not a name"})
    assert problems == [
        "CHAIN_MODEL_TYPE_MODULES: importing 'types_broken' failed: RuntimeError: no GPU quota in this project",
        "CHAIN_MODEL_TYPE_MODULES: importing 'types_missing_dependency' failed: ModuleNotFoundError: "
        "No module named 'a_package_nobody_installed'",
        "CHAIN_MODEL_TYPE_MODULES: importing 'types_duplicate' failed: ValueError: "
        "model type 'local_detector' is already registered",
        "CHAIN_MODEL_TYPE_MODULES: 'not a name' is not a module name (dotted, like shared.my_model_types)",
    ]
    with pytest.raises(ConfigError, match="importing 'types_broken' failed: RuntimeError"):
        load_settings({**ENV, VAR: "types_broken"})


def test_a_module_that_failed_half_way_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_type_registry: dict[str, ModelType]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "types_half", MODULE.format(name="radio_half") + "raise ImportError('then broke')\n")
    first = model_type_modules.load({VAR: "types_half"})
    assert first == ["CHAIN_MODEL_TYPE_MODULES: importing 'types_half' failed: ImportError: then broke"]
    assert model_type_modules.load({VAR: "types_half"}) == first  # not "radio_half is already registered"


def test_the_readme_shows_the_whole_example_module_as_it_is() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Add your own model type") :]
    listing = section[section.index("```python\n") + len("```python\n") :]
    listing = listing[: listing.index("```\n")]
    assert listing == (root / "shared" / "examples" / "large_object_detector.py").read_text()
    assert f"{VAR}={EXAMPLE}" in section
