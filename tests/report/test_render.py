"""The report's HTML as a user receives it: self-contained, escaped, tolerant of missing numbers."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from shared.domain.predictions import VertexPrediction
from shared.formats.labelbox_predictions import RowContext, bbox_prediction_rows
from shared.formats.vertex_prediction import apply_limits, parse_prediction_line
from shared.report import ReportData, ReportSample, render_report
from shared.report.data import SampleBox
from tests.vertex_fixture import fixture_row

from .report_fixtures import (
    SCRIPT_LABEL,
    classification_report,
    detection_metrics,
    detection_report,
    detection_sample,
    scene,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECTION_IDS = ("summary", "data-quality", "metrics", "pr-curves", "confusion-matrix", "samples", "label-next")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each element id'd section."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def test_detection_report_has_every_section_once_with_metrics_and_boxes() -> None:
    html = render_report(detection_report())
    tags = parse(html)

    ids = [attrs.get("id") for _, attrs in tags.tags if attrs.get("id")]
    assert sorted(ids) == sorted(SECTION_IDS)
    assert html.startswith("<!DOCTYPE html>")
    metrics = section(html, "metrics")
    for value in ("0.612", "0.375", "0.701", "0.598", "0.645", "0.66", "0.41"):
        assert value in metrics
    # the per-class row of "grape": AP50, AP50-95, precision, recall, F1, GT count, predictions
    grape_row = re.search(r"<tr><th scope=\"row\">grape</th>(.*?)</tr>", metrics).group(1)
    assert [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>.*?</td>", grape_row)] == [
        "0.712",
        "0.455",
        "0.800",
        "0.650",
        "0.717",
        "120",
        "110",
        "0.730 @ 0.42",
    ]
    curves = section(html, "pr-curves")
    assert curves.count("<svg") == 1 + 3  # all classes + one per class
    assert curves.count("<polyline") == 3 + 3
    confusion = section(html, "confusion-matrix")
    assert ">background<" in confusion
    assert confusion.count('class="num heat"') == 4 * 4
    samples = section(html, "samples")
    assert samples.count('<svg class="sample"') == 4
    assert samples.count('class="box gt"') == 8
    assert samples.count('class="box pred"') == 8


def test_boxes_are_drawn_in_the_original_pixel_coordinates() -> None:
    sample = detection_sample(0, width=1600, height=1200)
    html = render_report(detection_report([sample]))

    samples = section(html, "samples")
    assert 'viewBox="0 0 1600 1200"' in samples
    box = sample.ground_truth[0]
    assert isinstance(box, SampleBox)
    label, left, top, width, height = box.label, box.left, box.top, box.width, box.height
    assert f'x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}"' in samples
    assert f">{label} 0.91<" in samples  # prediction tags carry the confidence


def test_the_report_references_nothing_outside_itself() -> None:
    html = render_report(detection_report())
    tags = parse(html)

    assert not [tag for tag, _ in tags.tags if tag in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in tags.tags:
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("#", "data:")), f"<{tag} {name}={value[:60]!r}> leaves the file"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html  # the CSP forbids loading anything that slipped through


def test_user_text_is_escaped_everywhere_it_appears() -> None:
    metrics = detection_metrics(("grape", SCRIPT_LABEL))
    sample = ReportSample(
        data_row_id=f'row"><img src=x onerror=alert(1)>{SCRIPT_LABEL}',
        image=scene(320, 240, [("grape", 20, 20, 80, 80)]),
        mime_type="image/jpeg",
        width=320,
        height=240,
        ground_truth=[SampleBox(SCRIPT_LABEL, 20.0, 20.0, 80.0, 80.0)],
        predictions=[SampleBox(SCRIPT_LABEL, 22.0, 18.0, 80.0, 84.0, confidence=0.8)],
        split="<b>test</b>",
    )
    data = detection_report(
        [sample],
        run_id="run-<script>",
        error="</p><script>alert(2)</script>",
        metrics=metrics,
        training={"<i>note</i>": "<script>x</script>"},
        data_quality={"skipped": {SCRIPT_LABEL: 3}, "class_counts": {SCRIPT_LABEL: {"training": 4}}},
    )

    html = render_report(data)

    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "<b>test</b>" not in html and "<i>note</i>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert not [tag for tag, _ in parse(html).tags if tag in ("script", "img", "b", "i")]
    text = "".join(parse(html).text)
    assert SCRIPT_LABEL in text  # shown to the user as text, not dropped


def test_large_images_are_downscaled_and_the_sample_count_is_capped() -> None:
    big = detection_sample(0, width=2400, height=1800)
    samples = [big] + [detection_sample(i) for i in range(1, 30)]

    html = render_report(detection_report(samples))

    uris = re.findall(r'href="data:image/jpeg;base64,([^"]+)"', html)
    assert len(uris) == 24
    first = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert max(first.size) == 512
    assert first.size == (512, 384)  # aspect kept
    assert "Showing 24 of 30 samples." in html
    assert section(html, "samples").count("<figure") == 24
    assert len(html.encode()) < 1_500_000


def test_an_unreadable_image_shows_a_placeholder_not_an_error() -> None:
    sample = detection_sample(1)
    broken = ReportSample(**{**sample.__dict__, "image": b"not an image at all", "data_row_id": "broken-row"})

    html = render_report(detection_report([broken]))

    samples = section(html, "samples")
    assert "image could not be read" in samples
    assert 'class="box gt"' in samples  # the boxes are still shown on the placeholder


def test_missing_numbers_show_as_not_available() -> None:
    sparse_metrics = {
        "map50": 0.5,
        "per_class": {"grape": {"ap50": 0.5, "pr_curve": {"recall": [0.0, 1.0]}}},
        "confusion_matrix": {"labels": ["grape", "background"], "matrix": [[1, 2]]},
    }
    data = ReportData(
        run_id="run-1",
        model_run_id="mr-1",
        model_type="local_detector",
        task="object_detection",
        backend="local",
        status="running",
        metrics=sparse_metrics,
        samples=[],
    )

    html = render_report(data)

    metrics = section(html, "metrics")
    assert "0.500" in metrics
    assert metrics.count("n/a") >= 8
    assert "no curve recorded" in section(html, "pr-curves")
    assert "Confusion matrix: n/a" in section(html, "confusion-matrix")
    assert "No held-out samples" in section(html, "samples")
    assert "No data-quality counts" in section(html, "data-quality")


def test_a_failed_run_with_nothing_recorded_still_renders_every_section() -> None:
    data = ReportData(
        run_id="run-2",
        model_run_id="mr-2",
        model_type="vertex_automl_object_detection",
        task="object_detection",
        backend="vertex",
        status="failed",
        error="Training failed: the dataset has fewer than 10 images per label.",
    )

    html = render_report(data)

    assert sorted(a.get("id") for _, a in parse(html).tags if a.get("id")) == sorted(SECTION_IDS)
    assert "fewer than 10 images per label" in section(html, "summary")
    assert 'class="badge failed"' in html


def test_summary_and_data_quality_read_as_a_user_expects() -> None:
    html = render_report(detection_report())

    summary = section(html, "summary")
    assert "clmodelrun0000000000000001" in summary
    assert "1h 02m 03s" in summary  # created -> finished
    assert "<th>Train duration</th><td>52m 05s</td>" in summary  # train_duration_s = 3125
    assert "1,200" in summary and "37.4" in summary
    rate = render_report(replace(detection_report(), training={"images_per_s": 113.1, "elapsed_s": 90}))
    assert "<th>Images per s</th><td>113.1</td>" in rate and "<td>1m 30s</td>" in rate  # a rate is no duration
    quality = section(html, "data-quality")
    assert "Rows seen" in quality and "1,250" in quality and "1,203" in quality
    assert "no image size" in quality and ">30<" in quality
    grape = re.search(r'<tr><th scope="row">grape</th>(.*?)</tr>', quality).group(1)
    assert re.findall(r">([\d,]+)<", grape) == ["800", "100", "96", "996"]
    stem = re.search(r'<tr><th scope="row">stem</th>(.*?)</tr>', quality).group(1)
    assert re.findall(r">([^<]+)<", stem) == ["90", "0", "8", "98"]


def test_single_label_classification_lists_labels_and_has_a_confusion_matrix() -> None:
    html = render_report(classification_report(multi_label=False))

    assert sorted(a.get("id") for _, a in parse(html).tags if a.get("id")) == sorted(SECTION_IDS)
    metrics = section(html, "metrics")
    assert "Accuracy" in metrics and "0.833" in metrics
    assert ">AP<" in metrics and "0.910" in metrics
    assert "AP50" not in metrics
    assert "Best F1 @ thr" not in metrics  # recorded per run, not per class: no column of n/a
    samples = section(html, "samples")
    assert 'class="box' not in samples
    assert samples.count("data:image/jpeg;base64,") == 2
    assert "Ground truth: cat" in samples
    assert '<span class="hit">cat 0.93</span>' in samples
    assert '<span class="miss">bird 0.61</span>' in samples
    confusion = section(html, "confusion-matrix")
    assert confusion.count('class="num heat"') == 16
    assert "no label reached the confidence threshold" in confusion


def test_multi_label_classification_shows_exact_match_and_no_confusion_matrix() -> None:
    html = render_report(classification_report(multi_label=True))

    assert "Exact match" in section(html, "metrics") and "0.640" in section(html, "metrics")
    assert "not computed for multi-label" in section(html, "confusion-matrix")
    assert section(html, "pr-curves").count("<svg") == 4


def test_real_vertex_predictions_are_drawn_inside_their_image() -> None:
    """The inference stage's path: a real AutoML output line -> Labelbox pixel rows -> report boxes."""
    line = (FIXTURES / "vertex_automl_bbox_batch_prediction_output.jsonl").read_text(encoding="utf-8").splitlines()[0]
    pred = parse_prediction_line(line)
    assert isinstance(pred, VertexPrediction)
    pred = apply_limits(pred, confidence_threshold=0.3, max_predictions=100)
    data_row_id, width, height = fixture_row(pred.content_uri)
    row = RowContext(data_row_id, int(width), int(height))
    rows = bbox_prediction_rows(pred, row, uuid_seed="run-1")
    predictions = [
        SampleBox(
            r["name"], r["bbox"]["left"], r["bbox"]["top"], r["bbox"]["width"], r["bbox"]["height"], r["confidence"]
        )
        for r in rows
    ]
    sample = ReportSample(
        data_row_id=row.data_row_id,
        image=scene(row.width, row.height, []),
        mime_type="text/plain",  # what the real output says; the report must not trust it
        width=row.width,
        height=row.height,
        ground_truth=[],
        predictions=predictions,
        split="test",
    )

    samples = section(render_report(detection_report([sample])), "samples")

    assert 'viewBox="0 0 2048 1365"' in samples
    rects = re.findall(r'<rect class="box pred" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', samples)
    assert len(rects) == len(rows) > 0
    for x, y, w, h in ((float(v) for v in rect) for rect in rects):
        assert x >= 0 and y >= 0
        assert x + w <= 2048.05 and y + h <= 1365.05
    assert ">Grapes 0.77<" in samples  # the top box, 0.7680233


def _first_headings(quality: str) -> dict[str, str]:
    """{table title: the heading of its first column} for the data-quality section."""
    return dict(re.findall(r"<h3>([^<]+)</h3><table[^>]*><thead><tr><th>([^<]*)</th>", quality))


def test_data_quality_tables_are_headed_by_what_their_rows_are() -> None:
    quality = section(render_report(detection_report()), "data-quality")
    assert _first_headings(quality) == {
        "Rows skipped": "Reason",
        "Boxes dropped": "Reason",
        "Warnings": "Reason",
        "Labels dropped": "Class",
        "Images per split": "Split",
        "Per class per split": "Class",
        "Boxes per class": "Class",
        "Examples": "Reason",
    }
    # A table the report does not know by name is headed by what its key says, or by the key's own words.
    other = render_report(
        replace(detection_report(), data_quality={"images_by_split": {"test": 3}, "mime_types": {"image/png": 2}})
    )
    assert _first_headings(section(other, "data-quality")) == {"Images by split": "Split", "Mime types": "Mime types"}
    examples = re.search(r"<h3>Examples</h3><table[^>]*><thead><tr>(.*?)</tr>", quality).group(1)
    assert "Count" not in examples and "Examples" in examples  # lists of examples are not counts


def test_a_finished_training_shows_no_eta() -> None:
    summary = section(render_report(detection_report()), "summary")
    assert "<th>Step</th><td>1,200</td>" in summary and "<th>Elapsed</th><td>52m 05s</td>" in summary
    assert "Eta" not in summary and "ETA" not in summary
    running = section(render_report(replace(detection_report(), status="running")), "summary")
    assert "<th>ETA</th><td>0.0 s</td>" in running  # while it runs, an ETA says something
