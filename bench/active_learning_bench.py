"""Benchmark of the active-learning loop on the demo set: does labeling the rows the model is least sure
of first train a better detector than labeling rows at random?

Per seed, one demo model run (the generator is the oracle: its labels stay hidden from the strategies
and are revealed only for the rows picked) is cut, by a draw of that seed, into a fixed test set
(scored, never trained on or picked), `--initial` labeled rows and an unlabeled pool of `--pool` rows.
The initial model trains on the labeled rows in step mode, batch-predicts the pool (every box down to
0.001), and each pool row gets its detection uncertainty (`shared.metrics.uncertainty.detection`, at
the upload threshold 0.3). Each strategy (random, least confidence, margin, entropy) picks `--pick`
rows with `label_next`; a model trains from scratch on the labeled rows plus the picks, with the same
steps and seed, and the test split is scored with pycocotools (mAP@0.5, mAP@[.5:.95]). The seed draws
the data, the split and the training. Baseline in the same run: `random`.

Step mode, fixed seeds and sorted orders: the same command (and thread count) prints the same mAP
figures on every run; only the timing lines differ.

    .venv/bin/python -m bench.active_learning_bench [--seeds 7 8 9] [--initial 40] [--pick 40] [--pool 300]
        [--test 150] [--steps 150] [--threads N] [--scene demo|hard] [--json picks.json]
"""

from __future__ import annotations

import os

# before torch loads OpenMP: waiting threads sleep, as in the engine's job processes (shared/engine/jobs.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.engine_bench import SHOWN_THRESHOLD, build_import, predict_split, pycocotools_map
from shared.demo import SCENES, Scene
from shared.engine.model import load_checkpoint
from shared.engine.predict import Predictor
from shared.engine.train import DEFAULT_INPUT_SIZE, TrainSettings, resolve_device, train
from shared.formats.vertex_import import ML_USE
from shared.metrics.uncertainty import DETECTION_FLOOR, Strategy, Uncertainty, detection, label_next
from shared.store.local_folder import LocalFolderStore

STRATEGIES = (Strategy.RANDOM, Strategy.LEAST_CONFIDENCE, Strategy.MARGIN, Strategy.ENTROPY)
PREDICT_BATCH = 64


@dataclass(frozen=True)
class Row:
    """One import line of the demo run, with its data row id (the name of its image)."""

    row_id: str
    line: dict

    @property
    def uri(self) -> str:
        return str(self.line["imageGcsUri"])

    @property
    def objects(self) -> int:
        return len(self.line.get("boundingBoxAnnotations") or [])

    def truth(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        return [
            (a["displayName"], (a["xMin"], a["yMin"], a["xMax"], a["yMax"]))
            for a in self.line.get("boundingBoxAnnotations") or []
        ]


@dataclass(frozen=True)
class Split:
    test: list[Row]
    labeled: list[Row]
    pool: list[Row]


@dataclass
class Outcome:
    """One trained model's test figures and, for a strategy, what it picked."""

    map50: float
    map_coco: float
    train_s: float
    images_per_s: float
    picked: list[str] = field(default_factory=list)
    picked_objects: float = 0.0  # ground-truth objects per picked image (the oracle's, after the pick)
    picked_no_detection: int = 0  # picks where the initial model showed no box at or above 0.3


def images_needed(initial: int, pool: int, test: int) -> int:
    """Demo images to generate so that, once the demo's unassigned rows are dropped, enough remain."""
    wanted = initial + pool + test
    total = wanted
    while total - max(1, total // 30) < wanted:  # the demo leaves its last total // 30 rows unassigned
        total += 1
    return total


def split_rows(lines: Sequence[dict], seed: int, *, initial: int, pool: int, test: int) -> Split:
    """The demo's rows (all drawn alike; the demo's own ml_use is ignored), shuffled by `seed` and cut."""
    rows = sorted((Row(Path(line["imageGcsUri"]).stem, line) for line in lines), key=lambda r: r.row_id)
    random.Random(f"active-learning-{seed}").shuffle(rows)
    if len(rows) < initial + pool + test:
        raise ValueError(f"{len(rows)} rows, fewer than the {initial + pool + test} asked for")
    return Split(rows[:test], rows[test : test + initial], rows[test + initial : test + initial + pool])


def write_training_import(store: LocalFolderStore, name: str, rows: Sequence[Row]) -> str:
    """An import JSONL of `rows` as training rows only (no validation: the test split is scored here)."""
    lines = []
    for row in sorted(rows, key=lambda r: r.row_id):
        line = dict(row.line)
        line["dataItemResourceLabels"] = {**line["dataItemResourceLabels"], ML_USE: "training"}
        lines.append(json.dumps(line) + "\n")
    key = f"bench/imports/{name}.jsonl"
    store.write(key, "".join(lines).encode())
    return store.uri(key)


def write_instances(store: LocalFolderStore, name: str, rows: Sequence[Row]) -> str:
    key = f"bench/instances/{name}.jsonl"
    store.write(key, "".join(json.dumps({"content": r.uri, "mimeType": "image/jpeg"}) + "\n" for r in rows).encode())
    return store.uri(key)


@dataclass(frozen=True)
class Trainer:
    store: LocalFolderStore
    workdir: Path
    seed: int
    steps: int
    input_size: int | None
    width: int
    device: torch.device

    def fit(self, name: str, rows: Sequence[Row]) -> tuple[Predictor, float, float]:
        """A model trained from scratch on `rows`, in step mode; (its predictor, seconds, images/s)."""
        settings = TrainSettings(
            task="object_detection",
            import_uri=write_training_import(self.store, name, rows),
            seed=self.seed,
            max_steps=self.steps,
            input_size=self.input_size,
            width=self.width,
            display_name=f"al-{name}",
        )
        checkpoint = self.workdir / f"{name}.pt"
        started = time.perf_counter()
        summary = train(settings, self.store, checkpoint, device=self.device)
        elapsed = time.perf_counter() - started
        rate = float(summary["images_per_s"])  # type: ignore[arg-type]
        return Predictor(load_checkpoint(checkpoint, self.device), self.device), elapsed, rate


def score(
    predictor: Predictor, store: LocalFolderStore, name: str, test: Sequence[Row], scene: Scene
) -> tuple[float, float]:
    found, _rate = predict_split(predictor, store, write_instances(store, "test", test), name, PREDICT_BATCH)
    return pycocotools_map({r.uri: r.truth() for r in test}, found, scene.width, scene.height)


def pool_uncertainty(predictor: Predictor, store: LocalFolderStore, pool: Sequence[Row]) -> dict[str, Uncertainty]:
    """Each pool row's detection uncertainty from its predicted boxes' confidences (labels unseen)."""
    found, _rate = predict_split(predictor, store, write_instances(store, "pool", pool), "pool", PREDICT_BATCH)
    return {
        r.row_id: detection([conf for _n, conf, _b in found.get(r.uri, [])], threshold=SHOWN_THRESHOLD) for r in pool
    }


def run_seed(
    seed: int, args: argparse.Namespace, scene: Scene, device: torch.device, workdir: Path
) -> tuple[Split, Outcome, dict[str, Outcome]]:
    images = images_needed(args.initial, args.pool, args.test)
    store, _uri, lines = build_import(workdir, images, seed, scene=scene)
    split = split_rows(lines, seed, initial=args.initial, pool=args.pool, test=args.test)
    trainer = Trainer(store, workdir, seed, args.steps, args.input_size, args.width, device)
    predictor, train_s, rate = trainer.fit("initial", split.labeled)
    initial = Outcome(*score(predictor, store, "initial", split.test, scene), train_s, rate)
    uncertainties = pool_uncertainty(predictor, store, split.pool)
    by_id = {r.row_id: r for r in split.pool}
    outcomes: dict[str, Outcome] = {}
    for strategy in STRATEGIES:
        picked = [row_id for row_id, _score in label_next(uncertainties, strategy, args.pick)]
        rows = [by_id[row_id] for row_id in picked]  # the oracle: the generator's labels of the picks
        predictor, train_s, rate = trainer.fit(strategy.value, [*split.labeled, *rows])
        outcome = Outcome(*score(predictor, store, strategy.value, split.test, scene), train_s, rate, picked)
        outcome.picked_objects = statistics.fmean(r.objects for r in rows) if rows else 0.0
        outcome.picked_no_detection = sum(bool(uncertainties[i].no_detection) for i in picked)
        outcomes[strategy.value] = outcome
    return split, initial, outcomes


def _spread(values: Sequence[float]) -> str:
    """mean [min, max]"""
    return f"{statistics.fmean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def _versus(values: Sequence[float], baseline: Sequence[float]) -> str:
    """The difference of means to the baseline, the ratio of means, and in how many seeds it beat it."""
    mean, base = statistics.fmean(values), statistics.fmean(baseline)
    ratio = f"{mean / base:.2f}x" if base > 0 else "n/a"
    wins = sum(v > b for v, b in zip(values, baseline, strict=True))
    return f"{mean - base:+.4f} ({ratio}, {wins}/{len(values)} seeds better)"


def table(initial: Sequence[Outcome], outcomes: Sequence[dict[str, Outcome]], labeled: int, pick: int) -> list[str]:
    """The summary over seeds: mean [min, max] per strategy, and its difference to random."""
    base = [o[Strategy.RANDOM.value] for o in outcomes]
    lines = [
        f"{'model':<22} {'test mAP@0.5':<24} {'vs random':<34} {'test mAP@[.5:.95]':<24} {'vs random':<34} "
        "picked objects/image"
    ]
    lines.append(
        f"{f'initial ({labeled} labeled)':<22} {_spread([o.map50 for o in initial]):<24} {'':<34} "
        f"{_spread([o.map_coco for o in initial]):<24}"
    )
    for strategy in STRATEGIES:
        runs = [o[strategy.value] for o in outcomes]
        map50, map_coco = [o.map50 for o in runs], [o.map_coco for o in runs]
        if strategy is Strategy.RANDOM:
            vs50 = vs_coco = "(baseline)"
        else:
            vs50 = _versus(map50, [o.map50 for o in base])
            vs_coco = _versus(map_coco, [o.map_coco for o in base])
        objects = statistics.fmean(o.picked_objects for o in runs)
        lines.append(
            f"{f'{strategy.value} (+{pick})':<22} {_spread(map50):<24} {vs50:<34} {_spread(map_coco):<24} "
            f"{vs_coco:<34} {objects:.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--initial", type=int, default=40, help="labeled rows the initial model trains on")
    parser.add_argument("--pick", type=int, default=40, help="rows each strategy picks from the pool")
    parser.add_argument("--pool", type=int, default=300, help="unlabeled rows the strategies pick from")
    parser.add_argument("--test", type=int, default=150, help="rows scored, never trained on or picked")
    parser.add_argument("--steps", type=int, default=150, help="training steps of every model (step mode)")
    parser.add_argument("--input-size", type=int, default=None, help="detector input side (default: the engine's)")
    parser.add_argument("--width", type=int, default=32, help="detector width (the engine's default 32)")
    parser.add_argument("--scene", choices=sorted(SCENES), default="demo")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", type=Path, default=None, help="write the splits, picks and figures here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)
    if min(args.initial, args.pick, args.pool, args.test, args.steps) < 1 or args.pick > args.pool:
        parser.error("--initial, --pick, --pool, --test and --steps must be positive, and --pick at most --pool")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scene = SCENES[args.scene]

    size = args.input_size or DEFAULT_INPUT_SIZE.get(device.type, DEFAULT_INPUT_SIZE["cpu"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"device {device}, threads {args.threads}"
    )
    print(
        f"settings: {args.scene} scene, seeds {' '.join(map(str, args.seeds))}; per seed {args.test} test rows, "
        f"{args.initial} labeled, pool {args.pool}, each strategy picks {args.pick}; every model {args.steps} steps "
        f"from scratch (batch 16, input {size}, width {args.width}); uncertainty: detection() over the pool's "
        f"boxes (floor {DETECTION_FLOOR}, threshold {SHOWN_THRESHOLD})"
    )
    started = time.perf_counter()
    report: dict[str, object] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    seeds: dict[str, object] = {}
    initials: list[Outcome] = []
    results: list[dict[str, Outcome]] = []
    train_s = 0.0
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            workdir = (args.workdir or Path(tmp)) / f"seed-{seed}"
            split, initial, outcomes = run_seed(seed, args, scene, device, workdir)
            initials.append(initial)
            results.append(outcomes)
            train_s += initial.train_s + sum(o.train_s for o in outcomes.values())
            rates += [initial.images_per_s, *(o.images_per_s for o in outcomes.values())]
            figures = "; ".join(f"{name} {o.map50:.4f} {o.map_coco:.4f}" for name, o in outcomes.items())
            head = f"seed {seed}: test mAP@0.5 mAP@[.5:.95]: initial {initial.map50:.4f} {initial.map_coco:.4f}"
            print(f"{head}; {figures}", flush=True)  # progress: a seed takes minutes
            seeds[str(seed)] = {
                "test": [r.row_id for r in split.test],
                "labeled": [r.row_id for r in split.labeled],
                "pool": [r.row_id for r in split.pool],
                "initial": {"map50": initial.map50, "map": initial.map_coco},
                "strategies": {
                    name: {
                        "picked": o.picked,
                        "map50": o.map50,
                        "map": o.map_coco,
                        "picked_objects": o.picked_objects,
                        "picked_no_detection": o.picked_no_detection,
                    }
                    for name, o in outcomes.items()
                },
                "pool_objects": statistics.fmean(r.objects for r in split.pool),
            }
    print(
        f"over {len(args.seeds)} seeds: mean [min, max]; vs random: difference of means (ratio of means, paired seeds)"
    )
    for line in table(initials, results, args.initial, args.pick):
        print(line)
    pool_objects = statistics.fmean(float(s["pool_objects"]) for s in seeds.values())  # type: ignore[index]
    same = sum(set(o[Strategy.LEAST_CONFIDENCE.value].picked) == set(o[Strategy.MARGIN.value].picked) for o in results)
    no_detection = [o[s.value].picked_no_detection for o in results for s in STRATEGIES]
    print(
        f"pool: {pool_objects:.2f} objects/image; least_confidence and margin picked the same rows in {same}/"
        f"{len(results)} seeds; picks with no box at or above {SHOWN_THRESHOLD}: {sum(no_detection)}"
    )
    elapsed = time.perf_counter() - started
    trainings = len(args.seeds) * (1 + len(STRATEGIES))
    print(
        f"time: {elapsed:.0f} s in all; {trainings} trainings {train_s:.0f} s ({train_s / trainings:.1f} s each, "
        f"{statistics.fmean(rates):.1f} training images/s)"
    )
    if args.json:
        report["seeds"] = seeds
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
