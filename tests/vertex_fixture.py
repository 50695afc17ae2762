"""Reading the real Vertex AutoML output fixture (tests/fixtures/vertex_automl_bbox_batch_prediction_output.jsonl).

Its images were staged by Labelbox's reference repo as `<dataRowId>_<width>_<height>.jpg`; the chain's
own staging names differ (and carry no size), so this parsing lives with the tests that use the fixture.
"""

from __future__ import annotations


def fixture_row(uri: str) -> tuple[str, int, int]:
    """(data row id, width, height) from a fixture image URI."""
    stem = uri.split("?", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    data_row_id, width, height = stem.rsplit("_", 2)
    return data_row_id, int(width), int(height)
