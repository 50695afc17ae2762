"""A model-type registry a test may add to: what it registers is gone afterwards, so no other test sees a
type it did not ask for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.domain.model_types import MODEL_TYPES, ModelType


@pytest.fixture
def model_type_registry() -> Iterator[dict[str, ModelType]]:
    types = dict(MODEL_TYPES)
    yield MODEL_TYPES
    MODEL_TYPES.clear()
    MODEL_TYPES.update(types)
