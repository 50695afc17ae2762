"""A demo model run and a local chain of real functions on loopback, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run
from shared.local_chain import LocalChain
from tests.fakes import StageSink


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("chain")
    create_demo_model_run(data / "model_runs", images=60, seed=11)
    model_run_id, _ = _ids(11)
    return data, model_run_id


@pytest.fixture(scope="module")
def webhook_chain(demo_data: tuple[Path, str]) -> Iterator[LocalChain]:
    """models, model_run and etl only: the hand-off to train is refused, so runs stop after ETL."""
    data, _ = demo_data
    chain = LocalChain(data, env={"TRAIN_URL": "http://127.0.0.1:9/"})
    chain.start(("models", "model_run", "etl"))
    yield chain
    chain.stop()


@pytest.fixture
def stage_sink() -> Iterator[StageSink]:
    """A downstream stage that accepts every hand-off and remembers the bodies."""
    with StageSink() as sink:
        yield sink
