"""A demo model run and a local chain of real functions on loopback, shared by the chain tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.demo import _ids, create_demo_model_run
from shared.local_chain import LocalChain


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


class StageSink:
    """A stand-in for a downstream stage: accepts every hand-off and remembers the bodies."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def stage_sink() -> Iterator[StageSink]:
    sink = StageSink()
    yield sink
    sink.close()
