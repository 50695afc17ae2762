"""Training on a Vertex import JSONL: detection (CenterNet-style) or image classification.

Two ways to bound training:
- step mode (`max_steps`): exactly that many steps, cosine schedule over steps. Deterministic: the same
  data, seed, device and thread count give the same weights.
- wall-time mode (`train_seconds`): steps until the budget is spent, stopping at the first step
  boundary past it, with the cosine schedule over the elapsed fraction of the budget. How many steps
  fit depends on the machine's load, so this mode is not repeatable.
The budget covers the optimisation loop only; reading and decoding the images and the final
validation come on top.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from shared.engine.augment import Jitter, augment
from shared.engine.detection import build_targets, detection_loss
from shared.engine.images import Decoded, ImageCache
from shared.engine.metrics import (
    ImageDetections,
    ImageTruth,
    coco_map,
    multi_label_accuracy,
    single_label_accuracy,
)
from shared.engine.model import CHANNELS_LAST, LoadedModel, ModelConfig, build_model, save_checkpoint
from shared.engine.predict import Predictor
from shared.engine.vertex_io import ImportRow, parse_import_line
from shared.store.port import ObjectStore

log = logging.getLogger(__name__)

WARMUP_STEPS = 30
EVAL_BATCH = 64
EVAL_THRESHOLD = 0.001  # mAP needs the low-confidence tail too
PROGRESS_EVERY_S = 1.0
# The input side when a run sets none: small on CPU, where every pixel costs training time; larger on a
# GPU, where small objects in big photos need it and the time is there.
DEFAULT_INPUT_SIZE = {"cpu": 160, "cuda": 512}
# The backbone when a run sets none. On the hard demo scene, at the same 300 steps, the pretrained
# MobileNetV2 reached test mAP@0.5 0.955 against 0.798 from scratch, but trains at 0.46x the speed on
# a 2-core CPU (bench/engine_bench.py), which would take the demo past its 3 minutes there; on a GPU
# the time is there.
DEFAULT_BACKBONE = {"cpu": "scratch", "cuda": "mobilenet_v2"}


@dataclass(frozen=True)
class TrainSettings:
    task: str
    import_uri: str
    seed: int = 0
    max_steps: int | None = None  # step mode when set
    train_seconds: float = 90.0  # wall-time mode otherwise
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    input_size: int | None = None  # None: the device's default (DEFAULT_INPUT_SIZE)
    width: int = 32
    backbone: str = "auto"  # scratch, mobilenet_v2 (ImageNet-pretrained: shared.engine.mobilenet), or by device
    cache_bytes: int = 2 << 30
    display_name: str = "local-model"


@dataclass
class Dataset:
    classes: list[str]
    training: list[ImportRow]
    validation: list[ImportRow]
    skipped: Counter[str]


def read_dataset(store: ObjectStore, import_uri: str, task: str) -> Dataset:
    """Parses the import JSONL; malformed lines are skipped and counted by reason, never fatal alone."""
    rows: list[ImportRow] = []
    skipped: Counter[str] = Counter()
    with store.open_read(store.key_from_uri(import_uri)) as raw:
        for number, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            try:
                rows.append(parse_import_line(line.decode("utf-8"), task))
            except (ValueError, UnicodeDecodeError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else "not UTF-8"
                skipped[reason.split(":")[0]] += 1
                if sum(skipped.values()) <= 5:
                    log.warning("import line %d skipped: %s", number, reason)
    training = [r for r in rows if r.split == "training"]
    validation = [r for r in rows if r.split == "validation"]
    if task == "object_detection":
        names = {name for r in training for name, _box in r.boxes}
    else:
        names = {name for r in training for name in r.labels}
    if not training:
        raise ValueError(f"{import_uri} has no training rows (ml_use=training)")
    if not names:
        raise ValueError(f"{import_uri} has no labels on its training rows")
    return Dataset(sorted(names), training, validation, skipped)


def _schedule(base: float, step: int, fraction: float) -> float:
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return base * warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def _order(count: int, gen: torch.Generator) -> Iterator[int]:
    while True:
        yield from torch.randperm(count, generator=gen).tolist()


@dataclass(frozen=True)
class Sample:
    pixels: torch.Tensor
    boxes: torch.Tensor  # [N, 4] normalized
    labels: torch.Tensor  # detection: [N] class indices; classification: [C] multi-hot


def _readable(
    rows: Sequence[ImportRow], cache: ImageCache, classes: list[str], task: str
) -> tuple[list[ImportRow], int]:
    """Decodes every row once (filling the cache); unreadable images are dropped and counted."""
    known = set(classes)
    kept: list[ImportRow] = []
    unreadable = 0
    for row in rows:
        try:
            cache.get(row.image_uri)
        except ValueError as exc:
            unreadable += 1
            if unreadable <= 5:
                log.warning("image skipped: %s", exc)
            continue
        if task != "object_detection" and not known.intersection(row.labels):
            continue
        kept.append(row)
    return kept, unreadable


def _sample(row: ImportRow, cache: ImageCache, index: dict[str, int], task: str) -> Sample:
    decoded = cache.get(row.image_uri)
    pixels = decoded.pixels
    if task == "object_detection":
        known = [(index[name], decoded.to_input(box)) for name, box in row.boxes if name in index]
        boxes = torch.tensor([box for _i, box in known], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([i for i, _b in known], dtype=torch.long)
    else:
        boxes = torch.zeros(0, 4)
        labels = torch.zeros(len(index))
        for name in row.labels:
            if name in index:
                labels[index[name]] = 1.0
    return Sample(pixels, boxes, labels)


def configure_torch(threads: int | None = None) -> None:
    """What every engine process sets before it trains or predicts: its CPU threads (default: every
    core), deterministic algorithms where torch has them, and the cuBLAS workspace they need on CUDA.
    Shared by the local job process (`worker`) and the Vertex job (`vertex_job`), so both run alike."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts, after this
    torch.set_num_threads(int(threads or os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def input_size_for(settings: TrainSettings, device: torch.device) -> int:
    return settings.input_size or DEFAULT_INPUT_SIZE.get(device.type, DEFAULT_INPUT_SIZE["cpu"])


def backbone_for(settings: TrainSettings, device: torch.device) -> str:
    if settings.backbone != "auto":
        return settings.backbone
    return DEFAULT_BACKBONE.get(device.type, DEFAULT_BACKBONE["cpu"])


def train(
    settings: TrainSettings,
    store: ObjectStore,
    checkpoint: Path,
    *,
    device: torch.device,
    report: Callable[[dict[str, object]], None] = lambda _p: None,
) -> dict[str, object]:
    """Trains, validates, saves the checkpoint; returns the summary (steps, speed, validation metrics)."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    dataset = read_dataset(store, settings.import_uri, settings.task)
    task = settings.task
    classes = dataset.classes
    index = {name: i for i, name in enumerate(classes)}
    input_size = input_size_for(settings, device)
    cache = ImageCache(store, input_size, settings.cache_bytes)
    loaded_at = time.monotonic()
    training, unreadable = _readable(dataset.training, cache, classes, task)
    if not training:
        raise ValueError(f"none of the {len(dataset.training)} training images could be read")
    log.info(
        "task %s: %d classes %s, %d training rows (%d unreadable), %d validation rows; decoded in %.1fs",
        task,
        len(classes),
        classes,
        len(training),
        unreadable,
        len(dataset.validation),
        time.monotonic() - loaded_at,
    )
    report(
        {
            "classes": len(classes),
            "training_images": len(training),
            "validation_images": len(dataset.validation),
        }
    )

    config = ModelConfig(task, len(classes), input_size, settings.width, backbone_for(settings, device))
    # Module.to accepts memory_format (for its 4-D and 5-D tensors); torch's overloads of it omit that
    model = build_model(config, pretrained=True).to(device, memory_format=CHANNELS_LAST)  # type: ignore[call-overload]
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
    )
    batch_size = min(settings.batch_size, len(training))
    jitter = Jitter()
    order = _order(len(training), gen)
    out_size = input_size // 4
    step, images_seen, loss_ema = 0, 0, None
    started = time.monotonic()
    last_report = 0.0

    while True:
        elapsed = time.monotonic() - started
        if settings.max_steps is not None:
            if step >= settings.max_steps:
                break
            fraction = step / settings.max_steps
        else:
            if elapsed >= settings.train_seconds:
                break
            fraction = elapsed / settings.train_seconds
        lr = _schedule(settings.learning_rate, step, fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = [_sample(training[next(order)], cache, index, task) for _ in range(batch_size)]
        pixels = torch.stack([s.pixels for s in batch]).to(device)
        if task == "object_detection":
            images, boxes, kept = augment(pixels, [s.boxes for s in batch], jitter, gen)
            assert boxes is not None and kept is not None
            labels = [s.labels[k] for s, k in zip(batch, kept, strict=True)]
            targets = build_targets(boxes, labels, len(classes), out_size)
            heat, size, offset = model(images.contiguous(memory_format=CHANNELS_LAST))
            loss, _parts = detection_loss(heat, size, offset, targets)
        else:
            images, _b, _k = augment(pixels, None, jitter, gen)
            logits = model(images.contiguous(memory_format=CHANNELS_LAST))
            target = torch.stack([s.labels for s in batch]).to(device)
            if task == "single_label_classification":
                loss = F.cross_entropy(logits, target.argmax(dim=1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

        step += 1
        images_seen += batch_size
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S:
            last_report = now
            report(_progress(settings, step, images_seen, loss_ema, now - started))

    train_elapsed = time.monotonic() - started
    summary: dict[str, object] = _progress(settings, step, images_seen, loss_ema or 0.0, train_elapsed)
    summary["eta_s"] = 0
    report(summary)
    model.eval()
    loaded = LoadedModel(model, config, classes, {})
    summary.update(validate(Predictor(loaded, device), cache, dataset.validation, task))
    summary.update({"classes": classes, "training_images": len(training), "validation_images": len(dataset.validation)})
    summary.update({"backbone": config.backbone, "input_size": config.input_size})  # what "auto" and None chose
    if dataset.skipped:
        summary["skipped_import_lines"] = dict(dataset.skipped)
    save_checkpoint(
        checkpoint,
        model,
        config,
        classes,
        display_name=settings.display_name,
        steps=step,
        seed=settings.seed,
        summary=json.dumps(summary),
    )
    log.info("finished: %s", summary)
    return summary


def _progress(settings: TrainSettings, step: int, images: int, loss: float, elapsed: float) -> dict[str, object]:
    rate = images / max(elapsed, 1e-9)
    if settings.max_steps is not None:
        total = settings.max_steps
        eta = (total - step) * elapsed / max(step, 1)
    else:
        total = max(step, round(step * settings.train_seconds / max(elapsed, 1e-9)))
        eta = max(0.0, settings.train_seconds - elapsed)
    return {
        "step": step,
        "total_steps": total,
        "loss": round(loss, 5),
        "images_per_s": round(rate, 1),
        "elapsed_s": round(elapsed, 1),
        "eta_s": round(eta, 1),
    }


def validate(predictor: Predictor, cache: ImageCache, rows: Sequence[ImportRow], task: str) -> dict[str, object]:
    """Detection: mAP@0.5 and mAP@[.5:.95] (pycocotools); classification: accuracy. None without rows."""
    truths: list[ImageTruth] = []
    found: list[ImageDetections] = []
    true_labels: list[set[str]] = []
    predicted: list[set[str]] = []
    readable = [(row, decoded) for row in rows if (decoded := _try_get(cache, row.image_uri)) is not None]
    for start in range(0, len(readable), EVAL_BATCH):
        chunk = readable[start : start + EVAL_BATCH]
        images = [d for _r, d in chunk]
        if task == "object_detection":
            for (row, decoded), detections in zip(
                chunk, predictor.detect_images(images, threshold=EVAL_THRESHOLD, max_predictions=100), strict=True
            ):
                truths.append(ImageTruth(decoded.width, decoded.height, row.boxes))
                found.append(ImageDetections(detections))
        else:
            for (row, _d), scores in zip(
                chunk, predictor.classify(torch.stack([d.pixels for d in images])), strict=True
            ):
                true_labels.append(set(row.labels))
                if task == "single_label_classification":
                    predicted.append({max(scores, key=lambda n: scores[n])})
                else:
                    predicted.append({n for n, s in scores.items() if s >= 0.5})
    if task == "object_detection":
        map50, map_coco = coco_map(truths, found)
        return {"validation_map50": map50, "validation_map": map_coco}
    if task == "single_label_classification":
        accuracy = single_label_accuracy([next(iter(t)) for t in true_labels], [next(iter(p)) for p in predicted])
    else:
        accuracy = multi_label_accuracy(true_labels, predicted)
    return {"validation_accuracy": accuracy}


def _try_get(cache: ImageCache, uri: str) -> Decoded | None:
    try:
        return cache.get(uri)
    except ValueError:
        return None
