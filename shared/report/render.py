"""The run report: one self-contained HTML document a user can open anywhere, offline.

No JavaScript, no external CSS, fonts or images: charts are inline SVG, images are data URIs, and a
Content-Security-Policy forbids anything else, so text from users (labels, ids) can never load or run
something even if it slipped past escaping. Each section has a stable id (#summary, #data-quality,
#metrics, #pr-curves, #confusion-matrix, #samples) that links and tests rely on.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.report.charts import (
    GROUND_TRUTH_COLOUR,
    PALETTE,
    PREDICTION_COLOUR,
    curve_from,
    esc,
    pr_chart,
    sample_overlay,
)
from shared.report.data import ReportData, ReportSample, SampleBox, SampleItem
from shared.report.images import embed_image

MAX_SAMPLES = 24
NA = "n/a"
SECTIONS = (
    ("summary", "Summary"),
    ("data-quality", "Data quality"),
    ("metrics", "Metrics"),
    ("pr-curves", "Precision-recall"),
    ("confusion-matrix", "Confusion matrix"),
    ("samples", "Samples"),
    ("label-next", "Label these next"),
)
_SPLIT_ORDER = ("training", "validation", "test", "unassigned")
_WORDS = {
    "map50": "mAP@50",
    "map50_95": "mAP@50-95",
    "ap50": "AP50",
    "ap50_95": "AP50-95",
    "ap": "AP",
    "f1": "F1",
    "macro_f1": "Macro F1",
    "best_f1": "Best F1",
    "id": "ID",
    "ids": "IDs",
    "gpu": "GPU",
    "cpu": "CPU",
    "iou": "IoU",
    "url": "URL",
    "uri": "URI",
    "eta": "ETA",
}
# What the rows of a data-quality table are, by its key; other keys are read by their words (_row_heading).
_ROW_HEADINGS = {
    "rows_skipped": "Reason",
    "boxes_dropped": "Reason",
    "warnings": "Reason",
    "examples": "Reason",
    "labels_dropped": "Class",
    "boxes_per_class": "Class",
    "images_per_split": "Split",
}
_ETA_KEY = re.compile(r"(^|_)eta($|_)", re.I)  # eta_s, job_eta, eta_seconds; not "beta" or "metadata"
_UNDER_WAY = frozenset({"running", "pending"})


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string."""
    body = [
        _header(data),
        _summary(data),
        _data_quality(data.data_quality),
        _metrics(data),
        _pr_curves(data),
        _confusion_matrix(data),
        _samples(data),
        _label_next(data),
    ]
    title = f"Model run report · {data.model_type} · {data.run_id}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>" + "\n".join(body) + "\n</body></html>\n"
    )


# -- sections -------------------------------------------------------------------------------------------


def _header(data: ReportData) -> str:
    links = "".join(f'<a href="#{section}">{esc(name)}</a>' for section, name in SECTIONS)
    return (
        f'<header><h1>Model run report</h1><p class="sub">{esc(data.model_type)} · '
        f"{esc(_words(data.task))} · run <code>{esc(data.run_id)}</code> "
        f"{_status_badge(data.status)}</p><nav>{links}</nav></header>"
    )


def _summary(data: ReportData) -> str:
    rows = [
        ("Run", f"<code>{esc(data.run_id)}</code>"),
        ("Labelbox model run", f"<code>{esc(data.model_run_id)}</code>"),
        ("Model type", esc(data.model_type)),
        ("Task", esc(_words(data.task))),
        ("Training backend", esc(data.backend)),
        ("Status", _status_badge(data.status)),
        ("Created", esc(data.created_at or NA)),
        ("Finished", esc(data.finished_at or NA)),
        ("Duration", esc(_duration_between(data.created_at, data.finished_at))),
    ]
    parts = [_section_open("summary", "Summary")]
    if data.error:
        parts.append(f'<p class="error"><strong>Error:</strong> {esc(data.error)}</p>')
    parts.append(_key_values(rows))
    # The training progress the monitor recorded last ends with an ETA; once the job has finished, an
    # "ETA 0.0 s" says nothing true, so a finished run's report leaves ETAs out.
    finished = str(data.status).lower() not in _UNDER_WAY
    training = {k: v for k, v in data.training.items() if not (finished and _ETA_KEY.search(str(k)))}
    if training:
        parts.append("<h3>Training</h3>")
        parts.append(_key_values((esc(_name(k, v)), esc(_value(k, v))) for k, v in training.items()))
    else:
        parts.append('<p class="muted">No training details were recorded.</p>')
    parts.append("</section>")
    return "".join(parts)


def _data_quality(counts: Mapping[str, Any]) -> str:
    parts = [_section_open("data-quality", "Data quality")]
    if not counts:
        parts.append('<p class="muted">No data-quality counts were recorded.</p></section>')
        return "".join(parts)
    scalars = [(k, v) for k, v in counts.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in counts.items() if isinstance(v, Mapping)]
    if scalars:
        parts.append(_key_values((esc(_name(k, v)), esc(_value(k, v))) for k, v in scalars))
    for key, table in tables:
        parts.append(f"<h3>{esc(_words(key))}</h3>")
        if not table:
            parts.append('<p class="muted">none</p>')
        elif all(isinstance(v, Mapping) for v in table.values()):
            parts.append(_class_split_table(table))
        else:
            heading = _row_heading(key)
            if heading == "Split":  # splits in their usual order, not by size
                rank = {split: i for i, split in enumerate(_SPLIT_ORDER)}
                rows = sorted(table.items(), key=lambda item: (rank.get(str(item[0]).lower(), len(rank)), str(item[0])))
            else:
                rows = sorted(table.items(), key=lambda item: -_as_float(item[1], 0.0))
            # Counts by reason, class or split; "examples" lists texts per reason, which are no counts.
            listed = any(isinstance(n, list | tuple) for n in table.values())
            second, cell = (
                (f"<th>{esc(_words(key))}</th>", "<td>")
                if listed
                else ('<th class="num">Count</th>', '<td class="num">')
            )
            parts.append(
                f'<table class="compact"><thead><tr><th>{esc(heading)}</th>{second}</tr></thead><tbody>'
                + "".join(f"<tr><td>{esc(name)}</td>{cell}{esc(_tally(n))}</td></tr>" for name, n in rows)
                + "</tbody></table>"
            )
    parts.append("</section>")
    return "".join(parts)


def _row_heading(key: str) -> str:
    """The heading of a table's first column: what its rows are (reasons, classes, splits), else the key's words."""
    if key.lower() in _ROW_HEADINGS:
        return _ROW_HEADINGS[key.lower()]
    words = set(re.split(r"[^a-z]+", key.lower()))
    if words & {"split", "splits"}:
        return "Split"
    if words & {"class", "classes", "label", "labels"}:
        return "Class"
    if words & {"reason", "reasons", "skipped", "dropped", "warning", "warnings", "problems", "errors"}:
        return "Reason"
    return _words(key)


def _class_split_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    """{class: {split: count}} as classes down, splits across, with totals both ways."""
    seen = {split for row in table.values() for split in row}
    splits = [s for s in _SPLIT_ORDER if s in seen] + sorted(seen - set(_SPLIT_ORDER))
    head = "".join(f'<th class="num">{esc(_words(s))}</th>' for s in splits)
    body = []
    for cls, row in table.items():
        # A split a class does not appear in has none of it: 0, not "unknown".
        cells = "".join(f'<td class="num">{esc(_count(row.get(s, 0)))}</td>' for s in splits)
        total = sum(_as_float(row.get(s), 0.0) for s in splits)
        body.append(f'<tr><th scope="row">{esc(cls)}</th>{cells}<td class="num total">{esc(_count(total))}</td></tr>')
    totals = "".join(
        f'<td class="num total">{esc(_count(sum(_as_float(r.get(s), 0.0) for r in table.values())))}</td>'
        for s in splits
    )
    grand = sum(_as_float(r.get(s), 0.0) for r in table.values() for s in splits)
    return (
        f'<table class="compact"><thead><tr><th>Class</th>{head}<th class="num">Total</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody>"
        f'<tfoot><tr><th scope="row">Total</th>{totals}<td class="num total">{esc(_count(grand))}</td></tr></tfoot>'
        "</table>"
    )


def _metrics(data: ReportData) -> str:
    metrics = data.metrics
    parts = [_section_open("metrics", "Metrics")]
    if not metrics:
        parts.append('<p class="muted">No metrics were recorded for this run.</p></section>')
        return "".join(parts)
    if data.is_classification:
        headline_key = "exact_match" if "exact_match" in metrics else "accuracy"
        average_precision = metrics.get("average_precision")
        mean_ap = average_precision.get("mean") if isinstance(average_precision, Mapping) else None
        tiles = [
            (_words(headline_key).capitalize(), _metric(metrics.get(headline_key))),
            ("Mean AP", _metric(mean_ap)),
            ("Macro F1", _metric(metrics.get("macro_f1"))),
            ("Precision", _metric(metrics.get("precision"))),
            ("Recall", _metric(metrics.get("recall"))),
            ("F1", _metric(metrics.get("f1"))),
        ]
    else:
        tiles = [
            ("mAP@50", _metric(metrics.get("map50"))),
            ("mAP@50-95", _metric(metrics.get("map50_95"))),
            ("Precision", _metric(metrics.get("precision"))),
            ("Recall", _metric(metrics.get("recall"))),
            ("F1", _metric(metrics.get("f1"))),
        ]
    tiles += [
        ("Best F1", f"{_metric(metrics.get('best_f1'))} @ {_metric(metrics.get('best_f1_threshold'), 2)}"),
        ("Confidence threshold", _metric(metrics.get("confidence_threshold"), 2)),
        ("Images evaluated", _count(metrics.get("images"))),
    ]
    parts.append(
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in tiles
        )
        + "</div>"
    )
    parts.append(
        '<p class="muted">Precision, recall and F1 are at the confidence threshold; the best F1 is over all '
        "thresholds.</p>"
    )
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        parts.append(_per_class_table(per_class, metrics, classification=data.is_classification))
    else:
        parts.append(f'<p class="muted">Per-class metrics: {NA}</p>')
    parts.append("</section>")
    return "".join(parts)


def _per_class_table(per_class: Mapping[str, Any], metrics: Mapping[str, Any], *, classification: bool) -> str:
    ap_by_class: Mapping[str, Any] = {}
    average_precision = metrics.get("average_precision")
    if isinstance(average_precision, Mapping) and isinstance(average_precision.get("per_class"), Mapping):
        ap_by_class = average_precision["per_class"]
    columns: list[tuple[str, str]] = (
        [("ap", "AP")] if classification else [("ap50", "AP50"), ("ap50_95", "AP50-95")]
    ) + [("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")]
    head = "".join(f'<th class="num">{esc(name)}</th>' for _, name in columns)
    head += '<th class="num">GT count</th><th class="num">Predictions</th>'
    # The classification evaluator records the best F1 per run, not per class: no column of n/a then.
    with_best = any(isinstance(v, Mapping) and "best_f1" in v for v in per_class.values())
    if with_best:
        head += '<th class="num">Best F1 @ thr</th>'
    rows = []
    for cls, values in per_class.items():
        values = values if isinstance(values, Mapping) else {}
        cells = []
        for key, _ in columns:
            value = values.get(key)
            if key == "ap" and value is None:
                value = ap_by_class.get(cls)
            cells.append(_bar_cell(value))
        best = f"{_metric(values.get('best_f1'))} @ {_metric(values.get('best_f1_threshold'), 2)}"
        rows.append(
            f'<tr><th scope="row">{esc(cls)}</th>{"".join(cells)}'
            f'<td class="num">{esc(_count(values.get("gt_count")))}</td>'
            f'<td class="num">{esc(_count(values.get("pred_count")))}</td>'
            + (f'<td class="num">{esc(best)}</td>' if with_best else "")
            + "</tr>"
        )
    return (
        '<div class="scroll"><table class="per-class"><thead><tr><th>Class</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _pr_curves(data: ReportData) -> str:
    metrics = data.metrics
    parts = [_section_open("pr-curves", "Precision-recall curves")]
    per_class = metrics.get("per_class")
    per_class = per_class if isinstance(per_class, Mapping) else {}
    if not per_class and "pr_curve" not in metrics:
        parts.append(f'<p class="muted">Precision-recall curves: {NA}</p></section>')
        return "".join(parts)
    ap_key, ap_name = ("ap", "AP") if data.is_classification else ("ap50", "AP50")
    class_curves = [
        curve_from(str(cls), values.get("pr_curve") if isinstance(values, Mapping) else None, PALETTE[i % len(PALETTE)])
        for i, (cls, values) in enumerate(per_class.items())
    ]
    figures = []
    if "pr_curve" in metrics:
        overall = curve_from("all classes", metrics.get("pr_curve"), "#0f172a")
        figures.append(_figure(pr_chart([overall], title="All classes"), "All classes", ""))
    else:
        legend = "".join(
            f'<li><span class="swatch" style="background:{c.colour}"></span>{esc(c.label)}</li>' for c in class_curves
        )
        chart = pr_chart(class_curves, title="All classes", mark_best_f1=False)
        figures.append(_figure(chart, "All classes", f'<ul class="legend">{legend}</ul>'))
    for curve, (_cls, values) in zip(class_curves, per_class.items(), strict=True):
        values = values if isinstance(values, Mapping) else {}
        caption = f"{ap_name} {_metric(values.get(ap_key))}"
        if "best_f1" in values:
            caption += f" · best F1 {_metric(values.get('best_f1'))}"
        figures.append(_figure(pr_chart([curve], title=f"{curve.label}: {caption}"), curve.label, esc(caption)))
    parts.append(f'<div class="charts">{"".join(figures)}</div>')
    parts.append('<p class="muted">The dot marks the point of best F1 on each class curve.</p></section>')
    return "".join(parts)


def _figure(svg: str, name: str, caption_html: str) -> str:
    return f'<figure class="chart">{svg}<figcaption><strong>{esc(name)}</strong> {caption_html}</figcaption></figure>'


def _confusion_matrix(data: ReportData) -> str:
    parts = [_section_open("confusion-matrix", "Confusion matrix")]
    matrix = data.metrics.get("confusion_matrix")
    # JSON values of any shape until `_is_square` has checked them
    labels: Any = matrix.get("labels") if isinstance(matrix, Mapping) else None
    cells: Any = matrix.get("matrix") if isinstance(matrix, Mapping) else None
    if not _is_square(labels, cells):
        why = " (not computed for multi-label classification)" if "exact_match" in data.metrics else ""
        parts.append(f'<p class="muted">Confusion matrix: {NA}{esc(why)}</p></section>')
        return "".join(parts)
    head = "".join(f'<th class="num col">{esc(label)}</th>' for label in labels)
    rows = []
    for label, row in zip(labels, cells, strict=True):
        total = sum(_as_float(v, 0.0) for v in row)
        tds = []
        for j, value in enumerate(row):
            share = _as_float(value, 0.0) / total if total else 0.0
            tds.append(_heat_cell(value, share, diagonal=labels[j] == label))
        rows.append(
            f'<tr><th scope="row">{esc(label)}</th>{"".join(tds)}<td class="num total">{esc(_count(total))}</td></tr>'
        )
    parts.append(
        '<div class="scroll"><table class="confusion"><thead>'
        f'<tr><th class="corner">ground truth ↓ · predicted →</th>{head}<th class="num">Total</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    note = "Rows are ground truth, columns are predictions; shading is the share of the row."
    if data.is_classification and labels[-1] == "none":
        note += ' The "none" column counts images on which no label reached the confidence threshold.'
    if not data.is_classification:
        note += (
            ' The "background" row counts predictions that matched no ground-truth box; the "background" '
            "column counts ground-truth boxes that no prediction found."
        )
    parts.append(f'<p class="muted">{esc(note)}</p></section>')
    return "".join(parts)


def _samples(data: ReportData) -> str:
    parts = [_section_open("samples", "Held-out samples")]
    samples = list(data.samples)
    if not samples:
        parts.append('<p class="muted">No held-out samples to show.</p></section>')
        return "".join(parts)
    shown = samples[:MAX_SAMPLES]
    if data.is_classification:
        parts.append('<p class="muted">Ground truth and predicted labels are listed under each image.</p>')
    else:
        parts.append(
            f'<p class="legend-line"><span class="swatch" style="background:{GROUND_TRUTH_COLOUR}"></span>'
            f'ground truth <span class="swatch dashed" style="border-color:{PREDICTION_COLOUR}"></span>'
            "prediction with confidence</p>"
        )
    if len(samples) > len(shown):
        parts.append(f'<p class="muted">Showing {len(shown)} of {len(samples)} samples.</p>')
    parts.append('<div class="samples">')
    parts.extend(_sample_card(sample, classification=data.is_classification) for sample in shown)
    parts.append("</div></section>")
    return "".join(parts)


def _label_next(data: ReportData) -> str:
    parts = [_section_open("label-next", "Label these next")]
    rows = list(data.label_next)
    if not rows:
        parts.append(
            '<p class="muted">No unlabeled or unassigned rows were predicted on, so there is nothing to rank.</p>'
            "</section>"
        )
        return "".join(parts)
    strategy = data.label_next_strategy.replace("_", " ")
    parts.append(
        f'<p class="muted">The {len(rows)} of {data.rows_ranked} unlabeled or unassigned rows the model is least '
        f"sure of, by {esc(strategy)}, most uncertain first. Each row's uncertainty is also in the model run as "
        "metrics (<code>al_entropy</code>, <code>al_least_confidence</code>, <code>al_margin</code>), to sort "
        "and filter by.</p>"
    )
    parts.append('<div class="samples">')
    parts.extend(_sample_card(sample, classification=data.is_classification) for sample in rows)
    parts.append("</div></section>")
    return "".join(parts)


def _sample_card(sample: ReportSample, *, classification: bool) -> str:
    image = embed_image(sample.image)
    width, height = sample.width, sample.height
    if width <= 0 or height <= 0:
        width, height = (image.width, image.height) if image else (4, 3)
    title = f"{sample.data_row_id} ({sample.split})"
    gt_boxes = [] if classification else [b for b in map(_gt_box, sample.ground_truth) if b]
    pred_boxes = [] if classification else [b for b in map(_pred_box, sample.predictions) if b]
    svg = sample_overlay(image.data_uri if image else None, width, height, gt_boxes, pred_boxes, title=title)
    gt_labels = [_label_of(item) for item in sample.ground_truth]
    preds = [(_label_of(item), _confidence_of(item)) for item in sample.predictions]
    if classification:
        truth = set(gt_labels)
        gt_text = ", ".join(esc(label) for label in gt_labels) or "none"
        pred_text = (
            ", ".join(
                f'<span class="{"hit" if label in truth else "miss"}">{esc(label)} {esc(_metric(c, 2))}</span>'
                for label, c in preds
            )
            or "none"
        )
        caption = f"<div>Ground truth: {gt_text}</div><div>Predicted: {pred_text}</div>"
    else:
        caption = (
            f"<div>{len(gt_boxes)} ground-truth box{'es' if len(gt_boxes) != 1 else ''} · "
            f"{len(pred_boxes)} prediction{'s' if len(pred_boxes) != 1 else ''}</div>"
        )
    if sample.note:
        caption += f'<div class="note">{esc(sample.note)}</div>'
    return (
        f'<figure class="sample-card">{svg}<figcaption><code>{esc(sample.data_row_id)}</code> '
        f'<span class="split">{esc(sample.split)}</span>{caption}</figcaption></figure>'
    )


# -- sample items -----------------------------------------------------------------------------------------


def _label_of(item: SampleItem) -> str:
    return item.label


def _confidence_of(item: SampleItem) -> float | None:
    return float(item.confidence) if item.confidence is not None and _finite(item.confidence) else None


def _gt_box(item: SampleItem) -> tuple[str, float, float, float, float] | None:
    """A drawable ground-truth box; None for a label or a box with a coordinate that is not a number."""
    if not isinstance(item, SampleBox) or not all(_finite(v) for v in (item.left, item.top, item.width, item.height)):
        return None
    return (item.label, float(item.left), float(item.top), float(item.width), float(item.height))


def _pred_box(item: SampleItem) -> tuple[str, float, float, float, float, float] | None:
    box = _gt_box(item)
    confidence = _confidence_of(item)
    if box is None or confidence is None:
        return None
    return (box[0], confidence, *box[1:])


# -- small pieces -----------------------------------------------------------------------------------------


def _section_open(section_id: str, title: str) -> str:
    return f'<section id="{section_id}"><h2>{esc(title)}</h2>'


def _key_values(rows: Iterable[tuple[str, str]]) -> str:
    """Rows of already-escaped (name, value) HTML."""
    return (
        '<table class="kv"><tbody>'
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        + "</tbody></table>"
    )


def _status_badge(status: str) -> str:
    kind = re.sub(r"[^a-z]", "", str(status).lower()) or "unknown"
    return f'<span class="badge {kind}">{esc(status)}</span>'


def _bar_cell(value: Any) -> str:
    if not _finite(value):
        return f'<td class="num">{NA}</td>'
    share = min(1.0, max(0.0, float(value))) * 100
    return (
        f'<td class="num bar" style="background:linear-gradient(90deg,#dbeafe {share:.1f}%,transparent {share:.1f}%)">'
        f"{esc(_metric(value))}</td>"
    )


def _heat_cell(value: Any, share: float, *, diagonal: bool) -> str:
    alpha = 0.0 if share <= 0 else 0.1 + 0.85 * share
    rgb = "37,99,235" if diagonal else "220,38,38"
    ink = "#fff" if alpha > 0.55 else "#0f172a"
    return (
        f'<td class="num heat" style="background:rgba({rgb},{alpha:.2f});color:{ink}" '
        f'title="{share * 100:.0f}% of the row">{esc(_count(value))}</td>'
    )


def _is_square(labels: Any, cells: Any) -> bool:
    if not isinstance(labels, Sequence) or isinstance(labels, str) or not labels:
        return False
    if not isinstance(cells, Sequence) or len(cells) != len(labels):
        return False
    return all(isinstance(row, Sequence) and len(row) == len(labels) for row in cells)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any, default: float) -> float:
    return float(value) if _finite(value) else default


def _metric(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else NA


def _count(value: Any) -> str:
    if not _finite(value):
        return NA
    return f"{int(value):,}" if float(value).is_integer() else f"{float(value):,.2f}"


_DURATION_KEY = re.compile(r"(_s|_sec|_secs|_seconds|seconds|duration)$", re.I)
_UNIT_SUFFIX = re.compile(r"_(s|sec|secs|seconds)$", re.I)


def _name(key: str, value: Any) -> str:
    """The row name for a recorded value; "train_duration_s" reads "Train duration" (the unit is shown)."""
    if _is_duration(key, value):
        key = _UNIT_SUFFIX.sub("", key)
    return _words(key)


def _is_duration(key: str, value: Any) -> bool:
    """Durations end in a seconds unit; rates ("images_per_s") end in one too but are not durations."""
    return _finite(value) and _DURATION_KEY.search(str(key)) is not None and "_per_" not in str(key)


def _tally(value: Any) -> str:
    return _count(value) if _finite(value) else _value("", value)


def _value(key: str, value: Any) -> str:
    """A recorded value as a user reads it: counts with separators, durations in h/m/s."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_duration(key, value):
        return _duration(float(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if math.isfinite(value) else NA
    if isinstance(value, Mapping):
        return ", ".join(f"{_words(k)}: {_value(str(k), v)}" for k, v in value.items()) or NA
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(_value(key, v) for v in value) or NA
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _duration_between(start: str | None, end: str | None) -> str:
    try:
        began = dt.datetime.fromisoformat(start) if start else None
        ended = dt.datetime.fromisoformat(end) if end else None
    except ValueError:
        return NA
    if began is None or ended is None or (began.tzinfo is None) != (ended.tzinfo is None):
        return NA
    return _duration((ended - began).total_seconds())


def _words(key: object) -> str:
    """A record key as words: "rows_seen" -> "Rows seen", "map50" -> "mAP@50"."""
    text = str(key)
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text).replace("_", " ").replace("-", " ").strip()
    words = [_WORDS.get(w.lower(), w) for w in text.split()]
    sentence = " ".join(words)
    return sentence[:1].upper() + sentence[1:] if sentence else str(key)


_CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--card:#fff;--bg:#f1f5f9;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#0f172a;color:#f8fafc;padding:20px 32px 0}
header h1{margin:0;font-size:22px}
header .sub{margin:4px 0 12px;color:#cbd5e1}
header code{color:#f8fafc}
nav{display:flex;gap:4px;flex-wrap:wrap}
nav a{color:#cbd5e1;text-decoration:none;padding:8px 12px;border-radius:6px 6px 0 0}
nav a:hover{background:#1e293b;color:#fff}
section{background:var(--card);margin:20px auto;max-width:1240px;padding:16px 24px 20px;border-radius:10px;
box-shadow:0 1px 2px rgba(15,23,42,.08)}
h2{margin:0 0 12px;font-size:18px}
h3{margin:16px 0 6px;font-size:14px;color:#334155}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.muted{color:var(--muted)}
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:#f8fafc;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:#fafafa}
.num{text-align:right;font-variant-numeric:tabular-nums}
.total{font-weight:600}
tfoot th,tfoot td{border-top:2px solid var(--line)}
table.kv th{color:var(--muted);font-weight:500;width:200px}
.scroll{overflow-x:auto}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:8px}
.tile{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:120px}
.tile .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .k{color:var(--muted);font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#e2e8f0;color:#334155}
.badge.complete,.badge.succeeded{background:#dcfce7;color:#166534}
.badge.failed{background:#fee2e2;color:#991b1b}
.badge.running,.badge.pending{background:#fef3c7;color:#92400e}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(336px,1fr));gap:12px}
figure{margin:0}
figure.chart{border:1px solid var(--line);border-radius:8px;padding:8px}
figure.chart svg{display:block;max-width:100%;height:auto}
svg.pr .grid{stroke:#eef2f7}
svg.pr .tick{font-size:10px;fill:#64748b}
svg.pr .axis{font-size:11px;fill:#334155}
svg.pr .empty{font-size:12px;fill:#94a3b8}
figcaption{font-size:12px;color:#334155;padding-top:4px}
.legend{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:4px 12px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.swatch.dashed{background:transparent;border:2px dashed;margin-left:12px}
table.confusion th.col{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
table.confusion th.corner{font-weight:400;color:var(--muted);font-size:12px}
table.confusion td.heat{min-width:44px}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:14px;align-items:start}
.sample-card{border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#f8fafc}
.sample-card svg{display:block;width:100%;height:auto;max-height:360px;background:#e2e8f0}
.sample-card figcaption{padding:6px 10px}
.split{display:inline-block;margin-left:6px;padding:0 6px;border-radius:8px;background:#e2e8f0;font-size:11px}
.hit{color:#166534;font-weight:600}
.miss{color:#991b1b}
"""
