"""Realistic report inputs: generated images with known objects, metrics in the evaluator's exact schema."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from shared.report import ReportData, ReportSample
from shared.report.data import SampleBox, SampleLabel

DETECTION_CLASSES = ("grape", "leaf", "stem")
SCRIPT_LABEL = "<script>alert('x')</script>"


def scene(width: int, height: int, objects: list[tuple[str, int, int, int, int]], *, fmt: str = "JPEG") -> bytes:
    """A gradient background with one filled shape per object (label, left, top, width, height)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for row in range(0, height, 4):
        shade = 180 + int(60 * row / height)
        draw.rectangle([0, row, width, row + 4], fill=(shade - 60, shade - 20, shade))
    colours = {"grape": (110, 40, 140), "leaf": (40, 150, 60), "stem": (120, 80, 30)}
    for label, left, top, w, h in objects:
        colour = colours.get(label, (200, 60, 60))
        if label == "grape":
            draw.ellipse([left, top, left + w, top + h], fill=colour)
        else:
            draw.rectangle([left, top, left + w, top + h], fill=colour)
    if fmt == "PNG":
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def pr_curve(quality: float, points: int = 21) -> dict[str, list[float]]:
    """A plausible curve: precision falls as recall rises, faster for a worse class."""
    recall = [i / (points - 1) * 0.95 for i in range(points)]
    precision = [max(0.0, 1.0 - (r**quality) * 0.9) for r in recall]
    thresholds = [1.0 - i / (points - 1) for i in range(points)]
    return {"recall": recall, "precision": precision, "thresholds": thresholds}


def detection_metrics(classes: tuple[str, ...] = DETECTION_CLASSES) -> dict[str, Any]:
    per_class = {}
    for i, cls in enumerate(classes):
        per_class[cls] = {
            "ap50": 0.712 - 0.1 * i,
            "ap50_95": 0.455 - 0.08 * i,
            "precision": 0.8 - 0.1 * i,
            "recall": 0.65 - 0.05 * i,
            "f1": 0.717 - 0.08 * i,
            "gt_count": 120 - 30 * i,
            "pred_count": 110 - 20 * i,
            "best_f1": 0.73 - 0.08 * i,
            "best_f1_threshold": 0.42,
            "pr_curve": pr_curve(3.0 - i),
        }
    labels = [*classes, "background"]
    size = len(labels)
    matrix = [[(40 - 5 * r if r == c else (r + c) % 4) for c in range(size)] for r in range(size)]
    matrix[-1][-1] = 0
    return {
        "map50": 0.612,
        "map50_95": 0.375,
        "precision": 0.701,
        "recall": 0.598,
        "f1": 0.645,
        "confidence_threshold": 0.3,
        "best_f1": 0.66,
        "best_f1_threshold": 0.41,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": matrix},
        "images": 48,
    }


def classification_metrics(*, multi_label: bool) -> dict[str, Any]:
    classes = ("cat", "dog", "bird")
    per_class = {
        cls: {
            "precision": 0.9 - 0.1 * i,
            "recall": 0.85 - 0.1 * i,
            "f1": 0.87 - 0.1 * i,
            "ap": 0.91 - 0.1 * i,
            "gt_count": 30 - 5 * i,
            "pred_count": 28 - 4 * i,
            "pr_curve": pr_curve(4.0 - i),
        }
        for i, cls in enumerate(classes)
    }
    metrics: dict[str, Any] = {
        "precision": 0.81,
        "recall": 0.77,
        "f1": 0.79,
        "macro_f1": 0.77,
        "average_precision": {"mean": 0.81, "per_class": {cls: per_class[cls]["ap"] for cls in classes}},
        "best_f1": 0.8,
        "best_f1_threshold": 0.45,
        "confidence_threshold": 0.5,
        "per_class": per_class,
        "images": 75,
    }
    if multi_label:
        metrics["exact_match"] = 0.64
    else:
        metrics["accuracy"] = 0.833
        # As evaluate_classification writes it: a "none" column for images with no label over the threshold.
        metrics["confusion_matrix"] = {
            "labels": [*classes, "none"],
            "matrix": [[25, 3, 2, 0], [2, 20, 3, 1], [1, 2, 17, 2], [0, 0, 0, 0]],
        }
    return metrics


def detection_sample(index: int, *, width: int = 640, height: int = 480, fmt: str = "JPEG") -> ReportSample:
    sx, sy = width / 640, height / 480
    objects = [
        ("grape", int((60 + 10 * index) * sx), int(80 * sy), int(120 * sx), int(140 * sy)),
        ("leaf", int(300 * sx), int((200 + 5 * index) * sy), int(200 * sx), int(100 * sy)),
    ]
    predictions = [
        SampleBox("grape", left + 6 * sx, top - 4 * sy, w * 0.95, h * 1.02, confidence=0.91)
        for label, left, top, w, h in objects
        if label == "grape"
    ] + [SampleBox("stem", 420 * sx, 60 * sy, 60 * sx, 90 * sy, confidence=0.37)]
    return ReportSample(
        data_row_id=f"ckrow{index:04d}",
        image=scene(width, height, objects, fmt=fmt),
        mime_type="image/png" if fmt == "PNG" else "image/jpeg",
        width=width,
        height=height,
        ground_truth=[
            SampleBox(label, float(left), float(top), float(w), float(h)) for label, left, top, w, h in objects
        ],
        predictions=predictions,
        split="validation" if index % 2 else "test",
    )


def detection_report(samples: list[ReportSample] | None = None, **overrides: Any) -> ReportData:
    if samples is None:
        samples = [
            detection_sample(0, width=1600, height=1200),  # large: must be downscaled
            detection_sample(1, fmt="PNG"),
            detection_sample(2),
            detection_sample(3, width=480, height=640),
        ]
    fields: dict[str, Any] = {
        "run_id": "run-2024-05-01-abc",
        "model_run_id": "clmodelrun0000000000000001",
        "model_type": "vertex_automl_object_detection",
        "task": "object_detection",
        "backend": "local",
        "status": "complete",
        "created_at": "2024-05-01T10:00:00.000Z",
        "finished_at": "2024-05-01T11:02:03.000Z",
        "training": {
            "steps": 1200,
            "epochs": 12,
            "images_per_second": 37.4,
            "train_duration_s": 3125.0,
            "budget_milli_node_hours": 20000,
            "device": "cpu",
            "step": 1200,
            "total_steps": 1200,
            "elapsed_s": 3125.0,
            "eta_s": 0.0,  # the last progress the monitor recorded, from a job that has finished
        },
        # The keys and shapes of shared.domain.data_quality.DataQuality.to_dict().
        "data_quality": {
            "rows_seen": 1250,
            "rows_kept": 1203,
            "rows_skipped": {"no image size": 30, "unsupported media": 17},
            "boxes_dropped": {"zero area": 12, "outside image": 3},
            "warnings": {"image size differs from the export": 4},
            "labels_dropped": {"twig": 6},
            "images_per_split": {"training": 960, "validation": 120, "test": 123},
            "per_class_per_split": {
                "grape": {"training": 800, "validation": 100, "test": 96},
                "leaf": {"training": 400, "validation": 50},
                "stem": {"training": 90, "test": 8},
            },
            "boxes_per_class": {"grape": 2400, "leaf": 900, "stem": 210},
            "examples": {"no image size": ["cl000000000000000000000001: width 0"]},
        },
        "metrics": detection_metrics(),
        "samples": samples,
    }
    fields.update(overrides)
    return ReportData(**fields)


def classification_report(*, multi_label: bool) -> ReportData:
    samples = []
    for i, (truth, predicted) in enumerate(
        [
            ([SampleLabel("cat")], [SampleLabel("cat", 0.93), SampleLabel("dog", 0.05)]),
            ([SampleLabel("dog")], [SampleLabel("bird", 0.61), SampleLabel("dog", 0.3)]),
        ]
    ):
        samples.append(
            ReportSample(
                data_row_id=f"ckcls{i}",
                image=scene(320, 240, [("leaf", 40, 40, 100, 100)]),
                mime_type="image/jpeg",
                width=320,
                height=240,
                ground_truth=truth,
                predictions=predicted,
                split="test",
            )
        )
    task = "multi_label_classification" if multi_label else "single_label_classification"
    return ReportData(
        run_id="run-cls",
        model_run_id="clmodelrun0000000000000002",
        model_type=f"local_{'multi' if multi_label else 'single'}_label_classifier",
        task=task,
        backend="local",
        status="complete",
        metrics=classification_metrics(multi_label=multi_label),
        samples=samples,
    )
