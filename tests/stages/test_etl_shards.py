"""ETL in shards, delivered by hand as the queue would deliver them: the same result as one shard,
repeats that do nothing, a crashing shard retried then failing the run by name, and re-runs that
redo only what is unfinished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.dataset.image_staging import ImageStager
from shared.demo import create_demo_model_run
from shared.platform.local_model_run import LocalModelRuns
from shared.services import Services
from shared.stages.etl import run_etl, run_etl_shard
from shared.stages.runner import StageAnswer, StageCall, run_stage
from shared.stages.shards import run_shard
from tests.fakes import HandedOff, RecordingChain
from tests.stages.world import call, create_run, services_for

IMAGES = 40
SHARD_ROWS = 7  # 40 rows: shards of 7, the last of 5


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etl-shards-demo") / "model_runs"
    create_demo_model_run(root, images=IMAGES, seed=23)
    return root


class Run:
    """One run of the demo model run, its stage calls made by hand."""

    def __init__(self, tmp: Path, template: Path, **env: str) -> None:
        root = tmp / "model_runs"
        shutil.copytree(template, root)
        (folder,) = root.iterdir()
        self.folder, self.run_id, self.bucket = folder, folder.name, tmp / "bucket"
        self.chain = RecordingChain()
        settings = {"ETL_COPY_CONCURRENCY": "2", "ETL_SHARD_ROWS": str(SHARD_ROWS), **env}
        self.services: Services = services_for(tmp, LocalModelRuns(root), chain=self.chain, **settings)
        create_run(self.services, self.run_id)

    def plain(self, **flags: Any) -> StageAnswer:
        return run_stage(self.services, StageCall(self.run_id, **flags), "etl", run_etl)

    def shard(self, index: int) -> StageAnswer:
        return run_shard(self.services, StageCall(self.run_id, shard=index), "etl", run_etl_shard)

    def queued(self) -> list[HandedOff]:
        return self.chain.take_internal()

    def record(self) -> dict[str, Any]:
        return json.loads((self.bucket / "runs" / self.run_id / "run.json").read_text())

    def images(self) -> dict[str, int]:
        folder = self.bucket / "runs" / self.run_id / "images"
        return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.glob("*/*")}

    def lines(self, kind: str) -> list[dict[str, Any]]:
        folder = self.bucket / "runs" / self.run_id / "etl"
        return [json.loads(x) for p in sorted(folder.glob(f"{kind}-*.jsonl")) for x in p.read_text().splitlines() if x]


def _spoil(run: Run) -> None:
    """A repeated data row id across shards (row 2 again as row 20), and a row that is not JSON-shaped."""
    rows = [json.loads(line) for line in (run.folder / "export.ndjson").read_text().splitlines()]
    rows[20]["data_row"]["id"] = rows[2]["data_row"]["id"]
    rows[30]["data_row"] = "not an object"
    (run.folder / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _without_shard_folder(line: dict[str, Any]) -> str:
    text = json.dumps(line, sort_keys=True)
    for shard in range(10):
        text = text.replace(f"/images/{shard:05d}/", "/images/")
    return text


def test_sharded_etl_counts_and_writes_exactly_what_one_shard_does(tmp_path: Path, template: Path) -> None:
    sharded, whole = Run(tmp_path / "a", template), Run(tmp_path / "b", template, ETL_SHARD_ROWS="1000")
    for run in (sharded, whole):
        _spoil(run)
        answer = call(run.services, "etl", run.run_id)
        assert answer.status == 200 and answer.body["outcome"] == "succeeded", answer.body
    assert sharded.record()["shards"]["etl"]["count"] == 6 and whole.record()["shards"]["etl"]["count"] == 1
    quality = sharded.record()["data_quality"]
    assert quality == whole.record()["data_quality"]
    assert quality["rows_skipped"] == {"duplicate data row id": 1, "row without a data row id": 1}
    assert quality["rows_kept"] == IMAGES - 2
    for kind in ("vertex_import", "manifest"):
        assert sorted(map(_without_shard_folder, sharded.lines(kind))) == sorted(
            map(_without_shard_folder, whole.lines(kind))
        )
    assert sharded.chain.handoffs == [("train", sharded.run_id)]


def test_a_repeated_shard_call_does_nothing_and_its_fan_in_has_the_same_name(tmp_path: Path, template: Path) -> None:
    run = Run(tmp_path, template)
    assert run.plain().status == 202
    shard_calls = run.queued()
    assert [c.shard for c in shard_calls] == list(range(6))
    for c in shard_calls:
        assert run.shard(c.shard).body["outcome"] == "succeeded"  # type: ignore[arg-type]
    (fan_in,) = run.queued()  # only the last completion queued the fan-in
    staged = run.images()
    again = run.shard(3)  # the queue delivered shard 3 twice
    assert again.status == 200 and again.body["outcome"] == "already_done"
    (repeat,) = run.queued()
    assert repeat.key == fan_in.key  # the same name: the queue delivers the fan-in once
    assert run.images() == staged  # nothing copied again


def test_a_crashing_shard_is_retried_then_fails_the_run_naming_the_shard_and_its_rows(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(tmp_path, template, SHARD_ATTEMPTS="2")
    original = ImageStager.stage_many

    def flaky(self: ImageStager, examples: Any) -> Any:
        if self.shard == 1:
            raise RuntimeError("the disk went away")
        return original(self, examples)

    monkeypatch.setattr(ImageStager, "stage_many", flaky)
    assert run.plain().status == 202
    run.queued()
    first = run.shard(1)
    assert first.status == 503 and first.body["outcome"] == "retry"  # the queue delivers it again
    assert run.record()["status"] == "running"
    second = run.shard(1)
    assert second.status == 200 and second.body["outcome"] == "failed"
    record = run.record()
    assert record["status"] == "failed"
    assert (
        "shard 1 (rows 7-13) failed 2 times (SHARD_ATTEMPTS=2), last with RuntimeError: the disk went away"
        in (record["error"])
    )
    assert "re-run etl" in record["error"]


def test_a_re_run_before_the_fan_in_fans_out_only_the_unfinished_shards(tmp_path: Path, template: Path) -> None:
    run = Run(tmp_path, template)
    run.plain()
    first = run.queued()
    for c in first[:2]:
        run.shard(c.shard)  # type: ignore[arg-type]
    assert run.queued() == []  # no fan-in yet
    again = run.plain()  # an operator's curl, or a nudge: the other four calls were lost
    assert again.status == 202 and again.body["unfinished"] == 4
    second = run.queued()
    assert [c.shard for c in second] == [2, 3, 4, 5]
    assert {c.key for c in second}.isdisjoint({c.key for c in first})  # new names: the queue delivers them
    for c in second:
        run.shard(c.shard)  # type: ignore[arg-type]
    assert len(run.queued()) == 1  # the fan-in
    done = run.plain()
    assert done.status == 200 and done.body["data_quality"]["rows_kept"] == IMAGES
    assert run.record()["shards"]["etl"]["dispatches"] == 2
    assert run.chain.handoffs == [("train", run.run_id)]


def test_a_forced_re_run_splits_anew_and_no_shard_of_the_old_split_counts(tmp_path: Path, template: Path) -> None:
    run = Run(tmp_path, template)
    assert call(run.services, "etl", run.run_id).body["outcome"] == "succeeded"
    staged = run.images()
    forced = call(run.services, "etl", run.run_id, force=True)
    assert forced.status == 200 and forced.body["outcome"] == "succeeded", forced.body
    record = run.record()
    assert record["shards"]["etl"]["generation"] == 2
    quality = record["data_quality"]
    assert quality["images_already_staged"] == IMAGES and quality.get("images_copied", 0) == 0  # redone, not recopied
    assert run.images() == staged
    first, second = [k for k in run.chain.keys if k.startswith("train:")]  # a new split hands off anew
    assert first != second and ":g2" in second
