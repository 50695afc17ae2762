"""Tiny datasets for the engine tests: a few small images in a folder bucket, with import JSONL lines.

Images are 64x64: one or two bright squares or discs on a dark background, so a network the size
the tests use can tell them apart in a handful of steps, and every test stays fast.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from shared.store.local_folder import LocalFolderStore

BUCKET = "local-bucket"
SIZE = 64
ML_USE = "aiplatform.googleapis.com/ml_use"
TINY_TRAIN = {"input_size": 64, "width": 8, "batch_size": 4}  # seconds of CPU, not minutes


@dataclass(frozen=True)
class Shape:
    label: str  # "square" or "disc"
    box: tuple[float, float, float, float]  # normalized x_min, y_min, x_max, y_max


def draw(shapes: list[Shape], width: int = SIZE, height: int = SIZE) -> bytes:
    img = Image.new("RGB", (width, height), (20, 20, 30))
    canvas = ImageDraw.Draw(img)
    for shape in shapes:
        x0, x1 = shape.box[0] * width, shape.box[2] * width
        y0, y1 = shape.box[1] * height, shape.box[3] * height
        if shape.label == "square":
            canvas.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(240, 200, 40))
        else:
            canvas.ellipse((x0, y0, x1 - 1, y1 - 1), fill=(40, 200, 240))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue()


def shapes_for(index: int) -> list[Shape]:
    rng = random.Random(index)
    shapes = []
    for n in range(1 + index % 2):
        side = rng.uniform(0.25, 0.4)
        x0 = rng.uniform(0.0, 0.5 - side) + 0.5 * n
        y0 = rng.uniform(0.0, 1 - side)
        shapes.append(Shape(rng.choice(("square", "disc")), (x0, y0, x0 + side, y0 + side)))
    return shapes


@dataclass
class TinyData:
    store: LocalFolderStore
    bucket_dir: Path
    images: dict[str, list[Shape]]  # gs uri -> shapes

    def uri(self, key: str) -> str:
        return self.store.uri(key)

    def write_jsonl(self, key: str, lines: list[dict] | list[str]) -> str:
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        self.store.write(key, text.encode())
        return self.store.uri(key)

    def splits(self) -> Iterator[tuple[str, str, list[Shape]]]:
        for i, (uri, shapes) in enumerate(self.images.items()):
            yield uri, ("validation" if i % 4 == 3 else "training"), shapes

    def detection_import(self) -> str:
        lines = [
            {
                "imageGcsUri": uri,
                "boundingBoxAnnotations": [
                    {"displayName": s.label, "xMin": s.box[0], "yMin": s.box[1], "xMax": s.box[2], "yMax": s.box[3]}
                    for s in shapes
                ],
                "dataItemResourceLabels": {ML_USE: split, "dataRowId": uri.rsplit("/", 1)[1][:-4]},
            }
            for uri, split, shapes in self.splits()
        ]
        return self.write_jsonl("runs/tiny/detection_import.jsonl", lines)

    def single_label_import(self) -> str:
        lines = [
            {
                "imageGcsUri": uri,
                "classificationAnnotation": {"displayName": shapes[0].label},
                "dataItemResourceLabels": {ML_USE: split},
            }
            for uri, split, shapes in self.splits()
        ]
        return self.write_jsonl("runs/tiny/single_import.jsonl", lines)

    def multi_label_import(self) -> str:
        lines = [
            {
                "imageGcsUri": uri,
                "classificationAnnotations": [{"displayName": n} for n in sorted({s.label for s in shapes})],
                "dataItemResourceLabels": {ML_USE: split},
            }
            for uri, split, shapes in self.splits()
        ]
        return self.write_jsonl("runs/tiny/multi_import.jsonl", lines)

    def instances(self, extra: list[str] = ()) -> str:  # type: ignore[assignment]
        lines = [json.dumps({"content": uri, "mimeType": "image/jpeg"}) for uri in self.images]
        return self.write_jsonl("runs/tiny/instances.jsonl", [*lines, *extra])


def tiny_data(bucket_dir: Path, count: int = 12, width: int = SIZE, height: int = SIZE) -> TinyData:
    """`width`/`height` other than SIZE make non-square pictures (the shapes stretch with them)."""
    store = LocalFolderStore(bucket_dir, BUCKET)
    images = {}
    for i in range(count):
        shapes = shapes_for(i)
        key = f"runs/tiny/images/row{i:03d}.jpg"
        store.write(key, draw(shapes, width, height), content_type="image/jpeg")
        images[store.uri(key)] = shapes
    return TinyData(store, bucket_dir, images)
