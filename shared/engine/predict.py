"""Prediction with a trained checkpoint, and the batch-prediction job that writes Vertex's output files.

The instances JSONL is streamed in batches and the output is written in files of at most
`lines_per_file` lines, so memory stays flat however many instances there are. An instance that cannot
be read becomes an `error` line in its place, as on Vertex, instead of failing the job.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from shared.engine.augment import normalize
from shared.engine.detection import decode
from shared.engine.images import Decoded, load_image
from shared.engine.model import CHANNELS_LAST, LoadedModel
from shared.engine.vertex_io import (
    Box,
    classification_line,
    detection_line,
    error_line,
    errors_file_name,
    parse_instance_line,
    predictions_file_name,
)
from shared.store.port import ObjectStore

log = logging.getLogger(__name__)

MAX_BOXES = 500  # Vertex's cap on boxes per image
CANDIDATES = 100  # heatmap peaks considered per image before thresholding and NMS

# The network's forward call: normalized float [B,3,S,S] in, the module's outputs out. The eager module
# is one; an onnxruntime session over the exported file (shared.engine.onnx_model.OnnxRunner) is another.
Runner = Callable[[torch.Tensor], Any]


class Predictor:
    """Runs a loaded model on batches of decoded images."""

    def __init__(self, loaded: LoadedModel, device: torch.device, runner: Runner | None = None) -> None:
        """`runner` replaces the eager module's forward call (e.g. with onnxruntime); decoding is the same."""
        self.loaded = loaded
        self.device = device
        # Module.to accepts memory_format (for its 4-D and 5-D tensors); torch's overloads of it omit that
        self.model = loaded.model.to(device, memory_format=CHANNELS_LAST).eval()  # type: ignore[call-overload]
        self.forward: Runner = runner if runner is not None else self.model
        self.task = loaded.config.task
        self.classes = loaded.classes

    @property
    def input_size(self) -> int:
        return self.loaded.config.input_size

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize(pixels.to(self.device)).contiguous(memory_format=CHANNELS_LAST)

    @torch.no_grad()
    def detect(
        self, pixels: torch.Tensor, *, threshold: float, max_predictions: int, class_agnostic: bool = False
    ) -> list[list[tuple[str, float, Box]]]:
        """uint8 [B,3,S,S] -> per image, (label, confidence, box normalized to the input), best first."""
        heat, size, offset = self.forward(self._input(pixels))
        found = decode(
            heat.float().cpu(),
            size.float().cpu(),
            offset.float().cpu(),
            score_threshold=threshold,
            max_detections=min(max_predictions, MAX_BOXES),
            candidates=CANDIDATES,
            class_agnostic=class_agnostic,
        )
        return [[(self.classes[d.label], d.score, d.box) for d in image] for image in found]

    def detect_images(
        self, images: Sequence[Decoded], *, threshold: float, max_predictions: int, class_agnostic: bool = False
    ) -> list[list[tuple[str, float, Box]]]:
        """Like `detect`, with each box mapped from the letterboxed input back onto its own picture."""
        found = self.detect(
            torch.stack([d.pixels for d in images]),
            threshold=threshold,
            max_predictions=max_predictions,
            class_agnostic=class_agnostic,
        )
        return [
            [(label, score, decoded.to_picture(box)) for label, score, box in boxes]
            for decoded, boxes in zip(images, found, strict=True)
        ]

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> list[dict[str, float]]:
        """uint8 [B,3,S,S] -> per image, every class's confidence (softmax if single-label, else sigmoid)."""
        logits = self.forward(self._input(pixels)).float().cpu()
        single = self.task == "single_label_classification"
        probs = torch.softmax(logits, dim=1) if single else torch.sigmoid(logits)
        return [dict(zip(self.classes, row, strict=True)) for row in probs.tolist()]


@dataclass(frozen=True)
class PredictionJob:
    instances_uri: str
    output_dir_uri: str  # gs://bucket/<prefix>/prediction-<name>-<stamp>
    confidence_threshold: float
    max_predictions: int
    batch_size: int = 64
    lines_per_file: int = 10_000
    class_agnostic_nms: bool = True  # one box per object, whatever its class (off where classes overlap)
    runtime: str = "auto"  # "torch", "onnx" (model.onnx, never a fallback) or "auto"; see shared.engine.onnx_model


def _instances(store: ObjectStore, uri: str) -> Iterator[str]:
    with store.open_read(store.key_from_uri(uri)) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8", errors="replace"):
            if line.strip():
                yield line


def _batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_sent(line: str) -> object:
    """An unusable instance, echoed back as parsed JSON when it is JSON, else as (truncated) text."""
    try:
        return json.loads(line)
    except ValueError:
        return line.strip()[:1000]


def predict_lines(
    predictor: Predictor, store: ObjectStore, lines: Sequence[str], job: PredictionJob
) -> list[dict[str, object]]:
    """Output lines for a batch of instance lines, in the same order; unreadable ones as error lines."""
    out: list[dict[str, object] | None] = [None] * len(lines)
    readable: list[tuple[int, dict[str, str], Decoded]] = []
    for pos, line in enumerate(lines):
        try:
            instance = parse_instance_line(line)
        except ValueError as exc:
            out[pos] = error_line(_as_sent(line), f"invalid instance: {exc}")
            continue
        try:
            decoded = load_image(store, instance["content"], predictor.input_size)
        except ValueError as exc:
            out[pos] = error_line(instance, str(exc))
            continue
        readable.append((pos, instance, decoded))
    if readable:
        images = [decoded for _pos, _i, decoded in readable]
        if predictor.task == "object_detection":
            for (pos, instance, _d), found in zip(
                readable,
                predictor.detect_images(
                    images,
                    threshold=job.confidence_threshold,
                    max_predictions=job.max_predictions,
                    class_agnostic=job.class_agnostic_nms,
                ),
                strict=True,
            ):
                out[pos] = detection_line(
                    instance,
                    found,
                    confidence_threshold=job.confidence_threshold,
                    max_predictions=job.max_predictions,
                )
        else:
            pixels = torch.stack([d.pixels for d in images])
            for (pos, instance, _d), scores in zip(readable, predictor.classify(pixels), strict=True):
                out[pos] = classification_line(
                    instance,
                    scores,
                    confidence_threshold=job.confidence_threshold,
                    max_predictions=job.max_predictions,
                )
    return [line for line in out if line is not None]


def run_batch_prediction(
    predictor: Predictor,
    store: ObjectStore,
    job: PredictionJob,
    report: Callable[[dict[str, object]], None] = lambda _p: None,
) -> dict[str, object]:
    """Writes `predictions_00001.jsonl`... (and `errors_00001.jsonl`... for instances that could not be
    predicted) under the output directory, as AutoML does; returns counts and timing."""
    output_prefix = store.key_from_uri(job.output_dir_uri).rstrip("/")
    buffer: list[str] = []
    failed: list[str] = []
    files = error_files = instances = errors = 0
    started = time.monotonic()

    def flush() -> None:
        nonlocal files, buffer
        files += 1
        key = f"{output_prefix}/{predictions_file_name(files)}"
        store.write(key, "".join(buffer).encode(), content_type="application/jsonl")
        buffer = []

    def flush_errors() -> None:
        nonlocal error_files, failed
        error_files += 1
        key = f"{output_prefix}/{errors_file_name(error_files)}"
        store.write(key, "".join(failed).encode(), content_type="application/jsonl")
        failed = []

    for batch in _batches(_instances(store, job.instances_uri), job.batch_size):
        for line in predict_lines(predictor, store, batch, job):
            text = json.dumps(line, separators=(",", ":")) + "\n"
            if "error" in line:
                errors += 1
                failed.append(text)
                if len(failed) >= job.lines_per_file:
                    flush_errors()
                continue
            buffer.append(text)
            if len(buffer) >= job.lines_per_file:
                flush()
        instances += len(batch)
        elapsed = time.monotonic() - started
        report(
            {
                "instances": instances,
                "errors": errors,
                "images_per_s": round(instances / max(elapsed, 1e-9), 1),
            }
        )
    if buffer or files == 0:
        flush()
    if failed:
        flush_errors()
    elapsed = time.monotonic() - started
    log.info("predicted %d instances (%d errors) into %d files in %.1fs", instances, errors, files, elapsed)
    return {
        "instances": instances,
        "errors": errors,
        "files": files,
        "images_per_s": round(instances / max(elapsed, 1e-9), 1),
        "output_dir": job.output_dir_uri,
    }
