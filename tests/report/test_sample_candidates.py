"""The report's samples chosen from shards' candidates are the ones one pass over all rows chooses, and a
candidate survives its trip through JSON (a shard stores its candidates, the fan-in reads them)."""

from __future__ import annotations

import json

import pytest

from shared.dataset.manifest import ManifestRow
from shared.domain.examples import Split
from shared.domain.model_types import Task
from shared.domain.predictions import PredictedBox, PredictedLabel, VertexPrediction
from shared.evaluation import Evaluated, Joined, evaluate_rows
from shared.report.assemble import SampleCandidate, chosen_samples, sample_candidates


def _rows(task: Task) -> list[ManifestRow]:
    rows = []
    for i in (7, 3, 11, 0, 5, 9, 1, 8, 2, 10, 4, 6):  # manifest order is not data row order
        split = Split.TEST if i % 2 else Split.VALIDATION
        if task is Task.OBJECT_DETECTION:
            boxes = (("cat", 10.0 + i, 20.0, 30.5, 40.25),)
            rows.append(ManifestRow(f"row-{i:02d}", f"gs://b/{i}.jpg", "image/jpeg", 100, 80, split, boxes=boxes))
        else:
            rows.append(ManifestRow(f"row-{i:02d}", f"gs://b/{i}.jpg", "image/png", 100, 80, split, labels=("cat",)))
    return rows


def _joined(task: Task, rows: list[ManifestRow]) -> Joined:
    joined = Joined()
    for n, row in enumerate(rows):
        if n == 2:
            joined.failed[row.data_row_id] = "vertex error 3"  # never predicted: still a candidate
            continue
        if task is Task.OBJECT_DETECTION:
            box = PredictedBox("cat", 0.3 + n / 20, 0.1, 0.1 + n / 40, 0.2, 0.6)
            joined.predictions[row.data_row_id] = VertexPrediction(row.image_uri, None, boxes=(box,))
        else:
            labels = (PredictedLabel("cat", 0.9 - n / 20), PredictedLabel("dog", n / 20))
            joined.predictions[row.data_row_id] = VertexPrediction(row.image_uri, None, labels=labels)
    return joined


@pytest.mark.parametrize("task", [Task.OBJECT_DETECTION, Task.SINGLE_LABEL_CLASSIFICATION])
@pytest.mark.parametrize("samples", [1, 3, 5, 20])
def test_the_first_rows_of_all_shards_candidates_are_the_first_rows_of_all(task: Task, samples: int) -> None:
    rows = _rows(task)
    options = {"confidence_threshold": 0.4, "max_predictions": 10, "uuid_seed": "run:0"}

    def evaluated(part: list[ManifestRow]) -> Evaluated:
        joined = _joined(task, rows)
        ids = {r.data_row_id for r in part}
        mine = Joined(
            predictions={k: v for k, v in joined.predictions.items() if k in ids},
            failed={k: v for k, v in joined.failed.items() if k in ids},
        )
        return evaluate_rows(part, mine, task=task, feature_for={}, question="animal", **options)

    alone = sample_candidates(evaluated(rows), rows, threshold=0.4, samples=samples)
    shards = [rows[i : i + 5] for i in range(0, len(rows), 5)]
    candidates = [
        SampleCandidate.from_json(json.loads(json.dumps(c.to_json())))
        for shard in shards
        for c in sample_candidates(evaluated(shard), shard, threshold=0.4, samples=samples)
    ]
    assert chosen_samples(candidates, samples) == alone
    assert [c.row.data_row_id for c in alone] == sorted(r.data_row_id for r in rows)[:samples]
    assert any(c.predictions for c in alone)
