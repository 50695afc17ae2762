"""A model-type registry a test may add to: what it registers, and the modules it loads through
CHAIN_MODEL_TYPE_MODULES (the README's examples, or modules a test writes under its tmp_path), are gone
afterwards, so no other test sees a type it did not ask for."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator

import pytest

from shared import model_type_modules
from shared.domain.model_types import MODEL_TYPES, ModelType


def _loaded_for_a_test(name: str) -> bool:
    where = getattr(sys.modules[name], "__file__", None) or ""
    return name.startswith("shared.examples") or where.startswith(tempfile.gettempdir())


@pytest.fixture
def model_type_registry() -> Iterator[dict[str, ModelType]]:
    types, modules, failed = dict(MODEL_TYPES), set(sys.modules), dict(model_type_modules._failed)
    yield MODEL_TYPES
    MODEL_TYPES.clear()
    MODEL_TYPES.update(types)
    for name in [n for n in set(sys.modules) - modules if _loaded_for_a_test(n)]:
        del sys.modules[name]
    model_type_modules._failed.clear()
    model_type_modules._failed.update(failed)
