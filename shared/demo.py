"""A demo model run of synthetic images, for the local mode and the tests.

Simple shapes (circle, square, triangle) of random colours on a textured background, with bounding
boxes, a radio answer (the largest shape) and a checklist answer (the shapes present), so every model
type can train on it. Rows carry Labelbox's model-run export shape and are split into
training/validation/test plus a few unassigned rows; after them come `unlabeled` rows nobody labeled
yet (no label, no split), which the chain predicts on and ranks for labeling. Deterministic for a seed;
the unlabeled rows draw from their own generator, so the labeled rows are the same whatever their count.

Two scenes: `demo` (160x160, 1-4 shapes of 18-52 px: what the README's first command trains on) and
`hard` (640x480, 3-10 shapes of 12-64 px among unlabeled clutter: hollow rings, crosses, strokes),
which is closer to what real photos ask of a detector: small objects in a large, busy picture.

    python -m shared.demo --out var/model_runs [--images 300] [--unlabeled 30] [--seed 7] [--scene demo|hard]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")
RADIO = "largest_shape"
CHECKLIST = "shapes_present"
IMAGE_SIZE = 160


@dataclass(frozen=True)
class Scene:
    name: str
    width: int
    height: int
    shapes: tuple[int, int]  # how many per image, inclusive
    side: tuple[int, int]  # shape side in pixels, inclusive
    blobs: int  # background texture
    clutter: int  # unlabeled distractors drawn before the shapes (they may lie under them)


DEMO = Scene("demo", IMAGE_SIZE, IMAGE_SIZE, (1, 4), (18, 52), blobs=30, clutter=0)
HARD = Scene("hard", 640, 480, (3, 10), (12, 64), blobs=120, clutter=14)
SCENES = {scene.name: scene for scene in (DEMO, HARD)}


def _ids(seed: int, scene: Scene = DEMO) -> tuple[str, str]:
    rng = random.Random(f"ids-{seed}" if scene is DEMO else f"ids-{scene.name}-{seed}")
    model_run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    model_id = "c" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))
    return model_run_id, model_id


def _cuid(rng: random.Random) -> str:
    return "c" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))


def _background(rng: random.Random, scene: Scene) -> Image.Image:
    base = tuple(rng.randint(60, 200) for _ in range(3))
    img = Image.new("RGB", (scene.width, scene.height), base)
    draw = ImageDraw.Draw(img)
    for _ in range(scene.blobs):
        x, y = rng.randrange(scene.width), rng.randrange(scene.height)
        r = rng.randint(2, 10)
        shade = tuple(max(0, min(255, c + rng.randint(-35, 35))) for c in base)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    return img.filter(ImageFilter.GaussianBlur(1.2))


def _colour(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.choice((rng.randint(0, 60), rng.randint(195, 255))) for _ in range(3))


def _clutter(rng: random.Random, draw: ImageDraw.ImageDraw, scene: Scene) -> None:
    """Unlabeled things in the shapes' own colours and sizes, so colour and size alone never tell."""
    for _ in range(scene.clutter):
        side = rng.randint(*scene.side)
        x0, y0 = rng.randint(0, scene.width - side), rng.randint(0, scene.height - side)
        x1, y1 = x0 + side, y0 + side
        colour = _colour(rng)
        kind = rng.choice(("ring", "cross", "stroke"))
        if kind == "ring":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), outline=colour, width=max(1, side // 8))
        elif kind == "cross":
            draw.line((x0, y0, x1, y1), fill=colour, width=max(1, side // 6))
            draw.line((x0, y1, x1, y0), fill=colour, width=max(1, side // 6))
        else:
            draw.line((x0, y0 + side // 2, x1, y0 + rng.randint(0, side)), fill=colour, width=max(1, side // 5))


def _draw_image(rng: random.Random, scene: Scene) -> tuple[bytes, list[dict]]:
    img = _background(rng, scene)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, scene)
    objects: list[dict] = []
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(*scene.shapes)):
        for _try in range(30):
            side = rng.randint(*scene.side)
            left, top = rng.randint(0, scene.width - side), rng.randint(0, scene.height - side)
            box = (left, top, left + side, top + side)
            if all(box[2] <= p[0] or box[0] >= p[2] or box[3] <= p[1] or box[1] >= p[3] for p in placed):
                break
        else:
            continue
        placed.append(box)
        cls = rng.choice(CLASSES)
        colour = _colour(rng)
        x0, y0, x1, y1 = box
        if cls == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
        elif cls == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
        objects.append({"class": cls, "left": x0, "top": y0, "width": x1 - x0, "height": y1 - y0})
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=92)
    return out.getvalue(), objects


def _split_for(index: int, total: int) -> str | None:
    """About 2/3 training, 15% validation, 15% test, the last few rows unassigned."""
    unassigned = max(1, total // 30)
    if index >= total - unassigned:
        return None
    fraction = index / max(1, total - unassigned)
    if fraction < 0.70:
        return "training"
    return "validation" if fraction < 0.85 else "test"


def export_row(
    *,
    data_row_id: str,
    global_key: str,
    row_data: str,
    width: int,
    height: int,
    model_id: str,
    model_run_id: str,
    objects: list[dict],
    split: str | None,
    rng: random.Random,
    labeled: bool = True,
) -> dict:
    """One row in Labelbox's model-run export shape (see README, 'A local model run'); an unlabeled row's
    run object has no labels (its drawn objects are what a labeler would find)."""
    annotation_objects = [
        {
            "feature_id": _cuid(rng),
            "feature_schema_id": f"schema-{o['class']}",
            "name": o["class"],
            "value": o["class"],
            "annotation_kind": "ImageBoundingBox",
            "classifications": [],
            "bounding_box": {"top": o["top"], "left": o["left"], "height": o["height"], "width": o["width"]},
        }
        for o in objects
    ]
    largest = max(objects, key=lambda o: o["width"] * o["height"])["class"]
    present = sorted({o["class"] for o in objects})
    classifications = [
        {
            "name": RADIO,
            "value": RADIO,
            "radio_answer": {"name": largest, "value": largest, "classifications": []},
        },
        {
            "name": CHECKLIST,
            "value": CHECKLIST,
            "checklist_answers": [{"name": p, "value": p, "classifications": []} for p in present],
        },
    ]
    run: dict = {
        "name": "demo run",
        "labels": [
            {
                "label_kind": "Default",
                "version": "1.0.0",
                "id": _cuid(rng),
                "annotations": {
                    "objects": annotation_objects,
                    "classifications": classifications,
                    "relationships": [],
                },
            }
        ],
        "predictions": [],
    }
    if split is not None:
        run["split"] = split
    if not labeled:
        del run["labels"]
    return {
        "data_row": {"id": data_row_id, "global_key": global_key, "row_data": row_data},
        "media_attributes": {"height": height, "width": width, "mime_type": "image/jpeg"},
        "experiments": {model_id: {"name": "demo model", "runs": {model_run_id: run}}},
    }


def create_demo_model_run(
    out_dir: Path, *, images: int = 300, seed: int = 7, scene: Scene = DEMO, unlabeled: int = 0
) -> Path:
    """Writes a local model run folder and returns it; an existing identical demo is rewritten as-is."""
    model_run_id, model_id = _ids(seed, scene)
    folder = Path(out_dir) / model_run_id
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "export.ndjson", "w") as export:

        def write(index: int, draw: random.Random, split: str | None, labeled: bool) -> None:
            data_row_id = _cuid(draw)
            jpeg, objects = _draw_image(draw, scene)
            name = f"shape-{index:05d}.jpg"
            (media / name).write_bytes(jpeg)
            row = export_row(
                data_row_id=data_row_id,
                global_key=name,
                row_data=f"media/{name}",
                width=scene.width,
                height=scene.height,
                model_id=model_id,
                model_run_id=model_run_id,
                objects=objects,
                split=split,
                rng=draw,
                labeled=labeled,
            )
            export.write(json.dumps(row, separators=(",", ":")) + "\n")

        for index in range(images):
            write(index, rng, _split_for(index, images), labeled=True)
        extra = random.Random(f"unlabeled-{scene.name}-{seed}")
        for index in range(images, images + unlabeled):
            write(index, extra, None, labeled=False)
    (folder / "model_run.json").write_text(
        json.dumps({"id": model_run_id, "model_id": model_id, "name": _run_name(scene, seed)}, indent=1)
    )
    return folder


DEMO_PROJECT = "demo-labeling"


def demo_ontology() -> dict:
    """The demo's features as Labelbox's normalized ontology JSON: a rectangle per shape, the two
    questions with the shapes as options (what a labeling project for the demo would have)."""
    options = [{"value": c, "label": c, "featureSchemaId": f"schema-option-{c}"} for c in CLASSES]
    return {
        "tools": [
            {"tool": "rectangle", "name": c, "featureSchemaId": f"schema-{c}", "classifications": []} for c in CLASSES
        ],
        "classifications": [
            {
                "type": "radio",
                "name": RADIO,
                "instructions": RADIO,
                "featureSchemaId": f"schema-{RADIO}",
                "options": options,
            },
            {
                "type": "checklist",
                "name": CHECKLIST,
                "instructions": CHECKLIST,
                "featureSchemaId": f"schema-{CHECKLIST}",
                "options": options,
            },
        ],
    }


def create_demo_project(projects_dir: Path, project_id: str = DEMO_PROJECT) -> Path:
    """A local labeling project for the demo's rows to label next (`LABEL_NEXT_PROJECT_ID=<project_id>`):
    its folder with the demo's ontology.json. Existing batches are kept."""
    folder = Path(projects_dir) / project_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ontology.json").write_text(json.dumps(demo_ontology(), indent=1))
    return folder


def _run_name(scene: Scene, seed: int) -> str:
    return f"demo shapes (seed {seed})" if scene is DEMO else f"demo shapes, {scene.name} scene (seed {seed})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/model_runs"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--unlabeled", type=int, default=0, help="rows nobody labeled yet, after the others")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scene", choices=sorted(SCENES), default=DEMO.name)
    parser.add_argument(
        "--project",
        metavar="ID",
        help="also write a local labeling project of this id beside the model runs (<out>/../projects/ID)",
    )
    args = parser.parse_args(argv)
    folder = create_demo_model_run(
        args.out, images=args.images, seed=args.seed, scene=SCENES[args.scene], unlabeled=args.unlabeled
    )
    print(folder)
    if args.project:
        print(create_demo_project(Path(args.out).resolve().parent / "projects", args.project))


if __name__ == "__main__":
    main()
