"""The delivery plan's cut and routing: every held-out row in exactly one shard, every chunk owned by
exactly one shard, and lines routed to the chunk of their row, as `parse_prediction_line` reads them."""

from __future__ import annotations

import itertools
import json

import pytest

from shared.formats.vertex_prediction import parse_prediction_line
from shared.stages.inference_plan import DeliveryPlan, Layout, content_uri_of


def _plan(chunks: list[tuple[int, int]], shard_rows: int) -> DeliveryPlan:
    return DeliveryPlan(generation=1, output_uri="gs://b/o", splits=["test"], shard_rows=shard_rows, chunks=chunks)


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 5, 7, 100])
@pytest.mark.parametrize("chunks", [[(0, 10)], [(0, 3), (2, 1), (3, 6), (7, 2)], [(5, 1)], [(0, 4), (1, 4)]])
def test_the_shards_cut_the_held_out_rows_once_and_own_each_chunk_once(
    chunks: list[tuple[int, int]], shard_rows: int
) -> None:
    plan = _plan(chunks, shard_rows)
    first_rows = plan.first_rows()
    assert first_rows[0] == 0 and all(b - a == shard_rows for a, b in itertools.pairwise(first_rows))
    seen: dict[int, list[int]] = {chunk: [] for chunk, _n in chunks}
    owners: dict[int, list[int]] = {chunk: [] for chunk, _n in chunks}
    for shard in range(len(first_rows)):
        spans = plan.spans(shard)
        assert sum(s.stop - s.first for s in spans) == min(shard_rows, plan.rows - first_rows[shard])
        for span in spans:
            seen[span.chunk].extend(range(span.first, span.stop))
            if span.owner:
                owners[span.chunk].append(shard)
                assert span.first == 0  # the owner holds the chunk's first held-out row
    assert seen == {chunk: list(range(n)) for chunk, n in chunks}
    assert all(len(o) == 1 for o in owners.values())


def test_the_plan_round_trips_through_json() -> None:
    plan = _plan([(0, 3), (4, 2)], 2)
    plan.parts, plan.lines, plan.stray_lines = {0: 2, 4: 1, -1: 1}, 9, 1
    assert DeliveryPlan.from_json(json.loads(plan.encode())) == plan


def test_lines_go_to_the_chunk_their_image_names_and_moved_rows_to_theirs() -> None:
    folder = {"gs://b/runs/r/images/00000/a.jpg": 0, "gs://b/runs/r/images/00001/b.jpg": 1}
    layout = Layout(lambda uri: folder.get(uri))
    layout.add(0, "gs://b/runs/r/images/00000/a.jpg")
    layout.add(0, "gs://b/old-layout/c.jpg")  # an image that names no chunk: remembered
    layout.add(3, "gs://b/runs/r/images/00001/b.jpg")  # one that names another chunk: remembered
    assert layout.counts == {0: 2, 3: 1}
    assert layout.moved == {"gs://b/old-layout/c.jpg": 0, "gs://b/runs/r/images/00001/b.jpg": 3}
    assert layout.route("gs://b/runs/r/images/00000/a.jpg") == 0
    assert layout.route("gs://b/old-layout/c.jpg") == 0
    assert layout.route("gs://b/runs/r/images/00001/b.jpg") == 3
    assert layout.route("gs://b/unknown.jpg") is None and layout.route(None) is None and layout.route("") is None


@pytest.mark.parametrize(
    "line",
    [
        b'{"instance": {"content": "gs://b/x.jpg"}, "prediction": {}}',
        b'{"instance": {"content": "gs://b/x.jpg"}, "error": {"code": 3, "message": "bad"}}',
        b'{"instance": {"content": ""}, "prediction": {}}',
        b'{"instance": {"content": 5}}',
        b'{"instance": "gs://b/x.jpg"}',
        b'["not", "an", "object"]',
        b"{not json",
        b'{"instance": {"content": "gs://b/\xff.jpg"}}',
        '{"instance": {"content": "gs://b/é.jpg"}}'.encode(),
        '{"instance": {"content": "gs://b/x.jpg"}}'.encode("utf-16"),
    ],
)
def test_the_routed_image_is_the_one_the_parser_reads(line: bytes) -> None:
    assert content_uri_of(line) == parse_prediction_line(line).content_uri
