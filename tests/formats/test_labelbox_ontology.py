"""Matching the model's features to a labeling project's ontology, and the MAL rows that come of it."""

from __future__ import annotations

from shared.formats.labelbox_ontology import (
    Feature,
    features_of,
    features_of_rows,
    mal_rows,
    match_features,
)

MODEL = {
    "tools": [
        {"tool": "rectangle", "name": "car", "featureSchemaId": "m-car"},
        {"tool": "rectangle", "name": "bus", "featureSchemaId": "m-bus"},
        {"tool": "polygon", "name": "road", "featureSchemaId": "m-road"},
    ],
    "classifications": [
        {
            "type": "radio",
            "name": "weather",
            "featureSchemaId": "m-weather",
            "options": [
                {"value": "sunny", "label": "Sunny", "featureSchemaId": "m-sunny"},
                {"value": "rainy", "label": "Rainy", "featureSchemaId": "m-rainy"},
            ],
        }
    ],
}
PROJECT = {
    "tools": [
        {"tool": "rectangle", "name": "car", "featureSchemaId": "p-car"},
        {"tool": "polygon", "name": "bus", "featureSchemaId": "p-bus"},  # the same name, another kind
    ],
    "classifications": [
        {
            "type": "radio",
            "instructions": "weather",  # older ontologies name a question by its instructions only
            "featureSchemaId": "p-weather",
            "options": [{"value": "sunny", "featureSchemaId": "p-sunny"}],
        }
    ],
}


def test_features_are_matched_by_name_and_kind_and_options_by_value() -> None:
    match = match_features(features_of(MODEL), features_of(PROJECT))
    assert [(mine.name, theirs.schema_id) for mine, theirs in match.pairs] == [
        ("car", "p-car"),
        ("weather", "p-weather"),
    ]
    assert match.unmatched == ("bus (rectangle)", "road (polygon)", "weather: rainy")
    assert match.schema_mapping() == {"m-car": "p-car", "m-weather": "p-weather", "m-sunny": "p-sunny"}


def test_only_the_features_asked_for_are_matched() -> None:
    match = match_features(features_of(MODEL), features_of(PROJECT), only=["car", "truck"])
    assert [mine.name for mine, _ in match.pairs] == ["car"]
    assert match.unmatched == ("truck",)  # known by name only: not in the model's ontology, nor the project's


def test_an_ontology_with_none_of_the_features_matches_nothing() -> None:
    match = match_features(features_of(MODEL), features_of({"tools": [{"tool": "rectangle", "name": "tree"}]}))
    assert match.pairs == () and "car (rectangle)" in match.unmatched


def test_prediction_rows_become_mal_rows_of_the_projects_features() -> None:
    rows = [
        {
            "uuid": "u1",
            "dataRow": {"id": "dr1"},
            "name": "car",
            "confidence": 0.9,
            "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
        },
        {"uuid": "u2", "dataRow": {"id": "dr1"}, "name": "bus", "confidence": 0.8, "bbox": {"top": 1}},
        {"uuid": "u3", "dataRow": {"id": "dr1"}, "name": "weather", "answer": {"name": "sunny", "confidence": 0.7}},
        {"uuid": "u4", "dataRow": {"id": "dr1"}, "name": "weather", "answer": {"name": "rainy", "confidence": 0.6}},
        {"dataRow": {"id": "dr1"}, "metricName": "al_entropy", "metricValue": 0.4, "aggregation": "ARITHMETIC_MEAN"},
        {"uuid": "u5", "dataRow": {"id": "dr2"}, "name": "car", "bbox": {"top": 5}},
    ]
    model = features_of_rows(rows)
    assert [(f.name, f.kind, dict(f.options)) for f in model] == [
        ("bus", "rectangle", {}),
        ("car", "rectangle", {}),
        ("weather", "radio", {"sunny": None, "rainy": None}),
    ]
    match = match_features(model, features_of(PROJECT))
    out = mal_rows(rows, match, data_row_ids=["dr1"], uuid_seed="p/batch")
    assert [{k: v for k, v in r.items() if k != "uuid"} for r in out] == [
        {"dataRow": {"id": "dr1"}, "schemaId": "p-car", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}},
        {"dataRow": {"id": "dr1"}, "schemaId": "p-weather", "answer": {"schemaId": "p-sunny"}},
    ]
    assert len({r["uuid"] for r in out}) == 2 and not {"u1", "u3"} & {r["uuid"] for r in out}
    assert out == mal_rows(rows, match, data_row_ids=["dr1"], uuid_seed="p/batch")  # a retry writes the same


def test_a_project_without_schema_ids_is_named_by_feature_names() -> None:
    rows = [{"uuid": "u", "dataRow": {"id": "d"}, "name": "tags", "answer": [{"name": "a"}, {"name": "b"}]}]
    project = [Feature("tags", "checklist", None, {"a": None})]
    match = match_features(features_of_rows(rows), project)
    assert match.unmatched == ("tags: b",)
    (row,) = mal_rows(rows, match, data_row_ids=["d"], uuid_seed="s")
    assert row["name"] == "tags" and row["answer"] == [{"name": "a"}]
