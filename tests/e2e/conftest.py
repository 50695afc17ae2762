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
    """models, model_run and etl only: train cannot be reached, so the queue gives its hand-off up
    (after one quick redelivery) and the run fails after ETL. ETL runs in 3 shards of 20 rows."""
    data, _ = demo_data
    env = {
        "TRAIN_URL": "http://127.0.0.1:9/",
        "ETL_SHARD_ROWS": "20",
        "LOCAL_CALL_RETRIES": "1",
        "LOCAL_CALL_FIRST_RETRY_S": "0.2",
    }
    chain = LocalChain(data, env=env)
    chain.start(("models", "model_run", "etl"))
    yield chain
    chain.stop()


@pytest.fixture
def stage_sink() -> Iterator[StageSink]:
    """A downstream stage that accepts every hand-off and remembers the bodies."""
    with StageSink() as sink:
        yield sink
