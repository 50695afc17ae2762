"""Labelbox ontologies and model-assisted labeling (MAL) rows. Pure, no I/O.

An ontology is Labelbox's normalized ontology JSON (`Ontology.normalized`): `{"tools": [{"name", "tool",
"featureSchemaId", ...}], "classifications": [{"name", "type", "featureSchemaId", "options": [{"value",
"label", "featureSchemaId"}]}]}`. The local labeling project's `ontology.json` has the same shape.

The model's features are matched to a project's by name and kind (a "car" rectangle is not a "car"
polygon), a classification's options by value, so a prediction of the model run becomes a pre-label of
the project's own feature: Labelbox's send-to-annotate takes the matches as a feature schema id mapping,
the local project gets MAL import rows naming the project's features.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "labelbox-vertex-chain/pre-labels")
_GEOMETRIES = {
    "bbox": "rectangle",
    "polygon": "polygon",
    "line": "line",
    "point": "point",
    "mask": "raster-segmentation",
}
_ANNOTATION_ONLY = ("confidence", "customMetrics")  # prediction-only keys: a pre-label is not a prediction


@dataclass(frozen=True)
class Feature:
    """A top-level feature: a tool (kind "rectangle", "polygon", ...) or a classification ("radio",
    "checklist", "text"); kind "" matches any kind (a name known only by name)."""

    name: str
    kind: str = ""
    schema_id: str | None = None
    options: Mapping[str, str | None] = field(default_factory=dict)  # option value -> its schema id

    def shown(self) -> str:
        return f"{self.name} ({self.kind})" if self.kind else self.name


def features_of(ontology: Mapping[str, Any] | None) -> list[Feature]:
    """The ontology's top-level tools and classifications (nested classifications are not matched)."""
    ontology = ontology or {}
    out = []
    for tool in ontology.get("tools") or ():
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            out.append(Feature(tool["name"], str(tool.get("tool") or ""), tool.get("featureSchemaId")))
    for question in ontology.get("classifications") or ():
        if not isinstance(question, Mapping) or not isinstance(
            question.get("name") or question.get("instructions"), str
        ):
            continue
        options = {}
        for option in question.get("options") or ():
            value = option.get("value") or option.get("label") if isinstance(option, Mapping) else None
            if isinstance(value, str):
                options[value] = option.get("featureSchemaId")
        name = question.get("name") or question["instructions"]
        out.append(Feature(name, str(question.get("type") or ""), question.get("featureSchemaId"), options))
    return out


def _kind_of(row: Mapping[str, Any]) -> str:
    for key, kind in _GEOMETRIES.items():
        if key in row:
            return kind
    answer = row.get("answer")
    if isinstance(answer, list):
        return "checklist"
    if isinstance(answer, Mapping):
        return "radio"
    return "text" if isinstance(answer, str) else ""


def _answer_names(answer: Any) -> list[str]:
    answers = answer if isinstance(answer, list) else [answer]
    return [a["name"] for a in answers if isinstance(a, Mapping) and isinstance(a.get("name"), str)]


def is_annotation(row: Mapping[str, Any]) -> bool:
    """A prediction row that is an annotation (not a metric row) and names its feature."""
    return "metricValue" not in row and isinstance(row.get("name"), str)


def features_of_rows(rows: Iterable[Mapping[str, Any]]) -> list[Feature]:
    """The features that name-based prediction rows use, with the kind their shape shows and the
    options their answers name."""
    found: dict[tuple[str, str], dict[str, str | None]] = {}
    for row in rows:
        if is_annotation(row):
            options = found.setdefault((row["name"], _kind_of(row)), {})
            options.update(dict.fromkeys(_answer_names(row.get("answer"))))
    return [Feature(name, kind, None, options) for (name, kind), options in sorted(found.items())]


@dataclass(frozen=True)
class FeatureMatch:
    """The model's features that the project's ontology has, and the names of those it lacks."""

    pairs: tuple[tuple[Feature, Feature], ...]  # (the model's, the project's)
    unmatched: tuple[str, ...]

    def schema_mapping(self) -> dict[str, str]:
        """Model feature schema id -> project feature schema id, options included: what Labelbox's
        send-to-annotate takes as `predictions_ontology_mapping`."""
        mapping: dict[str, str] = {}
        for mine, theirs in self.pairs:
            if mine.schema_id and theirs.schema_id:
                mapping[mine.schema_id] = theirs.schema_id
            for value, schema_id in mine.options.items():
                target = theirs.options.get(value)
                if schema_id and target:
                    mapping[schema_id] = target
        return mapping

    def project_feature(self, name: str, kind: str) -> Feature | None:
        for mine, theirs in self.pairs:
            if mine.name == name and (not mine.kind or not kind or mine.kind == kind):
                return theirs
        return None


def match_features(model: Sequence[Feature], project: Sequence[Feature], *, only: Collection[str] = ()) -> FeatureMatch:
    """Each of the model's features (those named in `only`, when given) to the project's feature of the
    same name and kind; a missing option of a matched classification counts as unmatched too."""
    wanted = [f for f in model if not only or f.name in only]
    wanted += [Feature(name) for name in sorted(set(only) - {f.name for f in model})]  # known by name only
    pairs, unmatched = [], []
    for mine in wanted:
        theirs = next(
            (p for p in project if p.name == mine.name and (not mine.kind or not p.kind or p.kind == mine.kind)), None
        )
        if theirs is None:
            unmatched.append(mine.shown())
            continue
        pairs.append((mine, theirs))
        if theirs.options or theirs.kind in ("radio", "checklist"):
            unmatched.extend(f"{mine.name}: {value}" for value in mine.options if value not in theirs.options)
    return FeatureMatch(tuple(pairs), tuple(unmatched))


def _renamed(feature: Feature, fallback: str) -> dict[str, str]:
    return {"schemaId": feature.schema_id} if feature.schema_id else {"name": feature.name or fallback}


def _answer(answer: Any, theirs: Feature) -> Any:
    if isinstance(answer, str):
        return answer
    answers = answer if isinstance(answer, list) else [answer]
    out = []
    for item in answers:
        if not isinstance(item, Mapping) or item.get("name") not in theirs.options:
            continue
        schema_id = theirs.options[item["name"]]
        out.append({"schemaId": schema_id} if schema_id else {"name": item["name"]})
    return out if isinstance(answer, list) else (out[0] if out else None)


def mal_rows(
    rows: Iterable[Mapping[str, Any]], match: FeatureMatch, *, data_row_ids: Collection[str], uuid_seed: str
) -> list[dict[str, Any]]:
    """The prediction rows of `data_row_ids` as Labelbox MAL import rows for the project: each feature
    (and answer) named as the project's ontology names it (`schemaId` where it has one), without the
    prediction-only confidence and metrics, with a fresh uuid per pre-label (derived, so a retry writes
    the same). Rows of unmatched features, metric rows and other data rows are left out."""
    wanted = set(data_row_ids)
    out = []
    for row in rows:
        data_row = row.get("dataRow") or {}
        if not is_annotation(row) or data_row.get("id") not in wanted:
            continue
        theirs = match.project_feature(row["name"], _kind_of(row))
        if theirs is None:
            continue
        mal = {k: v for k, v in row.items() if k not in (*_ANNOTATION_ONLY, "name", "uuid", "schemaId")}
        mal.update(_renamed(theirs, row["name"]))
        if "answer" in row:
            mal["answer"] = _answer(row["answer"], theirs)
            if not mal["answer"]:
                continue
        if "classifications" in mal:
            mal["classifications"] = []  # nested answers are not matched: never pre-label a foreign one
        mal["uuid"] = str(uuid.uuid5(_UUID_NAMESPACE, f"{uuid_seed}/{row.get('uuid')}/{data_row['id']}"))
        mal["dataRow"] = {"id": data_row["id"]}
        out.append(mal)
    return out
