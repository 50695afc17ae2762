"""Benchmark of the local engine on the demo model run: accuracy (pycocotools mAP) and speed.

Builds the demo model run, converts it with the ETL's own converters into a Vertex import JSONL in a
folder bucket, trains a detector on the training split, batch-predicts the test
split into Vertex-format output files, reads them back and scores them with pycocotools. Baselines in
the same run: the same network untrained (what the training bought), batch size 1 against the
batched prediction job (what batching buys), class-wise NMS against the default class-agnostic
one (what suppressing duplicate boxes across classes does to precision and mAP), and the eager torch
network against its ONNX export in onnxruntime (what `runtime` "onnx" buys; see `runtime_rates`).
Then the hard scene (`bench/hard_set.py`: 640x480 pictures, 3-10 shapes of 12-64 px among clutter) trains
the scratch backbone and the ImageNet-pretrained MobileNetV2 at the same steps, seed and input, and
scores both. It trains a fixed number of steps, so its metrics are the same on every machine.

    .venv/bin/python -m bench.engine_bench [--max-steps 500 | --seconds S] [--images 300] [--seed 7] [--threads N]
        [--hard-images 160 --hard-steps 300 --hard-input-size 256]
        [--backbone scratch|mobilenet_v2]
    .venv/bin/python -m bench.engine_bench --runtimes-only --threads 2   # eager torch vs onnxruntime alone
"""

from __future__ import annotations

import os

# before torch loads OpenMP: waiting threads sleep, as in the engine's job processes (shared/engine/jobs.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shared.config import DEFAULT_ENGINE_STEPS
from shared.demo import DEMO, Scene, create_demo_model_run
from shared.domain.model_types import Task
from shared.engine.images import decode_image
from shared.engine.metrics import ImageDetections, ImageTruth, coco_map
from shared.engine.model import BACKBONES, LoadedModel, ModelConfig, build_model, load_checkpoint
from shared.engine.onnx_model import OnnxRunner, export_onnx
from shared.engine.predict import PredictionJob, Predictor, run_batch_prediction
from shared.engine.train import TrainSettings, resolve_device, train
from shared.engine.vertex_io import ImportRow, parse_import_line
from shared.formats.labelbox_export import Converted, example_from_row
from shared.formats.vertex_import import ML_USE, LabelNames, import_line, normalize_boxes
from shared.store.local_folder import LocalFolderStore

BUCKET = "local-bucket"


def build_import(
    workdir: Path, images: int, seed: int, *, scene: Scene = DEMO
) -> tuple[LocalFolderStore, str, list[dict]]:
    """Demo model run -> images + import JSONL in a folder bucket; returns the store, import URI, lines."""
    folder = create_demo_model_run(workdir / "model_runs", images=images, seed=seed, scene=scene)
    run_id = folder.name
    store = LocalFolderStore(workdir / "bucket", BUCKET)
    names = LabelNames()
    lines = []
    with open(folder / "export.ndjson") as export:
        for raw in export:
            converted = example_from_row(json.loads(raw), model_run_id=run_id, task=Task.OBJECT_DETECTION)
            if not isinstance(converted, Converted) or converted.example.split.value == "unassigned":
                continue
            example = converted.example
            key = f"runs/{run_id}/images/{example.data_row_id}.jpg"
            store.upload_file(key, str(folder / example.media_url))
            boxes, _dropped = normalize_boxes(example.boxes, example.width or 0, example.height or 0)
            lines.append(
                import_line(example, image_uri=store.uri(key), task=Task.OBJECT_DETECTION, names=names, boxes=boxes)
            )
    import_key = f"runs/{run_id}/vertex_import.jsonl"
    store.write(import_key, "".join(json.dumps(line) + "\n" for line in lines).encode())
    return store, store.uri(import_key), lines


def split_test_rows(
    store: LocalFolderStore, lines: list[dict], instances_key: str
) -> tuple[list[ImportRow], dict[str, list], str]:
    """The import's test rows, their ground truth by image, and an instances file of their images."""
    test = [row for line in lines if (row := parse_import_line(json.dumps(line), "object_detection")).split == "test"]
    truth = {row.image_uri: list(row.boxes) for row in test}
    body = "".join(json.dumps({"content": r.image_uri, "mimeType": "image/jpeg"}) + "\n" for r in test)
    store.write(instances_key, body.encode())
    return test, truth, store.uri(instances_key)


SHOWN_THRESHOLD = 0.3  # PREDICT_CONFIDENCE_THRESHOLD's default: the boxes a user sees


def pycocotools_map(truth: dict[str, list], predicted: dict[str, list], width: int, height: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) from pycocotools, through the engine's own oracle call (`coco_map`).

    `truth` boxes are normalized (x0, y0, x1, y1); `predicted` ones are Vertex's (xMin, xMax, yMin, yMax)."""
    uris = sorted(truth)
    truths = [ImageTruth(width, height, [(name, tuple(box)) for name, box in truth[uri]]) for uri in uris]
    found = [
        ImageDetections([(name, score, (x0, y0, x1, y1)) for name, score, (x0, x1, y0, y1) in predicted.get(uri, [])])
        for uri in uris
    ]
    map50, map_coco = coco_map(truths, found)
    return map50 or 0.0, map_coco or 0.0


def read_output(store: LocalFolderStore, output_dir: str) -> dict[str, list]:
    """Reads the prediction files back the way the chain does: list the folder, parse every line."""
    found: dict[str, list] = {}
    for key in store.list(store.key_from_uri(output_dir) + "/"):
        for line in store.read(key).decode().splitlines():
            row = json.loads(line)
            if "error" in row:
                continue
            p = row["prediction"]
            found[row["instance"]["content"]] = list(
                zip(p["displayNames"], p["confidences"], [tuple(b) for b in p["bboxes"]], strict=True)
            )
    return found


def predict_split(
    predictor: Predictor,
    store: LocalFolderStore,
    instances_uri: str,
    name: str,
    batch_size: int,
    *,
    class_agnostic: bool = True,
) -> tuple[dict[str, list], float]:
    out = store.uri(f"bench/predictions/{name}")
    job = PredictionJob(
        instances_uri,
        out,
        confidence_threshold=0.001,
        max_predictions=100,
        batch_size=batch_size,
        class_agnostic_nms=class_agnostic,
    )
    started = time.perf_counter()
    summary = run_batch_prediction(predictor, store, job)
    rate = int(summary["instances"]) / (time.perf_counter() - started)  # type: ignore[call-overload]
    return read_output(store, out), rate


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def precision_at(truth: dict[str, list], predicted: dict[str, list], threshold: float) -> tuple[float, int]:
    """(precision, boxes) of the boxes at or above `threshold`, each matched greedily by score to an
    unmatched ground-truth box of its class at IoU >= 0.5: what a user sees in the model run."""
    shown = matched = 0
    for uri, boxes in truth.items():
        free = [(name, tuple(box)) for name, box in boxes]
        kept = sorted((p for p in predicted.get(uri, []) if p[1] >= threshold), key=lambda p: -p[1])
        for name, _score, (x0, x1, y0, y1) in kept:
            shown += 1
            best = max(
                (i for i, (n, _b) in enumerate(free) if n == name),
                key=lambda i: _iou((x0, y0, x1, y1), free[i][1]),
                default=None,
            )
            if best is not None and _iou((x0, y0, x1, y1), free[best][1]) >= 0.5:
                matched += 1
                free.pop(best)
    return (matched / shown if shown else 0.0), shown


def model_only_rate(predictor: Predictor, store: LocalFolderStore, uris: list[str], rounds: int = 5) -> float:
    """Images/s of the network and decoding of its outputs alone, on images decoded beforehand."""
    pixels = torch.stack([decode_image(store.read(store.key_from_uri(u)), predictor.input_size).pixels for u in uris])
    predictor.detect(pixels, threshold=0.001, max_predictions=100)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        predictor.detect(pixels, threshold=0.001, max_predictions=100)
    return rounds * len(uris) / (time.perf_counter() - started)


def runtime_rates(loaded: LoadedModel, pixels: torch.Tensor, onnx_path: Path, rounds: int = 5) -> dict[str, float]:
    """Images/s of the network's forward call on CPU, eager torch against onnxruntime: the same model
    (exported to `onnx_path`), the same uint8 batch, the same thread count (torch's, which the ONNX
    session takes too), each with its own input conversion (normalize; channels-last for torch, NCHW
    for onnxruntime). Decoding the outputs is the same code for both, so it is left out. The rounds
    alternate, so a change in the machine's load hits both, and each rate is the median of its rounds.
    `--runtimes-only` measures just this, on the demo-sized detector untrained (speed does not depend
    on the weights) and random pixels."""
    cpu = torch.device("cpu")
    export_onnx(loaded, onnx_path)
    predictors = {
        "eager": Predictor(loaded, cpu),
        "onnx": Predictor(loaded, cpu, OnnxRunner(onnx_path, loaded.config)),
    }
    rates: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.no_grad():
        for predictor in predictors.values():  # warm-up
            predictor.forward(predictor._input(pixels))
        for _ in range(rounds):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                predictor.forward(predictor._input(pixels))
                rates[name].append(len(pixels) / (time.perf_counter() - started))
    eager, onnx = statistics.median(rates["eager"]), statistics.median(rates["onnx"])
    return {"eager_images_per_s": eager, "onnx_images_per_s": onnx, "onnx_over_eager": onnx / eager}


def print_runtime_rates(threads: int, seed: int, batch: int = 64) -> dict[str, float]:
    """`runtime_rates` of the demo-sized detector (the engine's defaults, the demo's 3 classes) untrained."""
    torch.manual_seed(seed)
    config = ModelConfig("object_detection", 3)
    loaded = LoadedModel(build_model(config).eval(), config, ["circle", "square", "triangle"], {})
    size = config.input_size
    pixels = torch.randint(
        0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    with tempfile.TemporaryDirectory() as tmp:
        rates = runtime_rates(loaded, pixels, Path(tmp) / "model.onnx")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; "
        f"detector input {size}, width {config.width}, batch {batch}"
    )
    print(_runtime_line(rates, threads, batch))
    return rates


def _runtime_line(rates: dict[str, float], threads: int, batch: int) -> str:
    return (
        f"runtime (network alone, batch {batch}, CPU, {threads} threads each): "
        f"eager torch {rates['eager_images_per_s']:.1f} images/s (baseline), "
        f"onnxruntime {rates['onnx_images_per_s']:.1f} images/s, ratio {rates['onnx_over_eager']:.2f}"
    )


def _decoded_batch(store: LocalFolderStore, uris: list[str], size: int, batch: int) -> torch.Tensor:
    """`batch` decoded images from `uris`, repeated when there are fewer."""
    pixels = [decode_image(store.read(store.key_from_uri(u)), size).pixels for u in uris[:batch]]
    return torch.stack([pixels[i % len(pixels)] for i in range(batch)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=DEFAULT_ENGINE_STEPS, help="steps to train (deterministic)")
    parser.add_argument("--seconds", type=float, default=None, help="train for a wall time instead of steps")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backbone", default="scratch", choices=BACKBONES, help="mobilenet_v2: ImageNet-pretrained")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--runtimes-only", action="store_true", help="only eager torch vs onnxruntime, untrained")
    parser.add_argument("--hard-images", type=int, default=160, help="hard-scene pictures (0: skip that part)")
    parser.add_argument("--hard-steps", type=int, default=300, help="steps for each backbone on the hard scene")
    parser.add_argument("--hard-input-size", type=int, default=256, help="the input side on the hard scene")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.runtimes_only:
        print_runtime_rates(args.threads, args.seed)
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        store, import_uri, lines = build_import(workdir, args.images, args.seed)
        test, truth, instances_uri = split_test_rows(store, lines, "bench/test_instances.jsonl")
        splits = {
            s: sum(line["dataItemResourceLabels"][ML_USE] == s for line in lines)
            for s in ("training", "validation", "test")
        }

        settings = TrainSettings(
            task="object_detection",
            import_uri=import_uri,
            seed=args.seed,
            max_steps=None if args.seconds else args.max_steps,
            train_seconds=args.seconds or 90.0,
            backbone=args.backbone,
            display_name="bench",
        )
        checkpoint = workdir / "model.pt"
        summary = train(settings, store, checkpoint, device=device)
        predictor = Predictor(load_checkpoint(checkpoint, device), device)
        found, batched_rate = predict_split(predictor, store, instances_uri, "trained", 64)
        map50, map_coco = pycocotools_map(truth, found, DEMO.width, DEMO.height)
        classwise, _rate = predict_split(predictor, store, instances_uri, "classwise", 64, class_agnostic=False)
        cw50, cw_coco = pycocotools_map(truth, classwise, DEMO.width, DEMO.height)
        precision, shown = precision_at(truth, found, SHOWN_THRESHOLD)
        cw_precision, cw_shown = precision_at(truth, classwise, SHOWN_THRESHOLD)
        _found1, single_rate = predict_split(predictor, store, instances_uri, "batch1", 1)
        model_rate = model_only_rate(predictor, store, [row.image_uri for row in test])
        runtimes = runtime_rates(
            load_checkpoint(checkpoint),
            _decoded_batch(store, [row.image_uri for row in test], predictor.input_size, 64),
            workdir / "model.onnx",
        )

        torch.manual_seed(args.seed)
        config = predictor.loaded.config  # the trained network's shape, untrained
        untrained = Predictor(LoadedModel(build_model(config).eval(), config, predictor.classes, {}), device)
        base_found, _rate = predict_split(untrained, store, instances_uri, "untrained", 64)
        base50, base_coco = pycocotools_map(truth, base_found, DEMO.width, DEMO.height)

    mode = f"{args.seconds:g} s budget" if args.seconds else f"{args.max_steps} steps"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"device {device}, threads {args.threads}, backbone {args.backbone}"
    )
    print(f"data: {args.images} demo images (seed {args.seed}); splits {splits}")
    print(
        f"training ({mode}): {summary['step']} steps in {summary['elapsed_s']} s, "
        f"{summary['images_per_s']} images/s, final loss {summary['loss']}"
    )
    print(
        f"validation (engine's own report): mAP@0.5 {summary['validation_map50']:.4f}, "
        f"mAP@[.5:.95] {summary['validation_map']:.4f}"
    )
    print(f"test split, pycocotools on the Vertex-format output ({len(test)} images):")
    print(f"  trained:   mAP@0.5 {map50:.4f}  mAP@[.5:.95] {map_coco:.4f}")
    print(f"  untrained: mAP@0.5 {base50:.4f}  mAP@[.5:.95] {base_coco:.4f}   (baseline)")
    print(
        f"duplicate boxes: class-agnostic NMS (default) precision@{SHOWN_THRESHOLD} {precision:.4f} over {shown} "
        f"boxes, mAP@0.5 {map50:.4f}; class-wise NMS (baseline) precision {cw_precision:.4f} over {cw_shown} "
        f"boxes, mAP@0.5 {cw50:.4f}, mAP@[.5:.95] {cw_coco:.4f}"
    )
    print(
        f"inference (batch prediction job, decode + model + JSON): batch 64 {batched_rate:.1f} images/s, "
        f"batch 1 {single_rate:.1f} images/s (baseline); "
        f"network + box decoding alone, batch {len(test)}: {model_rate:.1f} images/s"
    )
    print(_runtime_line(runtimes, args.threads, 64))
    if args.hard_images:
        from bench.hard_set import print_hard_set, run_hard_set

        with tempfile.TemporaryDirectory() as tmp:
            hard_splits, results = run_hard_set(
                args.workdir or Path(tmp),
                images=args.hard_images,
                seed=args.seed,
                steps=args.hard_steps,
                input_size=args.hard_input_size,
                device=device,
            )
        print_hard_set(hard_splits, results, images=args.hard_images, input_size=args.hard_input_size)


if __name__ == "__main__":
    main()
